r"""A bank of K zero-mean s x s filters on images: fields of experts and the ridge regularizer.

K_k x is the 'valid' correlation of an image x (H x W) with the filter c_k: its
(H - s + 1) x (W - s + 1) responses where the filter fits inside the image
(``conv2d``).  K_k^T is its exact adjoint (``conv_transpose2d``, or for large filters on
the CPU the same map through FFTs, :mod:`bilevel_problems.fft_correlation`): no boundary
rule is needed, so <K x, z> = <x, K^T z> holds to rounding.  Filters are rows
(K, s^2), zero-mean by construction: c_k = P r_k = r_k - mean(r_k), P the
projection that removes the mean (:func:`zero_mean`); they start from the DCT
basis (:func:`dct_filters`).

Norms both problems' constants use, with a_k = c_k \star c_k the autocorrelation
(:func:`autocorrelations`):

- K_k is the full convolution C_k on the zero-extended image followed by a
  restriction to the valid window, so K_k^T K_k <= C_k^T C_k, the convolution
  with a_k, whose norm is the sup of its symbol |c_k^(w)|^2, certified from a DFT
  grid (:func:`symbol_bound`) and never more than ||a_k||_1 <= ||c_k||_1^2 (Young):
  kappa_k >= ||K_k|| (:func:`operator_norm_bounds`).
- For weights w_k >= 0 likewise ||sum_k w_k K_k^T K_k|| <= sup sum_k w_k |c_k^|^2
  (:func:`weighted_kernel_norm`): the curvature term of the smoothness L.  On
  learned 5 x 5 filters the l1 bound was 27 times the Hessian's norm; the symbol's is
  within the grid factor of the worst case over the data.
- X(x): c -> K_c x, the patch map of x, restricted to zero-mean filters; its
  norm is the square root of the largest eigenvalue of the s^2 x s^2 Gram
  matrix of the mean-removed patches (:func:`centred_patch_gram`,
  :func:`top_singular_value`), and ||X(v)|| <= s ||v||.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import fft_correlation, params


def check_bank(problem: str, num_filters, filter_size) -> tuple[int, int]:
    """(K, s), checked: at least one filter, of at least 2 x 2."""
    return (params.integer(problem, "num_filters", num_filters, 1),
            params.integer(problem, "filter_size", filter_size, 2))


def dct_filters(size: int, count: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    """Zero-mean, unit-norm starting filters (count, size, size).

    The 2-D DCT-II basis without its constant function, by increasing frequency
    (u + v, then u); beyond the size^2 - 1 basis functions, random zero-mean
    unit-norm filters drawn from ``seed``.
    """
    n = torch.arange(size, dtype=torch.float64)
    freqs = sorted(((u, v) for u in range(size) for v in range(size) if (u, v) != (0, 0)),
                   key=lambda uv: (uv[0] + uv[1], uv[0]))
    basis = []
    for u, v in freqs[:count]:
        cu = torch.cos(math.pi * (2 * n + 1) * u / (2 * size))
        cv = torch.cos(math.pi * (2 * n + 1) * v / (2 * size))
        basis.append(torch.outer(cu, cv))
    if count > len(basis):
        gen = torch.Generator().manual_seed(seed)
        basis.extend(torch.randn((count - len(basis), size, size), generator=gen,
                                 dtype=torch.float64).unbind(0))
    filters = torch.stack(basis)
    filters = filters - filters.mean(dim=(1, 2), keepdim=True)
    filters = filters / torch.linalg.vector_norm(filters, dim=(1, 2), keepdim=True)
    return filters.to(dtype)


def zero_mean(raw: torch.Tensor) -> torch.Tensor:
    """c_k = P r_k for raw filters as rows (K, s^2)."""
    return raw - raw.mean(dim=1, keepdim=True)


def _image_by_image(op, batch: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    # On the CPU, float64 conv2d / conv_transpose2d over a batch of 20 images ran 1.2 to 3.8
    # times slower than 20 calls on one image each for 9x9 to 13x13 filters on 56x56 to 64x64
    # crops (torch 2.13; benchmarks/filter_bank_speed.py): the batch's im2col buffer falls
    # out of cache.  Elsewhere the batch stays one call: on a GPU a loop would serialise
    # N small launches (not measured: no GPU was lent to the stop that made this change).
    if batch.device.type != "cpu" or batch.shape[0] == 1:
        return op(batch, weight)
    return torch.cat([op(one, weight) for one in batch.split(1)])


#: On the CPU, terms over a bank's responses go through groups of samples whose responses
#: fill about this many entries (4 MiB of float64): the group's responses then stay in cache.
#: A Hessian-vector product of the 24x11x11 ridge on 800 crops of 60x60 took 4.3 ms a crop
#: in one piece, 2.5 in groups (torch 2.13, this project's CPU; benchmarks/filter_bank_speed.py).
CPU_RESPONSES = 2 ** 19


def _group_size(images: torch.Tensor, per_response: int, s: int) -> int:
    """How many of images (N, H, W) make a group of about CPU_RESPONSES entries, with
    ``per_response`` entries to each of their responses; all N off the CPU."""
    n, h, w = images.shape
    if images.device.type != "cpu":
        return n
    return max(1, CPU_RESPONSES // (per_response * max(h - s + 1, 1) * max(w - s + 1, 1)))


def by_samples(fn, K: int, s: int, *tensors: torch.Tensor) -> torch.Tensor:
    """``fn(*tensors)``, computed on groups of samples (dim 0 of each tensor, images (N, H, W)
    first) and concatenated: the same values where each sample's term is computed alone, as
    the bank's are.  Elsewhere than on the CPU, one call."""
    step = _group_size(tensors[0], K, s)
    if tensors[0].shape[0] <= step:
        return fn(*tensors)
    groups = zip(*(t.split(step) for t in tensors), strict=True)
    return torch.cat([fn(*group) for group in groups])


