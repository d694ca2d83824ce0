"""Constants of the hypergradient error bound, and their numerical estimates.

docs/certificates.md, section "The hypergradient bound": with x~ certified
||x~ - x*|| <= eps, q~ the CG solution with residual delta, and the exact
adjoints q^ = A(x~)^{-1} grad_x g(x~), q* = A(x*)^{-1} grad_x g(x*),

    z - grad F = [grad_theta g(x~) - grad_theta g(x*)]        <= L_gtheta eps
                 - B(x~)^T (q~ - q^)                           <= K delta
                 - B(x~)^T A(x*)^{-1} (grad_x g(x~) - grad_x g(x*))   <= K L_g eps
                 - B(x~)^T A(x*)^{-1} (A(x*) - A(x~)) q^       <= H eps
                 - (B(x~) - B(x*))^T q*                        <= N eps

K bounds ||A(x')^{-1} B(x~)|| for x' in {x~, x*} (default ||B|| / mu; a problem
may give a sharper ``sensitivity``).  H is the smaller of L_Ainv ||grad_x g|| ||B||
and K M, with M the problem's ``hessian_lipschitz_along`` (a bound on
||(A(x') - A(x~)) q'|| / ||x' - x~|| for the q' near q~ at hand).  N is the
problem's ``mixed_lipschitz_along`` when given, else L_B times a bound on ||q*||:
the smaller of (||grad_x g|| + L_g eps) / mu and ||q~|| + ||q~ - q*||.  With no
local information this is the bound of the paper,

    omega = c eps + (||B|| / mu) delta + (L_B L_g / mu) eps^2,
    c = L_g ||B|| / mu + L_Ainv ||grad_x g|| ||B|| + L_B ||grad_x g|| / mu + L_gtheta,

and every local quantity can only lower it.
"""
from __future__ import annotations

import dataclasses
import math

import torch

from .contract import check_mu, upper_depends_on_theta
from .numerics import power_iteration, random_unit


