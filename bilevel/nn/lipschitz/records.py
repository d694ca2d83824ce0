"""Result records of the Lipschitz bounds and estimates of :mod:`bilevel.nn.lipschitz`.

:class:`OperatorNorm` (one linear layer), :class:`LayerBound` and
:class:`NetworkBound` (the certified bound (c)), :class:`LowerBound` (d) and
:class:`LipschitzReport` ((a)-(d) side by side).
"""
from __future__ import annotations

import dataclasses
import math

import torch


@dataclasses.dataclass(frozen=True)
class OperatorNorm:
    """The operator norm of one linear layer: a certified bound and an estimate.

    Attributes
    ----------
    upper : float
        Certified upper bound on ||A||_2.
    estimate : float
        sqrt of the largest Rayleigh quotient of A^T A met by power iteration:
        a lower estimate of ||A||_2 (exact arithmetic would make it a bound).
    residual : float
        ||A^T A v - rho v|| at the last iterate (relative to rho): a
        convergence diagnostic, not a certificate.
    iterations : int
        Power iterations spent.
    converged : bool
        Whether the relative residual reached the tolerance.
    method : str
        How ``upper`` was obtained ('svd', 'fft', 'schur').
    """

    upper: float
    estimate: float
    residual: float
    iterations: int
    converged: bool
    method: str


@dataclasses.dataclass(frozen=True)
class LayerBound:
    """One layer's share of a network bound."""

    index: int
    name: str
    upper: float
    estimate: float
    detail: str


@dataclasses.dataclass(frozen=True)
class NetworkBound:
    """A certified Lipschitz bound of a network, layer by layer.

    Attributes
    ----------
    upper : float
        Certified upper bound: the product of the layers' ``upper``.
    estimate : float
        The same product with power-iteration estimates for the linear layers.
        Still an upper bound of the kind "product of layer norms" (it ignores
        how layers interact), but not certified; shows how much of the gap to a
        lower bound is the certification and how much the product.
    layers : tuple of LayerBound
    """

    upper: float
    estimate: float
    layers: tuple


@dataclasses.dataclass(frozen=True)
class LipschitzReport:
    """Estimates and bounds of one network's Lipschitz constant on one data set.

    Attributes
    ----------
    upper : float
        Certified upper bound (c).
    lower : float
        Lower bound by gradient ascent over pairs (d).
    empirical : float
        Largest ratio over data pairs (a); a lower bound too.
    gradient_max : float
        Largest input-gradient (Jacobian) norm at the data (b).
    gap : float
        upper - lower: how far from known the Lipschitz constant still is.
    """

    upper: float
    lower: float
    empirical: float
    gradient_max: float
    gap: float

    @property
    def ratio(self) -> float:
        """upper / lower (scale free)."""
        return self.upper / self.lower if self.lower > 0 else math.inf


@dataclasses.dataclass(frozen=True)
class LowerBound:
    """A lower bound on the Lipschitz constant and the pair that attains it."""

    value: float
    a: torch.Tensor
    b: torch.Tensor
    steps: int
