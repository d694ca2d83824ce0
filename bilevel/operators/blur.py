"""Convolution blur with periodic (circular) boundary, and the Gaussian kernel.

Why circular: the operator is then diagonal in the 2-D DFT, A = F^* diag(k^) F, so
that A x and A^T y are two FFTs each, A^T (correlation with k: multiplication by
conj(k^)) is exactly the transpose of what A computes, and the whole spectrum of
A^T A is known: |k^(omega)|^2 over the DFT grid.  That gives a certified Gram lower
bound, which zero or reflecting boundaries would not.  The price is that the blur
wraps around the image edges; data simulated with the same operator are
consistent with it.
"""
from __future__ import annotations

import math

import torch

from .base import LinearOperator, TensorCopies, check_image
from .bounds import deflate, inflate

_U = torch.finfo(torch.float64).eps / 2


def gaussian_kernel(sigma: float, radius: int | None = None) -> torch.Tensor:
    """The isotropic Gaussian kernel exp(-(a^2 + b^2) / (2 sigma^2)), normalised to sum 1.

    Shape (2 r + 1, 2 r + 1), float64, r = ``radius`` or ceil(3 sigma) (the mass
    beyond 3 sigma, 1e-3 in 1-D, is cut, and the rest renormalised).
    """
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    r = math.ceil(3 * sigma) if radius is None else int(radius)
    offsets = torch.arange(-r, r + 1, dtype=torch.float64)
    profile = torch.exp(-offsets**2 / (2 * sigma**2))
    kernel = profile[:, None] * profile[None, :]
    return kernel / kernel.sum()


class CircularBlur(LinearOperator):
    """A x = k * x, the periodic convolution of each image with ``kernel``.

    Images (..., H, W) -> blurred images (..., H, W); A^T y = k~ * y with
    k~(a, b) = k(-a, -b) (periodic correlation).  The kernel (kh, kw), kh <= H,
    kw <= W, has its centre at index (kh // 2, kw // 2): a symmetric kernel of odd
    size does not shift the image.

    Bounds (proofs in docs/operators.md):

    - ||A||^2 <= ||k||_1^2 for every image size (Young's inequality), with equality
      for a kernel >= 0 (the constant image);
    - given ``image_shape``, both ends of the spectrum, max and min over the DFT
      grid of |k^(omega)|^2, from a direct (not fast) DFT of the kernel whose
      rounding error is bounded and subtracted: the Gram lower bound is
      (min |k^| - delta)_+^2, 0 for a Gaussian (|k^| is below rounding at high
      frequencies) and positive for a kernel with no zero in its spectrum.
    """

    norm_certified = True

    def __init__(self, kernel: torch.Tensor, image_shape: tuple[int, int] | None = None):
        kernel = torch.as_tensor(kernel, dtype=torch.float64).detach().cpu()
        if kernel.dim() != 2 or kernel.numel() == 0:
            raise ValueError(f"kernel must be a non-empty 2-D tensor, got {tuple(kernel.shape)}")
        self.kernel = kernel
        self.image_shape = None if image_shape is None else tuple(image_shape)
        if self.image_shape is not None:
            self._check_fits(self.image_shape)
        self._spectra: dict = {}  # (H, W) -> TensorCopies of the rfft2 of the padded kernel
        self._bounds = None

    def _check_fits(self, size):
        if self.kernel.shape[0] > size[0] or self.kernel.shape[1] > size[1]:
            raise ValueError(f"kernel {tuple(self.kernel.shape)} is larger than the "
                             f"images {tuple(size)}")

    def _spectrum(self, x: torch.Tensor) -> torch.Tensor:
        size = tuple(x.shape[-2:])
        if size not in self._spectra:
            self._check_fits(size)
            kh, kw = self.kernel.shape
            padded = torch.zeros(size, dtype=torch.float64)
            padded[:kh, :kw] = self.kernel
            # The centre (kh // 2, kw // 2) goes to index (0, 0), the origin of the DFT.
            padded = torch.roll(padded, shifts=(-(kh // 2), -(kw // 2)), dims=(0, 1))
            self._spectra[size] = TensorCopies(torch.fft.rfft2(padded))
        return self._spectra[size].like(x)

    def A(self, x):
        check_image(x, self.image_shape, "CircularBlur")
        spectrum = self._spectrum(x)
        return torch.fft.irfft2(spectrum * torch.fft.rfft2(x), s=x.shape[-2:])

    def A_adjoint(self, y):
        check_image(y, self.image_shape, "CircularBlur")
        spectrum = self._spectrum(y)
        return torch.fft.irfft2(spectrum.conj() * torch.fft.rfft2(y), s=y.shape[-2:])

    # ------------------------------------------------------------------------ bounds
    def _l1(self) -> float:
        return inflate(float(self.kernel.abs().sum()), self.kernel.numel())

    def _spectral_bounds(self):
        """(max, min) of |k^| over the DFT grid, each widened by the rounding bound."""
        if self._bounds is None:
            magnitude, delta = exact_dft_magnitude(self.kernel, self.image_shape)
            self._bounds = (float(magnitude.max()) + delta,
                            max(float(magnitude.min()) - delta, 0.0))
        return self._bounds

    def norm_squared(self):
        l1 = self._l1()
        if self.image_shape is None:
            return inflate(l1 * l1, 0)
        largest, _ = self._spectral_bounds()
        top = min(l1, largest)
        return inflate(top * top, 0)

    def gram_lower_bound(self):
        if self.image_shape is None:
            return 0.0
        _, smallest = self._spectral_bounds()
        return deflate(smallest * smallest, 0)


def exact_dft_magnitude(kernel: torch.Tensor, size: tuple[int, int]):
    """|k^(omega)| on the (H, W) DFT grid, by a direct DFT, and a bound on its error.

    k^(w1, w2) = sum_(a, b) k(a, b) exp(-2 pi i ((a - ca) w1 / H + (b - cb) w2 / W)),
    (ca, cb) the kernel's centre.  The phases are reduced mod H (W) in integers, so
    each twiddle factor is computed from an angle in [0, 2 pi) and is within 16 u
    of its exact value; the two matrix products sum kh and kw terms.  Hence every
    entry is within delta = 2 gamma_(2 (kh + kw) + 40) ||k||_1 of the exact value
    (the sum of |k(a, b)| times each term's relative error, with a factor 2 to spare).

    Returns (magnitude (H, W) float64, delta).
    """
    H, W = size
    kh, kw = kernel.shape
    rows = ((torch.arange(kh)[:, None] - kh // 2) * torch.arange(H)[None, :]) % H
    cols = ((torch.arange(kw)[:, None] - kw // 2) * torch.arange(W)[None, :]) % W
    twiddle_rows = torch.exp(-2j * math.pi * rows.to(torch.float64) / H)  # (kh, H)
    twiddle_cols = torch.exp(-2j * math.pi * cols.to(torch.float64) / W)  # (kw, W)
    spectrum = twiddle_rows.T @ kernel.to(torch.complex128) @ twiddle_cols
    n = 2 * (kh + kw) + 40
    delta = 2 * (n * _U / (1 - n * _U)) * float(kernel.abs().sum()) * (1 + 4 * n * _U)
    return spectrum.abs(), delta
