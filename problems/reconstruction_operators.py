"""The forward operators of the reconstruction presets, built for an image size.

=================  =================================================================
preset             operator (:mod:`bilevel.operators`, mathematics in docs/operators.md)
=================  =================================================================
blur               :class:`CircularBlur` of a Gaussian kernel of ``blur_sigma`` (1.5)
inpainting         :class:`Inpainting`, ``fraction_missing`` (0.5) of the pixels missing
superresolution    :class:`Downsampling`, average pooling by ``factor`` (2)
mri                :class:`SubsampledFourier` of a :func:`cartesian_mask`, ``acceleration`` 4
tomography         :class:`ParallelBeamTomography`, ``angles`` (60) over [0, pi),
                   :class:`Scaled` to ||A|| <= 1
=================  =================================================================

Random masks are drawn with ``mask_seed``.  Every option is checked here, with a
one-line error naming it and its range (:mod:`bilevel_problems.params`).
"""
from __future__ import annotations

from bilevel.operators import (
    CircularBlur,
    Downsampling,
    Inpainting,
    ParallelBeamTomography,
    Scaled,
    SubsampledFourier,
    cartesian_mask,
    gaussian_kernel,
    random_mask,
)

from . import params

PRESETS = ("blur", "inpainting", "superresolution", "mri", "tomography")


def preset_operator(problem, preset, image_shape, *, blur_sigma=1.5, fraction_missing=0.5,
                    factor=2, acceleration=4.0, angles=60, mask_seed=0):
    """The operator of ``preset`` for images of ``image_shape`` (H, W).

    ``problem`` names the problem in error messages; only the options of ``preset``
    are read (and checked).
    """
    params.choice(problem, "operator", preset, PRESETS)
    H, W = image_shape
    if preset == "blur":
        blur_sigma = params.number(problem, "blur_sigma", blur_sigma, positive=True)
        return CircularBlur(gaussian_kernel(blur_sigma), image_shape=(H, W))
    if preset == "inpainting":
        fraction = params.number(problem, "fraction_missing", fraction_missing, minimum=0.0)
        if fraction > 1:
            raise ValueError(f"{problem}: fraction_missing must be a number in [0, 1], got "
                             f"{fraction_missing!r}")
        seed = params.integer(problem, "mask_seed", mask_seed, 0)
        return Inpainting(random_mask((H, W), fraction, seed))
    if preset == "superresolution":
        factor = params.integer(problem, "factor", factor, 1)
        if H % factor or W % factor:
            raise ValueError(f"{problem}: factor must divide the image size {H}x{W}, got "
                             f"{factor}")
        return Downsampling(factor)
    if preset == "mri":
        acceleration = params.number(problem, "acceleration", acceleration, minimum=1.0)
        seed = params.integer(problem, "mask_seed", mask_seed, 0)
        return SubsampledFourier(cartesian_mask((H, W), acceleration, seed=seed))
    angles = params.integer(problem, "angles", angles, 1)
    # Scaled to ||A|| <= 1 (the certified bound), as the other presets are: unscaled, ||A||^2
    # grows like angles x H and, with mu = gamma, every solve's condition number with it.
    radon = ParallelBeamTomography((H, W), angles=angles)
    return Scaled(radon, 1 / radon.norm_squared() ** 0.5)
