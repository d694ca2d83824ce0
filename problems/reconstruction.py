r"""Learning the smoothed TV of a reconstruction from measurements y = A x + noise.

Lower level (docs/problems.md, "Reconstruction"), for N images x_i of size H x W and a
forward operator A (any :class:`bilevel.operators.LinearOperator`):

    h(x, theta) = sum_i [ 1/2 ||A x_i - y_i||^2 + lam sum_p phi_nu((D x_i)_p)
                          + gamma/2 ||x_i||^2 ],     lam = e^{theta_0},  nu = e^{theta_1},

phi_nu the smoothed TV of :mod:`.tv_denoising` (same variants), gamma > 0 fixed.  Upper
level g(x) = mean_i 1/2 ||x_i - x_i^true||^2, as in denoising.  Complex measurements
(MRI) are pairs of reals, so ||A x - y||^2 sums the squared moduli.  Closed forms:

    grad_x h = A^T (A x - y) + gamma x + lam D^T psi(Dx)
    A(x) v   = A^T A v + gamma v + lam D^T [Hphi(Dx) Dv]
    B^T w    = that of TV denoising (neither the data term nor gamma reads theta).

Constants (proofs in docs/problems.md):

- mu = gamma + gram_lower_bound(A).  A^T A is singular for blur (a Gaussian's spectrum
  falls below rounding), inpainting, super-resolution, MRI with undersampling and
  tomography with few angles, and Hphi has no uniform positive lower bound, so the
  strong convexity comes from gamma.  The Gram bound is added only when the operator
  certifies its bounds (``norm_certified``); otherwise mu = gamma, which needs
  nothing from A.  So mu is always certified.
- L = norm_squared(A) + lam ||D||^2 / nu + gamma when ``norm_certified``; otherwise
  None, and the solver estimates L with its descent-lemma safeguard (L sets the
  solver's speed, never a certificate).
- The hypergradient bound's constants and both local rates are TV denoising's
  (:mod:`.tv_bounds`) with this mu: A^T A is constant (its third derivative is 0),
  B is the regulariser's alone.  Two places of the denoising proofs use the identity
  and are replaced: the energy budget is min(eps ||r||, ||r||^2 / (4 mu)) and the
  anisotropic M-matrix L_Ainv is not used.  None of them reads A, so
  ``certified=True`` for every operator.
"""
from __future__ import annotations

import math

import torch

from bilevel import BilevelProblem
from bilevel.contract import check_theta
from bilevel.operators import LinearOperator

from . import datasets, params
from .finite_differences import diff_norm_squared
from .reconstruction_operators import PRESETS, preset_operator
from .tv_bounds import CertifiedConstants
from .tv_denoising import VARIANTS, SmoothedTV

__all__ = ["ENTRY", "PRESETS", "PRESET_TEST_PARAMS", "ReconstructionProblem",
           "preset_operator"]


