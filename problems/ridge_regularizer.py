r"""A learned convex ridge regularizer for denoising (Goujon et al.; docs/problems.md).

Lower level, for N images x_i of size H x W:

    h(x, theta) = sum_i [ 1/2 ||x_i - y_i||^2 + alpha sum_k sum_p psi_k((K_k x_i)_p) ],
    alpha = e^{theta_0},

with K_k the 'valid' correlation with a zero-mean s x s filter c_k (``conv2d``;
its exact adjoint is ``conv_transpose2d``) and psi_k a convex potential whose
derivative sigma_k = psi_k' is a learned monotone spline:

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
hypergradient bound in :meth:`RidgeRegularizer.bound_constants`.
"""
from __future__ import annotations

import math

import torch

from bilevel import BoundConstants
from bilevel.nn.splines import evaluate_potential, knots, potential_tables

from . import filter_bank, params
from .denoising import DenoisingProblem


def _logit(p):
    return math.log(p / (1 - p))


class RidgeRegularizer(DenoisingProblem):
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
    n_images, size, sigma, seed, source, images, noisy, dtype, device
        The training images (:class:`~bilevel_problems.denoising.DenoisingProblem`):
        4 of 32 x 32 by default, float64 on the CPU; ``seed`` also draws random
        filters beyond the DCT basis.
    """

    name = "ridge_regularizer"
    quality_tol = denoise_tol = 1e-4

    def __init__(self, n_images=4, size=32, sigma=0.1, seed=0, num_filters=4, filter_size=5,
                 num_knots=11, x_range=0.3, s_max=1.0, log_scale=-1.0,
                 slope_init=(0.9, 0.05), init_width=0.06, start="dct", tv_weight=0.07,
                 border=0, source=None, images=None, noisy=None, dtype=torch.float64,
                 device="cpu"):
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
                         images=images, noisy=noisy, min_size=self.s, border=border, **to)
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

    def _grad(self, x, theta):
        """grad_x h as a torch function of theta (differentiable in theta)."""
        alpha, C, slopes, _ = self.params(theta)
        tables = potential_tables(slopes, self.x_range)
        (d1,) = evaluate_potential(self._conv(x, C), tables, self.x_range, (1,))
        return x - self.noisy + alpha * self._conv_adjoint(d1, C)

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
            alpha, C, slopes, _ = self.params(theta)
            tables = potential_tables(slopes, self.x_range)
            (d2,) = evaluate_potential(self._conv(x, C), tables, self.x_range, (2,))
            return v + alpha * self._conv_adjoint(d2 * self._conv(v, C), C)

    def mixed_vjp(self, x, theta, w):
        with torch.enable_grad():
            theta = theta.detach().requires_grad_(True)
            (bw,) = torch.autograd.grad(torch.sum(self._grad(x.detach(), theta) * w), theta)
        return bw

    # ---------------------------------------------------------- bound constants
    def bound_constants(self, theta, x):
        r"""Certified constants of the hypergradient bound, in closed form.

        Notation: alpha, c_k, slopes s_kj, smax_k = max_j s_kj, s'_kj = d s_kj / d q_kj
        (<= s_max / 4), jmp_k = max_j |s_kj - s_k(j-1)| / T >= |psi_k'''|;
        z_k = K_k x; kappa_k = sqrt(||c_k \star c_k||_1) >= ||K_k||;
        ||K_c||, ||K_c^T|| <= ||c||_1 <= s ||c||_2; X(x): c -> K_c x restricted to
        zero-mean c, ||X(x)|| from the s^2 x s^2 Gram matrix of the patches
        (exact), and ||X(v)|| <= s ||v||; e = ||grad_x h(x)|| / mu >= ||x - x*||.

        - L_g = 1 / N.
        - ||B(x)||^2 <= sum of the squared norms of its column blocks:
          * theta_0: the vector b_0 = grad_x h - (x - y), exact;
          * filter k: delta -> alpha [K_{P delta}^T psi_k'(z_k) + K_k^T (psi_k''(z_k)
            o K_{P delta} x)], norm <= alpha (s ||psi_k'(z_k)|| + kappa_k
            max psi_k''(z_k) ||X(x)||);
          * slopes of k: d psi_k'(t) / d s_kj = phi_j(t) = int_0^t hat_j with hat_j >= 0
            and sum_j hat_j = 1, so sum_j |phi_j(t)| = |t| and the block has norm
            <= alpha kappa_k max_j s'_kj ||z_k||.
        - L_B on the ball of radius 2e about x (the filter block is linear in x,
          hence only locally Lipschitz): theta_0 column alpha sum_k kappa_k^2 smax_k;
          filter block k: l_k = alpha (2 s kappa_k smax_k + kappa_k jmp_k ||c_k||_2 Xbar),
          Xbar = ||X(x)|| + 2 s e; slope block k: alpha kappa_k^2 max_j s'_kj (the
          derivative in x is K_k^T diag(sum_j hat_j s'_kj dq_j) K_k); combined in
          squares.
        - B_norm = ||B(x)|| bound + 2 e L_B: valid for every point within 2e of x
          (x~, x* and MAID's warm-started refinements).
        - L_Ainv = L_A / mu^2 with L_A = alpha sum_k kappa_k^2 jmp_k ||c_k||_2:
          A(x1) - A(x2) = alpha sum_k K_k^T diag(psi_k''(z1) - psi_k''(z2)) K_k and
          ||K_k (x1 - x2)||_inf <= ||c_k||_2 ||x1 - x2||; global in x.
        - L_gtheta = 0.

        Every bound above reads |psi_k''| and max_j |s_kj| (here psi_k'', s_kj >= 0, so
        the same values): it then holds for slopes of either sign, which the weakly
        convex subclass (:mod:`bilevel_problems.weakly_convex_ridge`) relies on.
        """
        theta, x = theta.detach(), x.detach()
        alpha, C, slopes, dslopes = self.params(theta)
        alpha = float(alpha)
        s = self.s
        mu = self.strong_convexity(theta)
        tables = potential_tables(slopes, self.x_range)
        z = self._conv(x, C)
        d1, d2 = evaluate_potential(z, tables, self.x_range, (1, 2))
        grad_reg = alpha * self._conv_adjoint(d1, C)
        e = float(torch.linalg.vector_norm(x - self.noisy + grad_reg)) / mu

        _, gram = filter_bank.centred_patch_gram(filter_bank.patches(x, s))
        X_norm = filter_bank.top_singular_value(gram)

        auto = filter_bank.autocorrelations(C, s)
        kappa = filter_bank.operator_norm_bounds(auto).double().cpu()
        c2 = torch.linalg.vector_norm(C, dim=1).double().cpu()
        smax = slopes.abs().amax(dim=1).double().cpu()  # |.|: see the docstring
        dsmax = dslopes.amax(dim=1).double().cpu()
        jmp = self._slope_jumps(slopes).double().cpu()
        d1_norm = torch.linalg.vector_norm(d1, dim=(0, 2, 3)).double().cpu()
        d2_max = d2.abs().amax(dim=(0, 2, 3)).double().cpu()
        z_norm = torch.linalg.vector_norm(z, dim=(0, 2, 3)).double().cpu()

        block_0 = float(torch.sum(grad_reg.double() ** 2))
        block_r = float(torch.sum((alpha * (s * d1_norm + kappa * d2_max * X_norm)) ** 2))
        block_q = float(torch.sum((alpha * kappa * dsmax * z_norm) ** 2))
        B_here = math.sqrt(block_0 + block_r + block_q) * (1 + 1e-12)

        X_bar = X_norm + 2 * s * e
        col_0 = alpha * float(torch.sum(kappa ** 2 * smax))
        l_r = alpha * (2 * s * kappa * smax + kappa * jmp * c2 * X_bar)
        l_q = alpha * kappa ** 2 * dsmax
        L_B = math.sqrt(col_0 ** 2 + float(torch.sum(l_r ** 2)) + float(torch.sum(l_q ** 2)))
        L_A = alpha * float(torch.sum(kappa ** 2 * jmp * c2))
        return BoundConstants(L_g=1.0 / self.n_images, B_norm=B_here + 2 * L_B * e, L_B=L_B,
                              L_Ainv=L_A / mu ** 2, L_gtheta=0.0, certified=True, cost=2)

    def hessian_lipschitz_along(self, theta, x, q, radius, x_radius=math.inf):
        r"""M with ||(A(x1) - A(x2)) q'|| <= M ||x1 - x2|| for every x1, x2, ||q' - q|| <= radius.

        (A(x1) - A(x2)) q' = alpha sum_k K_k^T [(psi_k''(z1_k) - psi_k''(z2_k)) o K_k q'] and
        |psi_k''(t1) - psi_k''(t2)| <= jmp_k |t1 - t2| pixel by pixel (:meth:`bound_constants`),
        so the norm is at most alpha sum_k kappa_k jmp_k ||K_k (x1 - x2)||_2 ||K_k q'||_inf
        <= alpha sum_k kappa_k^2 jmp_k (||K_k q||_inf + ||c_k||_2 radius) ||x1 - x2||.  L_A
        has ||c_k||_2 ||q'|| where this has q's largest response: for an adjoint spread over
        many pixels, smaller by about sqrt(s^2 / #pixels).  Global in x (and with slopes of
        either sign), so ``x_radius`` is not used.  Costs one sweep of responses.
        """
        alpha, C, slopes, _ = self.params(theta.detach())
        kappa = filter_bank.operator_norm_bounds(filter_bank.autocorrelations(C, self.s))
        jmp = self._slope_jumps(slopes)
        sup = self.parallel.max(self._conv(q.detach(), C).abs().amax(dim=(0, 2, 3)))
        c2 = torch.linalg.vector_norm(C, dim=1)
        rate = alpha * torch.sum(kappa.to(jmp) ** 2 * jmp * (sup.to(jmp) + c2 * radius))
        return float(rate) * (1 + 1e-12)

    def _slope_jumps(self, slopes):
        """jmp_k = max_j |s_kj - s_k(j-1)| / T, a bound on |psi_k'''| (0 for one slope)."""
        if self.M < 2:
            return torch.zeros(self.K, dtype=slopes.dtype, device=slopes.device)
        return torch.diff(slopes, dim=1).abs().amax(dim=1) / self.T

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
