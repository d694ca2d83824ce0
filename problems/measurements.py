r"""The data term of a reconstruction: y = A x + noise, for any regulariser.

A reconstruction problem's lower level is (docs/problems.md, "Reconstruction")

    h(x, theta) = sum_i [ 1/2 ||A x_i - y_i||^2 + gamma/2 ||x_i||^2 ] + R_theta(x),

with A any :class:`bilevel.operators.LinearOperator` and R_theta a convex regulariser
(smoothed TV, fields of experts).  :class:`LinearMeasurements` is the data term, mixed
into a class that writes R_theta and its certified constants through the data hooks
of :class:`~bilevel_problems.denoising.DenoisingProblem` (``data_value``,
``data_grad``, ``data_hvp``, ``data_smoothness``, ``energy_budget``):

- mu = gamma + gram_lower_bound(A), as R_theta is convex.  A^T A is singular for blur
  (a Gaussian's spectrum falls below rounding), inpainting, super-resolution, MRI with
  undersampling and tomography with few angles, so the strong convexity comes from
  gamma > 0.  The Gram bound is added only when the operator certifies its bounds
  (``norm_certified``); otherwise mu = gamma, which needs nothing from A.
- L_data = norm_squared(A) + gamma when ``norm_certified``, else None (the solver then
  estimates L with its descent-lemma safeguard: L sets the speed, never a certificate).
- The hypergradient bound's constants are the regulariser's with this mu: the data
  term is quadratic (its third derivative is 0) and does not read theta, so B and the
  Lipschitz constants of A(x) and B(x) are R_theta's alone.  The one place the
  denoising proofs used the identity is the energy budget, which becomes
  min(eps ||r||, ||r||^2 / (4 mu)) (:func:`bilevel.local_bounds.energy_budget`).
"""
from __future__ import annotations

import math

import torch

from bilevel.contract import check_theta
from bilevel.operators import LinearOperator

from . import datasets, params
from .denoising import ImageFit
from .reconstruction_operators import PRESETS, preset_operator


def measured_images(name, operator, *, images, source, n_images, size, min_size=1,
                    dtype=torch.float64, device="cpu", **options):
    """(clean images (N, H, W), the operator, its preset name or None), all checked.

    ``operator``: a preset of ``PRESETS`` (built for the images' size from ``options``:
    blur_sigma, fraction_missing, factor, acceleration, angles, mask_seed) or any
    :class:`~bilevel.operators.LinearOperator`.
    """
    if not isinstance(operator, LinearOperator):
        params.choice(name, "operator", operator, PRESETS)
    if isinstance(operator, str) and operator == "blur":
        blur_sigma = params.number(name, "blur_sigma", options.get("blur_sigma", 1.5),
                                   positive=True)
        min_size = max(min_size, 2 * math.ceil(3 * blur_sigma) + 1)  # the kernel's side
    # The noise-free pair of denoising: its loading and checks of the clean images.
    clean, _ = datasets.denoising_pair(name, images, None, source=source, n=n_images,
                                       size=size, sigma=0.0, seed=0, min_size=min_size,
                                       dtype=dtype, device=device)
    if isinstance(operator, str):
        return clean, preset_operator(name, operator, tuple(clean.shape[-2:]), **options), \
            operator
    return clean, operator, None


class LinearMeasurements(ImageFit):
    """The data term 1/2 ||A x - y||^2 + gamma/2 ||x||^2 and the usage of a reconstruction.

    :meth:`_measure` sets it up (after the clean images are held as ``self.clean``).
    """

    def _measure(self, operator, clean, measurements, sigma, seed, gamma, preset=None):
        name = self.name
        self.gamma = params.number(name, "gamma", gamma, positive=True)
        if measurements is None:
            sigma = params.number(name, "sigma", sigma, minimum=0.0)
            seed = params.integer(name, "seed", seed, 0)
        self.operator, self.clean, self.preset, self.sigma = operator, clean, preset, sigma
        self.n_images = self.n_total = clean.shape[0]
        self.measurements = self._simulate(clean, measurements, sigma, seed)
        self.norm_certified = bool(operator.norm_certified)
        self.A_norm_squared = float(operator.norm_squared())
        self.gram_lower_bound = float(operator.gram_lower_bound()) if self.norm_certified else 0.0
        self.data_smoothness = (self.A_norm_squared + self.gamma if self.norm_certified
                                else None)
        # A^T y / ||A||^2: the zero-filled (MRI), masked (inpainting), block-copied
        # (super-resolution) or scaled back-projected (tomography) image.
        self.x_start = operator.A_adjoint(self.measurements) / max(self.A_norm_squared, 1e-30)

    def _simulate(self, clean, measurements, sigma, seed):
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

    # ------------------------------------------------------------ the data term
    def data_value(self, x):
        r = self.operator.A(x) - self.measurements
        r = torch.view_as_real(r) if r.is_complex() else r
        return 0.5 * torch.sum(r * r) + 0.5 * self.gamma * torch.sum(x * x)

    def data_grad(self, x):
        return self.operator.A_adjoint(self.operator.A(x) - self.measurements) + self.gamma * x

    def data_hvp(self, v):
        return self.operator.A_adjoint_A(v) + self.gamma * v

    # ------------------------------------------------------------ the contract
    def strong_convexity(self, theta):
        return self.gamma + self.gram_lower_bound  # the module docstring

    def initial_x(self, theta):
        return self.x_start.clone()

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
