"""Lipschitz constants from data: empirical ratios, input gradients and a lower bound.

(a) :func:`empirical_lipschitz`, (b) :func:`input_gradient_norms` and
:func:`gradient_lipschitz`, (d) :func:`lipschitz_lower_bound`; see
:mod:`bilevel.nn.lipschitz` for what each is.

Why sorted neighbours are exact in 1-D: for x_1 < ... < x_n and i < j,
||u(x_j) - u(x_i)|| <= sum_k ||u(x_{k+1}) - u(x_k)|| <= max_k r_k (x_j - x_i),
with r_k the ratio of neighbours k, k+1 (triangle inequality).
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from .records import LowerBound


# --------------------------------------------------------------------- (a) empirical
def _values(u, X):
    if callable(u):
        with torch.no_grad():
            return u(X)
    return torch.as_tensor(u)


def pair_ratios(X, values, pairs):
    """||values[i] - values[j]|| / ||X[i] - X[j]|| for the rows (i, j) of ``pairs``.

    Pairs at distance 0 get ratio 0 (no information), so they never win a max.
    """
    n = X.shape[0]
    Xf, Vf = X.reshape(n, -1), values.reshape(n, -1)
    i, j = pairs[:, 0], pairs[:, 1]
    dist = torch.linalg.vector_norm(Xf[i] - Xf[j], dim=1)
    diff = torch.linalg.vector_norm(Vf[i] - Vf[j], dim=1)
    return torch.where(dist > 0, diff / torch.where(dist > 0, dist, 1), torch.zeros_like(dist))


def candidate_pairs(X, *, k=8, num_pairs=4096, seed=0):
    """Index pairs (m, 2) on which to compare a function's values.

    In 1-D the neighbours in sorted order (exact, see the module docstring);
    otherwise each point's ``k`` nearest neighbours plus ``num_pairs`` random pairs.
    """
    n = X.shape[0]
    Xf = X.reshape(n, -1)
    if Xf.shape[1] == 1:
        order = torch.argsort(Xf[:, 0], stable=True)
        return torch.stack([order[:-1], order[1:]], dim=1)
    chunks = []
    k = min(k, n - 1)
    if k > 0:
        for start in range(0, n, 1024):
            d = torch.cdist(Xf[start:start + 1024], Xf)
            rows = torch.arange(start, min(start + 1024, n), device=X.device)
            d[torch.arange(len(rows)), rows] = math.inf
            nn_idx = torch.topk(d, k, dim=1, largest=False).indices
            chunks.append(torch.stack([rows.repeat_interleave(k), nn_idx.reshape(-1)], dim=1))
    if num_pairs > 0 and n > 1:
        gen = torch.Generator().manual_seed(seed)
        i = torch.randint(n, (num_pairs,), generator=gen)
        j = (i + torch.randint(1, n, (num_pairs,), generator=gen)) % n  # j != i
        chunks.append(torch.stack([i, j], dim=1).to(X.device))
    return torch.cat(chunks) if chunks else torch.zeros(0, 2, dtype=torch.long)


def empirical_lipschitz(u, X, *, k=8, num_pairs=4096, seed=0, return_pairs=False):
    """Largest ratio ||u(a) - u(b)|| / ||a - b|| over pairs of data points (a).

    Parameters
    ----------
    u : callable or torch.Tensor
        The function, or its values at ``X`` (first dimension n).
    X : torch.Tensor
        The points, shape (n, ...).
    k, num_pairs, seed
        Pairs in dimension > 1 (see :func:`candidate_pairs`); in 1-D the
        result is the exact maximum over all n (n - 1) / 2 pairs.
    return_pairs : bool
        Also return the candidate pairs sorted by decreasing ratio.

    Returns
    -------
    float, or (float, torch.Tensor)
        A lower bound on Lip(u) (on its restriction to the data: exactly it in 1-D).
    """
    values = _values(u, X)
    pairs = candidate_pairs(X, k=k, num_pairs=num_pairs, seed=seed)
    if len(pairs) == 0:
        return (0.0, pairs) if return_pairs else 0.0
    ratios = pair_ratios(X, values, pairs)
    best = float(ratios.max())
    if return_pairs:
        return best, pairs[torch.argsort(ratios, descending=True)]
    return best


# ----------------------------------------------------------------- (b) input gradients
def input_gradient_norms(u, X, *, create_graph=False):
    """||J_u(x_i)||_2 at every row of X, by autograd (b).

    For a scalar output this is the gradient norm; for m outputs the Jacobian
    is built by m backward passes and its spectral norm taken.  The samples of a
    batch must be processed independently (no batch normalisation in training
    mode), since gradients of the summed outputs are used.

    Parameters
    ----------
    u : callable
    X : torch.Tensor
        Shape (n, ...).
    create_graph : bool
        Keep the graph, so that the norms can be differentiated (training).

    Returns
    -------
    torch.Tensor
        Shape (n,).
    """
    with torch.enable_grad():
        x = X.detach().requires_grad_(True)
        out = u(x)
        n = x.shape[0]
        out = out.reshape(n, -1)
        m = out.shape[1]
        grads = []
        for c in range(m):
            (g,) = torch.autograd.grad(out[:, c].sum(), x, create_graph=create_graph,
                                       retain_graph=create_graph or c < m - 1)
            grads.append(g.reshape(n, -1))
    if m == 1:
        return torch.linalg.vector_norm(grads[0], dim=1)
    J = torch.stack(grads, dim=1)  # (n, m, d)
    return torch.linalg.matrix_norm(J, ord=2)


def gradient_lipschitz(u, X, reduction="max") -> float:
    """The largest (``reduction='max'``) or mean (``'mean'``) input-gradient norm on X."""
    norms = input_gradient_norms(u, X)
    if reduction == "max":
        return float(norms.max())
    if reduction == "mean":
        return float(norms.mean())
    raise ValueError(f"reduction must be 'max' or 'mean', got {reduction!r}")


# ------------------------------------------------------------------- (d) lower bound
def lipschitz_lower_bound(u, X, *, steps=300, num_starts=32, lr=None, min_separation=None,
                          seed=0) -> LowerBound:
    """Lower bound on Lip(u) by gradient ascent on ||u(a) - u(b)|| / ||a - b|| (d).

    Starts from the best data pairs of :func:`empirical_lipschitz` and from short
    pairs centred at the data points with the largest input gradients, oriented
    along the gradient; then Adam on the sum of the pairs' log-ratios (so every
    pair climbs at its own scale).  Every ratio evaluated is a lower bound; the
    best is re-evaluated in float64 at the end.

    Parameters
    ----------
    u : callable
        The function (an ``nn.Module`` is copied to float64 for the final check).
    X : torch.Tensor
        Data, shape (n, ...).
    steps : int
        Adam steps.
    num_starts : int
        Pairs climbed at once.
    lr : float, optional
        Adam's step (default 1e-2 times the data's scale).
    min_separation : float, optional
        Pairs are kept at least this far apart, so that rounding in u(a) - u(b)
        cannot inflate a ratio (default 1e-4 times the data's scale).
    seed : int

    Returns
    -------
    LowerBound
    """
    n = X.shape[0]
    Xf = X.detach().reshape(n, -1)
    scale = float(Xf.std(0).mean()) if n > 1 else 1.0
    scale = scale if scale > 0 else 1.0
    lr = 1e-2 * scale if lr is None else lr
    min_sep = 1e-4 * scale if min_separation is None else min_separation

    def f(z):
        return u(z.reshape(-1, *X.shape[1:])).reshape(z.shape[0], -1)

    _, pairs = empirical_lipschitz(u, X, seed=seed, return_pairs=True)
    half = max(1, num_starts // 2)
    top = pairs[:half]
    A, B = [Xf[top[:, 0]]], [Xf[top[:, 1]]]
    gen = torch.Generator().manual_seed(seed)
    with torch.enable_grad():  # gradient-oriented short pairs at the steepest data points
        x = Xf.clone().requires_grad_(True)
        out = f(x)
        w = torch.randn(out.shape[1], generator=gen, dtype=torch.float64).to(out)
        (g,) = torch.autograd.grad((out * w).sum(), x)
    norms = torch.linalg.vector_norm(g, dim=1)
    steep = torch.argsort(norms, descending=True)[:num_starts - len(top)]
    d = g[steep] / norms[steep].clamp_min(1e-300)[:, None]
    h = 10 * min_sep
    A.append(Xf[steep] - h * d)
    B.append(Xf[steep] + h * d)
    centre = (torch.cat(A) + torch.cat(B)).detach() / 2
    delta = (torch.cat(B) - torch.cat(A)).detach() / 2
    dn = torch.linalg.vector_norm(delta, dim=1)
    if bool((dn == 0).any()):  # a flat start (zero gradient): any direction will do
        rand = torch.randn(delta.shape, generator=gen, dtype=torch.float64).to(delta)
        delta[dn == 0] = rand[dn == 0]
    centre.requires_grad_(True)
    delta.requires_grad_(True)
    opt = torch.optim.Adam([centre, delta], lr=lr)
    best, best_pair = -math.inf, None
    with torch.enable_grad():
        for _ in range(steps + 1):
            with torch.no_grad():  # keep the pairs apart (see min_separation)
                dn = torch.linalg.vector_norm(delta, dim=1, keepdim=True)
                delta.mul_(torch.clamp(min_sep / 2 / dn.clamp_min(1e-300), min=1.0))
            a, b = centre - delta, centre + delta
            num = torch.linalg.vector_norm(f(a) - f(b), dim=1)
            ratio = num / torch.linalg.vector_norm(a - b, dim=1)
            k = int(torch.argmax(ratio.detach()))
            if float(ratio[k].detach()) > best:
                best = float(ratio[k].detach())
                best_pair = (a[k].detach().clone(), b[k].detach().clone())
            loss = -torch.log(ratio.clamp_min(1e-300)).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    a, b = best_pair
    value = _ratio64(u, a, b, X.shape[1:])
    return LowerBound(value=value, a=a.reshape(X.shape[1:]), b=b.reshape(X.shape[1:]),
                      steps=steps)


def _ratio64(u, a, b, shape):
    """||u(a) - u(b)|| / ||a - b|| in float64 (modules are copied, not changed)."""
    if isinstance(u, nn.Module):
        u = copy.deepcopy(u).to(torch.float64)
    a64, b64 = a.to(torch.float64).reshape(1, *shape), b.to(torch.float64).reshape(1, *shape)
    with torch.no_grad():
        num = torch.linalg.vector_norm(u(a64).reshape(-1) - u(b64).reshape(-1))
    return float(num / torch.linalg.vector_norm(a64 - b64))

