"""L-BFGS directions from inexact hypergradients (docs/certificates.md, section 5).

MAID's line search proves F decreased whatever the direction d is, as long as
the decrease it demands, lam alpha <z, H z>, is positive: a curvature model H
that is positive definite changes where the search looks, never what an
accepted step certifies.  H is the L-BFGS inverse-Hessian model built from the
last accepted steps s = theta_{k+1} - theta_k and hypergradient differences
y = z_{k+1} - z_k (Nocedal and Wright, Numerical Optimization, 2nd ed.,
Algorithm 7.4).  On ill-conditioned objectives (a flat direction next to a
steep one: a regulariser's weight and its smoothing) steepest descent zig-zags
for tens of iterations where L-BFGS needs a few.
"""
from __future__ import annotations

import torch


def _dot(a, b) -> float:
    return float(torch.dot(a.flatten().double(), b.flatten().double()))


def add_pair(memory: tuple, s: torch.Tensor, y: torch.Tensor, size: int) -> tuple:
    """``memory`` with the pair (s, y) appended (oldest dropped beyond ``size``).

    A pair without positive curvature, s^T y <= 1e-10 ||s|| ||y|| (noise of the
    inexact hypergradients, or a nonconvex region), is skipped: it would make
    H indefinite.
    """
    sy = _dot(s, y)
    if not sy > 1e-10 * float(torch.linalg.vector_norm(s) * torch.linalg.vector_norm(y)):
        return memory
    return (memory + ((s.detach().clone(), y.detach().clone()),))[-size:]


def direction(memory: tuple, z: torch.Tensor) -> torch.Tensor:
    """H z by the two-loop recursion; H0 = (s^T y / y^T y) I from the latest pair.

    Every stored pair has s^T y > 0, so H is positive definite and <z, H z> > 0
    for z != 0.  With an empty memory, H = I (steepest descent).
    """
    if not memory:
        return z
    q, alphas = z.clone(), []
    for s, y in reversed(memory):
        a = _dot(s, q) / _dot(s, y)
        q = q - a * y
        alphas.append(a)
    s, y = memory[-1]
    r = (_dot(s, y) / _dot(y, y)) * q
    for (s, y), a in zip(memory, reversed(alphas), strict=True):
        b = _dot(y, r) / _dot(s, y)
        r = r + (a - b) * s
    return r
