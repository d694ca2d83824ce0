r"""The certified constants of smoothed TV denoising: the hypergradient bound's and local rates.

A mixin of :class:`~bilevel_problems.tv_denoising.TVDenoising` (notation there):
closed-form bounds on ||B(x)||, L_B and L_Ainv (:meth:`CertifiedConstants.bound_constants`)
and on the adjoint-aware Hessian and mixed terms at the true minimiser
(:meth:`CertifiedConstants.hessian_lipschitz_along`,
:meth:`CertifiedConstants.mixed_lipschitz_along`), each derived in its docstring.
"""
from __future__ import annotations

import math

import torch

from bilevel import BoundConstants, local_bounds

from .finite_differences import grad_op

#: Bound on nu^2 ||dHphi(t)[d]|| over t and unit d, isotropic.  In the frame
#: t = s e_1, d = (c, sigma), nu = 1, rho^2 = 1 + s^2:
#: dHphi[d] = -(s / rho^3) [[3c / rho^2, sigma], [sigma, c]], whose squared
#: Frobenius norm is (s^2 / rho^6)(2 + c^2 (9 / rho^4 - 1))
#: <= (s^2 / rho^6) max(2, 1 + 9 / rho^4).  With v = rho^2 <= 3 this is
#: (v - 1)(v^2 + 9) / v^5, maximal at the only real root of
#: 2 v^3 - 3 v^2 + 36 v - 45 (v = 1.27058; square root 0.931301); for v > 3 it
#: is 2 (v - 1) / v^3 <= 4 / 27 (square root 0.385).  Rounded up.  (The exact
#: sup, at c = 1, equals the anisotropic constant below.)
C3_ISOTROPIC = 0.93131
#: sup_s |phi'''(s)| nu^2 for phi(s) = sqrt(s^2 + nu^2): 3 s nu^2 / r^5 at s = nu / 2.
C3_ANISOTROPIC = 1.5 / 1.25 ** 2.5  # 0.858650


