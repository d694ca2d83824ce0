r"""Certified brackets on g(x*(theta)) to second order, through the adjoint.

g(x~) is within ||grad_x g(x~)|| e + L_g e^2 / 2 of g(x*) (:func:`bilevel.hypergradient.
upper_bounds`): first order in the lower-level error e >= ||x~ - x*||, so MAID's certified
line search asks for e about as small as the decrease it must prove.  The adjoint
q~ ~ A^{-1} grad_x g (A = grad_xx h(x~), CG residual rho) corrects the value to second
order, as a dual-weighted residual (docs/certificates.md, section 5):

    g(x*) = g(x~) - <q~, r> + E,   r = grad_x h(x~),
    |E| <= rho ||r|| / mu + M e^2 / 2 + L_g e^2 / 2,

with M the problem's :meth:`~bilevel.BilevelProblem.hessian_lipschitz_along` on the ball of
radius e around x~ and of radius rho / mu around q~ (for convex g the lower side needs no
L_g term).  Proof: with d = x* - x~, 0 = grad h(x*) = r + A d + R, R = int_0^1 (A(x~ + t d) -
A) d dt; g(x*) = g(x~) + <grad_x g, d> + R_g with |R_g| <= L_g e^2 / 2 (R_g >= 0 for convex g);
and, q = A^{-1} grad_x g the exact adjoint at x~ (||q - q~|| <= rho / mu),
<grad_x g, d> = <q, A d> = -<q, r> - <q, R>, where |<q - q~, r>| <= rho ||r|| / mu and
|<q, R>| <= int_0^1 ||(A(x~ + t d) - A) q|| ||d|| dt <= M e^2 / 2 (A symmetric).

The bracket returned is the intersection with the first-order one, never wider.  Where the
problem gives no ``hessian_lipschitz_along``, it is the first-order bracket.
"""
from __future__ import annotations

import math

from .contract import check_mu
from .cost import Cost
from .hypergradient import adjoint_solve, upper_bounds

#: The share of the first-order decrease step <z, d> that each of a trial's two slack terms
#: may take (the first-order bracket's 'matched' accuracy gives its one term a quarter).
SHARE = 1 / 32


def corrected_bounds(problem, theta, x, error_bound, value, gx_norm, q, residual, L_g, mu, M,
                     r=None):
    """(lower, upper) certified bounds on g(x*(theta)) (module docstring).

    ``x``: x~ with ||x~ - x*|| <= ``error_bound``; ``value``, ``gx_norm``: g(x~) and
    ||grad_x g(x~)|| (summed over data-parallel ranks); ``q``: the adjoint at x~ with
    certified residual ``residual``; ``mu``: the certified strong convexity at theta; ``M``:
    the problem's ``hessian_lipschitz_along(theta, x, q, residual / mu, x_radius=error_bound)``
    (None, or ``q`` None: the first-order bracket); ``r``: grad_x h(x~), if at hand.
    """
    convex = problem.upper_convex_in_x
    first = upper_bounds(value, gx_norm, error_bound, L_g, convex)
    if q is None or M is None or not all(math.isfinite(v) for v in (error_bound, residual,
                                                                     value, M)):
        return first
    r = problem.lower_grad(x, theta) if r is None else r
    parallel = problem.parallel
    centre = value - float(parallel.dot(q, r))
    slack = residual * parallel.norm(r) / mu + 0.5 * M * error_bound ** 2
    quad = 0.5 * L_g * error_bound ** 2
    lower = centre - slack - (0.0 if convex else quad)
    upper = centre + slack + quad
    if not (math.isfinite(lower) and math.isfinite(upper)):
        return first
    return max(first[0], lower), min(first[1], upper)


def hypergradient_bounds(problem, theta, hg):
    """:func:`corrected_bounds` from a hypergradient's own x~, adjoint and local rate M
    (``hg.hessian_along``, computed for omega at the same balls): no new solve or rate."""
    return corrected_bounds(problem, theta, hg.lower.x, hg.lower.error_bound, hg.upper_value,
                            hg.upper_grad_norm, hg.linear.q, hg.linear.residual_norm,
                            hg.constants.L_g, check_mu(problem, theta), hg.hessian_along)


