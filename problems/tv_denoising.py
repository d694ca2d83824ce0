r"""Learning the weight and the smoothing of total-variation denoising.

Lower level (docs/problems.md), for N images x_i of size H x W:

    h(x, theta) = sum_i [ 1/2 ||x_i - y_i||^2 + lam sum_p phi_nu((D x_i)_p) ],
    lam = e^{theta_0},  nu = e^{theta_1},

with D the forward differences (Neumann boundary: the last difference in each
direction is zero) and, at each pixel p with t = (D x)_p in R^2,

    isotropic:    phi_nu(t) = sqrt(|t|^2 + nu^2)
    anisotropic:  phi_nu(t) = sqrt(t_1^2 + nu^2) + sqrt(t_2^2 + nu^2).

Upper level: g(x) = mean_i 1/2 ||x_i - x_i^true||^2.

Every derivative is in closed form through D and its exact adjoint D^T (minus
the divergence), vectorised over the batch; no double backward.  With
r = sqrt(|t|^2 + nu^2) (per component r_k for the anisotropic variant):

    grad_x h  = x - y + lam D^T psi(Dx),            psi(t) = t / r
    A v       = v + lam D^T [Hphi(Dx) Dv],          Hphi(t) = I / r - t t^T / r^3
                                                    (aniso: diag(nu^2 / r_k^3))
    B^T w     = lam (<psi(Dx), Dw>, -<chi(Dx), Dw>), chi(t) = nu^2 t / r^3
                (the second entry is d/dtheta_1 = nu d/dnu; d psi / d nu = -nu t / r^3).

Constants (each a proof; see :meth:`TVDenoising.bound_constants`):

- mu = 1, because Hphi is positive semi-definite and h is a sum over images
  (never an average, which would shrink mu by N).
- ||D||^2 = 4 cos^2(pi / 2H) + 4 cos^2(pi / 2W) < 8 exactly: D^T D is the
  Neumann Laplacian, whose eigenvalues are 4 sin^2(pi k / 2H) + 4 sin^2(pi l / 2W).
- The eigenvalues of Hphi are 1/r and nu^2/r^3 (isotropic) or nu^2/r_k^3, all
  <= 1/nu, so L = 1 + lam ||D||^2 / nu.
"""
from __future__ import annotations

import math

import torch

from bilevel import BoundConstants, local_bounds

from . import params
from .denoising import DenoisingProblem

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
VARIANTS = ("isotropic", "anisotropic")


def grad_op(x: torch.Tensor) -> torch.Tensor:
    """Forward differences D x, shape (2, *x.shape): vertical, then horizontal.

    Neumann boundary: appending the last row (column) makes the last
    difference exactly zero.
    """
    dv = torch.diff(x, dim=-2, append=x[..., -1:, :])
    dh = torch.diff(x, dim=-1, append=x[..., :, -1:])
    return torch.stack((dv, dh))


def grad_adjoint(p: torch.Tensor) -> torch.Tensor:
    """D^T p, the exact adjoint of :func:`grad_op` (minus the divergence), for any p.

    The last difference of D is identically zero, so the last row (column) of
    p does not enter: (D^T p)_k = p_{k-1} - p_k over the first H - 1 entries.
    In-place slice updates: half the time of the equivalent pads.
    """
    qv, qh = p[0][..., :-1, :], p[1][..., :, :-1]
    out = p.new_zeros(p.shape[1:])
    out[..., 1:, :] += qv
    out[..., :-1, :] -= qv
    out[..., :, 1:] += qh
    out[..., :, :-1] -= qh
    return out


def diff_norm_squared(height: int, width: int) -> float:
    """||D||^2 = 4 cos^2(pi / 2H) + 4 cos^2(pi / 2W) (< 8) for H x W images."""
    return 4 * math.cos(math.pi / (2 * height)) ** 2 + 4 * math.cos(math.pi / (2 * width)) ** 2