def correlate(x: torch.Tensor, filters: torch.Tensor, s: int) -> torch.Tensor:
    """K x: the responses (N, K, H - s + 1, W - s + 1) of images x (N, H, W)."""
    return _image_by_image(F.conv2d, x.unsqueeze(1), filters.view(-1, 1, s, s))


#: On the CPU, K^T z of filters at least this large goes through FFTs
#: (:mod:`bilevel_problems.fft_correlation`): 24 filters on 20 crops took 7.9 ms against
#: conv_transpose2d's 19.5 at 13x13, 8.2 against 13.5 at 11x11
#: (benchmarks/filter_bank_speed.py); in trials the two tied at 9x9, the FFT slower below.
#: K x stays conv2d: there the FFT needs K inverse transforms an image, and in trials it was
#: no faster at 13x13.
FFT_ADJOINT_FROM = 11


def correlate_adjoint(z: torch.Tensor, filters: torch.Tensor, s: int) -> torch.Tensor:
    """K^T z = sum_k K_k^T z_k, the exact adjoint of :func:`correlate`, shape (N, H, W)."""
    if z.device.type == "cpu" and s >= FFT_ADJOINT_FROM:
        return fft_correlation.correlate_adjoint(z, filters, s)
    return _image_by_image(F.conv_transpose2d, z, filters.view(-1, 1, s, s)).squeeze(1)


def patches(images: torch.Tensor, s: int) -> torch.Tensor:
    """The s x s patches of images (N, H, W) as columns: (N, s^2, (H - s + 1)(W - s + 1)).

    Equal to ``F.unfold(images[:, None], s)``, but built as a strided view and one
    copy, which on the CPU is several times faster than ``F.unfold``'s im2col.
    """
    n, h, w = images.shape
    view = images.unfold(1, s, 1).unfold(2, s, 1)  # (N, H', W', s, s), no copy
    return view.permute(0, 3, 4, 1, 2).reshape(n, s * s, (h - s + 1) * (w - s + 1))


def autocorrelations(filters: torch.Tensor, s: int) -> torch.Tensor:
    """a_k = c_k \\star c_k for filters as rows (K, s^2): shape (K, 2s - 1, 2s - 1)."""
    K = filters.shape[0]
    bank = filters.view(1, K, s, s)
    return F.conv2d(bank, bank.transpose(0, 1), padding=s - 1, groups=K)[0]


def fft_rounding(dtype) -> float:
    """A relative bound on the rounding of a symbol read from an FFT, against the kernel's l1
    norm: 100 units of roundoff of ``dtype`` (an FFT's error is a few units times log2 N),
    never below 1e-12, the float64 margin used before."""
    return max(1e-12, 100 * torch.finfo(dtype).eps)


def grid_factor(d, n) -> float:
    """sup sigma <= max over the n x n DFT grid times this, for a nonnegative symbol of
    degree d in each frequency (the second-order argument of :func:`symbol_bound`)."""
    return 1.0 / (1.0 - 2.0 * (math.pi * d / n) ** 2)


