r"""Carry a learned (weakly) convex ridge into a larger bank, and wake its switched-off filters.

Training from the TV start (``ridge_regularizer[start=tv]``) leaves the filters that start
switched off (slopes 0.001 s_max) switched off: a filter's gradient is proportional to its
potential's slopes and the slopes' to sigmoid'(q) = 0.001, so after an hour of L-BFGS the
learned 16-filter ridges still act through two filters (README, "Training denoisers").
:func:`embed` starts a new run from a learned one instead of from scratch:

- the learned K' filters of side s' go, centred, into the first K' windows of a bank of K >= K'
  filters of side s >= s' (s - s' even; zero padding, so every response of the new filter is
  one of the old, on a valid region (s - s') / 2 pixels narrower on each side), with their
  slopes and alpha;
- the other filters keep the new problem's start (DCT filters, switched off under
  ``start='tv'``), so with ``wake=None`` the new h is the learned one up to those filters'
  0.001 s_max quadratics (and the narrower valid region);
- ``wake=f`` switches on every filter whose slopes all lie below f s_max: unit norm, slopes f
  s_max inside the start's central window |t| <= ``init_width`` and 0.001 s_max outside (a
  weak Huber-like potential), so the gradient reaches it.

Both work in slope space: the slopes wanted are mapped to the new problem's parameters, for
the weakly convex ridge through its floor -beta, which depends on the whole bank (more or
larger filters raise Lambda and lift the floor towards 0); a carried concave slope below the
new floor cannot be represented and is refused, with the slope and the floor named.
"""
from __future__ import annotations

import torch

from bilevel.nn.splines import knots

from .ridge_regularizer import RidgeRegularizer

OFF = 1e-3  # the slope fraction of a switched-off potential (the TV start's)


def embed(problem, source, theta, wake=None, init_width=0.06):
    """theta for ``problem`` holding the learned ridge (``source``, ``theta``) (module doc).

    Parameters
    ----------
    problem, source : RidgeRegularizer or WeaklyConvexRidge
        The new problem (K filters of side s) and the learned one (K' <= K, s' <= s, s - s'
        even), of the same class, with the same knots, range and s_max.
    theta : torch.Tensor
        The learned parameters, ``source.dim_theta`` entries.
    wake : float, optional
        A fraction in (0, 1): switch on the filters whose slopes all lie below wake s_max.
    init_width : float
        Half-width of the window where a woken potential is steep (the start's 0.06).
    """
    if not isinstance(problem, RidgeRegularizer) or type(source) is not type(problem):
        raise TypeError(f"embed: carries a ridge_regularizer or weakly_convex_ridge into one of "
                        f"the same class, got {type(source).__name__} -> "
                        f"{type(problem).__name__}")
    theta = torch.as_tensor(theta, dtype=torch.float64)
    if theta.shape != (source.dim_theta,):
        raise ValueError(f"embed: theta must have the source's {source.dim_theta} entries, "
                         f"got shape {tuple(theta.shape)}")
    differ = [f"{k} {getattr(source, k)} vs {getattr(problem, k)}"
              for k in ("num_knots", "x_range", "s_max")
              if getattr(source, k) != getattr(problem, k)]
    if differ:
        raise ValueError(f"embed: the potentials must share their grid: {'; '.join(differ)}")
    (K0, s0), (K, s) = (source.K, source.s), (problem.K, problem.s)
    if K0 > K or s0 > s or (s - s0) % 2:
        raise ValueError(f"embed: {K0} filters of side {s0} do not fit centred in {K} of side "
                         f"{s} (needs K' <= K, s' <= s, s - s' even)")
    if wake is not None and not 0 < wake < 1:
        raise ValueError(f"embed: wake must be a fraction in (0, 1), got {wake!r}")
    start = problem.theta0.detach().to(torch.float64)
    alpha = torch.exp(theta[0])
    filters = problem.filters(start).clone()
    slopes = problem.slopes(start).clone()
    o = (s - s0) // 2
    # The zero-mean filters, not the raw ones: padding keeps their mean at zero, so the new
    # problem's zero-mean projection leaves them as they are.
    filters[:K0] = 0.0
    filters[:K0, o:o + s0, o:o + s0] = source.filters(theta)
    slopes[:K0] = source.slopes(theta)
    if wake is not None:
        asleep = (slopes.max(dim=1).values < wake * problem.s_max).nonzero().flatten()
        grid = knots(problem.num_knots, problem.x_range)
        window = ((grid[:-1] + grid[1:]) / 2).abs() <= init_width
        slopes[asleep] = problem.s_max * torch.where(window, wake, OFF).to(slopes)
        norms = filters[asleep].flatten(1).norm(dim=1).clamp_min(1e-12)
        filters[asleep] = filters[asleep] / norms[:, None, None]
    try:
        q = torch.logit(problem.slope_fractions(alpha, filters.flatten(1), slopes))
    except ValueError as exc:  # more or larger filters raise Lambda and lift the floor
        raise ValueError(f"embed: the new bank's {exc}") from None
    return torch.cat([theta[:1], filters.flatten(), q.flatten()]).to(problem.theta0)