class CertifiedConstants:
    """The certified constants of :class:`~bilevel_problems.tv_denoising.TVDenoising`.

    Also those of the reconstruction problems (:mod:`bilevel_problems.reconstruction`),
    whose Hessian is A^T A + gamma I + lam D^T Hphi D: the data term's Hessian is
    constant and B reads the regulariser alone, so every bound below holds with mu
    their strong convexity, except two places that use the identity of denoising.
    They are the two hooks below, which a reconstruction overrides.
    """

    #: The Hessian is I + lam D^T Hphi D, an M-matrix with A 1 = 1 (denoising), which
    #: the anisotropic variant's sharper L_Ainv uses.  False drops that branch.
    hessian_is_identity_plus_laplacian = True

    def energy_budget(self, theta, x_radius, r_norm):
        """C2 >= sum_p w_p |d_p|^2 (docs/certificates.md, section 3), identity part I."""
        return local_bounds.energy_budget(x_radius, r_norm)

    def bound_constants(self, theta, x):
        r"""Certified constants of the hypergradient bound, in closed form.

        With lam = e^{theta_0}, nu = e^{theta_1}, ||D||^2
        (:func:`~bilevel_problems.finite_differences.diff_norm_squared`),
        P = N H W pixel terms (2 N H W for the anisotropic variant):

        - L_g = 1 / N: the Hessian of g is I / N.
        - B(x) = lam D^T M(Dx), with M_p = [psi(t_p), -chi(t_p)] a 2x2 block per
          pixel.  ||B(x)|| is computed exactly at x from the 2x2 Gram matrix of
          its two columns.  Constants may be reused at a refined x~' (e.g.
          ``hypergradient(..., constants=...)`` after tightening eps); x and x~'
          both lie within e = ||grad_x h(x)|| / mu of x* (a warm-started
          refinement never loosens the certificate), so B_norm = ||B(x)|| +
          2 L_B e covers every such x~' (the margin vanishes with e).  It is
          capped by the global bound lam ||D|| sqrt(P): ||M_p||_F^2 =
          (1 - u)(1 + u^2) <= 1 with u = nu^2 / r^2.
        - L_B = sqrt(2) lam ||D||^2 / nu: the Jacobians of psi and chi have
          eigenvalues (1/r, nu^2/r^3) and (nu^2/r^3, nu^2 (nu^2 - 2|t|^2)/r^5),
          all <= 1/nu in modulus, so t -> M_p(t) is sqrt(2)/nu-Lipschitz in the
          Frobenius norm, and ||B(x) - B(x')|| <= lam ||D|| ||M - M'||_F
          <= lam ||D||^2 sqrt(2)/nu ||x - x'||.
        - L_Ainv = L_A / mu^2 with L_A = lam ||D||^2 c C3 / nu^2: A - I = lam D^T
          Hphi D with Hphi block diagonal, so ||A(x) - A(x')|| <= lam ||D||^2
          max_p ||Hphi(t_p) - Hphi(t'_p)||; the third derivative of phi_nu is
          bounded by C3 / nu^2 (:data:`C3_ISOTROPIC`, :data:`C3_ANISOTROPIC`), and
          one pixel's difference moves by at most c ||x - x'||, c = sqrt(3) for
          the 2-vector (rows e_{i+1,j} - e_ij, e_{i,j+1} - e_ij: D_p D_p^T has
          eigenvalues 3 and 1), c = sqrt(2) for one component.
        - Anisotropic denoising (``hessian_is_identity_plus_laplacian``), a sharper
          L_Ainv.  In omega, L_Ainv ||grad_x g||
          stands for a bound on ||(A(x~)^{-1} - A(x*)^{-1}) grad_x g|| / eps =
          ||A*^{-1} (A* - A~) q|| / eps with q = A~^{-1} grad_x g, and
          ||(A* - A~) q|| <= lam ||D||^2 (C3 / nu^2) max_{p,k} |(Dq)_pk| eps
          because Hphi is diagonal.  Here A = I + (a weighted graph Laplacian)
          is an M-matrix with A 1 = 1, so ||A^{-1}||_inf = 1 and max |Dq| <= 2
          ||grad_x g||_inf.  Hence L_Ainv = lam ||D||^2 (C3 / nu^2) 2
          ||grad_x g||_inf / (mu ||grad_x g||_2), with both norms moved by the
          slack 2 e / N (grad_x g is 1/N-Lipschitz in any norm) so that it
          holds at every x~' within 2e of x; used when smaller than the
          global value (for natural images by about sqrt(#pixels)).
        - L_gtheta = 0: g does not read theta.
        """
        lam, nu = math.exp(float(theta[0])), math.exp(float(theta[1]))
        mu = self.strong_convexity(theta)
        b0, b1 = self.mixed_columns(x, theta)
        # Sums over all images: parallel.sum adds the other shards' parts in a
        # data-parallel solve (the identity in one process).
        entries = self.parallel.sum(torch.stack([torch.sum(b0 * b0), torch.sum(b0 * b1),
                                               torch.sum(b1 * b1)])).tolist()
        gram = torch.tensor([[entries[0], entries[1]], [entries[1], entries[2]]],
                            dtype=torch.float64)
        B_here = math.sqrt(max(float(torch.linalg.eigvalsh(gram)[-1]), 0.0))
        L_B = math.sqrt(2) * lam * self.D2 / nu
        e = self.parallel.norm(self.lower_grad(x, theta)) / mu
        pixels = self.n_total * x[0].numel()
        terms = pixels * (1 if self.variant == "isotropic" else 2)
        B_global = lam * math.sqrt(self.D2 * terms)
        # (1 + 1e-12) absorbs the rounding of the Gram matrix in float64.
        B_norm = min(B_global, B_here * (1 + 1e-12) + 2 * L_B * e)
        L_g = 1.0 / self.n_total
        if self.variant == "isotropic":
            L_Ainv = lam * self.D2 * math.sqrt(3) * C3_ISOTROPIC / nu ** 2 / mu ** 2
        else:
            L_Ainv = lam * self.D2 * math.sqrt(2) * C3_ANISOTROPIC / nu ** 2 / mu ** 2
        if self.variant == "anisotropic" and self.hessian_is_identity_plus_laplacian:
            _, gx, _ = self.upper_grads(x, theta)
            slack = 2 * e * L_g
            g_inf = float(self.parallel.max(torch.linalg.vector_norm(gx, ord=math.inf))) + slack
            g_two = self.parallel.norm(gx) - slack
            if g_two > 0:
                local = lam * self.D2 * C3_ANISOTROPIC / nu ** 2 * 2 * g_inf / (mu * g_two)
                L_Ainv = min(L_Ainv, local)
        return BoundConstants(L_g=L_g, B_norm=B_norm, L_B=L_B, L_Ainv=L_Ainv,
                              L_gtheta=0.0, certified=True, cost=3)

    # ------------------------------------------------- local rates of the bound
    def _error_budgets(self, theta, x, x_radius):
        """(scale, C1, C2, R_near, R_far, reach) for the error d = D(x* - x) (bilevel.local_bounds).

        scale = x_radius (1 without one: the rates are then per unit ||x' - x||);
        C1 = ||D||^2 scale^2 >= sum_p |d_p|^2; C2 bounds sum_p w_p |d_p|^2 with
        w_p = lam nu^2 / R_far^3, the least curvature of phi_nu on the disc that t_p
        can reach (eigenvalues 1/r and nu^2/r^3 >= nu^2/r^3; per component nu^2/r^3
        when anisotropic), since A = I + lam D^T Hphi D (C2 = inf without x_radius;
        sharded, the sums and maxima run over all ranks).  The disc's radius is
        c x_radius (c = ||D_p||: sqrt 3 for a pixel's 2-vector, sqrt 2 for one
        component), shrunk pixel by pixel to sqrt(C2 / w_p).  R_near and R_far are
        the smallest and largest r = sqrt(|t'|^2 + nu^2) on the disc, reach_p >= |d_p|
        (None without x_radius).
        """
        lam, nu = math.exp(float(theta[0])), math.exp(float(theta[1]))
        size = self._pixel_norms(x)
        c = math.sqrt(3) if self.variant == "isotropic" else math.sqrt(2)
        if not math.isfinite(x_radius):
            R = torch.full_like(size, nu)
            return 1.0, self.D2, math.inf, R, torch.full_like(size, math.inf), None
        C2 = self.energy_budget(theta, x_radius, self.parallel.norm(self.lower_grad(x, theta)))
        # Each pixel's move |d_p| is at most c x_radius, and at most sqrt(C2 / w_p) with
        # w_p the least curvature on the disc it may reach: a smaller disc has a larger
        # w_p, so the reach shrinks, each round valid given the previous one.
        reach = torch.full_like(size, c * x_radius)
        for _ in range(20):
            w = lam * nu * nu / ((size + reach) ** 2 + nu * nu) ** 1.5
            reach = torch.minimum(reach, torch.sqrt(C2 / w))
        near = (size - reach).clamp(min=0)
        R_near = torch.sqrt(near * near + nu * nu)
        R_far = torch.sqrt((size + reach) ** 2 + nu * nu)
        return x_radius, self.D2 * x_radius ** 2, C2, R_near, R_far, reach

    def _pixel_norms(self, v):
        """|(D v)_p| per pixel (isotropic) or per component (anisotropic)."""
        t = grad_op(v)
        return torch.sqrt(t[0] * t[0] + t[1] * t[1]) if self.variant == "isotropic" else t.abs()

    def hessian_lipschitz_along(self, theta, x, q, radius, x_radius=math.inf):
        r"""M with ||(A(x*) - A(x)) q'|| <= M x_radius for every ||q' - q|| <= radius.

        (A(x*) - A(x)) q' = lam D^T [(Hphi(t*_p) - Hphi(t_p)) (D q')_p]_p, so with
        d = D(x* - x),
            ||(A(x*) - A(x)) q'||^2 <= lam^2 ||D||^2 sum_p c3_p^2 |(D q')_p|^2 |d_p|^2,
        c3_p a bound on the third derivative of phi_nu on the disc of radius
        c x_radius about t_p (:meth:`_error_budgets`), and |(D q')_p| <= |(D q)_p|
        + c radius.  The sum is bounded under the Euclidean and energy budgets of
        :mod:`bilevel.local_bounds` (:func:`~bilevel.local_bounds.max_weighted_sum`);
        with the Euclidean budget alone it is lam ||D||^2 max_p c3_p |(D q')_p|.
        Third derivatives decay like 1 / r^2:

        - isotropic, in the frame of :data:`C3_ISOTROPIC` (nu = 1, v = rho^2):
          rho^2 ||D^3 phi|| <= (s / rho) sqrt(max(2, 1 + 9 / v^2)) <= sqrt 2,
          because for v >= 3 the max is 2 and s < rho, and for 1 <= v < 3,
          (v - 1)(v^2 + 9) / v^3 <= 2 is v^3 + v^2 - 9 v + 9 >= 0, whose minimum
          on [1, 3] (at v = 1.43) is 1.10.  Scaling by nu: ||D^3 phi_nu(t)||
          <= sqrt 2 / (|t|^2 + nu^2).
        - anisotropic: |phi_nu'''(s)| = 3 |s| nu^2 / r^5 = (3 u / (1 + u^2)^{3/2}) / r^2
          with u = s / nu, and 3 u / (1 + u^2)^{3/2} <= 2 / sqrt 3 (at u = 1 / sqrt 2).

        So c3_p = min(C3 / nu^2, k / R_near_p^2) (k = sqrt 2, resp. 2 / sqrt 3).  A
        pixel far from a kink has c3_p = (nu / |t_p|)^2 times the global C3 / nu^2
        of L_Ainv, and in a flat region (a kink) the energy budget pins d_p down.
        Two oracle calls (the gradient at x, for the energy budget).
        """
        lam, nu = math.exp(float(theta[0])), math.exp(float(theta[1]))
        scale, C1, C2, R_near, R_far, reach = self._error_budgets(theta, x.detach(), x_radius)
        c = math.sqrt(3) if self.variant == "isotropic" else math.sqrt(2)
        C3, k = ((C3_ISOTROPIC, math.sqrt(2)) if self.variant == "isotropic"
                 else (C3_ANISOTROPIC, 2 / math.sqrt(3)))
        c3 = torch.clamp(k / (R_near * R_near), max=C3 / nu ** 2)
        Dq = self._pixel_norms(q.detach())
        if C2 == math.inf:  # no x_radius: the Euclidean max form, a rate per unit distance
            top = float(self.parallel.max(torch.max(c3 * (Dq + c * radius))))
            return lam * self.D2 * top
        w = lam * nu * nu / R_far ** 3
        top = self.parallel.max
        total = local_bounds.max_weighted_sum((c3 * (Dq + c * radius)) ** 2, w, C1, C2, top)
        if radius > 0:
            # Or split |(D q')_p|^2 <= 2 |(D q)_p|^2 + 2 |(D(q' - q))_p|^2: the CG part sums
            # to ||D||^2 radius^2 at most, against the largest c3_p |d_p| <= c3_p reach_p.
            split = (2 * local_bounds.max_weighted_sum((c3 * Dq) ** 2, w, C1, C2, top)
                     + 2 * float(top(torch.max(c3 * reach))) ** 2 * self.D2 * radius ** 2)
            total = min(total, split)
        return lam * math.sqrt(self.D2 * total) / scale

    def mixed_lipschitz_along(self, theta, x, q, radius, x_radius=math.inf):
        r"""N with ||(B(x*) - B(x))^T q'|| <= N x_radius for every ||q' - q|| <= radius.

        B^T q' = lam (<psi(t), D q'>, -<chi(t), D q'>), so with d = D(x* - x) each
        entry moves by at most lam sum_p j_p |d_p| |(D q')_p|, j_p a bound on the
        Jacobian of psi (resp. chi) on the disc of :meth:`_error_budgets`.  The
        Jacobian of psi has eigenvalues 1/r and nu^2/r^3, that of chi nu^2/r^3 and
        nu^2 (nu^2 - 2|t|^2)/r^5 (per component when anisotropic), so
        j_psi = 1/R_near and j_chi = min(1/nu, 2 nu^2 / R_near^3).  Split
        |(D q')_p| <= |(D q)_p| + |(D(q' - q))_p|: the first sum is bounded under
        both budgets (:func:`~bilevel.local_bounds.max_weighted_abs_sum`), the
        second by max_p j_p ||d|| ||D|| radius.  The two entries add in squares.
        (L_B ||q*|| with the global L_B = sqrt 2 lam ||D||^2 / nu is this bound with
        j = 1/nu everywhere and ||D|| ||q|| for the weighted sum.)  Two oracle calls.
        """
        lam, nu = math.exp(float(theta[0])), math.exp(float(theta[1]))
        scale, C1, C2, R_near, R_far, _reach = self._error_budgets(theta, x.detach(), x_radius)
        Dq = self._pixel_norms(q.detach())
        D = math.sqrt(self.D2)
        w = lam * nu * nu / R_far ** 3
        total = 0.0
        for j in (1.0 / R_near, torch.clamp(2 * nu * nu / R_near ** 3, max=1.0 / nu)):
            if C2 == math.inf:
                weighted = math.sqrt(C1 * float(self.parallel.sum(torch.sum((j * Dq) ** 2))))
            else:
                weighted = local_bounds.max_weighted_abs_sum(j * Dq, w, C1, C2, self.parallel.sum,
                                                             self.parallel.max)
            top = float(self.parallel.max(torch.max(j)))
            total += (weighted + math.sqrt(C1) * D * radius * top) ** 2
        return lam * math.sqrt(total) / scale