@dataclasses.dataclass(frozen=True)
class BoundConstants:
    """Constants of the hypergradient bound near the current point.

    ``problem.bound_constants(theta, x~)`` is called at the approximate solution
    x~ and recomputed whenever x~ changes; the constants need only hold on the
    segment between x~ and x*(theta) (a ball of radius eps around x~), not
    globally.  So ||B|| may be ||B(x~)|| itself, and the Lipschitz constants may
    be local ones on that ball.

    Attributes
    ----------
    L_g : float
        Lipschitz constant of grad_x g (in x).
    B_norm : float
        Bound on the operator norm of the mixed derivative B near x*.
    L_B : float
        Lipschitz constant of x -> B(x) between x~ and x*.
    L_Ainv : float
        Lipschitz constant of x -> A(x)^{-1} between x~ and x* (<= L_A / mu^2).
    L_gtheta : float
        Lipschitz constant of x -> grad_theta g(x, theta); 0 if g ignores theta.
    sensitivity : float, optional
        A bound K on ||A(x')^{-1} B(x~)|| for x' = x~ and every x' within eps of
        x~ (the norm of the solution map's derivative dx*/dtheta = -A^{-1} B).
        None means ||B|| / mu; give it where the curvature is larger along the
        directions B reaches than mu (e.g. ridges of different weights).
    certified : bool
        True when every constant is a proven bound, False when any is estimated.
    cost : int
        Oracle calls spent to obtain them (0 for closed forms).
    """

    L_g: float
    B_norm: float
    L_B: float = 0.0
    L_Ainv: float = 0.0
    L_gtheta: float = 0.0
    sensitivity: float | None = None
    certified: bool = True
    cost: int = 0

    def solution_sensitivity(self, mu: float) -> float:
        """K >= ||A(x')^{-1} B(x~)||: ``sensitivity`` if given (and smaller), else ||B|| / mu."""
        plain = self.B_norm / mu
        return plain if self.sensitivity is None else min(plain, self.sensitivity)

    def _hessian_rates(self, mu, grad_x_norm, hessian_along):
        """Per unit eps: rates of ||(A(x~)^{-1} - A(x*)^{-1}) grad_x g|| and of its B^T image."""
        adjoint = self.L_Ainv * grad_x_norm
        image = adjoint * self.B_norm
        if hessian_along is not None:
            adjoint = min(adjoint, hessian_along / mu)
            image = min(image, self.solution_sensitivity(mu) * hessian_along)
        return adjoint, image

    def adjoint_radius(self, eps: float, delta: float, mu: float, grad_x_norm: float,
                       hessian_along: float | None = None) -> float:
        """A bound on ||q~ - q*||: delta / mu (CG) plus the move of the exact adjoint.

        q^ - q* = A(x*)^{-1} [(grad_x g(x~) - grad_x g(x*)) - (A(x*) - A(x~)) q^].
        """
        adjoint_rate, _ = self._hessian_rates(mu, grad_x_norm, hessian_along)
        return delta / mu + (self.L_g / mu + adjoint_rate) * eps

    def omega_terms(self, eps: float, delta: float, mu: float, grad_x_norm: float,
                    hessian_along: float | None = None, adjoint_norm: float | None = None,
                    mixed_along: float | None = None,
                    hessian_at_q: float | None = None) -> dict:
        """The terms of the bound (module docstring), by name; omega is their sum.

        ``hessian_along`` is the problem's M
        (:meth:`~bilevel.BilevelProblem.hessian_lipschitz_along`), ``adjoint_norm``
        is ||q~||, ``mixed_along`` the problem's N
        (:meth:`~bilevel.BilevelProblem.mixed_lipschitz_along`); each is optional
        and only ever lowers the bound.  ``hessian_at_q`` is M at radius 0 (at q~
        itself): it splits the Hessian term into the part at q~ ('hessian') and
        the part due to the CG residual ('hessian_adjoint'), which tightening
        delta, not eps, removes.  The sum does not depend on it.
        """
        K = self.solution_sensitivity(mu)
        _, hessian_rate = self._hessian_rates(mu, grad_x_norm, hessian_along)
        q_star = (grad_x_norm + self.L_g * eps) / mu
        if adjoint_norm is not None:
            q_star = min(q_star, adjoint_norm + self.adjoint_radius(eps, delta, mu, grad_x_norm,
                                                                     hessian_along))
        mixed = self.L_B * q_star
        if mixed_along is not None:
            mixed = min(mixed, mixed_along)
        at_q = hessian_rate
        if hessian_at_q is not None and hessian_along is not None:
            at_q = min(hessian_rate, self._hessian_rates(mu, grad_x_norm, hessian_at_q)[1])
        return dict(upper_theta=self.L_gtheta * eps, adjoint_solve=K * delta,
                    upper_grad=K * self.L_g * eps, hessian=at_q * eps,
                    hessian_adjoint=(hessian_rate - at_q) * eps, mixed=mixed * eps)

    def omega(self, eps: float, delta: float, mu: float, grad_x_norm: float,
              hessian_along: float | None = None, adjoint_norm: float | None = None,
              mixed_along: float | None = None) -> float:
        """The a-posteriori bound on ||z - grad F(theta)|| (the sum of :meth:`omega_terms`)."""
        return sum(self.omega_terms(eps, delta, mu, grad_x_norm, hessian_along, adjoint_norm,
                                    mixed_along).values())


def estimate_bound_constants(problem, theta, x, *, iterations=15, probes=3, seed=0,
                             safety=2.0, reuse=True, theta_radius=0.1,
                             x_rtol=0.1) -> BoundConstants:
    """Estimate the bound constants near ``(theta, x)`` numerically; never certified.

    L_g and ||B|| by power iteration on autograd second derivatives (stopped
    early once the estimate grows by less than 0.1% per step); L_B, L_A and
    L_gtheta by central differences of the operators along ``probes`` random
    directions.  Everything runs in the problem's dtype, and the difference
    step is set by that dtype: each entry of x moves by about sqrt(machine
    epsilon) times its typical size (at least sqrt(eps) itself), the step at
    which rounding in the operators stays far below the differences measured
    (a fixed step such as 1e-3 is rounding noise in float32 and inflates L_A and
    L_B).  Power iteration and sampled differences approach their targets from
    below, so each estimate is multiplied by ``safety``.  Second derivatives
    that vanish identically (an upper loss linear in x, a mixed derivative
    independent of x) give 0, a valid constant.

    Estimates are costly (tens of oracle calls) and only approximate anyway, so
    they are reused.  **Reuse rule**: the raw estimates are cached on the problem
    with the point (theta_e, x_e) where they were made, and a later call at
    (theta, x) reuses them when ``||theta - theta_e||_inf <= theta_radius`` and
    ``||x - x_e|| <= x_rtol * max(||x_e||, ||x||)`` (and the settings, dtype and
    device are the same); otherwise it estimates afresh and replaces the cache.
    The anchor is never moved on reuse, so drift cannot accumulate.  Only mu is
    re-read at each call (it is certified and cheap): L_Ainv = safety L_A / mu^2
    with the current mu.  A reused result has ``cost=0``; ``cost`` counts the
    oracle calls of an actual estimate.  With log-scale hyperparameters the
    default radius 0.1 lets a weight change by about 10%, which ``safety``
    covers for constants that scale with it.  The cache knows nothing of the
    problem's data: after changing them in place, call with ``reuse=False`` once
    (which also leaves the old cache in place) or delete
    ``problem._estimated_constants``.

    Parameters
    ----------
    problem : BilevelProblem
    theta, x : torch.Tensor
        The hyperparameters and the approximate lower-level solution x~.
    iterations : int
        Most power iterations per operator.
    probes : int
        Random directions of the finite differences.
    seed : int
        Seed of the random start vectors and directions.
    safety : float
        Factor applied to every estimate.
    reuse : bool
        Use and update the cache on the problem (False: always estimate, and
        leave the cache alone).
    theta_radius, x_rtol : float
        The reuse rule above.

    Returns
    -------
    BoundConstants
        With ``certified=False``.
    """
    theta, x = theta.detach(), x.detach()
    mu = check_mu(problem, theta)
    settings = (iterations, probes, seed, theta.dtype, x.dtype, str(x.device), tuple(x.shape))
    cache = getattr(problem, "_estimated_constants", None) if reuse else None
    if cache is not None and _reusable(cache, settings, theta, x, theta_radius, x_rtol):
        return _assemble(cache.raw, mu, safety, cost=0)
    raw, cost = _estimate(problem, theta, x, iterations, probes, seed)
    if reuse:
        problem._estimated_constants = _CachedEstimate(
            settings, theta.clone(), x.clone(), float(torch.linalg.vector_norm(x)), raw)
    return _assemble(raw, mu, safety, cost=cost)


