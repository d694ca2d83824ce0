r"""A learned convex ridge regularizer for denoising (Goujon et al.; docs/problems.md).

Lower level, for N images x_i of size H x W:

    h(x, theta) = sum_i [ 1/2 ||x_i - y_i||^2 + alpha sum_k sum_p psi_k((K_k x_i)_p) ],
    alpha = e^{theta_0},

with K_k the 'valid' correlation with a zero-mean s x s filter c_k (``conv2d``; its
exact adjoint :func:`bilevel_problems.filter_bank.correlate_adjoint`) and psi_k a convex
potential whose derivative sigma_k = psi_k' is a learned monotone spline:

- The slopes s_kj, j = 0..N-2, of a linear spline on the grid of
  :func:`bilevel.nn.splines.knots` (N odd knots on [-R, R], spacing T) are
  s_kj = s_max * sigmoid(q_kj): theta stays unconstrained, the slopes stay in
  (0, s_max), so psi_k is convex and the lower level is strongly convex.
- The spline's kinks would make psi_k'' (the Hessian) discontinuous and psi'''
  a sum of Diracs: finite differences at a kink fail and the Hessian has no
  Lipschitz constant.  So sigma_k is the linear spline *averaged over a window
  of width T* (:func:`bilevel.nn.splines.potential_tables`): psi_k'' is then the
  continuous piecewise-linear interpolation of the slopes at the interval
  midpoints, psi_k'' in [min_j s_kj, max_j s_kj], |psi_k'''| <= max_j
  |s_kj - s_k(j-1)| / T, and |sigma_k - spline| <= T max_j |s_kj - s_k(j-1)| / 8.
- psi_k(0) = psi_k'(0) = 0 (sigma_k passes through 0 at 0, psi_k >= 0); sigma_k
  is not forced to be odd (the potentials may be asymmetric).

Filters are zero-mean by construction: c_k = r_k - mean(r_k).  Upper level:
g(x) = mean_i 1/2 ||x_i - x_i^true||^2.  theta is flat:
[theta_0, r_1..r_K (s^2 each, row-major), q_1..q_K (N - 1 each)], so
1 + K s^2 + K (N - 1) entries (141 for K = 4, s = 5, N = 11).

Derivatives (closed forms for the gradient and the Hessian; the mixed product
by one reverse pass through the closed-form gradient, never a double backward):

    grad_x h = x - y + alpha sum_k K_k^T psi_k'(K_k x)
    A v      = v + alpha sum_k K_k^T (psi_k''(K_k x) K_k v)
    B^T w    = d/dtheta <grad_x h(x, theta), w>        (autograd, first order)

Certified: mu = 1 (psi_k'' >= 0); L = 1 + alpha ||sum_k smax_k c_k * c_k||_1
<= 1 + alpha s_max sum_k ||c_k||_1^2 (smax_k = max_j s_kj, c * c the
autocorrelation; see :meth:`RidgeRegularizer.smoothness`); the constants of the
hypergradient bound and the local rates in :mod:`bilevel_problems.ridge_bounds`.
"""
from __future__ import annotations

import math

import torch

from bilevel.nn.splines import evaluate_potential, knots, potential_tables

from . import filter_bank, params
from .denoising import DenoisingProblem
from .ridge_bounds import RidgeBounds


def _logit(p):
    return math.log(p / (1 - p))


def _same(kept, tensor):
    """Whether ``tensor`` has the kept one's shape, dtype, device and values (a tensor changed
    in place is another one)."""
    return (kept.shape == tensor.shape and kept.dtype == tensor.dtype
            and kept.device == tensor.device and torch.equal(kept, tensor))


