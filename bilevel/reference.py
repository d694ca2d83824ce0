"""An independent high-accuracy reference for small instances: x*, q* and grad F by dense Newton.

The solvers of the library stop as soon as a certificate holds; to measure how
tight those certificates are one needs the exact quantities they bound.  For
small problems (x with a few thousand entries at most) the Hessian of h fits
in memory, so x* is polished by Newton's method on the dense Hessian until the
gradient of h is at rounding level, and the adjoint q* = A(x*)^{-1} grad_x g(x*)
is a dense solve instead of conjugate gradients.  Nothing here uses a bound
constant, CG or a certificate, so a bug in those cannot hide in the reference.
"""
from __future__ import annotations

import dataclasses
import math

import torch

from .contract import check_mu, check_theta
from .numerics import damped_newton

#: Largest number of entries of x for which a dense Hessian is built: n Hessian-vector
#: products and n^2 floats (5000 entries: 200 MB in float64).
MAX_ENTRIES = 5000


@dataclasses.dataclass(frozen=True)
class ReferenceSolution:
    """x*, q* and grad F at one theta, to (nearly) working precision.

    Attributes
    ----------
    x : torch.Tensor
        The lower-level minimiser x*(theta), shaped like ``initial_x``.
    q : torch.Tensor
        The adjoint A(x*)^{-1} grad_x g(x*, theta), shaped like x.
    grad : torch.Tensor
        grad F(theta) = grad_theta g(x*) - B(x*)^T q*.
    value : float
        F(theta) = g(x*, theta).
    newton_steps : int
        Newton steps taken after the first-order warm start.
    grad_norm : float
        ||grad_x h(x, theta)|| at the returned x.
    error_bound : float
        grad_norm / mu: a certified bound on the distance of ``x`` to the true x*.
    converged : bool
        Whether grad_norm reached ``tol * max(1, ||x||)``.
    """

    x: torch.Tensor
    q: torch.Tensor
    grad: torch.Tensor
    value: float
    newton_steps: int
    grad_norm: float
    error_bound: float
    converged: bool


def _check_size(problem, x):
    if x.numel() > MAX_ENTRIES:
        raise ValueError(f"{problem.name}: the dense reference is for small instances; x has "
                         f"{x.numel()} entries (at most {MAX_ENTRIES})")


def dense_hessian(problem, x, theta) -> torch.Tensor:
    """The n x n Hessian of h in x (x flattened), column by column from ``lower_hvp``.

    Parameters
    ----------
    problem : BilevelProblem
    x, theta : torch.Tensor
        The point; x has at most :data:`MAX_ENTRIES` entries (else ValueError).

    Returns
    -------
    torch.Tensor
        (n, n), symmetrised: the columns carry independent rounding errors, and
        the solves of :func:`reference_solution` assume a symmetric matrix.
    """
    _check_size(problem, x)
    eye = torch.eye(x.numel(), dtype=x.dtype, device=x.device)
    H = torch.stack([problem.lower_hvp(x, theta, e.view_as(x)).reshape(-1) for e in eye], dim=1)
    return 0.5 * (H + H.T)


def _norm(t):
    return float(torch.linalg.vector_norm(t))


def reference_solution(problem, theta, *, tol=1e-13, max_newton=50) -> ReferenceSolution:
    """x*, q* and grad F at ``theta`` by damped Newton and dense solves.

    Parameters
    ----------
    problem : BilevelProblem
        In one process (no data-parallel sharding), x with at most
        :data:`MAX_ENTRIES` entries; float64 for reference-quality results.
    theta : torch.Tensor
    tol : float
        Newton stops once ||grad_x h|| <= tol * max(1, ||x||).
    max_newton : int
        Most Newton steps.

    Returns
    -------
    ReferenceSolution
        ``converged`` is False when Newton (:func:`bilevel.numerics.damped_newton`)
        stopped on ``max_newton`` or because rounding kept it from getting closer;
        ``error_bound`` still says how far x may be.
    """
    theta = check_theta(problem, theta).detach()
    _check_size(problem, problem.initial_x(theta))
    mu = check_mu(problem, theta)
    # Newton converges quadratically only near x*: a first-order solve gets there.
    x = problem.solve_lower(theta, 1e-6, max_iter=200_000).x.detach()

    def direction(point, grad, _grad_norm):
        H = dense_hessian(problem, point, theta)
        return torch.linalg.solve(H, grad.reshape(-1)).view_as(point), point.numel()

    run = damped_newton(x, lambda point: problem.lower_grad(point, theta),
                        lambda point: float(problem.lower_objective(point, theta)), direction,
                        converged=lambda point, norm: norm <= tol * max(1.0, _norm(point)),
                        max_steps=max_newton)
    x, gnorm, converged = run.x, run.grad_norm, run.converged

    value, gx, gt = problem.upper_grads(x, theta)
    q = torch.linalg.solve(dense_hessian(problem, x, theta), gx.reshape(-1)).view_as(x)
    grad_F = gt - problem.mixed_vjp(x, theta, q)
    error = gnorm / mu if math.isfinite(gnorm) else math.inf
    return ReferenceSolution(x=x, q=q, grad=grad_F, value=float(value), newton_steps=run.steps,
                             grad_norm=gnorm, error_bound=error, converged=converged)