def _radius(t, nu, variant):
    """r = sqrt(|t_p|^2 + nu^2) per pixel (isotropic) or per component (anisotropic).

    psi = phi'(t) = t / r and chi = -nu d psi / d nu = nu^2 t / r^3 follow from r;
    the hot path (the gradient) needs only psi, so nothing else is computed here.
    """
    if variant == "isotropic":
        return torch.sqrt(t[0] * t[0] + t[1] * t[1] + nu * nu)
    return torch.sqrt(t * t + nu * nu)


def _hessian_apply(t, s, nu, r, variant):
    """Hphi(t) s per pixel (the Hessian of phi_nu at t applied to s)."""
    if variant == "isotropic":
        return (s - t * ((t * s).sum(0) / (r * r))) / r
    return s * (nu * nu / (r * r * r))


class TVDenoising(DenoisingProblem):
    """Bilevel learning of theta = (log weight, log smoothing) of smoothed TV denoising.

    Parameters
    ----------
    theta0 : (float, float)
        Starting (log weight, log smoothing); (-5, -5) is the paper's.
    variant : {'isotropic', 'anisotropic'}
    n_images, size, sigma, seed, source, images, noisy, shard, dtype, device
        The training images (:class:`~bilevel_problems.denoising.DenoisingProblem`):
        8 of 64 x 64 by default, float64 on the CPU.  Sharded, the bound constants
        are still those of the whole problem (computed through ``reduce_sum`` /
        ``reduce_max``).
    """

    name = "tv_denoising"

    def __init__(self, n_images=8, size=64, sigma=0.1, seed=0, theta0=(-5.0, -5.0),
                 variant="isotropic", source=None, images=None, noisy=None, shard=None,
                 dtype=torch.float64, device="cpu"):
        params.choice(self.name, "variant", variant, VARIANTS)
        theta0 = params.vector(self.name, "theta0", theta0, 2, "(log weight, log smoothing)")
        super().__init__(n_images=n_images, size=size, sigma=sigma, seed=seed, source=source,
                         images=images, noisy=noisy, shard=shard, dtype=dtype, device=device)
        self.variant = variant
        self.theta0 = theta0.to(dtype=dtype, device=device)
        self.D2 = diff_norm_squared(*self.clean.shape[-2:])

    # ------------------------------------------------------------ the contract
    def lower_objective(self, x, theta):
        lam, nu = torch.exp(theta[0]), torch.exp(theta[1])
        phi = _radius(grad_op(x), nu, self.variant).sum()
        return 0.5 * torch.sum((x - self.noisy) ** 2) + lam * phi

    def smoothness(self, theta):
        lam, nu = math.exp(float(theta[0])), math.exp(float(theta[1]))
        return 1.0 + lam * self.D2 / nu

    # ------------------------------------------------------------ closed forms
    def lower_grad(self, x, theta):
        lam, nu = torch.exp(theta[0]), torch.exp(theta[1])
        t = grad_op(x)
        return x - self.noisy + lam * grad_adjoint(t / _radius(t, nu, self.variant))

    def lower_hvp(self, x, theta, v):
        lam, nu = torch.exp(theta[0]), torch.exp(theta[1])
        t = grad_op(x)
        r = _radius(t, nu, self.variant)
        return v + lam * grad_adjoint(_hessian_apply(t, grad_op(v), nu, r, self.variant))

    def _psi_chi(self, x, nu):
        t = grad_op(x)
        r = _radius(t, nu, self.variant)
        psi = t / r
        return psi, psi * (nu * nu / (r * r))

    def mixed_vjp(self, x, theta, w):
        lam, nu = torch.exp(theta[0]), torch.exp(theta[1])
        psi, chi = self._psi_chi(x, nu)
        dw = grad_op(w)
        return torch.stack((lam * torch.sum(psi * dw), -lam * torch.sum(chi * dw)))

    def mixed_columns(self, x, theta):
        """The two columns of B(x) = d/dtheta grad_x h, each shaped like x."""
        lam, nu = torch.exp(theta[0]), torch.exp(theta[1])
        psi, chi = self._psi_chi(x, nu)
        return lam * grad_adjoint(psi), -lam * grad_adjoint(chi)

    def bound_constants(self, theta, x):
        r"""Certified constants of the hypergradient bound, in closed form.

        With lam = e^{theta_0}, nu = e^{theta_1}, ||D||^2 (:func:`diff_norm_squared`),
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
        - Anisotropic variant, a sharper L_Ainv.  In omega, L_Ainv ||grad_x g||
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
        # Sums over all images: reduce_sum adds the other shards' parts in a
        # data-parallel solve (the identity in one process).
        entries = self.reduce_sum(torch.stack([torch.sum(b0 * b0), torch.sum(b0 * b1),
                                               torch.sum(b1 * b1)])).tolist()
        gram = torch.tensor([[entries[0], entries[1]], [entries[1], entries[2]]],
                            dtype=torch.float64)
        B_here = math.sqrt(max(float(torch.linalg.eigvalsh(gram)[-1]), 0.0))
        L_B = math.sqrt(2) * lam * self.D2 / nu
        e = self.global_norm(self.lower_grad(x, theta)) / mu
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
            _, gx, _ = self.upper_grads(x, theta)
            slack = 2 * e * L_g
            g_inf = float(self.reduce_max(torch.linalg.vector_norm(gx, ord=math.inf))) + slack
            g_two = self.global_norm(gx) - slack
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
        C2 = local_bounds.energy_budget(x_radius, self.global_norm(self.lower_grad(x, theta)))
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
            top = float(self.reduce_max(torch.max(c3 * (Dq + c * radius))))
            return lam * self.D2 * top
        w = lam * nu * nu / R_far ** 3
        top = self.reduce_max
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
                weighted = math.sqrt(C1 * float(self.reduce_sum(torch.sum((j * Dq) ** 2))))
            else:
                weighted = local_bounds.max_weighted_abs_sum(j * Dq, w, C1, C2, self.reduce_sum,
                                                             self.reduce_max)
            top = float(self.reduce_max(torch.max(j)))
            total += (weighted + math.sqrt(C1) * D * radius * top) ** 2
        return lam * math.sqrt(total) / scale

    # ------------------------------------------------------------------ usage
    def as_noisy(self, noisy):
        """Images to denoise as a floating-point tensor, in their own dtype."""
        return _floating_images(noisy)

    def on_images(self, images, theta):
        return _on_images(images, theta, self.variant)


def _floating_images(noisy):
    noisy = torch.as_tensor(noisy)
    if not noisy.is_floating_point():
        raise TypeError(f"tv_denoising: denoise needs floating-point images, got {noisy.dtype}")
    return noisy


def _on_images(images, theta, variant):
    """TV denoising of ``variant`` on ``images``, in their dtype and on their device."""
    theta = torch.as_tensor(theta, dtype=images.dtype, device=images.device).flatten()
    return TVDenoising(images=images, noisy=images, theta0=theta, variant=variant,
                       dtype=images.dtype, device=images.device)


def denoise(noisy, theta, variant="isotropic", tol=None, max_iter=100_000):
    """Minimise the lower-level objective for ``noisy`` (N, H, W) or (H, W).

    Returns x, shaped like ``noisy`` and in its dtype, with certified
    ||x - x*|| <= tol (FISTA, mu = 1).  ``tol=None``: 1e-6, raised to what the
    dtype can certify at this theta (float32 often cannot reach 1e-6); an
    explicit tol below the dtype's reachable accuracy is refused at once
    (:meth:`~bilevel_problems.denoising.DenoisingProblem.solve_certified`).  Raises
    ``RuntimeError`` if the solve stops short of tol.
    """
    noisy = _floating_images(noisy)
    return _on_images(noisy, theta, variant).solve_certified(theta, tol, max_iter, noisy.shape)


ENTRY = dict(
    factory=TVDenoising,
    description="Smoothed TV denoising: learn (log weight, log smoothing); closed-form "
                "derivatives and certified bound constants",
    test_params=dict(n_images=2, size=16),
)
