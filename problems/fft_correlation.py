r"""A filter bank's adjoint K^T z through FFTs: the same map as ``conv_transpose2d``,
computed in O(H W log(H W)) a filter instead of O(H W s^2).

For responses z_k (H - s + 1) x (W - s + 1) of filters c_k (s x s), K^T z = sum_k K_k^T z_k
is the full convolution sum_k (z_k * c_k)_p for p in [0, H - 1] x [0, W - 1]: on a periodic
grid P x Q with P >= H and Q >= W it is IDFT(sum_k Z_k C_k) there, since a term z_k(p - a)
with p - a < 0 would wrap to P + p - a >= P - s + 1 >= H - s + 1, where the zero-padded z_k
vanishes.  So the map equals the direct one exactly; computed, the two differ by the FFT's
rounding (a few units of roundoff times log2(P Q), relative to the result's scale), and the
adjoint identity <K x, z> = <x, K^T z> with ``conv2d``'s K x holds to the same rounding.
The filters' spectra are one batch of K transforms a call, differentiable by autograd, so
the derivatives in the filters come with them.
:func:`bilevel_problems.filter_bank.correlate_adjoint` chooses this way for large filters on
the CPU (``benchmarks/filter_bank_speed.py``).  K x itself stays ``conv2d``: through FFTs
it needs K inverse transforms an image.
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


def correlate_adjoint(z: torch.Tensor, filters: torch.Tensor, s: int) -> torch.Tensor:
    """K^T z = sum_k K_k^T z_k for responses z (N, K, H', W'): images (N, H' + s - 1, W' + s - 1).

    On the CPU one image at a time, the filters' spectra computed once: each image's values
    are then those it has alone (batched transforms round differently by position in the
    batch), and the image's K spectra stay in cache."""
    h, w = z.shape[-2] + s - 1, z.shape[-1] + s - 1
    grid = (fast_size(h), fast_size(w))
    spectra = torch.fft.rfft2(filters.reshape(-1, s, s), s=grid)  # C_k, (K, P, Q // 2 + 1)

    def adjoint(part):
        summed = torch.sum(torch.fft.rfft2(part, s=grid) * spectra, dim=1)
        return torch.fft.irfft2(summed, s=grid)[..., :h, :w]
    if z.device.type != "cpu" or z.shape[0] == 1:
        return adjoint(z)
    return torch.cat([adjoint(part) for part in z.split(1)])
