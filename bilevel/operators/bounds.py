"""Certified bounds computed in floating point: rounding margins, and Collatz-Wielandt.

The operators' norm bounds are exact formulas (||k||_1^2, max of a mask, ...) evaluated
in float64; each is enlarged by a margin that covers the rounding of that evaluation,
so that the returned float is >= the exact value for the operator's float64 data.

Rounding (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., 3.1-3.5):
with u = 2^-53 and gamma_n = n u / (1 - n u), a sum of n products of nonnegative
floats, in any order, with or without fused multiply-add, is within gamma_n of the
exact sum, relatively.  :func:`inflate` applies such a factor (with room to spare).

Collatz-Wielandt: for a symmetric matrix B >= 0 (entrywise) and any vector w > 0,

    lambda_max(B) <= max_j (B w)_j / w_j,

because D^-1 B D (D = diag(w)) is similar to B and its infinity norm, which bounds
the spectral radius, is that maximum.  Every w gives a bound; iterating w <- B w
(power iteration) makes it converge to lambda_max from above.  For a matrix A with
nonnegative entries (interpolation weights) this certifies ||A||^2 = lambda_max(A^T A)
from products with A and A^T alone.
"""
from __future__ import annotations

import math
from fractions import Fraction

import torch

_U = torch.finfo(torch.float64).eps / 2  # unit roundoff of float64
_TINY = torch.finfo(torch.float64).tiny


def inflate(value: float, n_terms: int) -> float:
    """``value`` enlarged by a relative 2 gamma_(n_terms + 4) (value >= 0).

    Covers the float64 rounding of sums of up to ``n_terms`` nonnegative products,
    a division and a square, with a factor 2 to spare.
    """
    n = n_terms + 4
    return value * (1 + 2 * n * _U / (1 - n * _U))


def float_above(q) -> float:
    """The smallest float64 >= the exact rational ``q`` (a Fraction, int or float)."""
    q = Fraction(q)
    x = float(q)  # rounded to nearest
    return x if Fraction(x) >= q else math.nextafter(x, math.inf)


def float_below(q) -> float:
    """The largest float64 <= the exact rational ``q``."""
    q = Fraction(q)
    x = float(q)
    return x if Fraction(x) <= q else math.nextafter(x, -math.inf)


def deflate(value: float, n_terms: int) -> float:
    """``value`` reduced by the relative margin of :func:`inflate` (value >= 0)."""
    n = n_terms + 4
    return value * (1 - 2 * n * _U / (1 - n * _U))


def collatz_wielandt_bound(gram_apply, size: int, *, row_terms: int, column_terms: int,
                           iterations: int = 100, rtol: float = 1e-6) -> float:
    """A certified upper bound of lambda_max(A^T A) for a matrix A with entries >= 0.

    Parameters
    ----------
    gram_apply : callable
        w -> A^T (A w) for float64 vectors w of length ``size``, computed as two
        matrix-vector products (sums of nonnegative terms).
    row_terms, column_terms : int
        The most nonzeros in a row and in a column of A: the number of terms in
        each computed sum, which sets the rounding margin.
    iterations : int
        Most products with A^T A; the first one (w = 1) already gives
        ||A||_1 ||A||_inf or less.
    rtol : float
        Stop once the bound improves by less than this, relatively.

    Returns the smallest bound over the iterates w, enlarged for rounding: each
    (A^T A w)_j is computed within gamma_row + gamma_column of its exact value.
    """
    w = torch.ones(size, dtype=torch.float64)
    best = float("inf")
    for _ in range(iterations):
        image = gram_apply(w)
        if bool((image < 0).any()):
            raise ValueError("the Collatz-Wielandt bound needs a matrix with entries >= 0")
        bound = float((image / w).max())
        improved = bound < best * (1 - rtol)
        best = min(best, bound)
        if not improved:
            break
        top = float(image.max())
        if top == 0.0:  # A = 0
            return 0.0
        # Keep w > 0: where A^T A w vanishes (a pixel no measurement sees, a zero
        # row of A^T A) any positive weight gives the ratio 0 there.
        w = torch.where(image > 0, (image / top).clamp_min(_TINY), torch.ones_like(image))
    return inflate(best, row_terms + column_terms)
