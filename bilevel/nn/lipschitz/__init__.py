"""Lipschitz constants of networks: estimates from data, lower and certified upper bounds.

For u: R^d -> R^m (Euclidean norms on inputs and outputs) this package gives

(a) :func:`empirical_lipschitz`, the largest ratio ||u(a) - u(b)|| / ||a - b|| over
    data pairs: exact over *all* pairs in 1-D (sorted neighbours suffice, see
    below), nearest-neighbour plus random pairs in higher dimension;
(b) :func:`input_gradient_norms`, the local constants ||J_u(x)||_2 by autograd;
(c) :func:`network_lipschitz_bound`, a certified upper bound for ``nn.Sequential``
    networks: the product of certified operator norms of the linear layers and of
    the Lipschitz constants of the activations;
(d) :func:`lipschitz_lower_bound`, the best ratio found by gradient ascent over
    pairs (every ratio of two function values is a lower bound);

and :func:`lipschitz_report`, which puts them side by side with the gap between
(c) and (d).

Modules
-------
records
    The result records: OperatorNorm, LayerBound, NetworkBound, LipschitzReport,
    LowerBound.
operator_norms
    Power iteration and certified operator norms of ``nn.Linear`` and
    ``nn.Conv2d`` layers, with what is proven for them.
network_bound
    Lipschitz constants of activations and the certified network bound (c).
estimates
    The estimates from data (a), (b) and the lower bound (d).
report
    :func:`lipschitz_report`.
"""
from .estimates import (
    candidate_pairs,
    empirical_lipschitz,
    gradient_lipschitz,
    input_gradient_norms,
    lipschitz_lower_bound,
    pair_ratios,
)
from .network_bound import activation_lipschitz, network_lipschitz_bound
from .operator_norms import _conv_norm as _conv_norm  # used by tests/test_lipschitz.py
from .operator_norms import operator_norm, power_iteration
from .records import LayerBound, LipschitzReport, LowerBound, NetworkBound, OperatorNorm
from .report import lipschitz_report

__all__ = [
    "LayerBound",
    "LipschitzReport",
    "LowerBound",
    "NetworkBound",
    "OperatorNorm",
    "activation_lipschitz",
    "candidate_pairs",
    "empirical_lipschitz",
    "gradient_lipschitz",
    "input_gradient_norms",
    "lipschitz_lower_bound",
    "lipschitz_report",
    "network_lipschitz_bound",
    "operator_norm",
    "pair_ratios",
    "power_iteration",
]