@dataclasses.dataclass(frozen=True)
class _CachedEstimate:
    """Raw estimates (before ``safety`` and mu) and the point where they were made."""

    settings: tuple
    theta: torch.Tensor
    x: torch.Tensor
    x_norm: float
    raw: dict


def _reusable(cache, settings, theta, x, theta_radius, x_rtol):
    if cache.settings != settings:
        return False
    if float(torch.max(torch.abs(theta - cache.theta))) > theta_radius:
        return False
    distance = float(torch.linalg.vector_norm(x - cache.x))
    return distance <= x_rtol * max(cache.x_norm, float(torch.linalg.vector_norm(x)))


def _assemble(raw, mu, safety, cost):
    return BoundConstants(L_g=safety * raw["L_g"], B_norm=safety * raw["B_norm"],
                          L_B=safety * raw["L_B"], L_Ainv=safety * raw["L_A"] / mu ** 2,
                          L_gtheta=safety * raw["L_gtheta"], certified=False, cost=cost)


def _estimate(problem, theta, x, iterations, probes, seed):
    """The raw estimates (dict) and the oracle calls they took."""
    gen = torch.Generator().manual_seed(seed)
    # ||A v_k|| of a PSD operator never decreases: stop once it grows by less than 0.1%.
    upper = power_iteration(lambda v: _upper_hvp(problem, x, theta, v), random_unit(x, gen),
                            iterations, rtol=1e-3)
    mixed = power_iteration(
        lambda u: problem.mixed_vjp(x, theta, _mixed_jvp(problem, x, theta, u)),
        random_unit(theta, gen), iterations, rtol=1e-3)
    L_g, BtB = upper.value, mixed.value
    cost = upper.iterations + 2 * mixed.iterations

    step = _difference_step(x)
    L_B = L_A = L_gt = 0.0
    reads_theta = upper_depends_on_theta(problem)

    def rate(op, d, *args):
        return float(torch.linalg.vector_norm(op(x + d, theta, *args)
                                              - op(x - d, theta, *args))) / (2 * step)

    for _ in range(probes):
        d = random_unit(x, gen) * step
        w, v = random_unit(x, gen), random_unit(x, gen)
        L_B = _max(L_B, rate(problem.mixed_vjp, d, w))
        L_A = _max(L_A, rate(problem.lower_hvp, d, v))
        cost += 4
        if reads_theta:
            L_gt = _max(L_gt, rate(lambda y, t: problem.upper_grads(y, t)[2], d))
            cost += 2
    raw = dict(L_g=L_g, B_norm=math.sqrt(BtB), L_B=L_B, L_A=L_A, L_gtheta=L_gt)
    return raw, cost


def _max(a, b):
    """max that keeps NaN (``max(0.0, nan)`` is 0.0: a broken operator would read as 0)."""
    return math.nan if math.isnan(a) or math.isnan(b) else max(a, b)