def trial_bounds(problem, theta, solution, value, gx, L_g, mu, slack, q0=None,
                 max_iter=10_000):
    """(lower, upper, adjoint CG result) at a line-search trial: the adjoint solved to the
    residual at which its term rho ||r|| / mu is ``slack``, its local rate, then
    :func:`corrected_bounds`.  The CG result warm-starts the next hypergradient there."""
    x, e = solution.x, solution.error_bound
    r = problem.lower_grad(x, theta)
    r_norm, gx_norm = problem.parallel.norm(r), problem.parallel.norm(gx)
    tol = min(slack * mu / r_norm if r_norm > 0 else math.inf,
              gx_norm)  # at least the zero start's residual
    linear = adjoint_solve(problem, theta, x, gx, q0, tol=tol, max_iter=max_iter)
    M = problem.hessian_lipschitz_along(theta, x, linear.q, linear.residual_norm / mu,
                                        x_radius=e)
    lower, upper = corrected_bounds(problem, theta, x, e, value, gx_norm, linear.q,
                                    linear.residual_norm, L_g, mu, M, r=r)
    return lower, upper, linear


def accuracy_for(hg, decrease):
    """The lower-level accuracy e at which the second-order slack (M + L_g) e^2 / 2 is
    ``SHARE`` of ``decrease``, M the hypergradient's local rate (0 without one)."""
    M, L_g = hg.hessian_along, hg.constants.L_g
    if M is None or not math.isfinite(M) or M + L_g <= 0 or decrease <= 0:
        return 0.0
    return math.sqrt(SHARE * decrease / (M + L_g))


def for_search(problem, theta, hg, slope, cg_max_iter, first_order_accuracy, way="adjoint"):
    """What the certified line search needs (MAID's and maid_sgd's): (the certified lower
    bound on F(theta), trial accuracy (step -> e), the trial bracket (theta+, solution,
    step, the bound the test needs) -> (upper bound on F(theta+), Cost, adjoint or None)).

    At theta the bracket comes from the hypergradient (:func:`hypergradient_bounds`).  A
    trial's lower level is solved to the looser of ``first_order_accuracy(step)`` and
    :func:`accuracy_for` the first-order decrease step <z, d> (M read at theta), its adjoint
    to the residual at which rho ||r|| / mu is ``SHARE`` of it too -- only where the
    first-order bracket does not already decide the test.  ``way='first_order'`` (the
    outer methods' ``value_bounds``): the first-order lower bound, ``first_order_accuracy``
    and no bracket (the search's own first-order bound).
    """
    L_g, convex = hg.constants.L_g, problem.upper_convex_in_x
    if way == "first_order":
        lower_now, _ = upper_bounds(hg.upper_value, hg.upper_grad_norm, hg.lower.error_bound,
                                    L_g, convex)
        return lower_now, first_order_accuracy, None
    lower_now, _ = hypergradient_bounds(problem, theta, hg)

    def accuracy(step):
        return max(first_order_accuracy(step), accuracy_for(hg, step * slope))

    def bracket(trial, solution, step, needed):
        value, gx, _ = problem.upper_grads(solution.x, trial)
        value = float(problem.parallel.sum(value.detach()))
        lower, upper = upper_bounds(value, problem.parallel.norm(gx), solution.error_bound,
                                    L_g, convex)
        # No CG where the first-order bracket decides: it proves the decrease, or F there
        # provably exceeds what the test needs (no bracket inside it could pass).
        if upper <= needed or lower > needed:
            return upper, Cost(oracle_calls=1), None
        _, upper, adjoint = trial_bounds(problem, trial, solution, value, gx, L_g,
                                         check_mu(problem, trial), SHARE * step * slope,
                                         q0=hg.linear.q, max_iter=cg_max_iter)
        # g with its gradient, grad_x h, the local rate
        return upper, adjoint.cost + Cost(oracle_calls=3), adjoint.q

    return lower_now, accuracy, bracket