def symbol_bound(kernels: torch.Tensor) -> torch.Tensor:
    r"""Certified sup over frequencies of the symbols of autocorrelation-type kernels (K,).

    A kernel k of shape (2s - 1, 2s - 1) that is a nonnegative combination of
    autocorrelations has the symbol sigma(w) = sum_m k_m e^{-i <m, w>} >= 0, a
    trigonometric polynomial of degree d = s - 1 in each frequency, and the
    convolution with k has norm sup sigma on l2(Z^2).  At sigma's maximiser w* its
    gradient vanishes, and along any unit direction sigma is band-limited of type
    sqrt(2) d, so Bernstein's inequality bounds its second derivative by 2 d^2 sup sigma;
    the N x N DFT grid has a point within pi / N of w* along each axis, so

        sup sigma <= max_grid sigma / (1 - 2 (pi d / N)^2)

    (:func:`smooth_symbol_bound` reads the same grid argument).  N is the power of two
    >= 16 pi d (the factor is at most 1 / (1 - 1/128)); a relative :func:`fft_rounding` of
    ||k||_1 covers the FFT's rounding.  Never above ||k||_1, the bound by Young's inequality
    (sigma's sup is at most it), whose minimum this returns.
    """
    size = kernels.shape[-1]
    d = (size - 1) // 2
    l1 = kernels.abs().sum(dim=(-2, -1))
    if d == 0:
        return l1
    n = 1 << max(6, math.ceil(math.log2(16 * math.pi * d)))
    grid = torch.stack([torch.fft.rfft2(k, s=(n, n)).abs().amax() for k in kernels.unbind(0)])
    fourier = grid * grid_factor(d, n) + fft_rounding(kernels.dtype) * l1
    return torch.minimum(fourier, l1)


def smooth_symbol_bound(kernel: torch.Tensor, smoothing: float = 0.02) -> torch.Tensor:
    r"""A bound >= sup sigma, differentiable in ``kernel``, for one autocorrelation-type kernel.

    ``kernel`` (2s - 1, 2s - 1), a sum of autocorrelations, has the symbol sigma(w) =
    sum_m k_m e^{-i <m, w>} >= 0.  At its maximiser w* the gradient vanishes, and along any
    unit direction u, t -> sigma(w* + t u) is band-limited with exponential type
    d (|u_1| + |u_2|) <= sqrt(2) d (d = s - 1), so Bernstein's inequality bounds its second
    derivative by 2 d^2 sup sigma.  The N x N DFT grid has a point within pi / N of w* along
    each axis (|w - w*|^2 <= 2 pi^2 / N^2), where sigma >= sup sigma (1 - 2 (pi d / N)^2);
    so sup sigma <= max_grid sigma / (1 - 2 (pi d / N)^2), with N the power of two >= 32 d
    (the factor at most 1.02).  The grid's max becomes a log-sum-exp at temperature
    T = ``smoothing`` k_0 / log(n) over its n values: at least the max, at most ``smoothing``
    k_0 above it, and k_0 (sigma's mean over the frequencies) is at most sup sigma.  T is
    linear in the kernel, so the bound is smooth in it, unlike the max or ||k||_1 (whose
    kink :mod:`bilevel_problems.weakly_convex_ridge` smooths otherwise, at 40% more on
    learned banks).  A relative :func:`fft_rounding` of (2s - 1)^2 k_0 >= ||k||_1 covers the
    FFT's rounding (|k_m| <= k_0 for autocorrelations).
    """
    size = kernel.shape[-1]
    d = (size - 1) // 2
    k0 = kernel[d, d]
    if d == 0 or not k0 > 0:  # a 1 x 1 kernel, or no filter at all (sigma = 0)
        return k0
    n = 1 << max(6, math.ceil(math.log2(32 * d)))
    # the kernel centred on the origin of the periodic grid: its DFT is sigma, real
    grid = torch.roll(F.pad(kernel, (0, n - size, 0, n - size)), shifts=(-d, -d), dims=(0, 1))
    sigma = torch.fft.rfft2(grid).real.flatten()
    T = smoothing * k0 / math.log(sigma.numel())
    soft = T * torch.logsumexp(sigma / T, dim=0)
    return soft * grid_factor(d, n) + fft_rounding(kernel.dtype) * size ** 2 * k0


def operator_norm_bounds(auto: torch.Tensor) -> torch.Tensor:
    """kappa_k >= ||K_k|| from the autocorrelations (K,): sqrt of :func:`symbol_bound`
    (at most sqrt(||a_k||_1))."""
    return torch.sqrt(symbol_bound(auto))


def weighted_kernel_norm(auto: torch.Tensor, weights: torch.Tensor) -> float:
    """A bound >= ||sum_k w_k K_k^T K_k|| for weights w_k >= 0 (K,): the
    :func:`symbol_bound` of sum_k w_k a_k (at most ||sum_k w_k a_k||_1)."""
    kernel = torch.sum(weights.view(-1, 1, 1) * auto, dim=0)
    return float(symbol_bound(kernel.unsqueeze(0))[0])