def _difference_step(x):
    """||d|| of the central differences: each entry moves by ~sqrt(eps) of its size.

    The differences of a Hessian-vector product carry rounding errors of about
    eps ||A v||; dividing by 2 ||d|| amplifies them by 1 / ||d||, so ||d|| must
    grow with the dtype's eps.  sqrt(eps) per entry balances that rounding
    against the change of the operator itself (and, for float64, keeps the step
    well inside any ball MAID certifies).  Entries below 1 in size count as 1,
    so x = 0 still gets a usable step.
    """
    eps = torch.finfo(x.dtype).eps
    n = max(x.numel(), 1)
    typical = max(float(torch.linalg.vector_norm(x)) / math.sqrt(n), 1.0)
    return math.sqrt(eps) * typical * math.sqrt(n)


def _overrides(problem, method):
    """Whether ``problem`` has its own ``method`` instead of the autograd default."""
    from .problem import BilevelProblem

    return getattr(type(problem), method) is not getattr(BilevelProblem, method)


def _central_difference(fn, point, direction):
    """(fn(point + s d) - fn(point - s d)) / (2 s) for a unit d, s set by the dtype.

    The fallback where autograd has no second derivative: fn is a first
    derivative the problem computes itself (exactly zero differences where the
    true second derivative vanishes, e.g. a linear loss).
    """
    step = _difference_step(point)
    d = direction * step
    return ((fn(point + d) - fn(point - d)) / (2 * step)).detach()


def _first_order_vjp(fn, at, v):
    """<v, d fn / d at> by one backward through ``fn`` (a derivative the problem
    computes itself), or None where ``fn`` keeps no graph (closed forms in numpy,
    a custom Function, detached results)."""
    with torch.enable_grad():
        at = at.detach().requires_grad_(True)
        out = fn(at)
        if not out.requires_grad:
            return None
        (res,) = torch.autograd.grad(out, at, grad_outputs=v, allow_unused=True)
    return torch.zeros_like(at) if res is None else res.detach()


def _upper_hvp(problem, x, theta, v):
    """Hessian_xx g applied to v; zero where g is linear in x (or ignores x).

    A problem's own ``upper_grads`` is differentiated once (or by central
    differences); otherwise g is differentiated twice by autograd, with central
    differences of ``upper_grads`` where the first derivative keeps no graph (g
    linear in x, or not twice differentiable by autograd): never a silent zero.
    """
    theta = theta.detach()

    def grad_x(y):
        return problem.upper_grads(y, theta)[1]

    if _overrides(problem, "upper_grads"):
        hv = _first_order_vjp(grad_x, x, v)
        return _central_difference(grad_x, x.detach(), v) if hv is None else hv
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        value = problem.upper_objective(x, theta)
        if not (isinstance(value, torch.Tensor) and value.requires_grad):
            return torch.zeros_like(x)  # g reads neither x nor theta
        (gx,) = torch.autograd.grad(value, x, create_graph=True, allow_unused=True)
        if gx is None:
            return torch.zeros_like(x)  # g ignores x
        if not gx.requires_grad:
            return _central_difference(grad_x, x.detach(), v)
        (hv,) = torch.autograd.grad(gx, x, grad_outputs=v, allow_unused=True)
    return torch.zeros_like(x) if hv is None else hv.detach()


def _mixed_jvp(problem, x, theta, u):
    """B u = d/dt grad_x h(x, theta + t u); zero where B vanishes.

    Uses the problem's own derivatives where it has them: B u is the transpose
    of its ``mixed_vjp`` (linear in w, so one backward through it), else central
    differences of ``lower_grad`` in theta.  Only with the autograd defaults is
    ``lower_objective`` differentiated twice, and there too a first derivative
    without a graph (not twice differentiable by autograd) falls back to the
    differences instead of reading as B = 0.
    """
    x, theta = x.detach(), theta.detach()

    def grad_x(t):
        return problem.lower_grad(x, t)

    if _overrides(problem, "mixed_vjp"):
        bu = _first_order_vjp(lambda w: problem.mixed_vjp(x, theta, w), torch.zeros_like(x), u)
        if bu is None:
            bu = _central_difference(grad_x, theta, u)
        return bu
    with torch.enable_grad():
        xg = x.requires_grad_(True)
        tg = theta.clone().requires_grad_(True)
        value = problem.lower_objective(xg, tg)
        (gt,) = torch.autograd.grad(value, tg, create_graph=True, allow_unused=True)
        if gt is None:
            return torch.zeros_like(x)  # h ignores theta
        if not gt.requires_grad:
            return _central_difference(grad_x, theta, u)
        (bu,) = torch.autograd.grad(gt, xg, grad_outputs=u, allow_unused=True)
    return torch.zeros_like(x) if bu is None else bu.detach()
