r"""A learned WEAKLY convex ridge regularizer for denoising (Goujon, Neumayer, Unser 2023).

The lower level has the convex ridge regularizer's form (:mod:`bilevel_problems.ridge_regularizer`,
same theta, same box-smoothed spline potentials, docs/problems.md)

    h(x, theta) = sum_i [ 1/2 ||x_i - y_i||^2 + alpha sum_k sum_p psi_k((K_k x_i)_p) ],

but the slopes of sigma_k = psi_k' may be negative, down to a floor -beta(theta):

    s_kj = s_max sigmoid(q_kj) - beta (1 - sigmoid(q_kj))  in (-beta, s_max),
    beta = rho / (alpha Lambda(c)),   0 <= rho < 1 fixed (default 0.9),

with Lambda(c) a smooth certified bound on ||sum_k K_k^T K_k|| (:meth:`kernel_bound`).
So psi_k is concave wherever its smoothed slopes are negative (the WCRR potentials: convex
near 0, concave tails), yet alpha psi_k'' >= -rho / Lambda whatever alpha and the filters.

**mu >= 1 - rho (certified).**  The Hessian is I + alpha sum_k K_k^T D_k K_k with
D_k = diag(psi_k''(K_k x)) and psi_k'' in [min_j s_kj, max_j s_kj], a subset of (-beta, s_max)
(:func:`bilevel.nn.splines.potential_tables`: psi_k'' is a convex combination of the
slopes).  Hence, in the Loewner order,

    alpha sum_k K_k^T D_k K_k >= -alpha beta sum_k K_k^T K_k >= -alpha beta ||sum_k K_k^T K_k|| I
                              >= -alpha beta Lambda I = -rho I,

and grad^2 h >= (1 - rho) I for every x and theta.  The floor needs
||sum_k K_k^T K_k|| <= ||A||_1 <= Lambda, A = sum_k c_k \star c_k (K_k^T K_k <= the
convolution with c_k \star c_k: :mod:`bilevel_problems.filter_bank`).  ||A||_1 itself has a
kink wherever an entry of A vanishes (the DCT start has such zeros), so

    Lambda = sum_tau sqrt(A(tau)^2 + eps^2),   eps = eta A(0) / (2s - 1)^2,   eta = 0.05:

smooth in theta, >= ||A||_1, and <= ||A||_1 + eta A(0) <= (1 + eta) ||A||_1 (A(0) = sum_k
||c_k||^2 is A's largest entry).  With rho = 0 this is the convex class exactly.

``floor_bound='symbol'`` bounds ||sum_k K_k^T K_k|| by the sup of A's symbol instead (the
norm of the convolution with A, which dominates it), certified from a DFT grid and smoothed
by a log-sum-exp (:func:`bilevel_problems.filter_bank.smooth_symbol_bound`: at most 2% of the
sup and 2% of A(0) above it).  On the learned 48x7x7 bank Lambda is 20.4 instead of the l1
bound's 30.2 (the sup itself 20.1): the floor -beta lies 1.48 times deeper for the same
certified mu >= 1 - rho.  The default stays 'l1', so that the models learned with it keep
their slopes.

Default rho = 0.9: the potentials may use 90% of the curvature that the data term lends,
as WCRR does (it stops at 1, where h is merely convex); the price, were every slope at the
floor, is mu = 0.1, i.e. a lower-level condition number and an error bound
e = ||grad h|| / mu 10x those of mu = 1, and L_Ainv = L_A / mu^2.  At the floor
lambda_min(grad^2 h) = 1 - rho ||sum_k K_k^T K_k|| / Lambda (about 0.48 on the test instance,
for rho = 0.9): 1 - rho is pessimistic by Lambda's slack there, and more where the slopes
stay above the floor.  So :meth:`WeaklyConvexRidge.strong_convexity` certifies
mu = max(1 - rho, 1 - alpha ||sum_k n_k K_k^T K_k||) with n_k the deepest concave slope of
psi_k, read through the filters' symbol: 0.59 instead of 0.05 on the learned
``wcrr_rho095_sigma25``.

**The other constants** are the convex class's, which read |psi_k''| and max_j |s_kj| and so
hold for slopes of either sign: L = 1 + alpha ||sum_k max(max_j s_kj, 0) c_k \star c_k||_1
(D_k <= max(max_j s_kj, 0) I); in the bound constants the filter block uses max |psi''|, the
L_B columns max_j |s_kj|, the slope block d s_kj / d q_kj = (s_max + beta) sigmoid' > 0
(psi_k' is still linear in the slopes with the same nonnegative hat functions), L_A and
the jumps |psi'''| never used a sign.  What is new is beta's dependence on theta_0 and the
filters: B = B_frozen + u (grad_theta beta)^T, B_frozen the convex formula at frozen beta,
u = d grad_x h / d beta = -alpha sum_k K_k^T sigma_k^-(K_k x), sigma_k^- the smoothed spline
with slopes 1 - sigmoid(q_kj) in (0, 1).  This rank-one term adds ||u|| ||grad beta|| to
||B|| and alpha ||sum_k max_j(1 - sigmoid(q_kj)) c_k \star c_k||_1 ||grad beta|| to L_B
(:meth:`WeaklyConvexRidge.bound_constants`).
"""
from __future__ import annotations

