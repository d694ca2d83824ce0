"""Inexact hypergradients by implicit differentiation, with an error bound.

    grad F(theta) = grad_theta g(x*, theta) - B(x*)^T q*,   A(x*) q* = grad_x g(x*, theta)

(docs/certificates.md).  x* is replaced by a certified x~ and q* by a CG
solution with residual <= delta; ``omega`` bounds the resulting error
(:mod:`bilevel.constants`).
"""
from __future__ import annotations

import dataclasses
import math
import warnings

import torch

from .constants import BoundConstants
from .contract import check_mu, check_theta, check_x
from .cost import Cost
from .linalg import CGResult, conjugate_gradient
from .lower import LowerSolution
from .newton_certificate import solve_certified_by_newton
from .sensitivity import solved_sensitivity


class AccuracyWarning(UserWarning):
    """An accuracy was requested below what the dtype can certify."""


@dataclasses.dataclass(frozen=True)
class Hypergradient:
    """An inexact hypergradient z and what certifies it.

    Attributes
    ----------
    grad : torch.Tensor
        z, the approximation of grad F(theta).
    upper_value : float
        g(x~, theta).
    error_bound : float
        omega >= ||z - grad F(theta)|| (a proof if ``certified``, else an estimate).
    certified : bool
        Whether every constant in omega is a proven bound.
    lower : LowerSolution
        The lower-level solve (x~ and its certificate).
    linear : CGResult
        The CG solve (q~ and its residual).
    upper_grad_norm : float
        ||grad_x g(x~, theta)||, used by the bounds on g(x*).
    constants : BoundConstants or None
        The constants that entered omega (None where none was computed).
    hessian_along : float or None
        The problem's bound M on ||(A(x') - A(x~)) q|| / ||x' - x~||, if it has one
        (:meth:`~bilevel.BilevelProblem.hessian_lipschitz_along`).
    mixed_along : float or None
        The problem's bound N on ||(B(x') - B(x~))^T q'|| / ||x' - x~||, if it has one
        (:meth:`~bilevel.BilevelProblem.mixed_lipschitz_along`).
    sensitivity : float or None
        K >= ||A(x')^{-1} B(x~)|| from dim(theta) CG solves, for a problem with
        ``sensitivity_by_solves`` (:mod:`bilevel.sensitivity`; its solves are in ``cost``).
    terms : dict
        omega split into its terms (:meth:`BoundConstants.omega_terms`): where
        the bound's looseness, and so MAID's cost, comes from.
    cost : Cost
        The work spent: the lower solve, CG, g and its gradients, the mixed
        product, the constants (when computed here) and each local rate.
    """

    grad: torch.Tensor
    upper_value: float
    error_bound: float
    certified: bool
    lower: LowerSolution
    linear: CGResult
    upper_grad_norm: float
    constants: BoundConstants
    hessian_along: float | None = None
    mixed_along: float | None = None
    sensitivity: float | None = None
    terms: dict = dataclasses.field(default_factory=dict)
    cost: Cost = Cost()


def solve_lower(problem, theta, tol, x0=None, max_iter=10_000, smoothness=None):
    """``problem.solve_lower``, handing on an estimate of L where there is one (an
    override that keeps the four-argument signature never receives one: its
    solutions carry none); certified through a Newton step where the problem asks for it
    (``newton_certificate``, :mod:`bilevel.newton_certificate`)."""
    options = {} if smoothness is None else {"smoothness": smoothness}
    if problem.newton_certificate:
        return solve_certified_by_newton(problem, theta, tol, x0=x0, max_iter=max_iter,
                                         **options)
    return problem.solve_lower(theta, tol, x0=x0, max_iter=max_iter, **options)


def certifiable_accuracy(problem, theta, x) -> float:
    """The smallest ||x~ - x*|| the dtype of ``x`` can certify at ``theta``.

    The certificate is ||grad_x h(x~)|| / mu, and grad_x h is computed with a
    rounding error of a few finfo(dtype).eps ||x|| (relative to the curvature);
    below 4 eps max(1, ||x||) / mu the certificate is rounding noise (float32:
    about 5e-7 ||x|| / mu).
    """
    rounding = 4 * torch.finfo(x.dtype).eps * max(1.0, problem.parallel.norm(x))
    return rounding / check_mu(problem, theta)