class RidgeRegularizer(RidgeBounds, DenoisingProblem):
    """Bilevel learning of a convex ridge regularizer: filters and spline potentials.

    Parameters
    ----------
    num_filters : int
        K (default 4).
    filter_size : int
        s (default 5).
    num_knots : int
        N, odd (default 11): N - 1 learned slopes per potential.
    x_range : float
        R: the spline grid is [-R, R] in filter-response units (default 0.3;
        unit-norm filters respond to noise of sigma = 0.1 with about 0.1).
        Beyond it psi_k'' is constant (the end slopes).
    s_max : float
        Upper bound of the slopes (default 1; alpha sets the overall scale).
    log_scale : float
        Starting theta_0.
    slope_init : (float, float)
        Starting slopes as fractions of s_max: the first inside the central
        window |t| <= ``init_width``, the second outside.  The default (0.9, 0.05)
        is a smoothed Huber-like potential, close to a TV-like start.
    init_width : float
        Half-width of that central window (default 0.06).
    start : {'dct', 'tv'}
        The starting filters: 'dct' (default) the DCT basis, every potential as
        ``slope_init``; 'tv' anisotropic TV: filters 0 and 1 the horizontal and
        vertical differences at the centre, their slopes 0.98 s_max inside the window
        and 0.001 s_max outside (Huber-like potentials, threshold ``init_width``),
        alpha such that alpha psi'(R) = ``tv_weight`` (TV's weight for responses
        beyond the window), and the other filters DCT ones switched off (slopes
        0.001 s_max) for learning to turn on.
    tv_weight : float
        TV's weight for ``start='tv'`` (default 0.07: TV's best at sigma 25/255).
    border : int
        Train on the noisy images mirrored by ``border`` pixels, g on the crop
        (:class:`~bilevel_problems.denoising.DenoisingProblem`; s - 1 is what
        :meth:`denoise` uses on new images).  Default 0.
    n_images, size, sigma, seed, source, images, noisy, shard, dtype, device
        The training images (:class:`~bilevel_problems.denoising.DenoisingProblem`):
        4 of 32 x 32 by default, float64 on the CPU; ``seed`` also draws random
        filters beyond the DCT basis.
    """

    name = "ridge_regularizer"
    quality_tol = denoise_tol = 1e-4

    def __init__(self, n_images=4, size=32, sigma=0.1, seed=0, num_filters=4, filter_size=5,
                 num_knots=11, x_range=0.3, s_max=1.0, log_scale=-1.0,
                 slope_init=(0.9, 0.05), init_width=0.06, start="dct", tv_weight=0.07,
                 border=0, source=None, images=None, noisy=None, shard=None,
                 dtype=torch.float64, device="cpu"):
        to = dict(dtype=dtype, device=device)
        name = self.name
        self.K, self.s = filter_bank.check_bank(name, num_filters, filter_size)
        self.boundary_pad = self.s - 1  # DenoisingProblem.boundary_pad
        num_knots = params.integer(name, "num_knots", num_knots, 3)
        if num_knots % 2 == 0:
            raise ValueError(f"{name}: num_knots must be an odd integer >= 3 (so that 0 is a "
                             f"knot), got {num_knots}")
        x_range = params.number(name, "x_range", x_range, positive=True)
        s_max = params.number(name, "s_max", s_max, positive=True)
        log_scale = params.number(name, "log_scale", log_scale)
        init_width = params.number(name, "init_width", init_width, minimum=0.0)
        slope_init = params.vector(name, "slope_init", slope_init, 2,
                                   "(fractions in (0, 1))").tolist()
        if not all(0 < f < 1 for f in slope_init):
            raise ValueError(f"{name}: slope_init must be 2 fractions in (0, 1), got "
                             f"{tuple(slope_init)}")
        start = params.choice(name, "start", start, ("dct", "tv"))
        tv_weight = params.number(name, "tv_weight", tv_weight, positive=True)
        if start == "tv" and self.K < 2:
            raise ValueError(f"{name}: start='tv' needs num_filters >= 2, got {self.K}")
        super().__init__(n_images=n_images, size=size, sigma=sigma, seed=seed, source=source,
                         images=images, noisy=noisy, shard=shard, min_size=self.s, border=border,
                         **to)
        self.num_knots, self.x_range, self.s_max = int(num_knots), float(x_range), float(s_max)
        self.M = self.num_knots - 1
        self.T = 2 * self.x_range / self.M
        grid = knots(self.num_knots, self.x_range)
        mid = (grid[:-1] + grid[1:]) / 2
        q = torch.where(mid.abs() <= init_width, _logit(slope_init[0]), _logit(slope_init[1]))
        filters = filter_bank.dct_filters(self.s, self.K, seed=seed)
        q = q.repeat(self.K, 1)
        if start == "tv":
            filters, q, log_scale = self._tv_start(filters, mid.abs() <= init_width, tv_weight)
        self.theta0 = torch.cat([torch.tensor([float(log_scale)], dtype=torch.float64),
                                 filters.flatten(), q.flatten()]).to(**to)

    def _tv_start(self, filters, window, weight):
        """(filters, q, theta_0) of the 'tv' start (class docstring)."""
        c = (self.s - 1) // 2
        filters = filters.clone()
        for k, (di, dj) in enumerate(((0, 1), (1, 0))):
            filters[k] = 0.0
            filters[k, c, c], filters[k, c + di, c + dj] = -1.0, 1.0
        off = torch.full((self.M,), _logit(1e-3), dtype=torch.float64)
        on = torch.where(window, _logit(0.98), _logit(1e-3))
        q = torch.stack([on, on] + [off] * (self.K - 2))
        tables = potential_tables(self.s_max * torch.sigmoid(on)[None], self.x_range)
        end = torch.tensor([[[self.x_range]]], dtype=torch.float64)
        (slope_end,) = evaluate_potential(end, tables, self.x_range, (1,))
        return filters, q, math.log(weight / float(slope_end))

    # ------------------------------------------------------------ parameters
    @property
    def dim_theta(self) -> int:
        """1 + K s^2 + K (N - 1)."""
        return 1 + self.K * self.s ** 2 + self.K * self.M

    def params(self, theta):
        """(alpha, zero-mean filters (K, s^2), slopes (K, N - 1), d slopes / d q (K, N - 1))."""
        if theta.shape != (self.dim_theta,):
            raise ValueError(f"{self.name}: theta must have {self.dim_theta} entries, got "
                             f"shape {tuple(theta.shape)}")
        K, s2 = self.K, self.s ** 2
        filters = filter_bank.zero_mean(theta[1:1 + K * s2].view(K, s2))
        sig = torch.sigmoid(theta[1 + K * s2:].view(K, self.M))
        return torch.exp(theta[0]), filters, self.s_max * sig, self.s_max * sig * (1 - sig)

    def filters(self, theta):
        """The zero-mean filters (K, s, s)."""
        return self.params(theta)[1].view(self.K, self.s, self.s)

    def slopes(self, theta):
        """The spline slopes s_kj in (0, s_max), shape (K, N - 1)."""
        return self.params(theta)[2]

    def slope_fractions(self, alpha, C, slopes):
        """sigmoid(q) for the given slopes (the inverse of :meth:`params` in q): s / s_max."""
        return slopes / self.s_max

    def potentials(self, theta, t, orders=(0, 1)):
        """psi_k^{(r)}(t) for a 1-D tensor t, each of shape (K, len(t)) (for plots)."""
        tables = potential_tables(self.slopes(theta), self.x_range)
        z = t.view(1, 1, -1).expand(1, self.K, -1).contiguous()
        return tuple(v[0] for v in evaluate_potential(z, tables, self.x_range, orders))

    def _conv(self, x, C):
        return filter_bank.correlate(x, C, self.s)

    def _conv_adjoint(self, z, C):
        return filter_bank.correlate_adjoint(z, C, self.s)

    def _model(self, theta):
        """(alpha, filters, slopes, spline tables) of ``theta``.  Without a graph to build
        they are kept for the last theta seen: a lower-level solve and its CG ask for one
        theta hundreds of times, and the weakly convex ridge's floor costs an FFT a call
        (2.2 against 2.6 s a 24x13x13 training iteration: benchmarks/iteration_profile.py)."""
        if theta.requires_grad and torch.is_grad_enabled():
            alpha, C, slopes, _ = self.params(theta)
            return alpha, C, slopes, potential_tables(slopes, self.x_range)
        kept = getattr(self, "_kept_model", None)
        if kept is not None and _same(kept[0], theta):
            return kept[1]
        with torch.no_grad():
            alpha, C, slopes, _ = self.params(theta)
            model = (alpha, C, slopes, potential_tables(slopes, self.x_range))
        self._kept_model = (theta.detach().clone(), model)
        return model

    #: psi''(K x) is kept for the last x and theta when it has at most this many entries
    #: (256 MiB of float64): the CG of a hypergradient asks for its Hessian products at one x.
    KEPT_CURVATURES = 2 ** 25

    def _curvatures(self, x, model):
        """psi_k''((K_k x)_p), (N, K, H', W'), for ``model`` from :meth:`_model` (no graph)."""
        kept = getattr(self, "_kept_curvatures", None)
        if kept is not None and kept[1] is model and _same(kept[0], x):
            return kept[2]
        _, C, _, tables = model

        def curvature(xs):
            return evaluate_potential(self._conv(xs, C), tables, self.x_range, (2,))[0]
        d2 = filter_bank.by_samples(curvature, self.K, self.s, x)
        if d2.numel() <= self.KEPT_CURVATURES:
            self._kept_curvatures = (x.detach().clone(), model, d2)
        return d2

    def _grad(self, x, theta):
        """grad_x h as a torch function of theta (differentiable in theta)."""
        alpha, C, slopes, tables = self._model(theta)

        def regularizer_grad(xs):
            (d1,) = evaluate_potential(self._conv(xs, C), tables, self.x_range, (1,))
            return self._conv_adjoint(d1, C)
        return x - self.noisy + alpha * filter_bank.by_samples(regularizer_grad, self.K,
                                                               self.s, x)

    # ------------------------------------------------------------ the contract
    def lower_objective(self, x, theta):
        alpha, C, slopes, _ = self.params(theta)
        tables = potential_tables(slopes, self.x_range)
        (psi,) = evaluate_potential(self._conv(x, C), tables, self.x_range, (0,))
        return 0.5 * torch.sum((x - self.noisy) ** 2) + alpha * psi.sum()

    def smoothness(self, theta):
        r"""Certified L = 1 + alpha ||sum_k smax_k c_k \star c_k||_1.

        The Hessian is I + alpha sum_k K_k^T D_k K_k with 0 <= D_k <= smax_k
        (psi_k'' lies between the smallest and largest slope), and
        K_k^T K_k <= C_k^T C_k (full convolution on the zero-extended image), whose
        weighted sum is the convolution with sum_k smax_k (c_k \star c_k): its norm
        is at most that kernel's l1 norm
        (:func:`bilevel_problems.filter_bank.weighted_kernel_norm`).  Never more than
        the cruder 1 + alpha s_max sum_k ||c_k||_1^2 (Young's inequality).
        """
        alpha, C, slopes, _ = self.params(theta.detach())
        auto = filter_bank.autocorrelations(C, self.s)
        # clamp: a no-op here; a subclass whose slopes may be negative reads the same bound
        weights = slopes.amax(dim=1).clamp(min=0)
        return 1.0 + float(alpha) * filter_bank.weighted_kernel_norm(auto, weights)

    # ------------------------------------------------------------ closed forms
    def lower_grad(self, x, theta):
        with torch.no_grad():
            return self._grad(x, theta)

    def lower_hvp(self, x, theta, v):
        with torch.no_grad():
            model = self._model(theta)
            alpha, C = model[:2]

            def curvature(vs, d2):
                return self._conv_adjoint(d2 * self._conv(vs, C), C)
            return v + alpha * filter_bank.by_samples(curvature, self.K, self.s, v,
                                                      self._curvatures(x, model))

    def mixed_vjp(self, x, theta, w):
        with torch.enable_grad():
            theta = theta.detach().requires_grad_(True)
            (bw,) = torch.autograd.grad(torch.sum(self._grad(x.detach(), theta) * w), theta)
        return bw

    # ------------------------------------------------------------------ usage
    def on_images(self, images, theta):
        return RidgeRegularizer(images=images, noisy=images, num_filters=self.K,
                                filter_size=self.s, num_knots=self.num_knots,
                                x_range=self.x_range, s_max=self.s_max, dtype=self.dtype,
                                device=self.device)


ENTRY = dict(
    factory=RidgeRegularizer,
    description="Convex ridge regularizer denoising: learn K zero-mean filters and monotone "
                "spline potentials (box-smoothed, C^2), certified mu = 1, L and bound constants",
    test_params=dict(n_images=2, size=12, num_filters=2, filter_size=3, num_knots=5,
                     x_range=0.2),
)
