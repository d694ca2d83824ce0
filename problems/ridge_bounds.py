r"""The certified constants of the (weakly) convex ridge: the hypergradient bound's and local rates.

A mixin of :class:`~bilevel_problems.ridge_regularizer.RidgeRegularizer` (notation there):
closed-form bounds on ||B(x)||, L_B and L_Ainv (:meth:`RidgeBounds.bound_constants`) and
the adjoint-aware rates of the Hessian and of the mixed derivative along the adjoint
(:meth:`RidgeBounds.hessian_lipschitz_along`, :meth:`RidgeBounds.mixed_lipschitz_along`),
each derived in its docstring.  Every bound reads |psi_k''| and max_j |s_kj|, so it holds
for slopes of either sign: the weakly convex subclass adds only its floor's term.
"""
from __future__ import annotations

import math

import torch

from bilevel import BoundConstants
from bilevel.nn.splines import evaluate_potential, potential_tables

from . import filter_bank


class RidgeBounds:
    """The certified constants of :class:`~bilevel_problems.ridge_regularizer.RidgeRegularizer`."""

    def bound_constants(self, theta, x):
        r"""Certified constants of the hypergradient bound, in closed form.

        Notation: alpha, c_k, slopes s_kj, smax_k = max_j s_kj, s'_kj = d s_kj / d q_kj
        (<= s_max / 4), jmp_k = max_j |s_kj - s_k(j-1)| / T >= |psi_k'''|;
        z_k = K_k x; kappa_k = sqrt(||c_k \star c_k||_1) >= ||K_k||;
        ||K_c||, ||K_c^T|| <= ||c||_1 <= s ||c||_2; X(x): c -> K_c x restricted to
        zero-mean c, ||X(x)|| from the s^2 x s^2 Gram matrix of the patches
        (exact), and ||X(v)|| <= s ||v||; e = ||grad_x h(x)|| / mu >= ||x - x*||.

        - L_g = 1 / N, N the images of all ranks.

        Sharded over ranks (:mod:`bilevel.distributed`), every norm and patch Gram over the
        images sums over all ranks (``self.parallel``), so the constants are the global
        problem's.
        - ||B(x)||^2 <= sum of the squared norms of its column blocks:
          * theta_0: the vector b_0 = grad_x h - (x - y), exact;
          * filter k: delta -> alpha [K_{P delta}^T psi_k'(z_k) + K_k^T E_k delta],
            E_k = diag(psi_k''(z_k)) X(x) P, whose norm is exact from the s^2 x s^2
            matrix sum_p psi_k''(z_kp)^2 (P patch_p)(P patch_p)^T; norm <= alpha
            (s ||psi_k'(z_k)|| + kappa_k ||E_k||);
          * slopes of k: d psi_k'(t) / d s_kj = phi_j(t) = int_0^t hat_j with hat_j >= 0
            and sum_j hat_j = 1, so sum_j |phi_j(t)| = |t|: the block is alpha K_k^T F_k
            with ||F_k|| <= max_j s'_kj ||z_k||;
          * the blocks K_k^T E_k side by side are K^T diag(E_k), K: x -> (K_k x)_k the
            whole bank, of norm <= sqrt(Lambda) max_k ||E_k|| (Lambda >= ||sum_k K_k^T
            K_k||, the symbol bound); likewise the slope blocks: where smaller than the
            sum of squares over k (the filters cover different frequencies, so Lambda is
            often far below sum_k kappa_k^2).
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
        total = self.parallel.sum
        e = self.parallel.norm(x - self.noisy + grad_reg) / mu

        gram, grams = filter_bank.patch_grams(x, s, d2)
        X_norm = filter_bank.top_singular_value(total(gram))
        E_norm = filter_bank.top_singular_values(total(grams))  # float64, on the CPU

        auto = filter_bank.autocorrelations(C, s)
        kappa = filter_bank.operator_norm_bounds(auto).double().cpu()
        c2 = torch.linalg.vector_norm(C, dim=1).double().cpu()
        smax = slopes.abs().amax(dim=1).double().cpu()  # |.|: see the docstring
        dsmax = dslopes.amax(dim=1).double().cpu()
        jmp = self._slope_jumps(slopes).double().cpu()
        d1_norm = total(torch.sum(d1 ** 2, dim=(0, 2, 3))).sqrt().double().cpu()
        z_norm = total(torch.sum(z ** 2, dim=(0, 2, 3))).sqrt().double().cpu()

        block_0 = float(total(torch.sum(grad_reg.double() ** 2)))
        bank = math.sqrt(filter_bank.weighted_kernel_norm(auto, torch.ones_like(slopes[:, 0])))
        first = alpha * s * d1_norm
        block_r = min(float(torch.sum((first + alpha * kappa * E_norm) ** 2)),
                      (float(torch.linalg.vector_norm(first))
                       + alpha * bank * float(E_norm.max())) ** 2)
        block_q = min(float(torch.sum((alpha * kappa * dsmax * z_norm) ** 2)),
                      (alpha * bank * float((dsmax * z_norm).max())) ** 2)
        B_here = math.sqrt(block_0 + block_r + block_q) * (1 + 1e-12)

        X_bar = X_norm + 2 * s * e
        col_0 = alpha * float(torch.sum(kappa ** 2 * smax))
        l_r = alpha * (2 * s * kappa * smax + kappa * jmp * c2 * X_bar)
        l_q = alpha * kappa ** 2 * dsmax
        L_B = math.sqrt(col_0 ** 2 + float(torch.sum(l_r ** 2)) + float(torch.sum(l_q ** 2)))
        L_A = alpha * float(torch.sum(kappa ** 2 * jmp * c2))
        return BoundConstants(L_g=1.0 / self.n_total, B_norm=B_here + 2 * L_B * e, L_B=L_B,
                              L_Ainv=L_A / mu ** 2, L_gtheta=0.0, certified=True, cost=2)

    def hessian_lipschitz_along(self, theta, x, q, radius, x_radius=math.inf):
        r"""M with ||(A(x') - A(x)) q'|| <= M ||x' - x|| for x' within x_radius, q' within radius.

        (A(x') - A(x)) q' = alpha sum_k K_k^T v_k, v_k = (psi_k''(z'_k) - psi_k''(z_k)) o K_k q',
        so M = alpha min(sum_k kappa_k a_k, sqrt(Lambda) ||a||_2) with a_k >= ||v_k|| / ||x' - x||
        from :meth:`_curvature_moves` (q's responses weighted by |psi_k'''| near x's
        responses) and Lambda >= ||sum_k K_k^T K_k|| = ||K||^2, K: x -> (K_k x)_k the whole bank
        (sum_k K_k^T v_k = K^T v; the symbol bound of sum_k c_k \star c_k): the filters cover
        different frequencies, so Lambda is well below sum_k kappa_k^2 (18 against 126 on
        ``wcrr_rho09_sigma25``).
        L_A ||q'|| has jmp_k ||c_k||_2 ||q'|| for a_k: for an adjoint spread over many pixels
        and responses away from the potentials' steepest bends, far more.  With x_radius
        infinite, a_k = kappa_k jmp_k (||K_k q||_inf + ||c_k||_2 radius) at most, global in x.
        Costs two sweeps of responses.
        """
        alpha, C, kappa, _, moves = self._curvature_moves(theta, x, q, radius, x_radius)
        Lambda = filter_bank.weighted_kernel_norm(filter_bank.autocorrelations(C, self.s),
                                                  torch.ones_like(moves))
        bank = min(float(torch.sum(kappa * moves)),
                   math.sqrt(Lambda) * float(torch.linalg.vector_norm(moves)))
        return alpha * bank * (1 + 1e-12)

    def _curvature_moves(self, theta, x, q, radius, x_radius):
        r"""(alpha, filters, kappa_k, |K_k q|, a_k): a_k >= ||v_k|| / ||x' - x|| for every x'
        within ``x_radius`` of x and q' within ``radius`` of q (v_k of
        :meth:`hessian_lipschitz_along`).

        Response by response |psi_k''(z'_p) - psi_k''(z_p)| <= j_p |d_p|, d_k = K_k (x' - x),
        j_p the steepest piece of psi_k'' within ||c_k||_2 x_radius of z_p (:meth:`_local_jumps`;
        |d_p| <= ||c_k||_2 ||x' - x||).  Then ||v_k|| <= max_p j_p |(K_k q')_p| ||d_k||, with
        ||d_k|| <= kappa_k ||x' - x||, or ||v_k|| <= ||j o K_k q'||_2 ||c_k||_2 ||x' - x||; over
        the q' (:func:`bilevel_problems.filter_bank.weighted_responses`)

            a_k = min(kappa_k max_p j_p (|(K_k q)_p| + ||c_k||_2 radius),
                      ||c_k||_2 (||j o K_k q||_2 + max_p j_p kappa_k radius)).
        """
        theta, x, q = theta.detach(), x.detach(), q.detach()
        alpha, C, slopes, _ = self.params(theta)
        kappa = filter_bank.operator_norm_bounds(filter_bank.autocorrelations(C, self.s))
        kappa, c2 = kappa.to(slopes), torch.linalg.vector_norm(C, dim=1)
        jumps = self._local_jumps(slopes, self._conv(x, C), c2 * x_radius)
        responses = self._conv(q, C).abs()
        peak, spread = filter_bank.weighted_responses(
            jumps, responses, kappa, c2, radius, self.parallel.sum, self.parallel.max)
        return float(alpha), C, kappa, responses, torch.minimum(kappa * peak, c2 * spread)

    #: A window of psi'' wider than this many pieces takes the global jmp_k instead.
    MAX_LOCAL_PIECES = 16

    def _local_jumps(self, slopes, z, width):
        """j >= |psi_k'''| on [z_p - w_k, z_p + w_k], response by response (z: (N, K, H, W)).

        psi_k'' is linear on the pieces of :func:`bilevel.nn.splines.potential_tables`
        ([m_(j-1), m_j), m_j = -R + T / 2 + j T; constant outside [m_0, m_(M-1)]), so j is
        the steepest piece the window meets, the window widened by 1e-9 T against rounding
        at a piece's edge.  The global jmp_k everywhere when some window meets more than
        :attr:`MAX_LOCAL_PIECES` pieces, or the width is not finite.
        """
        K, M = slopes.shape
        jmp = self._slope_jumps(slopes)
        if not bool(torch.isfinite(width).all()):
            return jmp.view(1, K, 1, 1).expand_as(z)
        zero = torch.zeros_like(slopes[:, :1])
        steep = torch.cat([zero, torch.diff(slopes, dim=1).abs() / self.T, zero], dim=1)
        w = (width + 1e-9 * self.T).view(1, K, 1, 1)
        first = -self.x_range + self.T / 2

        def piece(t):
            return (torch.floor((t - first) / self.T) + 1).clamp(0, M).long()

        lo, hi = piece(z - w), piece(z + w)
        span = int((hi - lo).max()) if z.numel() else 0
        if span > self.MAX_LOCAL_PIECES:
            return jmp.view(1, K, 1, 1).expand_as(z)
        rows = torch.arange(K, device=z.device).view(1, K, 1, 1)
        out = steep[rows, lo]
        for offset in range(1, span + 1):
            out = torch.maximum(out, steep[rows, torch.minimum(lo + offset, hi)])
        return out

    def mixed_lipschitz_along(self, theta, x, q, radius, x_radius=math.inf):
        r"""N with ||(B(x') - B(x))^T q'|| <= N ||x' - x|| for x' within x_radius, q' within radius.

        B^T q' = d/dtheta alpha sum_k <psi_k'(z_k), K_k q'>, z_k = K_k x.  With d_k =
        K_k (x' - x) (||d_k|| <= kappa_k ||x' - x||, sum_k ||d_k||^2 <= Lambda ||x' - x||^2,
        Lambda = ||sum_k c_k \star c_k||_1) and r_k = ||K_k q||_2 + kappa_k radius >=
        ||K_k q'||_2, block by block:

        - theta_0: alpha sum_k <psi_k'(z'_k) - psi_k'(z_k), K_k q'> with |psi_k''| <= smax_k:
          at most alpha sqrt(Lambda) sqrt(sum_k smax_k^2 r_k^2) ||x' - x||;
        - filter k (before the zero-mean projection, a contraction): alpha [X(x')^T
          (psi_k''(z'_k) o K_k q') - X(x)^T (psi_k''(z_k) o K_k q') + X(q')^T (psi_k'(z'_k) -
          psi_k'(z_k))], split at X(x') = X(x) + X(x' - x): at most alpha [s smax_k r_k +
          ||X(x)|| a_k + smax_k kappa_k (||X(q)|| + s radius)] ||x' - x|| (||X(v)|| <= s ||v||;
          a_k of :meth:`_curvature_moves` bounds the middle term's vector);
        - slopes of k: alpha s'_kj sum_p (phi_j(z'_kp) - phi_j(z_kp)) (K_k q')_p with phi_j
          nondecreasing and sum_j phi_j(t) = t, so the l1 norm over j is at most
          alpha max_j s'_kj sum_p |d_kp| |(K_k q')_p| <= alpha max_j s'_kj ||d_k|| r_k;

        combined in squares.  :meth:`bound_constants`' L_B ||q*|| has kappa_k ||q*|| for r_k,
        s ||q*|| for ||X(q)||, ||X(x)|| + 2 s e for ||X(x)|| and kappa_k jmp_k ||c_k||_2 ||q*||
        for a_k, the term that dominates it.  Costs two sweeps of responses and a patch Gram
        of q.
        """
        theta, x, q = theta.detach(), x.detach(), q.detach()
        alpha, C, kappa, Kq, moves = self._curvature_moves(theta, x, q, radius, x_radius)
        _, _, slopes, dslopes = self.params(theta)
        s = self.s
        Lambda = filter_bank.weighted_kernel_norm(filter_bank.autocorrelations(C, s),
                                                  torch.ones_like(slopes[:, 0]))
        smax, dsmax = slopes.abs().amax(dim=1), dslopes.amax(dim=1)
        r = torch.sqrt(self.parallel.sum(torch.sum(Kq ** 2, dim=(0, 2, 3)))) + kappa * radius
        X_x = filter_bank.top_singular_value(self.parallel.sum(
            filter_bank.patch_grams(x, s)[0]))
        X_q = filter_bank.top_singular_value(self.parallel.sum(
            filter_bank.patch_grams(q, s)[0])) + s * radius
        n_0 = math.sqrt(Lambda * float(torch.sum((smax * r) ** 2)))
        n_r = s * smax * r + X_x * moves + smax * kappa * X_q
        n_q = dsmax * kappa * r
        total = n_0 ** 2 + float(torch.sum(n_r ** 2)) + float(torch.sum(n_q ** 2))
        return alpha * math.sqrt(total) * (1 + 1e-12)

    def _slope_jumps(self, slopes):
        """jmp_k = max_j |s_kj - s_k(j-1)| / T, a bound on |psi_k'''| (0 for one slope)."""
        if self.M < 2:
            return torch.zeros(self.K, dtype=slopes.dtype, device=slopes.device)
        return torch.diff(slopes, dim=1).abs().amax(dim=1) / self.T

