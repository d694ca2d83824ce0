"""Operator norms of linear layers: certified upper bounds and power-iteration estimates.

The linear layers' share of the certified bound (c) of :mod:`bilevel.nn.lipschitz`.

What is proven
--------------
``nn.Linear``: the exact largest singular value (LAPACK SVD in float64, enlarged by
a relative 8 max(m, n) eps to cover its rounding), or, for very large matrices,
min(||W||_F, sqrt(||W||_1 ||W||_inf)) (Schur's test), both upper bounds.

``nn.Conv2d`` on an input of shape (C, H, W): write the layer as
A = S R C_N P, where P pads the input (zeros: an isometric embedding; other
modes copy pixels, ||P|| = sqrt(largest number of copies of one pixel)), C_N is
the *circular* stride-1 correlation with the (dilated, group-block-diagonal)
kernel on the padded grid N = (H + pads, W + pads), R keeps the outputs whose
window does not wrap around (for those the circular and the ordinary
correlation agree) and S keeps every stride-th output.  R and S select entries
(norm <= 1), and C_N is block-circulant, so ||C_N|| = max over the N_h N_w
frequencies of the largest singular value of the C_out x C_in matrix of kernel
Fourier coefficients (Sedghi, Gupta and Long 2019).  Hence
||A|| <= ||P|| max_omega ||W^(omega)||_2, computed exactly by FFT and batched SVD
(tight up to the boundary: for large images the gap is small).  When that is too
large to compute the fallback is Schur's test with |W|.

Power iteration (:func:`power_iteration`) gives the other side: the Rayleigh
quotient of A^T A at any unit vector is <= sigma_max^2, so its square root is a
*lower* estimate; the residual ||A^T A v - rho v|| says how close v is to *an*
eigenvector (there is an eigenvalue within the residual of rho), but not that
it is the largest one, so it is reported as a convergence diagnostic only.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from bilevel import numerics
from bilevel.numerics import random_unit

from .records import OperatorNorm

_EPS64 = torch.finfo(torch.float64).eps


# ------------------------------------------------------------------- power iteration
def power_iteration(apply, adjoint, shape, *, dtype=torch.float64, device="cpu",
                    max_iter=1000, tol=1e-6, seed=0):
    """Power iteration on A^T A for a linear operator given by ``apply`` and ``adjoint``.

    Parameters
    ----------
    apply, adjoint : callable
        v -> A v and w -> A^T w.
    shape : tuple
        Shape of the input v.
    max_iter : int
        Iteration budget.
    tol : float
        Stop when ||A^T A v - rho v|| <= tol * rho (v is then within about tol
        of an eigenvector; see the module docstring for what that does not prove).
    seed : int
        Seed of the random start.

    Returns
    -------
    (estimate, residual, iterations, converged) : (float, float, int, bool)
        ``estimate`` is sqrt of the largest Rayleigh quotient seen (a lower
        estimate of ||A||), ``residual`` the relative residual at the end.
    """
    gen = torch.Generator().manual_seed(seed)
    v = random_unit(torch.empty(shape, dtype=dtype, device=device), gen)
    run = numerics.power_iteration(lambda u: adjoint(apply(u)), v, max_iter, residual_tol=tol)
    return math.sqrt(run.rayleigh), run.residual, run.iterations, run.converged


def _linear_norm(weight, *, max_iter, tol, seed, svd_limit=4096):
    W = weight.detach().to(torch.float64, copy=True).cpu()
    est, res, its, conv = power_iteration(lambda v: W @ v, lambda w: W.T @ w, (W.shape[1],),
                                          max_iter=max_iter, tol=tol, seed=seed)
    m, n = W.shape
    if min(m, n) <= svd_limit:
        sigma = float(torch.linalg.matrix_norm(W, ord=2))
        # LAPACK's singular values are accurate to a small multiple of eps ||W||.
        return OperatorNorm(sigma * (1 + 8 * max(m, n) * _EPS64), est, res, its, conv, "svd")
    schur = math.sqrt(float(W.abs().sum(0).max()) * float(W.abs().sum(1).max()))
    upper = min(schur, float(torch.linalg.vector_norm(W))) * (1 + 8 * (m + n) * _EPS64)
    return OperatorNorm(upper, est, res, its, conv, "schur")


def _conv_norm(layer, in_shape, *, max_iter, tol, seed, fft_limit=5e7):
    """Certified bound and power-iteration estimate of a Conv2d (bias excluded)."""
    weight = layer.weight.detach().to(torch.float64, copy=True).cpu()
    shape = (1, *in_shape)
    conv = copy.deepcopy(layer).to(dtype=torch.float64, device="cpu")

    def apply(v):
        return conv._conv_forward(v, conv.weight, None)

    # A is linear, so its vector-Jacobian product at any point (here 0) is A^T.
    _, vjp = torch.func.vjp(apply, torch.zeros(shape, dtype=torch.float64))

    def adjoint(w):
        return vjp(w)[0]

    with torch.no_grad():
        est, res, its, converged = power_iteration(apply, adjoint, shape, max_iter=max_iter,
                                                   tol=tol, seed=seed)

    # The padding map P: its norm is sqrt of the largest number of copies of a pixel.
    pads = _conv_pads(conv)  # (left, right, top, bottom) as F.pad wants them
    if conv.padding_mode == "zeros":
        p_norm = 1.0
    else:
        with torch.enable_grad():
            v = torch.zeros(shape, dtype=torch.float64, requires_grad=True)
            padded = nn.functional.pad(v, pads, mode=conv.padding_mode)
            (counts,) = torch.autograd.grad(padded.sum(), v)
        p_norm = math.sqrt(float(counts.max()))

    c_out, c_in = conv.out_channels, conv.in_channels
    (dh, dw), (sh, sw) = conv.dilation, conv.stride
    kh = (weight.shape[2] - 1) * dh + 1  # spans of the dilated kernel
    kw = (weight.shape[3] - 1) * dw + 1
    n_h = in_shape[1] + pads[2] + pads[3]  # the padded input
    n_w = in_shape[2] + pads[0] + pads[1]
    mh, mw = -(-kh // sh), -(-kw // sw)  # kernel span on the coarse (polyphase) grid
    # Coarse grid: every output the layer computes is a non-wrapping circular output.
    gh = max(-(-n_h // sh), (n_h - kh) // sh + mh)
    gw = max(-(-n_w // sw), (n_w - kw) // sw + mw)
    if c_out * c_in * sh * sw * gh * (gw // 2 + 1) <= fft_limit:
        # Dense (C_out, C_in) kernel: groups are diagonal blocks, dilation inserts zeros;
        # padded with zero taps to whole multiples of the stride.
        full = torch.zeros(c_out, c_in, mh * sh, mw * sw, dtype=torch.float64)
        go, gi = c_out // conv.groups, c_in // conv.groups
        for g in range(conv.groups):
            full[g * go:(g + 1) * go, g * gi:(g + 1) * gi, :kh:dh, :kw:dw] = \
                weight[g * go:(g + 1) * go]
        # Polyphase: tap (sh m + r) of phase r; the strided layer is a stride-1
        # correlation of the C_in sh sw phase images (a permutation of the input).
        phases = full.reshape(c_out, c_in, mh, sh, mw, sw).permute(0, 1, 3, 5, 2, 4)
        phases = phases.reshape(c_out, c_in * sh * sw, mh, mw)
        spectrum = torch.fft.rfft2(phases, s=(gh, gw))
        blocks = spectrum.permute(2, 3, 0, 1).reshape(-1, c_out, c_in * sh * sw)
        # Real kernels: the frequencies left out by rfft2 are conjugates of kept ones.
        sigma = float(torch.linalg.matrix_norm(blocks, ord=2).max())
        upper = p_norm * sigma * (1 + 8 * (c_out + c_in * sh * sw + gh * gw) * _EPS64)
        return OperatorNorm(upper, est, res, its, converged, "fft")
    # Schur's test: |A| is entrywise at most the same layer with |W| (equal for zero
    # padding), so row / column sums of |A| are at most |W|-layer applied to ones.
    absconv = copy.deepcopy(conv)
    with torch.no_grad():
        absconv.weight.abs_()
        ones_in = torch.ones(shape, dtype=torch.float64)
        rows = absconv._conv_forward(ones_in, absconv.weight, None)
        with torch.enable_grad():
            v = torch.zeros(shape, dtype=torch.float64, requires_grad=True)
            (cols,) = torch.autograd.grad(absconv._conv_forward(v, absconv.weight, None), v,
                                          grad_outputs=torch.ones_like(rows))
    upper = math.sqrt(float(rows.max()) * float(cols.max())) * (1 + 1e-12)
    return OperatorNorm(upper, est, res, its, converged, "schur")


def _conv_pads(conv):
    """Padding of a Conv2d as (left, right, top, bottom), in numbers even for 'same'."""
    return tuple(int(p) for p in conv._reversed_padding_repeated_twice)


def operator_norm(layer, input_shape=None, *, max_iter=1000, tol=1e-6, seed=0) -> OperatorNorm:
    """Certified bound and power-iteration estimate of a linear layer's operator norm.

    Parameters
    ----------
    layer : nn.Linear or nn.Conv2d
        The bias is ignored (it does not change Lipschitz constants).
    input_shape : tuple, optional
        (C, H, W) of one input; required for ``nn.Conv2d``.
    max_iter, tol, seed
        Of :func:`power_iteration`.

    Returns
    -------
    OperatorNorm
    """
    kw = dict(max_iter=max_iter, tol=tol, seed=seed)
    if isinstance(layer, nn.Linear):
        return _linear_norm(layer.weight, **kw)
    if isinstance(layer, nn.Conv2d):
        if input_shape is None or len(input_shape) != 3:
            raise ValueError("operator_norm(Conv2d) needs input_shape=(C, H, W), got "
                             f"{input_shape}")
        return _conv_norm(layer, tuple(input_shape), **kw)
    raise TypeError(f"operator_norm: no operator norm for {type(layer).__name__}")

