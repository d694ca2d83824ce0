"""Certified upper bound (c) on the Lipschitz constant of a sequential network.

The product of the certified operator norms of the linear layers (see
:mod:`bilevel.nn.lipschitz.operator_norms`) and of the Lipschitz constants of the
activations.

Activations: ReLU, ReLU6, Hardtanh, Tanh, Softplus, CELU (1), LeakyReLU
(max(1, |slope|)), ELU (max(1, alpha)), Sigmoid (1/4), Identity, Flatten,
Unflatten and Dropout in eval mode (1), and any module with a ``lipschitz()``
method returning a number or a tensor of per-channel constants (its maximum is
used: an elementwise map with per-channel constants l_c has constant max_c l_c).
Anything else is a ``TypeError`` naming the module.
"""
from __future__ import annotations

import torch
from torch import nn

from .operator_norms import operator_norm
from .records import LayerBound, NetworkBound

#: Activation modules and their Lipschitz constants (as functions of the module).
_ACTIVATIONS = {
    nn.ReLU: lambda m: 1.0,
    nn.ReLU6: lambda m: 1.0,
    nn.Hardtanh: lambda m: 1.0,
    nn.Tanh: lambda m: 1.0,
    nn.Softplus: lambda m: 1.0,
    nn.CELU: lambda m: 1.0,
    nn.Identity: lambda m: 1.0,
    nn.Flatten: lambda m: 1.0,
    nn.Unflatten: lambda m: 1.0,
    nn.Sigmoid: lambda m: 0.25,
    nn.LeakyReLU: lambda m: max(1.0, abs(float(m.negative_slope))),
    nn.ELU: lambda m: max(1.0, float(m.alpha)),
}


def activation_lipschitz(module) -> float:
    """The Lipschitz constant of an activation-like module (see the module docstring).

    Raises
    ------
    TypeError
        For a module whose constant is not known, naming it.
    """
    lip = getattr(module, "lipschitz", None)
    if callable(lip):
        value = torch.as_tensor(lip(), dtype=torch.float64).detach()
        return float(value.max()) if value.numel() else 0.0
    if isinstance(module, nn.Dropout) and not module.training:
        return 1.0
    for kind, constant in _ACTIVATIONS.items():
        if type(module) is kind:
            return constant(module)
    hint = (" (call .eval() first: in training mode dropout rescales by 1/(1-p))"
            if isinstance(module, nn.Dropout) else
            "; give it a lipschitz() method returning its constant(s)")
    raise TypeError(f"no known Lipschitz constant for module {type(module).__name__}{hint}")


def _flatten(net):
    if isinstance(net, nn.Sequential):
        for child in net:
            yield from _flatten(child)
    else:
        yield net


def network_lipschitz_bound(net, input_shape=None, *, max_iter=1000, tol=1e-6,
                            seed=0) -> NetworkBound:
    """Certified upper bound on the Lipschitz constant of a sequential network.

    Parameters
    ----------
    net : nn.Module
        An ``nn.Sequential`` (nested ones are flattened) or a single layer.
    input_shape : tuple, optional
        Shape of one input, without the batch dimension; needed when the network
        contains a convolution (inferred from the first ``nn.Linear`` otherwise).
    max_iter, tol, seed
        Of the power iterations.

    Returns
    -------
    NetworkBound

    Raises
    ------
    TypeError
        For a layer that is neither linear, nor a known activation, nor has a
        ``lipschitz()`` method.
    """
    layers = list(_flatten(net))
    if input_shape is None:
        first = next((m for m in layers if isinstance(m, (nn.Linear, nn.Conv2d))), None)
        if isinstance(first, nn.Conv2d):
            raise ValueError("network_lipschitz_bound: a network with convolutions needs "
                             "input_shape=(C, H, W)")
        input_shape = (first.in_features,) if first is not None else None
    shape = None if input_shape is None else tuple(input_shape)
    upper = estimate = 1.0
    rows = []
    for i, layer in enumerate(layers):
        name = type(layer).__name__
        if callable(getattr(layer, "lipschitz", None)) or not isinstance(
                layer, (nn.Linear, nn.Conv2d)):
            lip = activation_lipschitz(layer)
            rows.append(LayerBound(i, name, lip, lip, "activation"))
        else:
            norm = operator_norm(layer, shape, max_iter=max_iter, tol=tol, seed=seed + i)
            lip, est = norm.upper, norm.estimate
            rows.append(LayerBound(i, name, lip, est,
                                   f"{norm.method}; power iteration {norm.iterations} its, "
                                   f"rel. residual {norm.residual:.1e}"))
        upper *= rows[-1].upper
        estimate *= rows[-1].estimate
        if shape is not None:
            shape = _next_shape(layer, shape)
    return NetworkBound(upper=upper, estimate=estimate, layers=tuple(rows))


def _next_shape(layer, shape):
    """Shape of the layer's output for one input of ``shape`` (by a forward pass)."""
    param = next(layer.parameters(), None)
    kw = dict(dtype=param.dtype, device=param.device) if param is not None else {}
    with torch.no_grad():
        return tuple(layer(torch.zeros((1, *shape), **kw)).shape[1:])