class ReconstructionProblem(CertifiedConstants, SmoothedTV, BilevelProblem):
    """Bilevel learning of theta = (log weight, log smoothing) of TV-regularised reconstruction.

    Parameters
    ----------
    operator : str or LinearOperator
        A preset, one of ``PRESETS`` (built for the images' size by
        :func:`~bilevel_problems.reconstruction_operators.preset_operator` from the
        preset options below), or any operator of images (N, H, W).
    gamma : float
        The weight (> 0) of gamma/2 ||x||^2: the strong convexity.
    theta0 : (float, float)
        Starting (log weight, log smoothing).
    variant : {'isotropic', 'anisotropic'}
        Of the TV.
    sigma, seed
        Standard deviation and seed of the Gaussian noise added to A x_true (complex
        measurements: sigma on the real and on the imaginary part).
    n_images, size, source, images
        The clean images (:func:`bilevel_problems.datasets.denoising_pair`): the first
        ``n_images`` bundled images resized to ``size``, or ``images`` (N, H, W).
    measurements : tensor, optional
        y itself, shaped like A(images), instead of simulating it.
    blur_sigma, fraction_missing, factor, acceleration, angles, mask_seed
        Preset options: Gaussian blur width, share of missing pixels, down-sampling
        factor, MRI acceleration, tomography angles, seed of the random masks.
    dtype, device
        Of every tensor.
    """

    name = "reconstruction"
    upper_convex_in_x = True
    # A^T A + gamma I + lam D^T Hphi D is no M-matrix with unit row sums (tv_bounds).
    hessian_is_identity_plus_laplacian = False

    def __init__(self, operator="blur", n_images=4, size=32, sigma=0.01, seed=0,
                 theta0=(-5.0, -5.0), gamma=1e-3, variant="isotropic", blur_sigma=1.5,
                 fraction_missing=0.5, factor=2, acceleration=4.0, angles=60, mask_seed=0,
                 source=None, images=None, measurements=None, dtype=torch.float64,
                 device="cpu"):
        name = self.name
        if not isinstance(operator, LinearOperator):
            params.choice(name, "operator", operator, PRESETS)
        params.choice(name, "variant", variant, VARIANTS)
        theta0 = params.vector(name, "theta0", theta0, 2, "(log weight, log smoothing)")
        self.gamma = params.number(name, "gamma", gamma, positive=True)
        if measurements is None:
            sigma = params.number(name, "sigma", sigma, minimum=0.0)
            seed = params.integer(name, "seed", seed, 0)
        options = dict(blur_sigma=blur_sigma, fraction_missing=fraction_missing, factor=factor,
                       acceleration=acceleration, angles=angles, mask_seed=mask_seed)
        min_size = 1
        if isinstance(operator, str) and operator == "blur":
            blur_sigma = params.number(name, "blur_sigma", blur_sigma, positive=True)
            min_size = 2 * math.ceil(3 * blur_sigma) + 1  # the kernel's side
        # The noise-free pair of denoising: its loading and checks of the clean images.
        clean, _ = datasets.denoising_pair(name, images, None, source=source, n=n_images,
                                           size=size, sigma=0.0, seed=0, min_size=min_size,
                                           dtype=dtype, device=device)
        if isinstance(operator, str):
            self.preset = operator
            operator = preset_operator(name, operator, tuple(clean.shape[-2:]), **options)
        else:
            self.preset = None
        self.operator, self.clean, self.variant = operator, clean, variant
        self.n_images = self.n_total = clean.shape[0]
        self.sigma = sigma
        self.measurements = self._measurements(clean, measurements, sigma, seed)
        self.theta0 = theta0.to(dtype=dtype, device=device)
        self.D2 = diff_norm_squared(*clean.shape[-2:])
        self.norm_certified = bool(operator.norm_certified)
        self.A_norm_squared = float(operator.norm_squared())
        self.gram_lower_bound = float(operator.gram_lower_bound()) if self.norm_certified else 0.0
        # A^T y / ||A||^2: the zero-filled (MRI), masked (inpainting), block-copied
        # (super-resolution) or scaled back-projected (tomography) image.
        self.x_start = operator.A_adjoint(self.measurements) / max(self.A_norm_squared, 1e-30)

    def _measurements(self, clean, measurements, sigma, seed):
        """y = A x_true + noise, or the given ``measurements`` checked against A x_true."""
        exact = self.operator.A(clean)
        if measurements is not None:
            y = torch.as_tensor(measurements).to(device=exact.device, dtype=exact.dtype)
            if y.shape != exact.shape or not torch.isfinite(torch.view_as_real(y) if
                                                            y.is_complex() else y).all():
                raise ValueError(f"{self.name}: measurements must be finite and shaped like "
                                 f"A(images), {tuple(exact.shape)}; got {tuple(y.shape)}")
            return y
        gen = torch.Generator().manual_seed(seed)
        shape = (*exact.shape, 2) if exact.is_complex() else tuple(exact.shape)
        noise = torch.randn(shape, generator=gen, dtype=torch.float64)
        if exact.is_complex():
            noise = torch.view_as_complex(noise)
        return exact + sigma * noise.to(device=exact.device, dtype=exact.dtype)

    # ------------------------------------------------------------ the contract
    def _residual(self, x):
        return self.operator.A(x) - self.measurements

    def lower_objective(self, x, theta):
        r = self._residual(x)
        r = torch.view_as_real(r) if r.is_complex() else r
        return (0.5 * torch.sum(r * r) + self.tv_value(x, theta)
                + 0.5 * self.gamma * torch.sum(x * x))

    def upper_objective(self, x, theta):
        return 0.5 * torch.sum((x - self.clean) ** 2) / self.n_total

    def strong_convexity(self, theta):
        return self.gamma + self.gram_lower_bound  # the module docstring

    def smoothness(self, theta):
        if not self.norm_certified:
            return None
        lam, nu = math.exp(float(theta[0])), math.exp(float(theta[1]))
        return self.A_norm_squared + lam * self.D2 / nu + self.gamma

    def initial_theta(self):
        return self.theta0.clone()

    def initial_x(self, theta):
        return self.x_start.clone()

    # ------------------------------------------------------------ closed forms
    # mixed_vjp and mixed_columns: SmoothedTV's.
    def lower_grad(self, x, theta):
        return (self.operator.A_adjoint(self._residual(x)) + self.gamma * x
                + self.tv_grad(x, theta))

    def lower_hvp(self, x, theta, v):
        return self.operator.A_adjoint_A(v) + self.gamma * v + self.tv_hvp(x, theta, v)

    def upper_grads(self, x, theta):
        r = x - self.clean
        return (0.5 * torch.sum(r * r) / self.n_total, r / self.n_total,
                torch.zeros_like(theta))

    def energy_budget(self, theta, x_radius, r_norm):
        """C2 = min(eps ||r||, ||r||^2 / (4 mu)) >= sum_p w_p |d_p|^2 (docs/problems.md).

        The Hessian is at least mu I + lam D^T diag(w) D on the segment [x*, x~], so
        mu ||e||^2 + sum_p w_p |d_p|^2 <= <e, r> <= ||e|| ||r||, and
        t ||r|| - mu t^2 <= min(eps ||r||, ||r||^2 / (4 mu)) for t = ||e|| <= eps.
        """
        mu = self.strong_convexity(theta)
        return min(x_radius * r_norm, r_norm * r_norm / (4 * mu))

    # ------------------------------------------------------------------ usage
    def reconstruct(self, theta=None, tol=1e-6, max_iter=100_000):
        """x*(theta) of the measurements (theta0 by default), certified ||x - x*|| <= tol.

        Raises ``RuntimeError`` if the solve stops short of tol.
        """
        theta = self.initial_theta() if theta is None else theta
        theta = check_theta(self, torch.as_tensor(theta, dtype=self.dtype,
                                                 device=self.device).flatten())
        tol = params.number(self.name, "tol", tol, positive=True)
        max_iter = params.integer(self.name, "max_iter", max_iter, 1)
        sol = self.solve_lower(theta, tol, max_iter=max_iter)
        if not sol.converged:
            raise RuntimeError(f"{self.name}: reconstruction stopped at certified accuracy "
                               f"{sol.error_bound:.2e} > tol={tol:g} after {sol.iterations} "
                               "iterations")
        return sol.x

    def quality(self, theta=None, tol=1e-6):
        """Mean PSNR / SSIM of the reconstruction against the clean images."""
        return datasets.quality(self.reconstruct(theta, tol), self.clean)

    def on_images(self, images, seed=1, theta=None):
        """The same operator, gamma, noise level and TV on other clean ``images`` (held out).

        The noise is drawn with ``seed``; theta0 is ``theta`` (default this theta0).
        """
        theta = self.theta0 if theta is None else theta
        return ReconstructionProblem(self.operator, images=images, sigma=self.sigma, seed=seed,
                                     theta0=theta, gamma=self.gamma, variant=self.variant,
                                     dtype=self.dtype, device=self.device)


#: Small configurations of every preset (8 x 8 or 12 x 12 images), for the tests.
PRESET_TEST_PARAMS = {
    "blur": dict(operator="blur", n_images=2, size=12),
    "inpainting": dict(operator="inpainting", n_images=2, size=8),
    "superresolution": dict(operator="superresolution", n_images=2, size=8),
    "mri": dict(operator="mri", n_images=2, size=8),
    "tomography": dict(operator="tomography", n_images=2, size=8, angles=6),
}

ENTRY = dict(
    factory=ReconstructionProblem,
    description="TV-regularised reconstruction from y = A x + noise (operator=blur, "
                "inpainting, superresolution, mri, tomography): learn (log weight, log "
                "smoothing); closed-form derivatives and certified bound constants",
    test_params=PRESET_TEST_PARAMS["blur"],
)
