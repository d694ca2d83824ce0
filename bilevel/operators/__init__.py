"""Forward operators A for reconstruction problems h(x) = 1/2 ||A x - y||^2 + R(x) + ...

The protocol (:class:`LinearOperator`): ``A(x)``, ``A_adjoint(y)``, ``norm_squared()``
(an upper bound of ||A||^2, certified where ``norm_certified``) and
``gram_lower_bound()`` (a lower bound of lambda_min(A^T A), else 0).  Images are
real tensors (N, H, W); see each operator for its measurements.  The mathematics,
with the proof of every bound, is in docs/operators.md.

Modules
-------
base
    The protocol, :class:`Identity`, :class:`Composition` and :class:`Scaled`.
bounds
    Rounding margins and the Collatz-Wielandt bound for nonnegative matrices.
blur
    :class:`CircularBlur` (periodic boundary) and :func:`gaussian_kernel`.
sampling
    :class:`Inpainting` (:func:`random_mask`), :class:`Downsampling` (average
    pooling) and :class:`Decimation`.
fourier
    :class:`SubsampledFourier` (single-coil MRI) and :func:`cartesian_mask`.
tomography
    :class:`ParallelBeamTomography`, an explicit sparse Radon matrix (Joseph's method).
checks
    :func:`adjoint_test`, :func:`norm_check` and :func:`dense_matrix`.
deepinv_adapter
    :class:`DeepinvOperator`: any ``deepinv.physics.LinearPhysics`` (optional extra;
    deepinv is imported only when an adapter is built).
"""
from .base import Composition, Identity, LinearOperator, Scaled
from .blur import CircularBlur, gaussian_kernel
from .checks import AdjointTest, NormCheck, adjoint_test, dense_matrix, norm_check
from .deepinv_adapter import DeepinvOperator
from .fourier import SubsampledFourier, cartesian_mask
from .sampling import Decimation, Downsampling, Inpainting, random_mask
from .tomography import ParallelBeamTomography

__all__ = [
    "AdjointTest", "CircularBlur", "Composition", "Decimation", "DeepinvOperator",
    "Downsampling", "Identity", "Inpainting", "LinearOperator", "NormCheck", "Scaled",
    "ParallelBeamTomography", "SubsampledFourier", "adjoint_test", "cartesian_mask",
    "dense_matrix", "gaussian_kernel", "norm_check", "random_mask",
]