def upper_bounds(value, grad_norm, eps, L_g, convex=False):
    """(lower, upper) bounds on g(x*) from g(x~), ||grad_x g(x~)|| and ||x~ - x*|| <= eps.

    By the descent lemma, |g(x*) - g(x~) - <grad g(x~), x* - x~>| <= L_g/2 eps^2;
    for convex g the lower bound needs no eps^2 term.
    """
    slack = grad_norm * eps
    quad = 0.5 * L_g * eps ** 2
    return value - slack - (0.0 if convex else quad), value + slack + quad


def bracket_accuracy(grad_norm, L_g, slack):
    """The largest eps whose bracket in :func:`upper_bounds` is within ``slack`` of g(x~):
    grad_norm eps + L_g eps^2 / 2 = slack (0 for slack <= 0)."""
    if slack <= 0:
        return 0.0
    return 2 * slack / (grad_norm + math.sqrt(grad_norm * grad_norm + 2 * L_g * slack))


def upper_value(problem, x, theta):
    """(g(x, theta), ||grad_x g(x, theta)||) summed over data-parallel ranks."""
    value, gx, _ = problem.upper_grads(x, theta)
    return float(problem.parallel.sum(value.detach())), problem.parallel.norm(gx)


def adjoint_solve(problem, theta, x, gx, q0=None, *, tol, max_iter=10_000) -> CGResult:
    """CG on A(x~) q = grad_x g(x~) to ||A q~ - grad_x g|| <= ``tol``: the adjoint, over
    data-parallel ranks, with the problem's preconditioner."""
    return conjugate_gradient(lambda v: problem.lower_hvp(x, theta, v), gx, q0, tol=tol,
                              max_iter=max_iter, dot=problem.parallel.dot,
                              preconditioner=problem.lower_preconditioner(theta, x))


