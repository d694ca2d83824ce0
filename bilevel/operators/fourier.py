"""Subsampled 2-D Fourier transform (single-coil MRI) of real images, and Cartesian masks.

A x = M . S F x: F the orthonormal 2-D DFT (``norm="ortho"``, F^* F = I), S = fftshift
(a permutation, so that the zero frequency sits at (H // 2, W // 2), where MRI masks
are drawn), M the sampling mask.  The image is real and the measurements complex,
so A maps R^n to C^n = R^2n and its adjoint is for the real inner products
<y, y'> = Re sum conj(y) y': since x is real,

    <A x, y> = Re <F x, S^-1 (M y)>_C = Re <x, F^* S^-1 (M y)>_C = <x, Re F^* S^-1 (M y)>,

so A^T y = Re(F^-1 S^-1 (M . y)), exactly (the imaginary part of F^* S^-1 (M y) is
orthogonal to every real x).

Spectrum of A^T A (docs/operators.md): for real x, conj(F x)(k) = (F x)(-k), which
gives A^T A = F^* diag((m(k)^2 + m(-k)^2) / 2) F with m = S^-1 M the mask in DFT
order and -k taken mod (H, W).  So ||A||^2 and lambda_min(A^T A) are the largest and
smallest of (m(k)^2 + m(-k)^2) / 2, exactly: 1 for a mask that keeps the zero
frequency (or any k with its mirror -k), 1/2 if it never keeps both of a pair.
"""
from __future__ import annotations

import torch

from .base import LinearOperator, TensorCopies, check_image
from .bounds import deflate, inflate


def cartesian_mask(image_shape: tuple[int, int], acceleration: float = 4.0,
                   center_fraction: float = 0.08, seed: int = 0) -> torch.Tensor:
    """A Cartesian k-space sampling mask (H, W), bool, in centred (fftshift) order.

    Whole columns (phase-encoding lines) are kept: the ``center_fraction`` W
    central ones (at least one, the zero frequency among them), and then columns
    drawn uniformly without replacement, by a generator seeded with ``seed``, up
    to round(W / acceleration) in all.
    """
    H, W = image_shape
    if acceleration < 1:
        raise ValueError(f"acceleration must be >= 1, got {acceleration}")
    n_lines = max(1, round(W / acceleration))
    n_center = min(n_lines, max(1, round(center_fraction * W)))
    first = W // 2 - n_center // 2
    keep = torch.zeros(W, dtype=torch.bool)
    keep[first:first + n_center] = True
    generator = torch.Generator().manual_seed(seed)
    others = torch.nonzero(~keep).flatten()
    drawn = others[torch.randperm(others.numel(), generator=generator)[:n_lines - n_center]]
    keep[drawn] = True
    return keep[None, :].expand(H, W).clone()


class SubsampledFourier(LinearOperator):
    """Single-coil MRI: real images (..., H, W) -> complex k-space (..., H, W).

    ``mask`` (H, W), bool or real weights, in centred order (zero frequency at
    (H // 2, W // 2), as :func:`cartesian_mask` draws it); the measurements are 0
    where the mask is.  A^T y = Re(ifft2(ifftshift(mask . y), "ortho")) is the exact
    adjoint for the real inner product (module docstring).  Measurements are
    complex64 for float32 images and complex128 for float64 ones.
    """

    norm_certified = True

    def __init__(self, mask: torch.Tensor):
        mask = torch.as_tensor(mask).detach().cpu().to(torch.float64)
        if mask.dim() != 2:
            raise ValueError(f"mask must be (H, W), got {tuple(mask.shape)}")
        self.mask = mask
        self.image_shape = tuple(mask.shape)
        self._mask = TensorCopies(mask)
        self._spectrum = None

    def A(self, x):
        check_image(x, self.image_shape, "SubsampledFourier")
        kspace = torch.fft.fftshift(torch.fft.fft2(x, norm="ortho"), dim=(-2, -1))
        return self._mask.like(x) * kspace

    def A_adjoint(self, y):
        if not y.is_complex():
            raise ValueError("SubsampledFourier measurements are complex")
        masked = torch.fft.ifftshift(self._mask.like(y.real) * y, dim=(-2, -1))
        return torch.fft.ifft2(masked, norm="ortho").real

    def gram_eigenvalues(self) -> torch.Tensor:
        """The eigenvalues (m(k)^2 + m(-k)^2) / 2 of A^T A, one per frequency k, (H, W)."""
        if self._spectrum is None:
            weights = torch.fft.ifftshift(self.mask).square()  # DFT order: k = 0 at [0, 0]
            # weights at -k mod (H, W): flip both axes, then roll index 0 back to 0.
            mirrored = torch.roll(torch.flip(weights, dims=(0, 1)), shifts=(1, 1), dims=(0, 1))
            self._spectrum = (weights + mirrored) / 2
        return self._spectrum

    def norm_squared(self):
        # Two squares, a sum and a halving: exact for 0/1 masks, else within 3 roundings.
        top = float(self.gram_eigenvalues().max())
        return top if self._binary() else inflate(top, 0)

    def gram_lower_bound(self):
        low = float(self.gram_eigenvalues().min())
        return low if self._binary() else deflate(low, 0)

    def _binary(self) -> bool:
        return bool(((self.mask == 0) | (self.mask == 1)).all())

