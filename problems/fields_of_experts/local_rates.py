"""The local rates of fields of experts: the Hessian's and the mixed derivative's moves.

A mixin of :class:`~bilevel_problems.fields_of_experts.FieldsOfExperts` next to
:class:`~bilevel_problems.fields_of_experts.bounds.CertifiedConstants` (whose
``_kernel_norms`` it reads): ``hessian_lipschitz_along`` and ``mixed_lipschitz_along``
(docs/certificates.md, sections 2 and 4) read the potentials' curvature and third
derivative on the window each response of x~ can reach within the certified ball, and
the adjoint's own responses, each derived in its docstring.
"""
from __future__ import annotations

import math

import torch

from bilevel import local_bounds

from .. import filter_bank
from .bounds import C3


class LocalRates:
    """``hessian_lipschitz_along`` and ``mixed_lipschitz_along`` of :class:`FieldsOfExperts`."""

    def hessian_lipschitz_along(self, theta, x, q, radius, x_radius=math.inf):
        r"""M with ||(A(x*) - A(x)) q'|| <= M x_radius for every ||q' - q|| <= radius.

        (A(x1) - A(x2)) q' = sum_k alpha_k K_k^T [(phi''(z1_k) - phi''(z2_k)) o K_k q'].

        Global form (valid for every x1, x2: the rate per unit ||x1 - x2||):
        |phi''(t1) - phi''(t2)| <= C3 / nu_k^2 |t1 - t2| pixel by pixel, so the norm
        is at most sum_k alpha_k kappa_k C3 / nu_k^2 ||K_k (x1 - x2)|| ||K_k q'||_inf
        <= sum_k alpha_k kappa_k^2 C3 / nu_k^2 (||K_k q||_inf + ||c_k||_2 radius).
        A response is one s x s patch of q against c_k, so for an adjoint spread
        over many pixels the bracket is smaller than L_A's ||c_k||_2 ||q'|| by about
        sqrt(s^2 / #pixels).

        Local form, at the true minimiser (given ``x_radius``; docs/certificates.md,
        section 3): with d_k = K_k (x* - x), sum_p d_kp^2 <= kappa_k^2 x_radius^2
        (Euclidean budget), and A >= I + sum_k alpha_k K_k^T diag(w_k) K_k with w_kp
        the least phi'' = nu_k^2 / r^3 on the interval each response can reach gives
        sum_{k,p} alpha_k w_kp d_kp^2 <= C2 (energy budget).  The third derivative
        decays: |phi'''(t)| <= (2 / sqrt 3) / (t^2 + nu^2) (3 u / (1 + u^2)^{3/2} <= 2 / sqrt 3,
        u = t / nu), so c3_kp = min(C3 / nu_k^2, (2 / sqrt 3) / R_near^2) on the
        interval, and
            ||(A(x*) - A(x)) q'||
                <= sum_k alpha_k kappa_k (sum_p c3_kp^2 |(K_k q')_p|^2 d_kp^2)^{1/2},
        each filter's sum bounded under both budgets
        (:func:`bilevel.local_bounds.max_weighted_sum`).  A response moves by at most
        ||c_k||_2 x_radius, shrunk to sqrt(C2 / (alpha_k w_kp)) where the curvature
        is high.  Used when the responses fit in memory (N K pixels <= 2e7) in one
        process; the smaller of the two forms is returned.  In both, the sum over
        filters sum_k alpha_k kappa_k ||v_k|| may be replaced by sqrt(Lambda)
        ||(alpha_k ||v_k||)_k||_2 (:meth:`_bank_sum`), whichever is smaller.  Costs a gradient and
        two sweeps of responses (3 oracle calls).
        """
        p = self.params(theta.detach())
        _, kappa = self._kernel_norms(p)
        sup = torch.zeros(self.K, dtype=q.dtype, device=q.device)
        for ch in self._chunks(p, q.shape):
            sup = torch.maximum(sup, ch.response(q.detach()).abs().amax(dim=(0, 2)))
        c2 = torch.linalg.vector_norm(p.filters, dim=1)
        rate = self._bank_sum(p, kappa * C3 / p.nu ** 2 * (sup + c2 * radius))
        big = x.numel() * self.K > 2e7
        if not math.isfinite(x_radius) or self.parallel.active or big:
            return rate
        return min(rate, self._local_hessian_rate(theta.detach(), x.detach(), q.detach(),
                                                  radius, x_radius, p, kappa, c2))

    def _local_hessian_rate(self, theta, x, q, radius, x_radius, p, kappa, c2):
        """The local form of :meth:`hessian_lipschitz_along` (responses held in memory)."""
        C2 = self.energy_budget(theta, x_radius, self.parallel.norm(self.lower_grad(x, theta)))
        z = self.convolve(x, theta).abs().transpose(0, 1).flatten(1)   # (K, N P)
        u = self.convolve(q, theta).abs().transpose(0, 1).flatten(1)
        nu = p.nu.view(-1, 1)
        alpha = p.alpha.view(-1, 1)
        reach = (c2 * x_radius).view(-1, 1).expand_as(z).clone()
        for _ in range(20):
            w = alpha * nu * nu / ((z + reach) ** 2 + nu * nu) ** 1.5
            reach = torch.minimum(reach, torch.sqrt(C2 / w))
        w = alpha * nu * nu / ((z + reach) ** 2 + nu * nu) ** 1.5
        near = (z - reach).clamp(min=0)
        c3 = torch.clamp((2 / math.sqrt(3)) / (near * near + nu * nu), max=C3 / nu ** 2)
        a = (c3 * (u + (c2 * radius).view(-1, 1))) ** 2
        moves = torch.tensor([math.sqrt(local_bounds.max_weighted_sum(
            a[k], w[k], float(kappa[k]) ** 2 * x_radius ** 2, C2)) for k in range(self.K)],
            dtype=p.alpha.dtype, device=p.alpha.device)
        return self._bank_sum(p, moves) / x_radius

    def _bank_sum(self, p, moves):
        """A bound on ||sum_k alpha_k K_k^T v_k|| from bounds ||v_k|| <= moves_k (K,):
        min(sum_k alpha_k kappa_k moves_k, sqrt(Lambda) ||alpha o moves||_2), Lambda >=
        ||sum_k K_k^T K_k|| = ||K||^2 for the whole bank K: x -> (K_k x)_k (sum_k K_k^T u_k =
        K^T u).  The filters cover different frequencies, so Lambda is often far below
        sum_k kappa_k^2."""
        auto = filter_bank.autocorrelations(p.filters, self.s)
        kappa = filter_bank.operator_norm_bounds(auto)
        Lambda = filter_bank.weighted_kernel_norm(auto, torch.ones_like(p.alpha))
        weighted = p.alpha * moves
        return min(float(torch.sum(kappa * weighted)),
                   math.sqrt(Lambda) * float(torch.linalg.vector_norm(weighted)))

    def mixed_lipschitz_along(self, theta, x, q, radius, x_radius=math.inf):
        r"""N with ||(B(x') - B(x))^T q'|| <= N ||x' - x|| for x' within x_radius, q' within radius.

        B^T q' = d/dtheta sum_k alpha_k <phi_k'(z_k), K_k q'> (z_k = K_k x; the data term
        does not read theta).  Within the ball a response moves by |d_p| <= ||c_k||_2
        x_radius (d_k = K_k (x' - x)), so on the window of z_p: phi'' <= b_p = nu^2 / (n_p^2 +
        nu^2)^{3/2} and |phi'''| <= c3_p = min(C3 / nu^2, (2 / sqrt 3) / (n_p^2 + nu^2)), n_p =
        max(|z_p| - ||c_k||_2 x_radius, 0) (:meth:`hessian_lipschitz_along`'s bounds).  With
        (peak, spread) of :func:`bilevel_problems.filter_bank.weighted_responses` for the
        weights b (m_k = spread, ||b o K_k q'|| <= m_k) and c3 (a_k = min(kappa_k peak,
        ||c_k||_2 spread)), and r_k = ||K_k q|| + kappa_k radius, the blocks of theta move by
        at most, per unit ||x' - x||:

        - theta_0: |sum_k alpha_k <phi'(z'_k) - phi'(z_k), K_k q'>| <= sqrt(Lambda)
          (sum_k alpha_k^2 m_k^2)^{1/2} (Cauchy-Schwarz over k, sum_k ||d_k||^2 <= Lambda
          ||x' - x||^2, Lambda = ||sum_k c_k \star c_k||_1); w_k: alpha_k kappa_k m_k;
        - l_k (d phi' / d log nu = -t phi''(t), |(t phi'')'| <= 1 / nu): alpha_k kappa_k r_k / nu_k;
        - filter k (as the ridge's, :mod:`bilevel_problems.ridge_bounds`): alpha_k [s m_k +
          ||X(x)|| a_k + max_p b_p kappa_k (||X(q)|| + s radius)];

        in squares.  L_B ||q*|| has 1 / nu_k for b and C3 / nu_k^2 for c3 everywhere: with
        learned smoothings far below the typical response, orders of magnitude more.  Holds
        for every x' with an infinite ``x_radius`` (then n_p = 0).  None (L_B ||q*||) when the
        responses do not fit in memory (N K pixels > 2e7).  Two sweeps of responses and two
        patch Gram matrices.
        """
        if x.numel() * self.K > 2e7:
            return None
        theta, x, q = theta.detach(), x.detach(), q.detach()
        p = self.params(theta)
        auto = filter_bank.autocorrelations(p.filters, self.s)
        kappa, s = filter_bank.operator_norm_bounds(auto), self.s
        Lambda = filter_bank.weighted_kernel_norm(auto, torch.ones_like(p.nu))
        c2 = torch.linalg.vector_norm(p.filters, dim=1)
        nu2 = (p.nu * p.nu).view(1, -1, 1, 1)
        near = (self.convolve(x, theta).abs() - (c2 * x_radius).view(1, -1, 1, 1)).clamp(min=0)
        if not math.isfinite(x_radius):
            near = torch.zeros_like(near)
        b = nu2 / (near * near + nu2) ** 1.5
        c3 = torch.clamp((2 / math.sqrt(3)) / (near * near + nu2), max=C3 / nu2)
        Kq = self.convolve(q, theta)
        sums = (self.parallel.sum, self.parallel.max)
        _, m = filter_bank.weighted_responses(b, Kq.abs(), kappa, c2, radius, *sums)
        peak, spread = filter_bank.weighted_responses(c3, Kq.abs(), kappa, c2, radius, *sums)
        r = torch.sqrt(self.parallel.sum(torch.sum(Kq ** 2, dim=(0, 2, 3)))) + kappa * radius
        X_x, X_q = (filter_bank.top_singular_value(self.parallel.sum(
            filter_bank.patch_grams(v, s)[0])) for v in (x, q))
        b_top = self.parallel.max(b.amax(dim=(0, 2, 3)))
        a = p.alpha
        col_0 = math.sqrt(Lambda) * float(torch.linalg.vector_norm(a * m))
        filt = a * (s * m + X_x * torch.minimum(kappa * peak, c2 * spread)
                    + b_top * kappa * (X_q + s * radius))
        total = (col_0 ** 2 + float(torch.sum((a * kappa * m) ** 2))
                 + float(torch.sum((a * kappa * r / p.nu) ** 2)) + float(torch.sum(filt ** 2)))
        return math.sqrt(total) * (1 + 1e-12)