def hypergradient(problem, theta, eps, delta, *, x0=None, q0=None, lower_max_iter=10_000,
                  cg_max_iter=10_000, constants=None, smoothness=None,
                  bound=True) -> Hypergradient:
    """Inexact hypergradient of F at theta with accuracies (eps, delta).

    Parameters
    ----------
    problem : BilevelProblem
    theta : torch.Tensor
        Flat 1-D hyperparameters.
    eps : float
        Requested lower-level accuracy ||x~ - x*|| <= eps.
    delta : float
        Requested CG residual ||A q~ - grad_x g|| <= delta.
    x0, q0 : torch.Tensor, optional
        Warm starts for the lower-level solve and CG.
    constants : BoundConstants, optional
        Reuse constants computed earlier (else ``problem.bound_constants``).
    smoothness : float, optional
        A previous lower solution's estimate of L (``LowerSolution.smoothness``),
        for problems without a ``smoothness``: the solve starts from it.
    bound : bool
        Compute omega (default).  False skips the constants and local rates behind it
        (on a filter bank's batch they can cost as much as the solves): omega is then
        inf, ``certified`` False and ``constants`` None -- for a caller whose decisions
        never read omega (:class:`bilevel.outer.MinibatchMAID`'s ``batch_bounds``).

    Returns
    -------
    Hypergradient
        If a solve stops short of its tolerance, omega is computed with the
        accuracy actually certified, so the bound stays true.
    """
    theta = check_theta(problem, theta)
    for label, value in (("eps", eps), ("delta", delta)):
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"{problem.name}: {label} must be a positive number, got {value}")
    if q0 is not None:
        check_x(problem, q0, theta, "q0")
    lower = solve_lower(problem, theta, eps, x0, lower_max_iter, smoothness)
    x = lower.x
    if not lower.converged and eps < certifiable_accuracy(problem, theta, x):
        warnings.warn(f"{problem.name}: eps={eps:.1e} is below what {x.dtype} can certify "
                      f"here ({certifiable_accuracy(problem, theta, x):.1e}, rounding of "
                      "grad_x h): the lower-level certificate stalled above it",
                      AccuracyWarning, stacklevel=2)
    value, gx, gt = problem.upper_grads(x, theta)
    linear = adjoint_solve(problem, theta, x, gx, q0, tol=delta, max_iter=cg_max_iter)
    # Over data-parallel ranks, g and the theta-gradient are sums of the ranks' parts.
    grad = problem.parallel.sum(gt - problem.mixed_vjp(x, theta, linear.q))
    value = problem.parallel.sum(value.detach())
    if not bound:
        return Hypergradient(grad=grad, upper_value=float(value), error_bound=math.inf,
                             certified=False, lower=lower, linear=linear,
                             upper_grad_norm=problem.parallel.norm(gx), constants=None,
                             cost=lower.cost + linear.cost + Cost(oracle_calls=2))
    new_constants = constants is None
    if new_constants:
        constants = problem.bound_constants(theta, x)
    mu = check_mu(problem, theta)
    gx_norm = problem.parallel.norm(gx)
    eps, rho = lower.error_bound, linear.residual_norm
    # The exact adjoint A(x~)^{-1} grad_x g lies within rho / mu of q~, and q* within
    # adjoint_radius of it: the balls on which the problem's local rates must hold.
    along = problem.hessian_lipschitz_along(theta, x, linear.q, rho / mu, x_radius=eps)
    along_at_q = None if along is None else problem.hessian_lipschitz_along(
        theta, x, linear.q, 0.0, x_radius=eps)
    mixed = None
    if math.isfinite(eps) and math.isfinite(rho):
        radius = constants.adjoint_radius(eps, rho, mu, gx_norm, along)
        mixed = problem.mixed_lipschitz_along(theta, x, linear.q, radius, x_radius=eps)
    # K from solves holds at this x~ and eps only: it enters this omega, never the
    # constants handed back for reuse.
    solved, solved_cost, bound = None, Cost(), constants
    if problem.sensitivity_by_solves:
        solved, solved_cost = solved_sensitivity(problem, theta, x, eps, mu, constants,
                                                 max_iter=cg_max_iter)
        bound = dataclasses.replace(constants, sensitivity=min(
            solved, math.inf if constants.sensitivity is None else constants.sensitivity))
    terms = bound.omega_terms(eps, rho, mu, gx_norm, hessian_along=along,
                              adjoint_norm=problem.parallel.norm(linear.q), mixed_along=mixed,
                              hessian_at_q=along_at_q)
    omega = sum(terms.values())
    if not torch.isfinite(grad).all() or not math.isfinite(omega):
        omega = math.inf
    # Besides the solves: g with its gradients and the mixed product (2), the constants,
    # and one call per local rate (the Hessian's twice: at radius rho / mu and at q~).
    calls = (2 + (constants.cost if new_constants else 0) + 2 * (along is not None)
             + (mixed is not None))
    return Hypergradient(grad=grad, upper_value=float(value), error_bound=omega,
                         certified=constants.certified, lower=lower, linear=linear,
                         upper_grad_norm=gx_norm, constants=constants, hessian_along=along,
                         mixed_along=mixed, sensitivity=solved, terms=terms,
                         cost=lower.cost + linear.cost + solved_cost + Cost(oracle_calls=calls))


def unrolled_hypergradient(problem, theta, iterations, x0=None, step=None):
    """Baseline: differentiate through ``iterations`` gradient steps on h.

    Memory grows linearly with ``iterations`` (the graph of every step is
    kept), unlike :func:`hypergradient`.  Returns (grad, g(x_K)).
    """
    theta = check_theta(problem, theta).detach().requires_grad_(True)
    if step is None:
        L = problem.smoothness(theta.detach())
        if L is None:
            raise ValueError(f"{problem.name}: unrolling needs smoothness(theta) or step")
        step = 1.0 / float(L)
    x = problem.initial_x(theta.detach()) if x0 is None else x0.detach()
    with torch.enable_grad():
        x = x.clone().requires_grad_(True)
        for _ in range(iterations):
            (g,) = torch.autograd.grad(problem.lower_objective(x, theta), x, create_graph=True)
            x = x - step * g
        value = problem.upper_objective(x, theta)
        (grad,) = torch.autograd.grad(value, theta)
    return grad, float(value.detach())
