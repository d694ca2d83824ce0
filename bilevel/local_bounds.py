r"""Sums over the terms of the lower-level error, bounded with two budgets.

Many lower levels are h(x) = 1/2 ||x - y||^2 + sum_p phi_p((K x)_p) with convex
phi_p (TV: K = D, fields of experts: K = the filters).  The error
e = x~ - x* is then known in two ways, not one:

- Euclidean budget: ||K e||^2 = sum_p |d_p|^2 <= C1 = ||K||^2 eps^2 (d = K e);
- energy budget: r = grad_x h(x~) = A_bar e with A_bar the Hessian averaged over
  the segment [x*, x~] (mean value theorem for grad_x h).  If
  A_bar >= I + sum_p w_p K_p^T K_p (w_p a lower bound on the curvature of phi_p
  on the segment), then ||e||^2 + sum_p w_p |d_p|^2 <= e^T A_bar e = <e, r>
  <= ||e|| ||r||, so sum_p w_p |d_p|^2 <= C2 = min(eps ||r||, ||r||^2 / 4)
  (t ||r|| - t^2 <= ||r||^2 / 4).  :func:`energy_budget` computes C2.

Where phi is sharply curved (flat image regions under smoothed TV) the energy
budget pins d_p far below what the Euclidean one allows.  The worst-case error
is the one that puts all its mass where the quantity of interest is largest;
the two budgets together keep it out of the stiff pixels.  Both functions below
are weak-duality bounds: every multiplier they try gives a valid bound, and the
best of a grid of multipliers is returned.
"""
from __future__ import annotations

import math

import torch

_GRID = 48


def energy_budget(eps, r_norm, mu=1.0):
    """C2 = min(eps ||r||, ||r||^2 / (4 mu)): the energy budget of the module docstring.

    ``mu``: the part mu I of A_bar's lower bound (1 for denoising's identity; a
    reconstruction's gamma + the Gram bound of its operator), as
    t ||r|| - mu t^2 <= ||r||^2 / (4 mu).
    """
    return min(eps * r_norm, 0.25 * r_norm * r_norm / mu)


def _identity(t):
    return t


def _multipliers(ratio, reduce_max):
    """Multipliers beta in [0, inf) at which to evaluate a dual bound: 0, a geometric
    grid over the range of the ratios a_p / w_p (over all ranks), and past its top."""
    ratio = ratio[torch.isfinite(ratio) & (ratio > 0)].double()
    ends = torch.tensor([float(ratio.max()), -float(ratio.min())] if ratio.numel()
                        else [-math.inf, -math.inf], dtype=torch.float64)
    hi, lo = reduce_max(ends.to(ratio.device)).tolist()
    lo = -lo
    if not math.isfinite(hi):
        return torch.zeros(1, dtype=torch.float64)
    lo = max(lo, hi * 1e-12)
    grid = torch.logspace(math.log10(lo), math.log10(hi), _GRID, dtype=torch.float64)
    return torch.cat([torch.zeros(1, dtype=torch.float64), grid,
                      torch.tensor([2 * hi], dtype=torch.float64)])


def max_weighted_sum(a, w, C1, C2, reduce_max=_identity):
    """An upper bound on max sum_p a_p y_p over y >= 0 with sum y_p <= C1, sum w_p y_p <= C2.

    Weak duality: for any beta >= 0, a_p <= (a_p - beta w_p)^+ + beta w_p gives
    sum a_p y_p <= C1 max_p (a_p - beta w_p)^+ + beta C2.  With y_p = |d_p|^2
    this bounds sum_p a_p |d_p|^2.  a, w are tensors of the same shape, w >= 0;
    ``reduce_max`` takes a tensor's elementwise maximum over data-parallel ranks
    (the terms p may be spread over them), so every rank returns the same bound.
    """
    a, w = a.double().flatten(), w.double().flatten()
    betas = _multipliers(a / w, reduce_max).to(a.device)
    tops = torch.stack([(a - beta * w).clamp(min=0).max() for beta in betas])
    tops = reduce_max(tops).cpu()
    return max(float(torch.min(C1 * tops + betas.cpu() * C2)), 0.0)


def max_weighted_abs_sum(b, w, C1, C2, reduce_sum=_identity, reduce_max=_identity):
    """An upper bound on sum_p b_p |d_p| over d with sum |d_p|^2 <= C1, sum w_p |d_p|^2 <= C2.

    Cauchy-Schwarz with the weights v_p = 1 + beta w_p (any beta >= 0):
    sum b_p |d_p| <= (sum v_p |d_p|^2)^{1/2} (sum b_p^2 / v_p)^{1/2}
                  <= (C1 + beta C2)^{1/2} (sum b_p^2 / v_p)^{1/2}.
    ``reduce_sum`` / ``reduce_max`` combine the terms held by data-parallel ranks.
    """
    b, w = b.double().flatten(), w.double().flatten()
    b2 = b * b
    betas = _multipliers(1.0 / w, reduce_max).to(b.device)
    sums = reduce_sum(torch.stack([torch.sum(b2 / (1 + beta * w)) for beta in betas])).cpu()
    return float(torch.min(torch.sqrt((C1 + betas.cpu() * C2) * sums)))
