"""Self-checks of a forward operator: the dot test, the norm check, and its dense matrix.

Run them on your own operator before learning with it:

    >>> from bilevel.operators import adjoint_test, norm_check
    >>> assert adjoint_test(op, (2, 32, 32)).passed        # A^T is the adjoint of A
    >>> assert norm_check(op, (1, 32, 32)).passed          # norm_squared() >= ||A||^2

Both draw their random vectors from a generator seeded with ``seed``, in float64 on
the CPU (then cast), so that a seed gives the same vectors everywhere.
"""
from __future__ import annotations

import dataclasses
import math

import torch

from bilevel.numerics import power_iteration

from .base import LinearOperator


def _real_dot(a: torch.Tensor, b: torch.Tensor) -> float:
    """<a, b> = Re sum conj(a) b: the real inner product, complex entries as pairs."""
    return float(torch.vdot(a.reshape(-1), b.reshape(-1)).real)


def _random_like(like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    shape = (*like.shape, 2) if like.is_complex() else like.shape
    draw = torch.randn(shape, generator=generator, dtype=torch.float64)
    if like.is_complex():
        draw = torch.view_as_complex(draw)
    return draw.to(device=like.device, dtype=like.dtype)


@dataclasses.dataclass(frozen=True)
class AdjointTest:
    """The dot test: |<A x, y> - <x, A^T y>| relative to the inner products.

    Attributes
    ----------
    relative_error : float
        The largest over the trials of |<A x, y> - <x, A^T y>| / max(|<A x, y>|,
        |<x, A^T y>|), x and y standard Gaussian.
    tolerance : float
    passed : bool
        relative_error <= tolerance.
    """

    relative_error: float
    tolerance: float
    passed: bool


def adjoint_test(op: LinearOperator, shape, *, dtype=torch.float64, device="cpu", trials=3,
                 seed=0, tolerance=None) -> AdjointTest:
    """Check that ``op.A_adjoint`` is the adjoint of ``op.A`` on images of ``shape``.

    The measurements y are drawn shaped and typed like A x (complex measurements
    get complex y).  ``tolerance`` defaults to 1e-10 in float64 and 1e-4 otherwise.
    """
    if tolerance is None:
        tolerance = 1e-10 if dtype == torch.float64 else 1e-4
    generator = torch.Generator().manual_seed(seed)
    worst = 0.0
    for _ in range(trials):
        x = torch.randn(shape, generator=generator, dtype=torch.float64)
        x = x.to(device=device, dtype=dtype)
        Ax = op.A(x)
        y = _random_like(Ax, generator)
        forward, backward = _real_dot(Ax, y), _real_dot(x, op.A_adjoint(y))
        scale = max(abs(forward), abs(backward))
        if scale == 0.0:  # A x = 0 and A^T y = 0: both sides agree
            continue
        worst = max(worst, abs(forward - backward) / scale)
    if math.isnan(worst):
        worst = math.inf
    return AdjointTest(worst, tolerance, worst <= tolerance)


@dataclasses.dataclass(frozen=True)
class NormCheck:
    """The operator's bounds against power-iteration estimates of the spectrum of A^T A.

    Attributes
    ----------
    bound : float
        ``op.norm_squared()``.
    certified : bool
        ``op.norm_certified``.
    estimate : float
        The power-iteration estimate of ||A||^2, at most ||A||^2 in exact
        arithmetic: the bound must be at least this.
    ratio : float
        bound / estimate (1 for an exact bound, once the iteration has converged).
    gram_lower_bound : float
        ``op.gram_lower_bound()``.
    gram_estimate : float
        When gram_lower_bound > 0, an upper estimate of lambda_min(A^T A), from power
        iteration on bound I - A^T A; the lower bound must be at most this.  NaN
        when gram_lower_bound is 0 (nothing to check).
    passed : bool
        Both comparisons hold, up to a relative ``slack`` for rounding.
    """

    bound: float
    certified: bool
    estimate: float
    ratio: float
    gram_lower_bound: float
    gram_estimate: float
    passed: bool


def norm_check(op: LinearOperator, shape, *, dtype=torch.float64, device="cpu", max_iter=500,
               rtol=1e-10, seed=0, slack=1e-10) -> NormCheck:
    """Compare ``op.norm_squared()`` and ``op.gram_lower_bound()`` with power iteration.

    Power iteration on A^T A from a random unit vector, ``max_iter`` steps or until
    ||A^T A v|| grows by less than ``rtol``.  It approaches ||A||^2 from below, so a
    bound under the estimate (beyond ``slack``) is wrong; a bound far above it is
    loose, or the iteration has not converged (see ``ratio``).
    """
    generator = torch.Generator().manual_seed(seed)
    start = torch.randn(shape, generator=generator, dtype=torch.float64)
    start = (start / torch.linalg.vector_norm(start)).to(device=device, dtype=dtype)
    top = power_iteration(op.A_adjoint_A, start, max_iter, rtol=rtol)
    bound, lower = op.norm_squared(), op.gram_lower_bound()
    passed = top.value <= bound * (1 + slack)
    gram_estimate = math.nan
    if lower > 0:
        # lambda_max(bound I - A^T A) = bound - lambda_min(A^T A) >= the estimate below.
        shifted = power_iteration(lambda v: bound * v - op.A_adjoint_A(v), start, max_iter,
                                  rtol=rtol)
        gram_estimate = bound - shifted.value
        passed = passed and lower <= gram_estimate + slack * bound
    ratio = bound / top.value if top.value > 0 else math.inf
    return NormCheck(bound, op.norm_certified, top.value, ratio, lower, gram_estimate, passed)


def dense_matrix(op: LinearOperator, image_shape, *, dtype=torch.float64) -> torch.Tensor:
    """The matrix of ``op`` on images (H, W), built column by column: (m, H W).

    For complex measurements the rows are the real parts, then the imaginary parts
    (A as a real map to R^2m).  H W applications of A: for tiny sizes only.
    """
    n = math.prod(image_shape)
    columns = []
    for j in range(n):
        basis = torch.zeros(n, dtype=dtype)
        basis[j] = 1.0
        column = op.A(basis.reshape(1, *image_shape)).reshape(-1)
        if column.is_complex():
            column = torch.cat([column.real, column.imag])
        columns.append(column)
    return torch.stack(columns, dim=1)
