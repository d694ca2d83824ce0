"""Smoothed monotone linear splines as convex potentials (of convex ridge regularizers)."""
from __future__ import annotations

import torch

from .functional import _channel_offsets


def potential_tables(slopes: torch.Tensor, x_range: float) -> torch.Tensor:
    r"""Piecewise-cubic tables of the convex potentials psi with psi'' = smoothed slopes.

    ``slopes`` (C, M), M = N - 1, are the slopes s_j >= 0 of monotone linear
    splines sigma on the grid of :func:`knots` (interval j = [t_j, t_{j+1}]).
    Replacing sigma by its average over a window of width T (a box filter)
    gives sigma_T, whose derivative is the linear interpolation of the slopes
    on the midpoints m_j = t_j + T/2, constant beyond m_0 and m_{M-1}:

        psi'' = sigma_T' = sum_j s_j hat_j,   hat_j >= 0,  sum_j hat_j = 1.

    So psi'' lies in [min s, max s] (the slope bounds survive the smoothing),
    psi is C^2 and piecewise cubic, and |psi'''| <= max_j |s_j - s_{j-1}| / T
    (the Hessian of a ridge regularizer built from psi is Lipschitz).  Also
    |sigma_T - sigma| <= max_j |s_j - s_{j-1}| T / 8 (up to the constant
    shift below).  Normalisation: psi(0) = psi'(0) = 0, so psi >= 0 is
    minimal at 0 and sigma_T(0) = 0; the potentials are not forced to be even.

    Returns
    -------
    torch.Tensor
        (C, 4, M + 1): for each piece p (p = 0: t < m_0; p = 1..M-1:
        [m_{p-1}, m_p); p = M: t >= m_{M-1}) the Taylor coefficients
        (psi, psi', psi'', psi''') at its base point b_p (b_0 = m_0, b_p = m_{p-1}).
        Differentiable in ``slopes``.
    """
    C, M = slopes.shape
    N = M + 1
    T = 2 * x_range / (N - 1)
    zero = torch.zeros_like(slopes[:, :1])
    P2 = torch.cat([slopes[:, :1], slopes], dim=1)                       # psi'' at b_p
    P3 = torch.cat([zero, torch.diff(slopes, dim=1) / T, zero], dim=1)   # psi''' on piece p
    # Integrate from b_1 = m_0 with psi(b_1) = psi'(b_1) = 0, piece by piece (pieces
    # 1..M-1 have length T), then shift so that psi(0) = psi'(0) = 0.
    d1 = P2[:, 1:M] * T + P3[:, 1:M] * T ** 2 / 2
    S1 = torch.cat([zero, zero, torch.cumsum(d1, dim=1)], dim=1)         # psi' at b_p
    d0 = S1[:, 1:M] * T + P2[:, 1:M] * T ** 2 / 2 + P3[:, 1:M] * T ** 3 / 6
    S0 = torch.cat([zero, zero, torch.cumsum(d0, dim=1)], dim=1)         # psi at b_p
    # 0 lies in piece pc = (N - 1) / 2 at distance u = T / 2 from its base.
    pc, u = (N - 1) // 2, T / 2
    a1 = S1[:, pc] + P2[:, pc] * u + P3[:, pc] * u ** 2 / 2
    a0 = S0[:, pc] + S1[:, pc] * u + P2[:, pc] * u ** 2 / 2 + P3[:, pc] * u ** 3 / 6
    base = -x_range + T / 2 + T * (torch.arange(N, dtype=slopes.dtype, device=slopes.device) - 1)
    base[0] = -x_range + T / 2
    S1 = S1 - a1.unsqueeze(1)
    S0 = S0 - a0.unsqueeze(1) - a1.unsqueeze(1) * base
    return torch.stack([S0, S1, P2, P3], dim=1)


#: Entries of z evaluated together on the CPU (512 KiB of float64 per temporary): the
#: piece indices, offsets and gathered coefficients of a block then stay in cache.  Whole
#: tensors of 1 to 5 million entries (a training batch, a BSD68 image, 24 filters) took
#: 49 to 77 ns an entry on this project's CPU, blocks 15 to 22.
CPU_BLOCK = 2 ** 16


def evaluate_potential(z: torch.Tensor, tables: torch.Tensor, x_range: float,
                       orders=(0,)) -> tuple:
    """psi^{(r)}(z) for r in ``orders`` (0, 1, 2), per channel (dim 1 of z).

    ``tables`` from :func:`potential_tables`; z has shape (N, C, ...).  Like the
    spline, one piece index and one offset per entry of z, then a gather per
    Taylor coefficient: O(z) memory.  Differentiable in z and in the tables.  On the
    CPU a large z goes in blocks of samples (or of rows of one image) of about
    :data:`CPU_BLOCK` entries, with the same result: each entry is computed alone.
    """
    if any(r not in (0, 1, 2) for r in orders):
        raise ValueError(f"orders must be in (0, 1, 2), got {tuple(orders)}")
    dim = 0 if z.shape[0] > 1 or z.ndim < 3 else 2  # never split the channels (dim 1)
    if z.device.type != "cpu" or z.numel() <= CPU_BLOCK or z.shape[dim] == 1:
        return _evaluate_block(z, tables, x_range, orders)
    step = max(1, CPU_BLOCK * z.shape[dim] // z.numel())
    blocks = [_evaluate_block(part, tables, x_range, orders) for part in z.split(step, dim)]
    return tuple(torch.cat(values, dim) for values in zip(*blocks, strict=True))


def _evaluate_block(z, tables, x_range, orders):
    C, _, P = tables.shape
    M = P - 1
    T = 2 * x_range / M
    m0 = -x_range + T / 2
    with torch.no_grad():
        p = (torch.floor((z - m0) / T) + 1).clamp_(0, M).long()
    base = m0 + T * (p - 1).clamp(min=0).to(z.dtype)
    u = z - base
    flat = p + _channel_offsets(z, C, P).long()
    # Gather only the coefficients the orders need (psi'' needs 2 of 4), and fuse each
    # Horner step into one addcmul: on images this is most of a gradient's time.
    c = {r: torch.take(tables[:, r].reshape(-1), flat) for r in range(min(orders, default=3), 4)}
    out = []
    for r in orders:
        if r == 0:  # psi = c0 + u (c1 + u/2 (c2 + u c3 / 3))
            inner = torch.addcmul(c[2], u, c[3], value=1 / 3)
            out.append(torch.addcmul(c[0], u, torch.addcmul(c[1], u, inner, value=0.5)))
        elif r == 1:
            out.append(torch.addcmul(c[1], u, torch.addcmul(c[2], u, c[3], value=0.5)))
        else:
            out.append(torch.addcmul(c[2], u, c[3]))
    return tuple(out)
