"""Operators that keep or average pixels: inpainting masks and downsampling.

All three have orthogonal rows (each pixel feeds at most one measurement), so A A^T
is diagonal and ||A||^2 is its largest entry, exactly.
"""
from __future__ import annotations

from fractions import Fraction

import torch
import torch.nn.functional as F

from .base import LinearOperator, TensorCopies, check_image
from .bounds import float_above, float_below


def random_mask(image_shape: tuple[int, int], fraction_missing: float, seed: int = 0):
    """A boolean mask (H, W), True where a pixel is observed.

    Exactly round(fraction_missing H W) pixels are missing, drawn uniformly
    without replacement by a generator seeded with ``seed`` (same mask on every
    machine and device).
    """
    if not 0.0 <= fraction_missing <= 1.0:
        raise ValueError(f"fraction_missing must lie in [0, 1], got {fraction_missing}")
    H, W = image_shape
    n_missing = round(fraction_missing * H * W)
    generator = torch.Generator().manual_seed(seed)
    missing = torch.randperm(H * W, generator=generator)[:n_missing]
    mask = torch.ones(H * W, dtype=torch.bool)
    mask[missing] = False
    return mask.reshape(H, W)


class Inpainting(LinearOperator):
    """A x = m * x (pixelwise), for a mask ``m`` (H, W) of 0/1 (or any real weights).

    Images (..., H, W) -> measurements (..., H, W), zero where m = 0; A^T = A.
    A^T A = diag(m^2), so ||A||^2 = max m^2 (1 for a binary mask that observes a
    pixel) and lambda_min(A^T A) = min m^2 (0 as soon as one pixel is missing), both
    exact.  The mask may also be (N, H, W), one per image.
    """

    norm_certified = True

    def __init__(self, mask: torch.Tensor):
        mask = torch.as_tensor(mask).detach().cpu().to(torch.float64)
        if mask.dim() < 2:
            raise ValueError(f"mask must be (H, W) or (N, H, W), got {tuple(mask.shape)}")
        self.mask = mask
        self._mask = TensorCopies(mask)

    def A(self, x):
        check_image(x, self.mask.shape[-2:], "Inpainting")
        if torch.broadcast_shapes(self.mask.shape, x.shape) != x.shape:
            raise ValueError(f"Inpainting's masks {tuple(self.mask.shape)} do not match the "
                             f"images {tuple(x.shape)}")
        return self._mask.like(x) * x

    def A_adjoint(self, y):
        return self.A(y)

    def norm_squared(self):
        largest = float(self.mask.abs().max())
        return float_above(Fraction(largest) ** 2)  # exact: 1.0 for a binary mask

    def gram_lower_bound(self):
        smallest = float(self.mask.abs().min())
        return float_below(Fraction(smallest) ** 2)


class Downsampling(LinearOperator):
    """Average pooling by an integer ``factor`` f: each f x f block -> its mean.

    Images (..., H, W), f dividing H and W, -> (..., H / f, W / f).  The adjoint
    copies each measurement onto its block, divided by f^2.  The rows of A have f^2
    entries 1/f^2 on disjoint blocks, so A A^T = I / f^2: ||A||^2 = 1 / f^2 exactly;
    A^T A has rank H W / f^2, so lambda_min = 0 for f > 1.  For blur followed by
    decimation, compose a :class:`~bilevel.operators.CircularBlur` with
    :class:`Decimation` instead.
    """

    norm_certified = True

    def __init__(self, factor: int):
        if int(factor) != factor or factor < 1:
            raise ValueError(f"factor must be a positive integer, got {factor}")
        self.factor = int(factor)

    def _check(self, x):
        check_image(x, None, "Downsampling")
        if x.shape[-2] % self.factor or x.shape[-1] % self.factor:
            raise ValueError(f"image size {tuple(x.shape[-2:])} is not divisible by "
                             f"the factor {self.factor}")

    def A(self, x):
        self._check(x)
        flat = x.reshape(-1, 1, *x.shape[-2:])
        pooled = F.avg_pool2d(flat, self.factor)
        return pooled.reshape(*x.shape[:-2], *pooled.shape[-2:])

    def A_adjoint(self, y):
        f = self.factor
        spread = y.repeat_interleave(f, dim=-2).repeat_interleave(f, dim=-1)
        return spread / (f * f)

    def norm_squared(self):
        return float_above(Fraction(1, self.factor**2))

    def gram_lower_bound(self):
        return 1.0 if self.factor == 1 else 0.0


class Decimation(LinearOperator):
    """Keep every f-th pixel in each direction: (A x)(i, j) = x(f i, f j).

    Images (..., H, W) -> (..., ceil(H / f), ceil(W / f)); the adjoint puts each
    measurement back at its pixel, zeros elsewhere (the image size comes from
    ``image_shape``: the measurements' size does not determine it).  A selects
    pixels, so ||A||^2 = 1 and lambda_min(A^T A) = 0 for f > 1.
    """

    norm_certified = True

    def __init__(self, factor: int, image_shape: tuple[int, int]):
        if int(factor) != factor or factor < 1:
            raise ValueError(f"factor must be a positive integer, got {factor}")
        self.factor = int(factor)
        self.image_shape = tuple(image_shape)

    def A(self, x):
        check_image(x, self.image_shape, "Decimation")
        return x[..., :: self.factor, :: self.factor]

    def A_adjoint(self, y):
        out = y.new_zeros(*y.shape[:-2], *self.image_shape)
        out[..., :: self.factor, :: self.factor] = y
        return out

    def norm_squared(self):
        return 1.0

    def gram_lower_bound(self):
        return 1.0 if self.factor == 1 else 0.0
