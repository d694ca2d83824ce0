"""Conjugate gradients that report the residual they certify."""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch

from .budget import charge
from .cost import Cost


@dataclasses.dataclass(frozen=True)
class CGResult:
    """Outcome of a conjugate-gradient solve of A q = b.

    Attributes
    ----------
    q : torch.Tensor
        The approximate solution.
    residual_norm : float
        ||A q - b||, recomputed from q at exit (not the recursive estimate).
    iterations : int
        Products with A, including the final residual check.
    converged : bool
        Whether residual_norm <= the requested tolerance.
    """

    q: torch.Tensor
    residual_norm: float
    iterations: int
    converged: bool

    @property
    def cost(self) -> Cost:
        return Cost(cg_iterations=self.iterations, oracle_calls=self.iterations)


#: :func:`solve_relative`'s default: the solve's error is at most 5% of its solution's norm.
RELATIVE_ACCURACY = 0.05


def solve_relative(matvec, b, mu, accuracy=RELATIVE_ACCURACY, *, x0=None, max_iter=1000,
                   dot=None, preconditioner=None) -> CGResult:
    """CG on A w = b (A >= mu I) to ||A w~ - b|| <= accuracy mu ||b||^3 / <b, A b>.

    By Cauchy-Schwarz ||b||^2 = <A^{1/2} b, A^{-1/2} b> <= (<b, A b> <b, A^{-1} b>)^{1/2}, so
    ||A^{-1} b|| >= <b, A^{-1} b> / ||b|| >= ||b||^3 / <b, A b>: the tolerance is at most
    accuracy mu ||A^{-1} b||, and the certified error ||w~ - A^{-1} b|| <= residual / mu at
    most ``accuracy`` times the solution's norm.  One product with A more than the result
    counts (the curvature <b, A b>).
    """
    _dot = _local_dot if dot is None else dot
    b_norm2 = float(_dot(b, b))
    tol = accuracy * mu * b_norm2 ** 1.5 / float(_dot(b, matvec(b)))
    return conjugate_gradient(matvec, b, x0, tol=tol, max_iter=max_iter, dot=dot,
                              preconditioner=preconditioner)


def _local_dot(a, b):
    return torch.sum(a * b)


def conjugate_gradient(matvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor,
                       x0: torch.Tensor | None = None, *, tol: float, max_iter: int = 1000,
                       dot: Callable | None = None,
                       preconditioner: torch.Tensor | None = None) -> CGResult:
    """Solve A q = b for symmetric positive definite A to ||A q - b|| <= tol.

    Tensors of any shape are treated as flat vectors.  The recursive residual of
    CG drifts from the true one in finite precision, so the exit test is
    confirmed on the true residual ``b - A q``; if that fails, CG restarts from
    the current q (counted) until ``max_iter`` products are spent.

    Parameters
    ----------
    matvec : callable
        q -> A q.
    b : torch.Tensor
        Right-hand side.
    x0 : torch.Tensor, optional
        Warm start (zeros if None).
    tol : float
        Absolute tolerance on the residual norm.
    max_iter : int
        Budget of products with A.
    dot : callable, optional
        Inner product (a, b) -> 0-d tensor; the default sums a * b.  Data-parallel
        solves pass one that also sums over ranks.
    preconditioner : torch.Tensor, optional
        A positive diagonal P shaped like b (an approximation of A's diagonal):
        preconditioned CG on P^{-1/2} A P^{-1/2}.  The exit test and the returned
        residual stay ||A q - b|| in the Euclidean norm, so the certificate does
        not depend on P; only the speed does.
    """
    if not (tol > 0 and math.isfinite(tol)):
        raise ValueError(f"conjugate_gradient: tol must be a positive number, got {tol}")
    _dot = _local_dot if dot is None else dot
    q = torch.zeros_like(b) if x0 is None else x0.clone()
    products = 0
    if x0 is None:
        r = b.clone()
    else:
        r = b - matvec(q)
        products += 1
        charge()
    def apply(res):
        return res if preconditioner is None else res / preconditioner

    z = apply(r)
    rz = _dot(r, z)
    rr = rz if preconditioner is None else _dot(r, r)
    p = z
    confirmed = True  # r is exact at the start
    while True:
        if math.sqrt(float(rr)) <= tol:
            if confirmed:
                break
            # The recursive residual drifts in finite precision: confirm on the
            # true one, and restart from q if they disagree.
            r = b - matvec(q)
            products += 1
            charge()
            z = apply(r)
            rz, p, confirmed = _dot(r, z), z, True
            rr = rz if preconditioner is None else _dot(r, r)
            continue
        if products >= max_iter or not torch.isfinite(rr):
            break
        Ap = matvec(p)
        products += 1
        charge()
        pAp = _dot(p, Ap)
        if not pAp > 0:  # A is not positive definite along p (or NaN)
            break
        step = rz / pAp
        q = q + step * p
        r = r - step * Ap
        z = apply(r)
        rz_new = _dot(r, z)
        p = z + (rz_new / rz) * p
        rr = rz_new if preconditioner is None else _dot(r, r)
        rz, confirmed = rz_new, False
    if not confirmed:
        r = b - matvec(q)
        products += 1
        charge()
    residual = math.sqrt(float(_dot(r, r)))
    return CGResult(q=q, residual_norm=residual, iterations=products,
                    converged=residual <= tol)
