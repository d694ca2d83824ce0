r"""A certified bound on the solution map's derivative ||A^{-1} B||, from dim(theta) CG solves.

The hypergradient bound (:mod:`bilevel.constants`) multiplies three of its terms by
K >= ||A(x')^{-1} B(x~)|| for every x' within eps of x~.  Its default ||B|| / mu reads the
Hessian's smallest eigenvalue over all of x-space; where theta has few entries, B has few
columns b_j and A^{-1} B can be computed instead (docs/certificates.md, "The sensitivity
by solves").  With W~ = (w~_j) the CG solutions of A(x~) w_j = b_j, residuals r_j, and
W* = A(x~)^{-1} B:

    ||W*|| <= ||W~|| + ||R||_F / mu                        (||w*_j - w~_j|| <= ||r_j|| / mu),
    A(x')^{-1} B = W* + A(x')^{-1} (A(x~) - A(x')) W*      (A(x~) W* = B),
    ||(A(x~) - A(x')) W*|| <= (sum_j M_j^2)^{1/2} ||x' - x~||,

M_j the problem's ``hessian_lipschitz_along`` at w~_j with radius ||r_j|| / mu (else
L_Ainv: ||(A(x')^{-1} - A(x~)^{-1}) B|| <= L_Ainv eps ||B||).  Hence

    K = ||W~|| + ||R||_F / mu + min((sum_j M_j^2)^{1/2} / mu, L_Ainv ||B||) eps,

a proof whenever mu and the local rates are.  On a blurred reconstruction (mu = gamma =
1e-3, the Hessian's smallest eigenvalue 0.014) ||A^{-1} B|| is 0.35 where ||B|| / mu is 47.
"""
from __future__ import annotations

import math

import torch

from .cost import Cost
from .linalg import solve_relative


def mixed_columns(problem, x, theta):
    """The columns b_j = B e_j of B = d/dtheta grad_x h(x, theta), x-shaped, one per entry.

    The problem's own ``mixed_columns`` when it has one; otherwise the derivative in w of
    the linear map w -> B^T w (its ``mixed_vjp`` if differentiable in w, else autograd
    through ``lower_objective`` twice).
    """
    own = getattr(problem, "mixed_columns", None)
    if own is not None:
        return [b.detach() for b in own(x, theta)]
    with torch.enable_grad():
        w = torch.zeros_like(x, requires_grad=True)
        bt = problem.mixed_vjp(x.detach(), theta.detach(), w)
        if not bt.requires_grad:  # a B^T w computed without a graph in w (the default)
            live_x = x.detach().requires_grad_(True)
            live_theta = theta.detach().requires_grad_(True)
            grad = problem._lower_grad_graph(live_x, live_theta)
            (bt,) = torch.autograd.grad(grad, live_theta, grad_outputs=w, create_graph=True)
        columns = []
        for j in range(bt.numel()):
            (b,) = torch.autograd.grad(bt.flatten()[j], w, retain_graph=True,
                                       allow_unused=True)
            columns.append(torch.zeros_like(x) if b is None else b.detach())
    return columns


def solved_sensitivity(problem, theta, x, eps, mu, constants, *, max_iter=10_000):
    """(K, cost): the bound of the module docstring at x~ = ``x`` within ``eps`` of x*.

    ``constants`` gives ||B|| and L_Ainv for the fallback of the eps term.  K is inf where
    it cannot be bounded (a solve that does not reach a finite residual, eps infinite).
    """
    if not math.isfinite(eps):
        return math.inf, Cost()
    dot = problem.parallel.dot
    preconditioner = problem.lower_preconditioner(theta, x)
    cost = Cost(oracle_calls=1)  # the columns
    # The outer methods call this at nearby (theta, x~) again and again: the last solutions
    # are warm starts (any start is valid; the residual is checked at x~).
    warm = problem.__dict__.setdefault("_sensitivity_warm", {})
    solutions, residuals, rates = [], [], []
    for j, b in enumerate(mixed_columns(problem, x, theta)):
        if float(dot(b, b)) == 0.0:
            continue  # a hyperparameter that h ignores here: w = 0 exactly
        start = warm.get(j)
        # Each solve's error is at most 5% of ||w*_j|| (linalg.solve_relative): the residual
        # term adds at most 0.05 sqrt(dim theta) ||W*|| to K.
        solve = solve_relative(lambda v: problem.lower_hvp(x, theta, v), b, mu,
                               x0=start if start is not None and start.shape == b.shape else None,
                               max_iter=max_iter, dot=dot, preconditioner=preconditioner)
        warm[j] = solve.q.detach()
        cost = cost + solve.cost + Cost(oracle_calls=1)
        rate = problem.hessian_lipschitz_along(theta, x, solve.q, solve.residual_norm / mu,
                                               x_radius=eps)
        cost = cost + Cost(oracle_calls=int(rate is not None))
        solutions.append(solve.q)
        residuals.append(solve.residual_norm)
        rates.append(math.inf if rate is None else rate)
    if not solutions:
        return 0.0, cost
    gram = torch.tensor([[float(dot(u, v)) for v in solutions] for u in solutions],
                        dtype=torch.float64)
    w_norm = math.sqrt(max(float(torch.linalg.eigvalsh(gram).max()), 0.0))
    residual = math.sqrt(sum(r * r for r in residuals)) / mu
    move = min(math.sqrt(sum(m * m for m in rates)) / mu, constants.L_Ainv * constants.B_norm)
    K = (w_norm + residual + move * eps) * (1 + 1e-10)
    return (K if math.isfinite(K) else math.inf), cost
