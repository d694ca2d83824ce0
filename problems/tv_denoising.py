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

Constants (each a proof; those of the hypergradient bound in :mod:`.tv_bounds`):

- mu = 1, because Hphi is positive semi-definite and h is a sum over images
  (never an average, which would shrink mu by N).
- ||D||^2 = 4 cos^2(pi / 2H) + 4 cos^2(pi / 2W) < 8 exactly
  (:mod:`bilevel_problems.finite_differences`).
- The eigenvalues of Hphi are 1/r and nu^2/r^3 (isotropic) or nu^2/r_k^3, all
  <= 1/nu, so L = 1 + lam ||D||^2 / nu.
"""
from __future__ import annotations

import math

import torch

from . import params
from .denoising import DenoisingProblem
from .finite_differences import diff_norm_squared, grad_adjoint, grad_op
from .tv_bounds import C3_ANISOTROPIC, C3_ISOTROPIC, CertifiedConstants

__all__ = ["C3_ANISOTROPIC", "C3_ISOTROPIC", "ENTRY", "VARIANTS", "SmoothedTV", "TVDenoising",
           "denoise", "diff_norm_squared", "grad_adjoint", "grad_op"]

VARIANTS = ("isotropic", "anisotropic")


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


class SmoothedTV:
    """The regulariser R_theta(x) = lam sum_p phi_nu((D x)_p) of theta, its derivatives and B.

    Shared by TV denoising and the reconstruction problems
    (:mod:`bilevel_problems.reconstruction`): their data terms do not read theta,
    so B = d/dtheta grad_x h is the regulariser's alone.  Needs ``self.variant``.
    """

    def tv_value(self, x, theta):
        """R_theta(x), summed over the images."""
        lam, nu = torch.exp(theta[0]), torch.exp(theta[1])
        return lam * _radius(grad_op(x), nu, self.variant).sum()

    def tv_grad(self, x, theta):
        """grad_x R_theta(x) = lam D^T psi(Dx)."""
        lam, nu = torch.exp(theta[0]), torch.exp(theta[1])
        t = grad_op(x)
        return lam * grad_adjoint(t / _radius(t, nu, self.variant))

    def tv_hvp(self, x, theta, v):
        """The Hessian of R_theta at x applied to v: lam D^T [Hphi(Dx) Dv]."""
        lam, nu = torch.exp(theta[0]), torch.exp(theta[1])
        t = grad_op(x)
        r = _radius(t, nu, self.variant)
        return lam * grad_adjoint(_hessian_apply(t, grad_op(v), nu, r, self.variant))

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


class TVDenoising(CertifiedConstants, SmoothedTV, DenoisingProblem):
    """Bilevel learning of theta = (log weight, log smoothing) of smoothed TV denoising.

    Parameters
    ----------
    theta0 : (float, float)
        Starting (log weight, log smoothing); (-5, -5) is the paper's.
    variant : {'isotropic', 'anisotropic'}
    n_images, size, sigma, seed, source, images, noisy, shard, dtype, device
        The training images (:class:`~bilevel_problems.denoising.DenoisingProblem`):
        8 of 64 x 64 by default, float64 on the CPU.  Sharded, the bound constants
        are still those of the whole problem (computed through ``parallel.sum`` /
        ``parallel.max``).
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
        return 0.5 * torch.sum((x - self.noisy) ** 2) + self.tv_value(x, theta)

    def smoothness(self, theta):
        lam, nu = math.exp(float(theta[0])), math.exp(float(theta[1]))
        return 1.0 + lam * self.D2 / nu

    # ------------------------------------------------------------ closed forms
    # mixed_vjp and mixed_columns: SmoothedTV's.
    def lower_grad(self, x, theta):
        return x - self.noisy + self.tv_grad(x, theta)

    def lower_hvp(self, x, theta, v):
        return v + self.tv_hvp(x, theta, v)

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