def centred_patch_gram(cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the patches (N, s^2, L) with their mean removed, their s^2 x s^2 Gram in float64).

    The filter directions P delta are zero-mean, so X only sees the zero-mean
    part of each patch.
    """
    cols = cols - cols.mean(dim=1, keepdim=True)
    return cols, torch.matmul(cols, cols.transpose(1, 2)).sum(0).double()


def top_singular_value(gram: torch.Tensor) -> float:
    """sqrt(lambda_max(gram)), enlarged by a relative 1e-10 that covers its rounding."""
    return math.sqrt(max(float(torch.linalg.eigvalsh(gram)[-1]), 0.0)) * (1 + 1e-10)


def weighted_responses(weights, responses, kappa, c2, radius, total, top):
    r"""(peak_k, spread_k) >= (max_p w_p |(K_k q')_p|, ||w o K_k q'||_2) for every q' within
    ``radius`` of q, per filter.

    ``responses`` = |K_k q| and ``weights`` w >= 0, both (N, K, H, W); kappa_k >= ||K_k||,
    c2_k = ||c_k||_2 (K,).  |(K_k (q' - q))_p| <= ||c_k||_2 radius and ||K_k (q' - q)|| <=
    kappa_k radius, so peak_k = max_p w_p (|(K_k q)_p| + c2_k radius) and spread_k =
    ||w o K_k q||_2 + max_p w_p kappa_k radius.  ``total`` / ``top`` add / take the max over
    data-parallel ranks (``problem.parallel.sum`` / ``.max``).  The local rates of both filter
    banks read them: a pixelwise factor |f(z'_p) - f(z_p)| <= w_p |d_p| with d_k = K_k (x' - x)
    gives ||(f(z') - f(z)) o K_k q'|| <= min(kappa_k peak_k, c2_k spread_k) ||x' - x||.
    """
    dims = (0, 2, 3)
    shift = (c2 * radius).view(1, -1, 1, 1)
    peak = top((weights * (responses + shift)).amax(dim=dims))
    spread = torch.sqrt(total(torch.sum((weights * responses) ** 2, dim=dims)))
    return peak, spread + top(weights.amax(dim=dims)) * kappa * radius


def weighted_patch_grams(cols, weights):
    """sum_p w_kp^2 patch_p patch_p^T for each k: (K, s^2, s^2) in float64, from the
    centred patches ``cols`` (N, s^2, L) of :func:`centred_patch_gram` and per-response
    weights ``weights`` (N, K, ...) with L responses per image (sums over images and, added
    up, over chunks of them)."""
    n, K = weights.shape[:2]
    w = weights.reshape(n, K, -1)
    grams = []
    for k in range(K):
        scaled = cols * w[:, k:k + 1]
        grams.append(torch.matmul(scaled, scaled.transpose(1, 2)).sum(0).double())
    return torch.stack(grams)


def patch_grams(images, s, weights=None):
    """(G, G_w): the Gram matrix of :func:`centred_patch_gram` of the s x s patches of images
    (N, H, W) and, given weights (N, K, H - s + 1, W - s + 1), the :func:`weighted_patch_grams`
    (K, s^2, s^2) (else None), both in float64.  sqrt(lambda_max) of G is ||X(x) P||, of
    G_w[k] ||diag(w_k) X(x) P|| (:func:`top_singular_value`, :func:`top_singular_values`).

    On the CPU, a few images at a time (patches of about CPU_RESPONSES entries): the patches
    of all images at once (2 GB for 800 crops at 11 x 11) made each weighted Gram one more
    pass through memory.  At 24 x 11 x 11 on the 800 crops of a final check, 67 s a call in
    one piece, 29 s in groups (benchmarks/filter_bank_speed.py)."""
    n, step = images.shape[0], _group_size(images, s * s, s)
    gram, grams = 0.0, (None if weights is None else 0.0)
    for start in range(0, n, step):
        cols, part = centred_patch_gram(patches(images[start:start + step], s))
        gram = gram + part
        if weights is not None:
            grams = grams + weighted_patch_grams(cols, weights[start:start + step])
    return gram, grams


def top_singular_values(grams):
    """:func:`top_singular_value` of each of a stack of Gram matrices (K, n, n): (K,) on the CPU."""
    return torch.linalg.eigvalsh(grams)[:, -1].clamp(min=0).sqrt().cpu() * (1 + 1e-10)
