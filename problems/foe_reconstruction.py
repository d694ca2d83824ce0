r"""Learning a fields-of-experts prior for a reconstruction from y = A x + noise.

Lower level (docs/problems.md, "Reconstruction"):

    h(x, theta) = sum_i [ 1/2 ||A x_i - y_i||^2 + gamma/2 ||x_i||^2
                          + e^{theta_0} sum_k e^{w_k} sum_p phi_{nu_k}((K_k x_i)_p) ],

the data term of :mod:`.measurements` and the regulariser of
:mod:`.fields_of_experts` (same theta, same closed forms).  Every certified constant
is the field of experts' with mu = gamma + gram_lower_bound(A): its proofs read the
data term only through mu, its gradient and the energy budget, which the data hooks
supply (:mod:`.measurements`).  A prior learned on denoising starts here as it is
(``theta0``) and may be tuned for the operator whole, or in a few scalar directions
(:class:`bilevel.Reparametrized`).
"""
from __future__ import annotations

import torch

from .fields_of_experts import FieldsOfExperts
from .fields_of_experts.gemm import CHUNK_COLUMNS
from .measurements import LinearMeasurements, measured_images


class FoEReconstruction(LinearMeasurements, FieldsOfExperts):
    """Bilevel learning of a field of experts (filters, weights, smoothings) for an operator.

    Parameters
    ----------
    operator, gamma, sigma, seed, n_images, size, source, images, measurements
        As :class:`~bilevel_problems.reconstruction.ReconstructionProblem`.
    num_filters, filter_size, log_scale, log_smoothing, backend, chunk_columns
        As :class:`~bilevel_problems.fields_of_experts.FieldsOfExperts`.
    theta0 : tensor, optional
        The starting theta (1 + 2K + K s^2 entries), e.g. a prior learned on
        denoising; default the field of experts' DCT start.
    blur_sigma, fraction_missing, factor, acceleration, angles, mask_seed
        Preset options of the operator.
    """

    name = "reconstruction"

    def __init__(self, operator="blur", n_images=4, size=32, sigma=0.01, seed=0, gamma=1e-3,
                 num_filters=8, filter_size=5, log_scale=-5.0, log_smoothing=-3.0,
                 theta0=None, blur_sigma=1.5, fraction_missing=0.5, factor=2,
                 acceleration=4.0, angles=60, mask_seed=0, source=None, images=None,
                 measurements=None, backend="auto", chunk_columns=CHUNK_COLUMNS,
                 dtype=torch.float64, device="cpu"):
        clean, operator, preset = measured_images(
            self.name, operator, images=images, source=source, n_images=n_images, size=size,
            min_size=int(filter_size) if isinstance(filter_size, int) else 1, dtype=dtype,
            device=device, blur_sigma=blur_sigma, fraction_missing=fraction_missing,
            factor=factor, acceleration=acceleration, angles=angles, mask_seed=mask_seed)
        # The field of experts on the clean images; its denoising pair is not used: the
        # data term is the measurements' (``noisy`` is dropped below so nothing reads it).
        super().__init__(images=clean, noisy=clean, num_filters=num_filters,
                         filter_size=filter_size, log_scale=log_scale,
                         log_smoothing=log_smoothing, backend=backend,
                         chunk_columns=chunk_columns, dtype=dtype, device=device)
        self.noisy = None
        self._measure(operator, clean, measurements, sigma, seed, gamma, preset)
        if theta0 is not None:
            theta0 = torch.as_tensor(theta0, dtype=dtype, device=device).flatten()
            if theta0.shape != self.theta0.shape or not torch.isfinite(theta0).all():
                raise ValueError(f"{self.name}: theta0 must be {self.dim_theta} finite numbers "
                                 f"(1 + 2K + K s^2), got shape {tuple(theta0.shape)}")
            self.theta0 = theta0.clone()

    def denoise(self, noisy, theta=None, tol=None, max_iter=100_000):
        raise TypeError(f"{self.name}: a reconstruction has measurements, not noisy images; "
                        "use reconstruct(theta) or on_images(images) for new images")

    def on_images(self, images, seed=1, theta=None):
        """The same operator, gamma, noise level and filters on other clean ``images``.

        The noise is drawn with ``seed``; theta0 is ``theta`` (default this theta0).
        """
        return FoEReconstruction(self.operator, images=images, sigma=self.sigma, seed=seed,
                                 gamma=self.gamma, num_filters=self.K, filter_size=self.s,
                                 theta0=self.theta0 if theta is None else theta,
                                 backend=self.backend, chunk_columns=self.chunk_columns,
                                 dtype=self.dtype, device=self.device)
