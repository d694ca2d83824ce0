"""The learned linear-spline activation :class:`LinearSpline`, its regularisers and projections."""
from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from .functional import _check_grid, knots, linear_spline

INITS = ("relu", "leaky_relu", "identity", "absolute_value", "zero")


# ------------------------------------------------------------------ the module
@dataclasses.dataclass(frozen=True)
class SparsifyReport:
    """What :meth:`LinearSpline.sparsify_` did, per channel.

    Attributes
    ----------
    removed : torch.Tensor
        (C,) number of interior knots whose slope change was set to 0.
    active : torch.Tensor
        (C,) interior knots kept: those whose slope change was > tol before.  (Their
        slope changes after may differ, as their neighbours were flattened.)
    max_deviation : torch.Tensor
        (C,) sup over the real line of |sigma_new - sigma_old| (inf for a channel
        with no active knot whose two end slopes differed: see ``sparsify_``).
    max_deviation_grid : torch.Tensor
        (C,) the same sup over the grid interval [-R, R] only.
    bound : float
        The a-priori bound tol * T * (N - 1)^2 / 2 on ``max_deviation`` of any
        channel with an active knot.
    """

    removed: torch.Tensor
    active: torch.Tensor
    max_deviation: torch.Tensor
    max_deviation_grid: torch.Tensor
    bound: float


