r"""Carry a learned (weakly) convex ridge into a larger bank, and wake its switched-off filters.

Training from the TV start (``ridge_regularizer[start=tv]``) leaves the filters that start
switched off (slopes 0.001 s_max) switched off: a filter's gradient is proportional to its
potential's slopes and the slopes' to sigmoid'(q) = 0.001, so after an hour of L-BFGS the
learned 16-filter ridges still act through two filters (docs/denoisers.md).
:func:`embed` starts a new run from a learned one instead of from scratch:

- the learned K' filters of side s' go, centred, into the first K' windows of a bank of K >= K'
  filters of side s >= s' (s - s' even; zero padding, so every response of the new filter is
  one of the old, on a valid region (s - s') / 2 pixels narrower on each side), with their
  slopes and alpha;
- the other filters keep the new problem's start (DCT filters, switched off under
  ``start='tv'``), so with ``wake=None`` the new h is the learned one up to those filters'
  0.001 s_max quadratics (and the narrower valid region);
- ``wake=f`` switches on every filter whose slopes all lie below f s_max: norm ``wake_norm``
  (1 by default), slopes f s_max inside the start's central window |t| <= ``init_width`` and
  0.001 s_max outside (a weak Huber-like potential), so the gradient reaches it.  For the
  weakly convex ridge a small ``wake_norm`` keeps the floor where the learned filters put it:
  24 unit-norm filters woken next to the learned 24x7x7 bank (norms 0.23 to 1.18) would lift
  it 4.6-fold, above the learned concave slopes (refused); at norm 0.2 it rises by 7%.
  Woken filters learn slowly: on the 48-filter model none of the 24 became concave;
- ``split=F`` doubles the bank instead: each learned filter and a copy perturbed by F times
  its norm, each with half of the learned potential, so h is kept up to O(F) and the new
  filters start as active as the learned ones (the floor halves with the doubled bank,
  and so do the halved concave slopes).

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


def embed(problem, source, theta, wake=None, init_width=0.06, wake_norm=1.0, split=None,
          seed=0):
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
    wake_norm : float
        The norm of a woken filter (its direction is the start's or the learned one's).
    split : float, optional
        Split every learned filter in two (K = 2 K'): filter k + K' is filter k plus a random
        zero-mean perturbation of ``split`` times its norm (drawn with ``seed``), and both
        potentials carry half of psi_k, so that h moves only by the perturbation (not at all
        with ``split=0``, where the two halves would learn alike).  Unlike woken filters, the
        new ones start as active as the learned: the same concave tails, at half depth, below
        a floor that the doubled bank halves too.
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
    _check_fit("embed", problem, source)
    if wake is not None and not 0 < wake < 1:
        raise ValueError(f"embed: wake must be a fraction in (0, 1), got {wake!r}")
    if not 0 < wake_norm < float("inf"):
        raise ValueError(f"embed: wake_norm must be positive and finite, got {wake_norm!r}")
    if split is not None:
        if not 0 <= split < float("inf") or wake is not None:
            raise ValueError(f"embed: split must be a finite number >= 0, without wake; got "
                             f"split={split!r}, wake={wake!r}")
        if problem.K != 2 * source.K:
            raise ValueError(f"embed: split carries {source.K} filters into twice as many, "
                             f"got {problem.K}")
    start = problem.theta0.detach().to(torch.float64)
    alpha = torch.exp(theta[0])
    filters = problem.filters(start).clone()
    slopes = problem.slopes(start).clone()
    # The zero-mean filters, not the raw ones: padding keeps their mean at zero, so the new
    # problem's zero-mean projection leaves them as they are.
    _centre(filters, source.filters(theta))
    slopes[:source.K] = source.slopes(theta)
    if split is not None:
        _split(filters, slopes, source.K, split, seed)
    if wake is not None:
        asleep = (slopes.max(dim=1).values < wake * problem.s_max).nonzero().flatten()
        grid = knots(problem.num_knots, problem.x_range)
        window = ((grid[:-1] + grid[1:]) / 2).abs() <= init_width
        slopes[asleep] = problem.s_max * torch.where(window, wake, OFF).to(slopes)
        norms = filters[asleep].flatten(1).norm(dim=1).clamp_min(1e-12)
        filters[asleep] = filters[asleep] * (wake_norm / norms[:, None, None])
    try:
        q = torch.logit(problem.slope_fractions(alpha, filters.flatten(1), slopes))
    except ValueError as exc:  # more or larger filters raise Lambda and lift the floor
        raise ValueError(f"embed: the new bank's {exc}") from None
    return torch.cat([theta[:1], filters.flatten(), q.flatten()]).to(problem.theta0)


def rescale(problem, theta, factor):
    r"""theta for ``problem`` whose regularizer is ``factor`` times the one of ``theta``.

    alpha sum_k psi_k becomes (factor alpha) sum_k psi_k: the filters and the slopes stay,
    and the slopes are mapped back to parameters at the new alpha (for the weakly convex
    ridge the floor beta = rho / (alpha Lambda) moves with alpha).  The use: a start at
    another noise level sigma for a model learned at sigma_0.  A MAP reading (prior
    exp(-R / sigma_0^2)) says factor (sigma / sigma_0)^2; TV's best weight, and these
    ridges' (TV-like, near-l1 potentials), scale more like sigma / sigma_0.  Measured on
    ``wcrr_rho095_sigma25`` carried to sigma 15 (24 training crops 40x40, tol 1e-2): factor
    0.36 29.98 dB, 0.5 31.28, 0.6 31.57, 0.7 31.53, 1 30.91 (a one-off run, docs/problems.md).
    factor > 1 raises the weakly convex ridge's floor; a concave slope it would cut
    is refused (ValueError).
    """
    if not isinstance(problem, RidgeRegularizer):
        raise TypeError(f"rescale: scales a ridge_regularizer or weakly_convex_ridge, got "
                        f"{type(problem).__name__}")
    if not 0 < factor < float("inf"):
        raise ValueError(f"rescale: factor must be positive and finite, got {factor!r}")
    theta = torch.as_tensor(theta, dtype=torch.float64)
    alpha = torch.exp(theta[0]) * factor
    try:
        q = torch.logit(problem.slope_fractions(alpha, problem.filters(theta).flatten(1),
                                                problem.slopes(theta)))
    except ValueError as exc:
        raise ValueError(f"rescale by {factor:g}: {exc}") from None
    return torch.cat([alpha.log().view(1), theta[1:1 + problem.K * problem.s ** 2],
                      q.flatten()]).to(problem.theta0)


def from_fields_of_experts(problem, source, theta, peak=0.9, floor=1e-7):
    r"""theta for a (weakly) convex ridge ``problem`` holding a learned field of experts.

    The expert alpha_k phi_{nu_k}(c_k^T x), phi_nu(t) = sqrt(t^2 + nu^2), is, on the unit filter
    u_k = c_k / ||c_k||, the potential a_k phi_{n_k}(u_k^T x) with a_k = alpha_k ||c_k|| and
    n_k = nu_k / ||c_k|| (the expert's kink in unit-filter units).  So filter k of the ridge is
    u_k (centred, zero-padded into the ridge's side s), and its slopes are those of the linear
    spline that interpolates psi_k' = a_k phi_{n_k}' / alpha at the knots:

        s_kj = a_k (phi_{n_k}'(t_(j+1)) - phi_{n_k}'(t_j)) / (alpha T),

    the mean of psi_k'' over interval j; the ridge then smooths that spline over one knot
    spacing T (:func:`bilevel.nn.splines.potential_tables`), so the carried kink is about
    T wide where the expert's is n_k, and beyond x_range the potential continues with its end
    slope.  alpha puts the steepest slope at ``peak`` s_max.  Slopes below ``floor`` s_max
    are raised to it (sigmoid(q) must stay inside (0, 1)); every raised slope adds curvature
    to a tail that the expert keeps flat.

    Measured on ``foe24x5c5_sigma25`` (n_k 0.0007 to 0.003) and BSD68 test045 at sigma 25
    (FoE 31.615 dB): x_range 0.6, 201 knots (T = 0.006) 31.239 dB; T = 0.002 31.562; x_range
    0.3, 601 knots (T = 0.001) 31.602, each with floor 1e-7.  On test046 (FoE 25.437 dB) floor
    1e-7 at T = 0.006 gives 25.434 and floor 1e-4 at T = 0.002 25.400: there the raised tails
    cost more than the coarser grid (one-off runs, not a committed benchmark).  The learned
    kinks are that sharp,
    and the ridge solves as stiffly: 17 s (T = 0.006) to 65 s (T = 0.001) for the image
    where the FoE takes 7 s (one thread).
    """
    _check_fit("from_fields_of_experts", problem, source)
    if not (0 < peak < 1 and 0 < floor < peak):
        raise ValueError(f"from_fields_of_experts: needs 0 < floor < peak < 1, got "
                         f"peak={peak!r}, floor={floor!r}")
    theta = torch.as_tensor(theta, dtype=torch.float64)
    experts = source.params(theta)
    norms = experts.filters.norm(dim=1)
    a, n = experts.alpha * norms, experts.nu / norms
    grid = knots(problem.num_knots, problem.x_range)
    derivative = grid / torch.sqrt(grid ** 2 + n[:, None] ** 2)  # phi_{n_k}'(t_j)
    raw = a[:, None] * derivative.diff(dim=1) / problem.T  # alpha * slopes
    alpha = raw.max() / (peak * problem.s_max)
    start = problem.theta0.detach().to(torch.float64)
    filters = problem.filters(start).clone()
    filters = filters / filters.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None]
    _centre(filters, (experts.filters / norms[:, None]).view(source.K, source.s, source.s))
    slopes = torch.full((problem.K, problem.M), floor * problem.s_max, dtype=torch.float64)
    slopes[:source.K] = torch.clamp(raw / alpha, min=floor * problem.s_max)
    q = torch.logit(problem.slope_fractions(alpha, filters.flatten(1), slopes))
    return torch.cat([alpha.log().view(1), filters.flatten(), q.flatten()]).to(problem.theta0)


def _split(filters, slopes, K0, size, seed):
    """Filters K0..2 K0 - 1 become the first K0 plus zero-mean noise of ``size`` times their
    norms, and every potential half of the learned one (in place; ``embed``'s ``split``)."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(filters[:K0].shape, generator=gen, dtype=filters.dtype)
    noise = noise - noise.mean(dim=(1, 2), keepdim=True)
    noise = noise / noise.flatten(1).norm(dim=1).clamp_min(1e-300)[:, None, None]
    norms = filters[:K0].flatten(1).norm(dim=1)[:, None, None]
    filters[K0:] = filters[:K0] + size * norms * noise
    slopes[:K0] = slopes[:K0] / 2
    slopes[K0:] = slopes[:K0]


def _check_fit(name, problem, source):
    """Refuse a source bank (K' filters of side s') that does not fit centred in the
    problem's (K of side s)."""
    (K0, s0), (K, s) = (source.K, source.s), (problem.K, problem.s)
    if K0 > K or s0 > s or (s - s0) % 2:
        raise ValueError(f"{name}: {K0} filters of side {s0} do not fit centred in {K} of "
                         f"side {s} (needs K' <= K, s' <= s, s - s' even)")


def _centre(bank, learned):
    """Put the learned filters (K', s', s') centred and zero-padded into the first K'
    windows of ``bank`` (K, s, s), in place."""
    K0, s0, s = learned.shape[0], learned.shape[-1], bank.shape[-1]
    o = (s - s0) // 2
    bank[:K0] = 0.0
    bank[:K0, o:o + s0, o:o + s0] = learned
