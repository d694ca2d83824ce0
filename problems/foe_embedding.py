r"""Carry a learned field of experts into a larger bank: more filters, or larger ones.

A field of experts with K' filters of side s' learned by ``maid_sgd`` is a better start for a
bank of K >= K' filters of side s >= s' than the DCT start: :func:`embed` puts the learned
filters, centred and zero-padded (s - s' even), into the first K' windows with their weights
alpha_k and smoothings nu_k, so every response of a carried filter is one of the old ones on a
valid region (s - s') / 2 pixels narrower on each side.

The other K - K' filters keep the new problem's DCT start, normalised, at a small weight.  A
filter at weight zero would never move: the gradient of h in a filter's taps is proportional to
its weight alpha_k (docs/problems.md, the mixed derivative B^T w).  So each new filter gets
``weight`` times the bank's typical strength, in the scale-free form of the potential
(alpha phi_nu(c^T x) = alpha ||c|| phi_{nu / ||c||}(c^T x / ||c||)): with c unit norm,

    alpha_new = weight * geomean_k(alpha_k ||c_k||),   nu_new = geomean_k(nu_k / ||c_k||).

With ``weight`` small the new h is the learned one plus weak Charbonnier terms, and the
learned theta's upper value changes little.
"""
from __future__ import annotations

import math

import torch

from .fields_of_experts import FieldsOfExperts


def embed(problem, source, theta, weight=0.1):
    """theta for ``problem`` holding the learned field of experts (``source``, ``theta``).

    Parameters
    ----------
    problem, source : FieldsOfExperts
        The new bank (K filters of side s) and the learned one (K' <= K, s' <= s, s - s' even).
    theta : torch.Tensor
        The learned parameters, ``source.dim_theta`` entries.
    weight : float
        The new filters' strength as a fraction in (0, 1] of the learned filters' geometric
        mean (module doc).
    """
    if not isinstance(problem, FieldsOfExperts) or not isinstance(source, FieldsOfExperts):
        raise TypeError(f"embed: carries a fields_of_experts into a fields_of_experts, got "
                        f"{type(source).__name__} -> {type(problem).__name__}")
    theta = torch.as_tensor(theta, dtype=torch.float64)
    if theta.shape != (source.dim_theta,):
        raise ValueError(f"embed: theta must have the source's {source.dim_theta} entries, "
                         f"got shape {tuple(theta.shape)}")
    (K0, s0), (K, s) = (source.K, source.s), (problem.K, problem.s)
    if K0 > K or s0 > s or (s - s0) % 2:
        raise ValueError(f"embed: {K0} filters of side {s0} do not fit centred in {K} of side "
                         f"{s} (needs K' <= K, s' <= s, s - s' even)")
    if not (isinstance(weight, (int, float)) and 0 < weight <= 1):
        raise ValueError(f"embed: weight must be a fraction in (0, 1], got {weight!r}")
    learned = source.params(theta)  # filters as zero-mean rows (K', s'^2)
    norms = learned.filters.norm(dim=1)
    if not bool((norms > 0).all()):
        raise ValueError("embed: a learned filter is zero; its smoothing has no scale")
    filters = problem.filters(problem.theta0.detach().to(torch.float64)).clone()
    filters = filters / filters.flatten(1).norm(dim=1)[:, None, None]
    o = (s - s0) // 2
    # Zero padding keeps a zero-mean filter zero-mean, so the new problem's projection P
    # leaves the carried filters as they are.
    filters[:K0] = 0.0
    filters[:K0, o:o + s0, o:o + s0] = learned.filters.view(K0, s0, s0)
    alpha = (math.log(weight) + (learned.alpha * norms).log().mean()).repeat(K)
    nu = (learned.nu / norms).log().mean().repeat(K)
    alpha[:K0], nu[:K0] = learned.alpha.log(), learned.nu.log()
    scale = theta[:1]
    return torch.cat([scale, alpha - scale, nu, filters.flatten()]).to(problem.theta0)


def rescale(problem, theta, factor):
    """theta for ``problem`` whose regularizer is ``factor`` times the one of ``theta``: the
    common scale theta_0 moves by log(factor), so every alpha_k = e^(theta_0 + w_k) is
    multiplied by it (a start at another noise level:
    :func:`bilevel_problems.ridge_embedding.rescale`)."""
    if not isinstance(problem, FieldsOfExperts):
        raise TypeError(f"rescale: scales a fields_of_experts, got {type(problem).__name__}")
    if not 0 < factor < float("inf"):
        raise ValueError(f"rescale: factor must be positive and finite, got {factor!r}")
    theta = torch.as_tensor(theta, dtype=torch.float64).clone()
    theta[0] += math.log(factor)
    return theta.to(problem.theta0)