class LinearSpline(nn.Module):
    r"""One learned linear spline per channel, as an activation.

    Parameters
    ----------
    num_activations : int
        C, the number of channels (one spline each).
    num_knots : int
        N, odd and >= 3: the grid t_k = -R + k T is symmetric about 0.
    x_range : float
        R > 0; the knot spacing is T = 2R / (N - 1).  Outside [-R, R] each spline
        is extended linearly with its end slopes.
    init : {'relu', 'leaky_relu', 'identity', 'absolute_value', 'zero'}
        The starting function, sampled at the knots (exact: its kink at 0 is a knot).
    negative_slope : float
        Slope of 'leaky_relu' for t < 0.
    dtype, device
        Of the coefficients (float32 by default, like other torch modules).

    Notes
    -----
    Input shapes: the channel dimension is dim 1, i.e. (N, C, ...) for feature
    maps and (N, C) for the outputs of a linear layer (where dim 1 is the last
    dim).  A 1-D input is accepted when C == 1.  The output has the input's shape.

    The coefficients are the only parameter, ``coefficients`` of shape (C, N).
    Forward and backward run through :class:`SplineFunction`, whose memory is
    O(input) (no tensor indexed by knots and samples).

    Examples
    --------
    >>> act = LinearSpline(16, num_knots=21, x_range=3.0, init="relu")
    >>> y = act(torch.randn(8, 16))
    >>> penalty = act.tv2()            # sum over channels of TV(2)
    >>> act.lipschitz().max()          # Lipschitz constant of the worst channel
    """

    def __init__(self, num_activations: int, num_knots: int, x_range: float,
                 init: str = "relu", negative_slope: float = 0.01, dtype=None, device=None):
        super().__init__()
        _check_grid(num_knots, x_range)
        if int(num_activations) < 1:
            raise ValueError(f"num_activations must be >= 1, got {num_activations}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        self.num_activations, self.num_knots = int(num_activations), int(num_knots)
        self.x_range = float(x_range)
        self.init = init
        t = knots(self.num_knots, self.x_range, dtype=torch.float64)
        values = {"relu": t.clamp(min=0), "leaky_relu": torch.where(t > 0, t, negative_slope * t),
                  "identity": t, "absolute_value": t.abs(), "zero": torch.zeros_like(t)}[init]
        coeffs = values.expand(self.num_activations, -1).clone()
        dtype = torch.get_default_dtype() if dtype is None else dtype
        self.coefficients = nn.Parameter(coeffs.to(dtype=dtype, device=device))

    # -------------------------------------------------------------- the grid
    @property
    def T(self) -> float:
        """Knot spacing 2R / (N - 1)."""
        return 2 * self.x_range / (self.num_knots - 1)

    @property
    def grid(self) -> torch.Tensor:
        """The knots t_k, shape (N,)."""
        c = self.coefficients
        return knots(self.num_knots, self.x_range, dtype=c.dtype, device=c.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear_spline(x, self.coefficients, self.x_range)

    def extra_repr(self):
        return (f"num_activations={self.num_activations}, num_knots={self.num_knots}, "
                f"x_range={self.x_range}, init={self.init!r}")

    # ----------------------------------------------------------- functionals
    def slopes(self) -> torch.Tensor:
        """s_k = (c_{k+1} - c_k) / T, shape (C, N - 1); s_0 and s_{N-2} extend the ends."""
        return torch.diff(self.coefficients, dim=1) / self.T

    def slope_changes(self) -> torch.Tensor:
        """s_k - s_{k-1} = (c_{k+1} - 2 c_k + c_{k-1}) / T at the interior knots, (C, N - 2)."""
        return torch.diff(self.coefficients, n=2, dim=1) / self.T

    def tv2(self, per_channel: bool = False) -> torch.Tensor:
        """Second-order total variation sum_k |c_{k+1} - 2 c_k + c_{k-1}| / T.

        Summed over channels (a 0-d tensor, the usual penalty) unless
        ``per_channel`` (then shape (C,)).  Differentiable.
        """
        tv = self.slope_changes().abs().sum(dim=1)
        return tv if per_channel else tv.sum()

    def lipschitz(self, per_channel: bool = True) -> torch.Tensor:
        """Lipschitz constants max_k |c_{k+1} - c_k| / T: shape (C,), or the max if not
        ``per_channel``.  Exact for a linear spline (the sup of |sigma'|)."""
        lip = self.slopes().abs().amax(dim=1)
        return lip if per_channel else lip.max()

    def active_knots(self, tol: float = 1e-4) -> torch.Tensor:
        """Boolean mask (C, N - 2) of the interior knots whose |slope change| > tol."""
        return self.slope_changes().detach().abs() > tol

    def num_active_knots(self, tol: float = 1e-4) -> torch.Tensor:
        """Number of active interior knots per channel, shape (C,) (see :meth:`active_knots`)."""
        return self.active_knots(tol).sum(dim=1)

    # ----------------------------------------------------------- constraints
    @torch.no_grad()
    def project_slopes_(self, s_min: float, s_max: float, anchor: str = "zero"):
        r"""Enforce s_min <= s_k <= s_max for every slope, in place; returns self.

        Exactly which projection: write c in the coordinates (a, s), with a the
        anchor value (sigma(0) = c_{(N-1)/2} for ``anchor='zero'``, the mean of
        the coefficients for ``anchor='mean'``) and s the slopes; the map
        c -> (a, s) is linear and invertible.  The constraint is the box
        s in [s_min, s_max]^{N-1} with a free, and clamping s while keeping a is
        the Euclidean projection onto that box in (a, s) coordinates, i.e. the
        orthogonal projection for the norm ||c||^2 = a^2 + sum_k s_k^2.  (It is not
        the Euclidean projection in coefficient space.)  The coefficients are then
        re-integrated from a.  Like every projection it is idempotent (up to one
        rounding of the re-integration).  Monotone splines: ``s_min = 0``.
        """
        if not s_min <= s_max:
            raise ValueError(f"need s_min <= s_max, got {s_min} > {s_max}")
        c = self.coefficients
        s = self.slopes().clamp(s_min, s_max)
        new = torch.cat([torch.zeros_like(c[:, :1]), torch.cumsum(s * self.T, dim=1)], dim=1)
        if anchor == "zero":
            mid = self.num_knots // 2
            new += (c[:, mid] - new[:, mid]).unsqueeze(1)
        elif anchor == "mean":
            new += (c.mean(dim=1) - new.mean(dim=1)).unsqueeze(1)
        else:
            raise ValueError(f"anchor must be 'zero' or 'mean', got {anchor!r}")
        c.copy_(new)
        return self

    @torch.no_grad()
    def sparsify_(self, tol: float) -> SparsifyReport:
        r"""Remove the knots whose |slope change| <= tol, in place; report the deviation.

        The active knots (|s_k - s_{k-1}| > tol) are kept with their values.  An
        inactive knot gets the value that makes its slope change exactly 0:

        - between two active knots, the linear interpolation of their values;
        - left of the first active knot, the line through it with the left end
          slope s_0 (right of the last one, with the end slope s_{N-2}), so the
          extension beyond the grid keeps its slope and the deviation stays
          bounded on the whole real line.

        A channel with no active knot becomes the line through sigma(0) with the
        chord slope (c_{N-1} - c_0) / (2R); its deviation beyond the grid is
        unbounded if its end slopes differed (reported as inf in
        ``max_deviation``; ``max_deviation_grid`` is still finite).

        Both functions are piecewise linear with breakpoints on the grid and equal
        slopes beyond it, so the sup of their difference is attained at a knot:
        the reported deviation is exact.  A priori it is at most
        tol * T * (N - 1)^2 / 2 (slope changes <= tol accumulate over at most
        N - 1 intervals).
        """
        c = self.coefficients
        C, N = c.shape
        T, R = self.T, self.x_range
        t = self.grid
        old = c.clone()
        active = self.active_knots(tol)  # (C, N - 2): interior knots 1..N-2
        slopes = self.slopes()
        for ch in range(C):
            idx = (torch.nonzero(active[ch]).flatten() + 1).tolist()
            row = old[ch]
            if not idx:
                mid = N // 2
                c[ch] = row[mid] + (row[-1] - row[0]) / (2 * R) * t
                continue
            first, last = idx[0], idx[-1]
            c[ch, :first] = row[first] + slopes[ch, 0] * (t[:first] - t[first])
            c[ch, last + 1:] = row[last] + slopes[ch, -1] * (t[last + 1:] - t[last])
            for a, b in zip(idx[:-1], idx[1:], strict=True):
                w = (t[a:b + 1] - t[a]) / (t[b] - t[a])
                c[ch, a:b + 1] = row[a] + w * (row[b] - row[a])
        dev_grid = (c - old).abs().amax(dim=1)
        # Only a channel without active knots changes its end slopes (to the chord);
        # beyond the grid its deviation then grows without bound.
        chord = (old[:, -1] - old[:, 0]) / (2 * R)
        scale = 1e-12 * (1 + slopes.abs().amax(dim=1))
        end_change = torch.maximum((slopes[:, 0] - chord).abs(), (slopes[:, -1] - chord).abs())
        unbounded = ~active.any(dim=1) & (end_change > scale)
        dev = torch.where(unbounded, torch.full_like(dev_grid, math.inf), dev_grid)
        kept = active.sum(dim=1)
        return SparsifyReport(removed=(N - 2) - kept, active=kept, max_deviation=dev,
                              max_deviation_grid=dev_grid, bound=tol * T * (N - 1) ** 2 / 2)