import dataclasses
import math

import torch

from bilevel.nn.splines import evaluate_potential, potential_tables

from . import filter_bank, params
from .ridge_regularizer import RidgeRegularizer


class WeaklyConvexRidge(RidgeRegularizer):
    """Bilevel learning of a weakly convex ridge regularizer (module docstring).

    Parameters
    ----------
    rho : float
        The weak-convexity budget in [0, 1): alpha psi_k'' >= -rho / Lambda, so the lower
        level is (1 - rho)-strongly convex (default 0.9).  rho = 0 is the convex class.
    floor_bound : {'l1', 'symbol'}
        Lambda >= ||sum_k K_k^T K_k|| from A's smoothed l1 norm (default) or from its
        symbol's smoothed sup, 1.5 times smaller on learned banks: a deeper floor (module
        docstring).
    **options
        Those of :class:`~bilevel_problems.ridge_regularizer.RidgeRegularizer`.
        ``slope_init`` is read as fractions f of the slope range at the start:
        s = -beta + (s_max + beta) f, f in (0, 1); ``slopes(theta)`` lie in (-beta, s_max).
        ``start='tv'`` starts from the convex ridge's TV start exactly: its slopes s are
        mapped to the fractions f = (s + beta_0) / (s_max + beta_0), beta_0 the floor at the
        start, so h(., theta_0) is the convex ridge's and the switched-off potentials sit
        at slope 0.001 s_max, not at the concave floor.
    """

    name = "weakly_convex_ridge"
    #: eta of the smoothed kernel bound Lambda (module docstring).
    kernel_smoothing = 0.05

    def __init__(self, rho=0.9, floor_bound="l1", **options):
        rho = params.number(self.name, "rho", rho, minimum=0.0)
        if rho >= 1:
            raise ValueError(f"{self.name}: rho must be a finite number in [0, 1) (mu = 1 - rho "
                             f"> 0), got {rho!r}")
        self.rho = rho
        self.floor_bound = params.choice(self.name, "floor_bound", floor_bound,
                                         ("l1", "symbol"))
        super().__init__(**options)
        if options.get("start") == "tv":
            self.theta0 = self._convex_start(self.theta0)

    def _convex_start(self, theta):
        """theta whose slopes are those the convex class reads from ``theta`` (class docstring)."""
        alpha, C, convex, _ = RidgeRegularizer.params(self, theta)
        f = self.slope_fractions(alpha, C, convex)
        return torch.cat([theta[:1 + C.numel()], torch.logit(f).flatten()])

    def slope_fractions(self, alpha, C, slopes):
        """sigmoid(q) for the given slopes, through the floor: (s + beta) / (s_max + beta);
        a slope at or below -beta cannot be represented (ValueError)."""
        beta = self.slope_floor(alpha, C)
        low = float(slopes.min())
        if low <= -float(beta):
            raise ValueError(f"{self.name}: a slope {low:.4g} lies at or below the floor -beta "
                             f"= {-float(beta):.4g}: it cannot be represented")
        return (slopes + beta) / (self.s_max + beta)

    # ------------------------------------------------------------ parameters
    def kernel_bound(self, C):
        r"""Lambda(c) >= ||sum_k K_k^T K_k||, differentiable: sum_tau sqrt(A(tau)^2 + eps^2)
        (``floor_bound='l1'``) or the smoothed sup of A's symbol (``'symbol'``,
        :func:`bilevel_problems.filter_bank.smooth_symbol_bound`)."""
        A = filter_bank.autocorrelations(C, self.s).sum(dim=0)
        if self.floor_bound == "symbol":
            return filter_bank.smooth_symbol_bound(A)
        eps = self.kernel_smoothing * A[self.s - 1, self.s - 1] / A.numel()
        return torch.sqrt(A ** 2 + eps ** 2).sum()

    def slope_floor(self, alpha, C):
        """beta = rho / (alpha Lambda(c)): the slopes stay above -beta."""
        return self.rho / (alpha * self.kernel_bound(C))

    def params(self, theta):
        """(alpha, zero-mean filters, slopes in (-beta, s_max), d slopes / d q at frozen beta)."""
        alpha, C, positive, dpositive = super().params(theta)
        beta = self.slope_floor(alpha, C)
        rest = 1 - positive / self.s_max  # 1 - sigmoid(q)
        return alpha, C, positive - beta * rest, dpositive * (1 + beta / self.s_max)

    def strong_convexity(self, theta):
        r"""mu = max(1 - rho, 1 - alpha ||sum_k n_k K_k^T K_k||), n_k = max(0, -min_j s_kj).

        psi_k'' >= min_j s_kj >= -n_k, so alpha sum_k K_k^T D_k K_k >= -alpha sum_k n_k
        K_k^T K_k, whose norm is certified by the symbol of sum_k n_k c_k \star c_k
        (:func:`bilevel_problems.filter_bank.weighted_kernel_norm`).  n_k <= beta, and the
        max keeps mu at the floor's 1 - rho or above (module docstring) whichever grid bounds
        the symbol; it is far above it where the learned slopes stay off the floor: 0.59
        instead of 0.05 on ``wcrr_rho095_sigma25`` (slopes down to 0.73 beta, the symbol's
        sup 0.65 Lambda).
        """
        alpha, C, slopes, _ = self.params(theta.detach())
        concave = (-slopes.amin(dim=1)).clamp(min=0)
        auto = filter_bank.autocorrelations(C, self.s)
        curvature = float(alpha) * filter_bank.weighted_kernel_norm(auto, concave)
        return max(1.0 - self.rho, 1.0 - curvature * (1 + 1e-12))

    def concavity(self, theta):
        r"""How much of the weak-convexity budget ``theta`` uses, as a dict of floats.

        ``floor`` beta, ``kernel_bound`` Lambda and ``symbol`` (a certified sup of the symbol
        of A = sum_k c_k \star c_k, which bounds ||sum_k K_k^T K_k||); ``depth`` max_k n_k /
        beta, n_k the deepest concave slope of psi_k (1 = at the floor); ``concave_filters``,
        how many psi_k have a negative slope; ``mu`` the certified strong convexity
        (:meth:`strong_convexity`) and ``mu_floor`` = 1 - rho.
        """
        alpha, C, slopes, _ = self.params(theta.detach())
        beta = float(self.slope_floor(alpha, C))
        concave = (-slopes.amin(dim=1)).clamp(min=0)
        A = filter_bank.autocorrelations(C, self.s).sum(dim=0)
        return dict(floor=beta, kernel_bound=float(self.kernel_bound(C)),
                    symbol=float(filter_bank.symbol_bound(A.unsqueeze(0))[0]),
                    depth=float(concave.max()) / beta, concave_filters=int((concave > 0).sum()),
                    mu=self.strong_convexity(theta), mu_floor=1.0 - self.rho)

    # ---------------------------------------------------------- bound constants
    def bound_constants(self, theta, x):
        r"""The convex class's constants at frozen beta, plus beta's rank-one term.

        B = B_frozen + u g^T with g = grad_theta beta (autograd through
        :meth:`slope_floor`: beta = rho / (alpha Lambda) reads theta_0 and the filters) and
        u = -alpha sum_k K_k^T sigma_k^-(z_k), sigma_k^- = psi_k' for the slopes
        1 - sigmoid(q_kj) (d s_kj / d beta = -(1 - sigmoid(q_kj)), and psi_k' is linear in
        the slopes).  So ||B(x)|| <= ||B_frozen(x)|| + ||u(x)|| ||g||, and u is Lipschitz in x
        with constant l_u = alpha ||sum_k m_k c_k \star c_k||_1, m_k = max_j (1 - sigmoid(q_kj)):
        du/dx = -alpha sum_k K_k^T diag(sigma_k^-'(z_k)) K_k with 0 <= sigma_k^-' <= m_k.
        Hence L_B grows by l_u ||g||, and the margin of B_norm (valid within 2e of x,
        e = ||grad_x h(x)|| / mu) by 2 e l_u ||g||.  L_g, L_Ainv (with the mu of
        :meth:`strong_convexity`) and L_gtheta are the convex class's (its docstring: why they
        hold for either sign).
        """
        frozen = super().bound_constants(theta, x)
        theta, x = theta.detach(), x.detach()
        g_norm, alpha, C, rest = self._floor_gradient(theta)
        tables = potential_tables(rest, self.x_range)
        (d1,) = evaluate_potential(self._conv(x, C), tables, self.x_range, (1,))
        u_norm = alpha * self.parallel.norm(self._conv_adjoint(d1, C))
        auto = filter_bank.autocorrelations(C, self.s)
        l_u = alpha * filter_bank.weighted_kernel_norm(auto, rest.amax(dim=1))
        mu = self.strong_convexity(theta)
        e = self.parallel.norm(self.lower_grad(x, theta)) / mu
        return dataclasses.replace(
            frozen, B_norm=frozen.B_norm + u_norm * g_norm * (1 + 1e-12) + 2 * e * l_u * g_norm,
            L_B=frozen.L_B + l_u * g_norm)

    def mixed_lipschitz_along(self, theta, x, q, radius, x_radius=math.inf):
        r"""The convex class's N at frozen beta, plus beta's rank-one term.

        B^T q' = B_frozen^T q' + g <u(x), q'> (:meth:`bound_constants`), and
        <u(x') - u(x), q'> = -alpha sum_k <sigma_k^-(z'_k) - sigma_k^-(z_k), K_k q'> with
        0 <= sigma_k^-' <= m_k, so the term moves by at most ||g|| alpha sqrt(Lambda)
        sqrt(sum_k m_k^2 r_k^2) ||x' - x|| (r_k >= ||K_k q'||_2 as in the convex class).
        """
        frozen = super().mixed_lipschitz_along(theta, x, q, radius, x_radius)
        g_norm, alpha, C, rest = self._floor_gradient(theta.detach())
        auto = filter_bank.autocorrelations(C, self.s)
        kappa = filter_bank.operator_norm_bounds(auto).to(rest)
        Lambda = filter_bank.weighted_kernel_norm(auto, torch.ones_like(rest[:, 0]))
        Kq = self._conv(q.detach(), C)
        r = torch.sqrt(self.parallel.sum(torch.sum(Kq ** 2, dim=(0, 2, 3)))) + kappa * radius
        m = rest.amax(dim=1)
        floor = g_norm * alpha * math.sqrt(Lambda * float(torch.sum((m * r) ** 2)))
        return frozen + floor * (1 + 1e-12)

    def _floor_gradient(self, theta):
        """(||grad_theta beta||, alpha, the zero-mean filters, the slopes 1 - sigmoid(q))."""
        with torch.enable_grad():
            live = theta.detach().clone().requires_grad_(True)
            alpha, C, positive, _ = RidgeRegularizer.params(self, live)
            (g,) = torch.autograd.grad(self.slope_floor(alpha, C), live)
        return (float(torch.linalg.vector_norm(g)), float(alpha.detach()), C.detach(),
                1 - positive.detach() / self.s_max)

    # ------------------------------------------------------------------ usage
    def on_images(self, images, theta):
        return WeaklyConvexRidge(rho=self.rho, floor_bound=self.floor_bound, images=images,
                                 noisy=images, num_filters=self.K,
                                 filter_size=self.s, num_knots=self.num_knots,
                                 x_range=self.x_range, s_max=self.s_max, dtype=self.dtype,
                                 device=self.device)


ENTRY = dict(
    factory=WeaklyConvexRidge,
    description="Weakly convex ridge regularizer denoising: the ridge regularizer with spline "
                "slopes down to -rho / (alpha Lambda), certified mu = 1 - rho, L and bound "
                "constants",
    test_params=dict(n_images=2, size=12, num_filters=2, filter_size=3, num_knots=5,
                     x_range=0.2),
)
