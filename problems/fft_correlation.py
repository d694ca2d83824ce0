r"""A filter bank's correlations through FFTs: the same K x and K^T z as ``conv2d`` and
``conv_transpose2d``, computed in O(H W log(H W)) a filter instead of O(H W s^2).

For images x (N, H, W) and filters c_k (s x s), both are products of spectra on a periodic
grid P x Q with P >= H and Q >= W, large enough that nothing wraps around:

- K_k x, the 'valid' correlation (x \star c_k)_i = sum_a c_k(a) x(i + a) for i in
  [0, H - s] x [0, W - s], is the circular correlation IDFT(X conj(C_k)) there: i + a
  stays below H <= P.
- K^T z = sum_k K_k^T z_k, the full convolution sum_k (z_k * c_k)_p for p in [0, H - 1]
  x [0, W - 1], is IDFT(sum_k Z_k C_k) there: a term z_k(p - a) with p - a < 0 would wrap
  to P + p - a >= P - s + 1 >= H - s + 1, where the zero-padded z_k vanishes.

Both are linear maps that equal the direct ones exactly; computed, they differ from them by
the FFT's rounding (a few units of roundoff times log2(P Q), relative to the responses'
scale), and the adjoint identity <K x, z> = <x, K^T z> holds to the same rounding.  The
filters' spectra are one batch of K transforms a call, differentiable by autograd, so the
derivatives in the filters come with them.  :func:`bilevel_problems.filter_bank.correlate`
chooses this way for large filters on the CPU (``benchmarks/filter_bank_speed.py``).
"""
from __future__ import annotations

import torch


def fast_size(n: int) -> int:
    """The smallest integer >= n whose only prime factors are 2, 3 and 5 (FFT-friendly)."""
    m = max(int(n), 1)
    while True:
        rest = m
        for p in (2, 3, 5):
            while rest % p == 0:
                rest //= p
        if rest == 1:
            return m
        m += 1


def _grid(h: int, w: int) -> tuple[int, int]:
    return fast_size(h), fast_size(w)


def _spectra(filters: torch.Tensor, s: int, grid) -> torch.Tensor:
    """C_k on the grid, (K, P, Q // 2 + 1), for filters as rows (K, s^2)."""
    return torch.fft.rfft2(filters.reshape(-1, s, s), s=grid)


def correlate(x: torch.Tensor, filters: torch.Tensor, s: int) -> torch.Tensor:
    """K x: the responses (N, K, H - s + 1, W - s + 1) of images x (N, H, W)."""
    h, w = x.shape[-2:]
    grid = _grid(h, w)
    spectra = _spectra(filters, s, grid).conj()
    images = torch.fft.rfft2(x, s=grid).unsqueeze(1)
    return torch.fft.irfft2(images * spectra, s=grid)[..., :h - s + 1, :w - s + 1]


def correlate_adjoint(z: torch.Tensor, filters: torch.Tensor, s: int) -> torch.Tensor:
    """K^T z = sum_k K_k^T z_k for responses z (N, K, H', W'): images (N, H' + s - 1, W' + s - 1).

    On the CPU one image at a time, the filters' spectra computed once: each image's values
    are then those it has alone (batched transforms round differently by position in the
    batch), and the image's K spectra stay in cache."""
    h, w = z.shape[-2] + s - 1, z.shape[-1] + s - 1
    grid = _grid(h, w)
    spectra = _spectra(filters, s, grid)

    def adjoint(part):
        summed = torch.sum(torch.fft.rfft2(part, s=grid) * spectra, dim=1)
        return torch.fft.irfft2(summed, s=grid)[..., :h, :w]
    if z.device.type != "cpu" or z.shape[0] == 1:
        return adjoint(z)
    return torch.cat([adjoint(part) for part in z.split(1)])
