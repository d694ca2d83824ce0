r"""A lower-level certificate through one Newton step: ||x~ - x*|| <= ||A(x~)^{-1} r|| + ...

The plain certificate ||r|| / mu (r = grad_x h(x~)) prices the error as if r pointed along
the flattest direction of h.  Exactly (docs/certificates.md, section 1), with
e = x~ - x*, H = A(x~) and A_bar the Hessian averaged over the segment [x*, x~]
(A_bar e = r, the mean value theorem for grad_x h):

    H e = r + (H - A_bar) e,   so   ||e|| <= ||H^{-1} r|| + ||(H - A_bar) e|| / mu,

and ||(H - A(x_t)) e|| <= M (1 - t) eps0 on the segment x_t = x* + t e, M the problem's
``hessian_lipschitz_along(theta, x~, 0, eps0, x_radius=eps0)`` (q' = e lies in the ball of
radius eps0 about 0, x_t within (1 - t) eps0 of x~), so ||(H - A_bar) e|| <= M eps0 / 2.
With s~ from CG on H s = r (residual t, ||s~ - H^{-1} r|| <= t / mu):

    ||e|| <= ||s~|| + t / mu + M eps0 / (2 mu),

the first two terms about the true error, the last quadratic in eps0.  Where the plain
bound reads mu and the error does not lie along the flattest direction (a reconstruction,
mu = gamma = 1e-3), this is 20 to 40 times sharper.  A problem without
``hessian_lipschitz_along`` keeps the plain bound.
"""
from __future__ import annotations

import dataclasses
import math

import torch

from .contract import check_mu
from .cost import Cost
from .linalg import solve_relative

#: Passes that recompute M on the smaller ball each bound certifies (each one oracle call).
REFINEMENTS = 4


def newton_bound(problem, theta, x, grad, mu, *, max_iter=10_000):
    """(bound, Newton step s~, cost): the certificate of the module docstring at x~ = ``x``.

    ``grad`` is grad_x h(x~).  The bound is never above the plain ||grad|| / mu, which is
    returned as is (with no step) where the problem has no local Hessian rate or where the
    Newton bound does not beat it.
    """
    r_norm = problem.parallel.norm(grad)
    plain = r_norm / mu
    if r_norm == 0.0 or not math.isfinite(plain):
        return plain, None, Cost()
    M = problem.hessian_lipschitz_along(theta, x, torch.zeros_like(x), plain, x_radius=plain)
    cost = Cost(oracle_calls=1)
    if M is None or not math.isfinite(M) or M * plain / (2 * mu) >= plain:
        return plain, None, cost
    # CG's error is at most 5% of ||H^{-1} r|| (linalg.solve_relative).
    step = solve_relative(lambda v: problem.lower_hvp(x, theta, v), grad, mu,
                          max_iter=max_iter, dot=problem.parallel.dot,
                          preconditioner=problem.lower_preconditioner(theta, x))
    cost = cost + step.cost + Cost(oracle_calls=1)
    newton = problem.parallel.norm(step.q) + step.residual_norm / mu
    bound = newton + M * plain / (2 * mu)
    if bound >= plain:
        return plain, None, cost
    for _ in range(REFINEMENTS):  # the ball of radius bound holds x* now: M shrinks with it
        M = problem.hessian_lipschitz_along(theta, x, torch.zeros_like(x), bound,
                                            x_radius=bound)
        cost = cost + Cost(oracle_calls=1)
        if M is None or not math.isfinite(M) or newton + M * bound / (2 * mu) > 0.9 * bound:
            break
        bound = newton + M * bound / (2 * mu)
    return bound * (1 + 1e-12), step.q, cost


def solve_certified_by_newton(problem, theta, tol, x0=None, max_iter=10_000, **options):
    """``problem.solve_lower`` to ``tol`` as usual, then certified by :func:`newton_bound`.

    The solver still stops on ||grad|| / mu <= tol: stopping on the Newton certificate
    instead (asking the solver for tol times the ratio last seen) was measured dearer for
    MAID on reconstructions (docs/certificates.md, section 1), so the sharper bound is
    reported, not spent.
    """
    lower = problem.solve_lower(theta, tol, x0=x0, max_iter=max_iter, **options)
    if not math.isfinite(lower.error_bound):
        return lower
    grad = problem.lower_grad(lower.x, theta)
    bound, _, cost = newton_bound(problem, theta, lower.x, grad, check_mu(problem, theta),
                                  max_iter=max_iter)
    bound = min(bound, lower.error_bound)
    return dataclasses.replace(lower, error_bound=bound, converged=bound <= tol,
                               evaluations=lower.evaluations + 1,
                               certificate_cost=lower.certificate_cost + cost)
