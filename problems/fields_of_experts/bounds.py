"""Certified constants of fields of experts: L and those of the hypergradient bound.

A mixin of :class:`~bilevel_problems.fields_of_experts.FieldsOfExperts`: closed-form
bounds on the smoothness L, on ||B(x)||, L_B and L_Ainv, each derived in its docstring
(the adjoint-aware Hessian and mixed rates: :mod:`.local_rates`).
"""
from __future__ import annotations

import math

import torch

from bilevel import BoundConstants

from .. import filter_bank

C3 = 1.5 / 1.25 ** 2.5  # 0.858650...


def _autocorrelation(a, s):
    """sum over the batch of R_k(m) = sum_p a_kp a_k(p+m), |m_i| <= s - 1: (K, 2s-1, 2s-1).

    By FFT on images zero-padded by s - 1, so the circular correlation has no
    wrap-around at these lags; in float64.  Index [m1 + s - 1, m2 + s - 1].
    """
    h, w = a.shape[-2:]
    spec = torch.fft.rfft2(a.double(), s=(h + s - 1, w + s - 1))
    corr = torch.fft.irfft2(spec.real ** 2 + spec.imag ** 2, s=(h + s - 1, w + s - 1))
    corr = torch.roll(corr.sum(0), shifts=(s - 1, s - 1), dims=(-2, -1))
    return corr[:, :2 * s - 1, :2 * s - 1]


