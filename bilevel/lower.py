"""Lower-level solves to a certified accuracy.

For any x~, mu-strong convexity of h(., theta) gives

    ||x~ - x*(theta)|| <= ||grad_x h(x~, theta)|| / mu(theta),

so a solve "to accuracy eps" stops as soon as this bound is <= eps and returns
it.  The bound uses mu alone: an estimated L changes the speed, never the
certificate.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import torch

from .budget import charge
from .contract import check_mu, check_theta, check_x
from .cost import Cost
from .linalg import conjugate_gradient
from .numerics import damped_newton, power_iteration


@dataclasses.dataclass(frozen=True)
class LowerSolution:
    """An approximate lower-level solution and its certificate.

    Attributes
    ----------
    x : torch.Tensor
        The approximate minimiser x~.
    error_bound : float
        Certified ||x~ - x*|| <= error_bound (inf if the solve broke down).
    iterations : int
        Gradient steps taken (the paper's "lower-level iterations").
    converged : bool
        Whether error_bound <= the requested tolerance.
    evaluations : int
        Every oracle call spent (gradients, and objective values and
        Hessian-vector products when L had to be estimated).
    smoothness : float or None
        FISTA's estimate of L where the problem gives no ``smoothness``: hand it
        to the next solve near this theta (``smoothness=``) and it starts there
        instead of estimating L again.  The outer methods carry it like a warm start.
    certificate_cost : Cost
        What a certificate beyond ||grad_x h|| / mu spent (the Newton step's CG:
        :mod:`bilevel.newton_certificate`).
    """

    x: torch.Tensor
    error_bound: float
    iterations: int
    converged: bool
    evaluations: int = 0
    smoothness: float | None = None
    certificate_cost: Cost = Cost()

    @property
    def cost(self) -> Cost:
        return (Cost(lower_iterations=self.iterations, oracle_calls=self.evaluations)
                + self.certificate_cost)


def _check_tol(problem, tol):
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not (
            tol > 0 and math.isfinite(tol)):
        raise ValueError(f"{problem.name}: lower-level tolerance must be a finite number > 0, "
                         f"got {tol!r}")


def certificate(problem, x, theta, mu=None) -> float:
    """||grad_x h(x, theta)|| / mu(theta): a certified bound on ||x - x*(theta)||."""
    mu = check_mu(problem, theta) if mu is None else mu
    return problem.parallel.norm(problem.lower_grad(x, theta)) / mu


def reachable_accuracy(problem, theta, x) -> float:
    """About the smallest certificate the dtype of ``x`` allows: 4 eps max(1, ||x||) / mu.

    The certificate is ||grad_x h|| / mu, and grad_x h carries a rounding error
    of a few finfo(dtype).eps ||x|| (relative to unit curvature): a tolerance
    below this is rounding noise (float32: about 5e-7 max(1, ||x||) / mu), and no
    number of iterations reaches it.
    """
    eps = torch.finfo(x.dtype).eps
    return 4 * eps * max(1.0, problem.parallel.norm(x)) / check_mu(problem, theta)


def rounding_floor(problem, theta, x) -> float:
    """Where a solve's certificate typically stalls in the dtype of ``x``.

    The rounding of grad_x h grows with the largest curvature L (a step of eps
    ||x|| in x moves the gradient by up to L eps ||x||), so the stall sits near
    eps max(1, ||x||) L / mu, at least :func:`reachable_accuracy`.  L is the
    problem's ``smoothness`` (without one, this is :func:`reachable_accuracy`).
    A tolerance a solve can be expected to reach lies above it.
    """
    floor = reachable_accuracy(problem, theta, x)
    L = problem.smoothness(theta)
    if L is None or not math.isfinite(float(L)):
        return floor
    eps = torch.finfo(x.dtype).eps
    return max(floor, eps * max(1.0, problem.parallel.norm(x)) * float(L)
               / check_mu(problem, theta))


def _estimate_smoothness(problem, theta, x, iterations=10):
    """Power iteration on Hessian-vector products: an estimate (from below) of L."""
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)
    v = v / problem.parallel.norm(v)
    run = power_iteration(lambda u: problem.lower_hvp(x, theta, u), v, iterations,
                          norm=problem.parallel.norm)  # the same on every data-parallel rank
    return run.value, run.iterations


def fista(problem, theta, tol, x0=None, max_iter=10_000, smoothness=None) -> LowerSolution:
    """Strongly convex FISTA to certified accuracy ``tol`` (docs/certificates.md, section 1).

    Step 1/L and constant momentum (1 - sqrt(q)) / (1 + sqrt(q)), q = mu/L.  The
    certificate is tested at the extrapolated point y_k, whose gradient the step
    needs anyway, so certification costs no extra gradient.  When the problem
    gives no certified L, L starts at ``smoothness`` (a previous solve's estimate)
    or is estimated by power iteration, and is raised by a descent-lemma test at
    each step (both counted in ``evaluations``); the solution returns it.
    """
    _check_tol(problem, tol)
    theta = check_theta(problem, theta)
    mu = check_mu(problem, theta)
    x = problem.initial_x(theta) if x0 is None else check_x(problem, x0, theta, "x0")
    evaluations = 0
    L = problem.smoothness(theta)
    checked = L is None
    if checked:
        L = smoothness
        if L is None:
            L, spent = _estimate_smoothness(problem, theta, x)
            evaluations += spent
        # Power iteration only gives a start: a NaN from it (a broken lower_hvp) leaves
        # the descent-lemma safeguard, which reads h alone, to find L from mu up.
        L = max(float(L), mu) if math.isfinite(float(L)) else mu
    L = start = float(L)
    sq = math.sqrt(mu / L)
    beta = (1 - sq) / (1 + sq)

    y = x
    bound = math.inf
    iterations = 0
    best, best_at = math.inf, 0
    while True:
        grad = problem.lower_grad(y, theta)
        evaluations += 1
        bound = problem.parallel.norm(grad) / mu
        if not math.isfinite(bound):
            return LowerSolution(y, math.inf, iterations, False, evaluations,
                                 L if checked else None)
        if bound <= tol or iterations >= max_iter:
            break
        if bound < 0.99 * best:
            best, best_at = bound, iterations
        elif iterations - best_at > max(200, 10 * math.sqrt(L / mu)):
            # No 1% progress in many condition-number spans: the certificate is at
            # the rounding floor of the dtype (float32), more iterations only burn cost.
            break
        x_new = y - grad / L
        if checked:
            L, x_new, spent = _descent_safeguard(problem, theta, y, grad, bound * mu, L)
            evaluations += spent
            sq = math.sqrt(mu / L)
            beta = (1 - sq) / (1 + sq)
        y = x_new + beta * (x_new - x)
        x = x_new
        iterations += 1
        charge()
    estimate = None
    if checked:
        # Only a solve that reached its tolerance vouches for a raised L: a stalled one
        # may have raised it on rounding, and an inflated L handed on would slow every
        # later solve (its steps 1/L vanish) until they all stall.  Otherwise the
        # starting estimate is handed on, so the power iteration is not paid again.
        estimate = L if bound <= tol else start
    return LowerSolution(y, bound, iterations, bound <= tol, evaluations, estimate)


def _rounding_slack(h_y, h_new, g_norm, y):
    """What rounding alone can add to h(y - g/L) - h(y), in the dtype of ``y``.

    Each value of h carries a relative error of a few machine epsilons, and
    forming y - g/L moves the point by about eps ||y||, which moves h by
    ||g|| eps ||y|| to first order.  A fixed relative slack (1e-12 |h|) is below
    float32 rounding: the descent test then fails on noise and doubles L
    without end.
    """
    eps = torch.finfo(y.dtype).eps
    return 4 * eps * (abs(h_y) + abs(h_new) + g_norm * float(torch.linalg.vector_norm(y)))


def _descent_safeguard(problem, theta, y, grad, g_norm, L):
    """Raise L until the descent lemma holds at y; (L, y - grad / L, evaluations).

    h(y - g/L) <= h(y) - ||g||^2 / (2L) holds for every L >= the true constant,
    so a failure beyond rounding (:func:`_rounding_slack`) means the estimate
    was too small.  Once the step no longer moves y (L beyond ||g|| / (eps ||y||)),
    raising L cannot help: the failure was rounding, and L is left as it was.
    """
    def h(point):
        return float(problem.parallel.sum(problem.lower_objective(point, theta).detach()))

    h_y, g2, start = h(y), g_norm ** 2, L
    x_new = y - grad / L
    h_new = h(x_new)
    evaluations = 2
    while h_new > h_y - g2 / (2 * L) + _rounding_slack(h_y, h_new, g_norm, y):
        if torch.equal(x_new, y):  # the step vanished in rounding: nothing was learned
            return start, y - grad / start, evaluations
        L *= 2
        x_new = y - grad / L
        h_new = h(x_new)
        evaluations += 1
    return L, x_new, evaluations


def newton_cg(problem, theta, tol, x0=None, max_iter=10_000) -> LowerSolution:
    """Inexact Newton with CG on Hessian-vector products, to certified accuracy ``tol``.

    For lower levels whose Hessian-vector products cost about a gradient and
    whose conditioning mu / L is poor, Newton's quadratic convergence makes high
    accuracy nearly free -- and MAID asks for high accuracy.  Each step solves
    A(x) s = grad_x h(x) by (preconditioned, :meth:`~bilevel.BilevelProblem.lower_preconditioner`)
    CG to the relative residual min(0.5, sqrt(||grad||)) (Eisenstat-Walker: loose
    far away, tight near x*) but never below tol mu / 2 (the residual of the
    linear model is the next gradient: no need to overshoot), and steps by
    :func:`bilevel.numerics.damped_newton` (Armijo on h from the full step; where
    h cannot resolve the decrease, a smaller ||grad_x h||).  The certificate is
    the same as FISTA's, ||grad_x h|| / mu.
    ``iterations`` counts gradients and Hessian-vector products alike (each
    costs about one gradient), so costs compare with FISTA's.
    """
    _check_tol(problem, tol)
    theta = check_theta(problem, theta)
    mu = check_mu(problem, theta)
    x = problem.initial_x(theta) if x0 is None else check_x(problem, x0, theta, "x0")

    used = [0]  # gradients and Hessian-vector products: the iterations of the solve

    dot = problem.parallel.dot

    def gradient(point):
        charge()
        used[0] += 1
        return problem.lower_grad(point, theta)

    def direction(point, grad, g_norm):
        # Eisenstat-Walker; the linear model's residual is the next gradient, so no
        # need to go below tol mu.
        cg_tol = max(min(0.5, math.sqrt(g_norm)) * g_norm, 0.5 * tol * mu)
        step = conjugate_gradient(functools.partial(problem.lower_hvp, point, theta), grad,
                                  tol=cg_tol, max_iter=max(1, max_iter - used[0]), dot=dot,
                                  preconditioner=problem.lower_preconditioner(theta, point))
        used[0] += step.iterations
        return step.q, step.iterations

    def h(point):
        return float(problem.parallel.sum(problem.lower_objective(point, theta).detach()))

    run = damped_newton(x, gradient, h, direction, converged=lambda _p, n: n / mu <= tol,
                        max_steps=max_iter, max_work=max_iter, norm=problem.parallel.norm,
                        dot=lambda a, b: float(dot(a, b)))
    bound = run.grad_norm / mu
    if not math.isfinite(bound):
        return LowerSolution(run.x, math.inf, run.gradients + run.direction_cost, False,
                             run.evaluations)
    return LowerSolution(run.x, bound, run.gradients + run.direction_cost, bound <= tol,
                         run.evaluations)
