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

Constants (proofs in docs/problems.md; the data term's in :mod:`.measurements`):

- mu = gamma + gram_lower_bound(A) (Hphi has no uniform positive lower bound).
- L = norm_squared(A) + gamma + lam ||D||^2 / nu when the operator certifies its norm;
  otherwise None (estimated by the solver, never a certificate).
- With ``sensitivity_by_solves``, K >= ||A^{-1} B|| by two CG solves
  (:mod:`bilevel.sensitivity`) instead of ||B|| / mu.
- The hypergradient bound's constants and both local rates are TV denoising's
  (:mod:`.tv_bounds`) with this mu.  Two places of the denoising proofs use the
  identity and are replaced: the energy budget is min(eps ||r||, ||r||^2 / (4 mu))
  and the anisotropic M-matrix L_Ainv is not used.  None of them reads A, so
  ``certified=True`` for every operator.
"""
from __future__ import annotations

import inspect
import math

import torch

from bilevel import BilevelProblem

from . import params
from .finite_differences import diff_norm_squared
from .foe_reconstruction import FoEReconstruction
from .measurements import LinearMeasurements, measured_images
from .reconstruction_operators import PRESETS, preset_operator
from .tv_bounds import CertifiedConstants
from .tv_denoising import VARIANTS, SmoothedTV

__all__ = ["ENTRY", "FoEReconstruction", "PRESETS", "PRESET_TEST_PARAMS", "REGULARIZERS",
           "ReconstructionProblem", "preset_operator", "reconstruction"]


class ReconstructionProblem(LinearMeasurements, CertifiedConstants, SmoothedTV, BilevelProblem):
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
    sensitivity_by_solves : bool
        Bound ||A^{-1} B|| by two CG solves at every hypergradient
        (:mod:`bilevel.sensitivity`) instead of ||B|| / gamma: omega about 70x sharper
        (median over the tightness benchmark's cases), each hypergradient dearer, and MAID
        not cheaper (its steps are certified by values; docs/certificates.md).  Worth it
        where the certificate itself is the product (a final check, a reported bound).
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
                 source=None, images=None, measurements=None, sensitivity_by_solves=False,
                 dtype=torch.float64, device="cpu"):
        name = self.name
        params.choice(name, "variant", variant, VARIANTS)
        if not isinstance(sensitivity_by_solves, bool):
            raise ValueError(f"{name}: sensitivity_by_solves must be True or False, got "
                             f"{sensitivity_by_solves!r}")
        self.sensitivity_by_solves = sensitivity_by_solves
        theta0 = params.vector(name, "theta0", theta0, 2, "(log weight, log smoothing)")
        clean, operator, preset = measured_images(
            name, operator, images=images, source=source, n_images=n_images, size=size,
            dtype=dtype, device=device, blur_sigma=blur_sigma,
            fraction_missing=fraction_missing, factor=factor, acceleration=acceleration,
            angles=angles, mask_seed=mask_seed)
        self.variant = variant
        self._measure(operator, clean, measurements, sigma, seed, gamma, preset)
        self.theta0 = theta0.to(dtype=dtype, device=device)
        self.D2 = diff_norm_squared(*clean.shape[-2:])

    # ------------------------------------------------------------ the contract
    def lower_objective(self, x, theta):
        return self.data_value(x) + self.tv_value(x, theta)

    def smoothness(self, theta):
        if self.data_smoothness is None:
            return None
        lam, nu = math.exp(float(theta[0])), math.exp(float(theta[1]))
        return self.data_smoothness + lam * self.D2 / nu

    def initial_theta(self):
        return self.theta0.clone()

    # ------------------------------------------------------------ closed forms
    # mixed_vjp and mixed_columns: SmoothedTV's; the data term: LinearMeasurements'.
    def lower_grad(self, x, theta):
        return self.data_grad(x) + self.tv_grad(x, theta)

    def lower_hvp(self, x, theta, v):
        return self.data_hvp(v) + self.tv_hvp(x, theta, v)

    # ------------------------------------------------------------------ usage
    def on_images(self, images, seed=1, theta=None):
        """The same operator, gamma, noise level and TV on other clean ``images`` (held out).

        The noise is drawn with ``seed``; theta0 is ``theta`` (default this theta0).
        """
        theta = self.theta0 if theta is None else theta
        return ReconstructionProblem(self.operator, images=images, sigma=self.sigma, seed=seed,
                                     theta0=theta, gamma=self.gamma, variant=self.variant,
                                     sensitivity_by_solves=self.sensitivity_by_solves,
                                     dtype=self.dtype, device=self.device)


#: Small configurations of every preset (8 x 8 or 12 x 12 images), for the tests.
PRESET_TEST_PARAMS = {
    "blur": dict(operator="blur", n_images=2, size=12),
    "inpainting": dict(operator="inpainting", n_images=2, size=8),
    "superresolution": dict(operator="superresolution", n_images=2, size=8),
    "mri": dict(operator="mri", n_images=2, size=8),
    "tomography": dict(operator="tomography", n_images=2, size=8, angles=6),
}

def reconstruction(regularizer="tv", **options):
    """The reconstruction problem with ``regularizer`` (one of ``REGULARIZERS``).

    ``options`` are those of its class (:class:`ReconstructionProblem` for 'tv',
    :class:`~bilevel_problems.foe_reconstruction.FoEReconstruction` for 'foe'); one
    it does not take is named with the accepted ones.
    """
    params.choice("reconstruction", "regularizer", regularizer, REGULARIZERS)
    cls = REGULARIZERS[regularizer]
    accepted = list(inspect.signature(cls).parameters)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"reconstruction[regularizer={regularizer}]: unknown parameter(s) "
                         f"{', '.join(unknown)}; accepted: regularizer, {', '.join(accepted)}")
    return cls(**options)


REGULARIZERS = {"tv": ReconstructionProblem, "foe": FoEReconstruction}

ENTRY = dict(
    factory=reconstruction,
    description="Reconstruction from y = A x + noise (operator=blur, inpainting, "
                "superresolution, mri, tomography) with a smoothed TV (regularizer=tv: learn "
                "(log weight, log smoothing)) or a field of experts (regularizer=foe); "
                "closed-form derivatives and certified bound constants",
    test_params=PRESET_TEST_PARAMS["blur"],
)