class CertifiedConstants:
    """The certified constants of :class:`FieldsOfExperts` (mu = 1 is in the class)."""

    def _kernel_norms(self, p):
        """(||sum_k (alpha_k / nu_k) a_k||_1, kappa_k) with a_k the autocorrelation of c_k.

        kappa_k = sqrt(||a_k||_1) >= ||K_k|| (:mod:`bilevel_problems.filter_bank`).
        """
        auto = filter_bank.autocorrelations(p.filters, self.s)
        return (filter_bank.weighted_kernel_norm(auto, p.alpha / p.nu),
                filter_bank.operator_norm_bounds(auto))

    def smoothness(self, theta):
        r"""Certified L = L_data + ||sum_k (alpha_k / nu_k) c_k \star c_k||_1 (L_data = 1 here).

        The Hessian is I + sum_k alpha_k K_k^T D_k K_k with 0 <= D_k <= 1/nu_k
        (phi'' = nu^2 / r^3 <= 1 / nu), so it is <= I + sum_k (alpha_k / nu_k)
        K_k^T K_k, whose norm is at most 1 + ||sum_k (alpha_k / nu_k) a_k||_1
        (a_k = c_k \star c_k; :func:`bilevel_problems.filter_bank.weighted_kernel_norm`).
        This is at most the simpler 1 + sum_k alpha_k ||c_k||_1^2 / nu_k (Young:
        ||K_k|| <= ||c_k||_1).  A reconstruction's data term has its own L_data
        (``data_smoothness``; None when not certified, and then so is L).
        """
        if self.data_smoothness is None:
            return None
        mixed, _ = self._kernel_norms(self.params(theta))
        return self.data_smoothness + mixed

    # ---------------------------------------------------------- bound constants
    def bound_constants(self, theta, x):
        r"""Certified constants of the hypergradient bound, in closed form.

        Notation: alpha_k, nu_k, c_k, P as in the module docstring; z_k = K_k x;
        kappa_k = sqrt(||c_k \star c_k||_1) >= ||K_k|| (:mod:`bilevel_problems.filter_bank`);
        ||K_c|| <= ||c||_1 <= s ||c||_2 for any s x s filter c;
        X(v): c -> K_c v, the patch map of an image v;
        e = ||grad_x h(x)|| / mu >= ||x - x*||.  Two facts used throughout:
        ||a o b|| <= ||a||_inf ||b||, and ||K_k v||_inf <= ||c_k||_2 ||v||.

        - L_g = 1 / N: the Hessian of g is I / N.
        - ||B(x)||: see :meth:`mixed_norm_bound`.
        - L_B, valid on the ball of radius 2e about x.  The [theta_0, w] and [l]
          columns are Lipschitz with e_k = alpha_k kappa_k^2 / nu_k each
          (|phi''| <= 1/nu and |(t phi''(t))'| = nu^2 |nu^2 - 2t^2| / r^5 <= 1/nu),
          which contributes (sum_k e_k)^2 + 2 sum_k e_k^2 to L_B^2 (Frobenius).
          The filter block of filter k, applied to delta_r with dc = P delta_r,
          changes between x1 and x2 by
          alpha_k [K_dc^T (phi'(z1) - phi'(z2)) + K_k^T (phi''(z1) o K_dc (x1 - x2))
          + K_k^T ((phi''(z1) - phi''(z2)) o K_dc x2)], at most
          l_k = alpha_k [2 s kappa_k / nu_k + kappa_k C3 ||c_k||_2 Xbar / nu_k^2]
          times ||x1 - x2|| ||delta_r||, with |phi'''| <= C3 / nu^2 (:data:`C3`)
          and Xbar = ||X(x) P|| + 2 s e >= ||X(x2) P|| on the ball
          (||X(v) P|| <= s ||v||).  This block is linear in x, so only locally
          Lipschitz: hence the ball.  L_B^2 adds sum_k l_k^2.
        - MAID reuses the constants of the first x~ of an iteration for the x~'
          of its refinements; these and x* lie within e of x* (a warm-started
          refinement either stops at once or certifies less than e), so within 2e
          of x, and B_norm = ||B(x)|| bound + 2e L_B covers every such x~'.
        - L_Ainv = L_A / mu^2, L_A = sum_k alpha_k kappa_k^2 C3 ||c_k||_2 / nu_k^2:
          A(x1) - A(x2) = sum_k alpha_k K_k^T diag(phi''(z1) - phi''(z2)) K_k.
          Global in x, and attained up to kappa_k / ||c_k||_2 by a perturbation
          at one pixel whose response is near nu_k / 2: the worst case is real,
          and far larger than the typical (random-direction) change.
        - L_gtheta = 0: g does not read theta.

        Costs one sweep over the images (a gradient's convolutions, the patch
        Gram matrix and FFT autocorrelations): counted as 2 oracle calls.
        """
        theta, x = theta.detach(), x.detach()
        mu = self.strong_convexity(theta)
        B_here, X_norm, grad_norm = self._mixed_bound(theta, x)
        e = grad_norm / mu
        p = self.params(theta)
        s = self.s
        _, kappa = self._kernel_norms(p)
        a, nu = p.alpha.double().cpu(), p.nu.double().cpu()
        kappa = kappa.double().cpu()
        c2 = torch.linalg.vector_norm(p.filters.double(), dim=1).cpu()
        e_k = a * kappa ** 2 / nu
        X_bar = X_norm + 2 * s * e
        l_k = a * (2 * s * kappa / nu + kappa * C3 * c2 * X_bar / nu ** 2)
        L_B = math.sqrt(float(e_k.sum()) ** 2 + 2 * float(torch.sum(e_k ** 2))
                        + float(torch.sum(l_k ** 2)))
        L_A = float(torch.sum(a * kappa ** 2 * C3 * c2 / nu ** 2))
        return BoundConstants(L_g=1.0 / self.n_images, B_norm=B_here + 2 * L_B * e,
                              L_B=L_B, L_Ainv=L_A / mu ** 2, L_gtheta=0.0, certified=True,
                              cost=2)

    def mixed_norm_bound(self, theta, x) -> float:
        r"""A certified upper bound on ||B(x)||, B = d/dtheta grad_x h, at x itself.

        B has column blocks [theta_0, w], [l] and [r]; ||B||^2 is at most the sum
        of the blocks' squared norms (B B^T is the sum of the blocks' B_j B_j^T):

        - [theta_0, w]: Frobenius, ||b_0||^2 + sum_k ||alpha_k K_k^T phi'(z_k)||^2,
          with b_0 = grad_x h - (x - y) exact and each other column at most
          alpha_k kappa_k ||phi'(z_k)||;
        - [l]: Frobenius, columns -alpha_k K_k^T (z_k phi''(z_k)), each at most
          alpha_k kappa_k ||z_k phi''(z_k)||;
        - [r]: the blocks of the K filters add in squares; filter k maps
          delta_r to alpha_k [M_k P delta_r + K_k^T (phi''(z_k) o X(x) P delta_r)],
          M_k: dc -> K_dc^T phi'(z_k).  ||M_k P|| is exact: M_k^T M_k is the
          s^2 x s^2 block-Toeplitz matrix of the autocorrelation of phi'(z_k)
          (by FFT).  ||diag(phi''(z_k)) X(x) P|| is exact, from the s^2 x s^2 matrix
          sum_p phi''(z_kp)^2 (P patch_p)(P patch_p)^T
          (:func:`bilevel_problems.filter_bank.weighted_patch_grams`); side by side,
          the blocks alpha_k K_k^T diag(phi''(z_k)) X(x) P are K^T diag(...) for the
          whole bank K: x -> (K_k x)_k, of norm <= sqrt(Lambda) max_k alpha_k
          ||diag(phi''(z_k)) X(x) P||, used where below the sum of squares.

        Returns
        -------
        float
        """
        return self._mixed_bound(theta.detach(), x.detach())[0]

    def _mixed_bound(self, theta, x):
        """(bound on ||B(x)||, ||X(x) P||, ||grad_x h(x)||) in one sweep over the images."""
        p = self.params(theta)
        K, s = self.K, self.s
        nu2 = (p.nu * p.nu).view(-1, 1)
        Ca = p.alpha.view(-1, 1) * p.filters
        stats = torch.zeros(3, K, dtype=torch.float64, device=x.device)
        d2_max = torch.zeros(K, dtype=x.dtype, device=x.device)
        gram_x = torch.zeros(s * s, s * s, dtype=torch.float64, device=x.device)
        gram_w = torch.zeros(K, s * s, s * s, dtype=torch.float64, device=x.device)
        auto = torch.zeros(K, 2 * s - 1, 2 * s - 1, dtype=torch.float64, device=x.device)
        grad_reg = torch.zeros_like(x)
        for ch in self._chunks(p, x.shape, whole_images=True):
            z = ch.response(x)
            rs = torch.rsqrt(z * z + nu2)
            d1, d2 = z * rs, nu2 * rs * rs * rs
            ch.adjoint_into(grad_reg, d1, Ca)
            cols, gram = filter_bank.centred_patch_gram(ch.patches(x))
            gram_x += gram
            gram_w += filter_bank.weighted_patch_grams(cols, d2)
            stats += torch.stack([
                torch.sum(d1 * d1, dim=(0, 2)),
                torch.sum((z * d2) ** 2, dim=(0, 2)),
                torch.sum(d2 * d2 * torch.sum(cols * cols, dim=1, keepdim=True),
                          dim=(0, 2))]).double()
            d2_max = torch.maximum(d2_max, d2.amax(dim=(0, 2)))
            auto += _autocorrelation(d1.view(d1.shape[0], K, ch.r1 - ch.r0, -1), s)
        grad_reg_norm = float(torch.linalg.vector_norm(grad_reg.double()))
        grad_norm = float(torch.linalg.vector_norm((self.data_grad(x) + grad_reg).double()))

        # (1 + 1e-10) absorbs the rounding of the eigenvalues and of the FFT.
        Pm = torch.eye(s * s, dtype=torch.float64, device=x.device) - 1.0 / s ** 2
        X_norm = filter_bank.top_singular_value(Pm @ gram_x @ Pm)
        lag = torch.arange(s, device=x.device)
        i1 = (lag.view(-1, 1, 1, 1) - lag.view(1, 1, -1, 1) + s - 1).expand(s, s, s, s)
        i2 = (lag.view(1, -1, 1, 1) - lag.view(1, 1, 1, -1) + s - 1).expand(s, s, s, s)
        gram_a = auto[:, i1.reshape(s * s, s * s), i2.reshape(s * s, s * s)]
        M_norm = (torch.linalg.eigvalsh(Pm @ gram_a @ Pm)[:, -1].clamp(min=0).sqrt().cpu()
                  * (1 + 1e-10))

        _, kappa = self._kernel_norms(p)
        a, kappa = p.alpha.double().cpu(), kappa.double().cpu()
        d1_norm, zd2_norm, dX_frob = stats.sqrt().cpu().unbind(0)
        dX = torch.minimum(d2_max.double().cpu() * X_norm, dX_frob * (1 + 1e-10))
        dX = torch.minimum(dX, filter_bank.top_singular_values(gram_w))
        block_w = grad_reg_norm ** 2 + float(torch.sum((a * kappa * d1_norm) ** 2))
        block_l = float(torch.sum((a * kappa * zd2_norm) ** 2))
        bank = math.sqrt(filter_bank.weighted_kernel_norm(
            filter_bank.autocorrelations(p.filters, s), torch.ones_like(p.alpha)))
        block_r = min(float(torch.sum((a * (M_norm + kappa * dX)) ** 2)),
                      (float(torch.linalg.vector_norm(a * M_norm))
                       + bank * float((a * dX).max())) ** 2)
        return math.sqrt(block_w + block_l + block_r) * (1 + 1e-12), X_norm, grad_norm

