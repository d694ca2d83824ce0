"""The estimates and bounds (a)-(d) of :mod:`bilevel.nn.lipschitz` side by side."""
from __future__ import annotations

from .estimates import empirical_lipschitz, gradient_lipschitz, lipschitz_lower_bound
from .network_bound import network_lipschitz_bound
from .records import LipschitzReport


def lipschitz_report(net, X, input_shape=None, *, steps=300, num_starts=32, seed=0,
                     max_iter=1000, tol=1e-6) -> LipschitzReport:
    """(a)-(d) for one network and data set, with the gap between (c) and (d).

    Parameters
    ----------
    net : nn.Module
        A sequential network (see :func:`network_lipschitz_bound`).
    X : torch.Tensor
        Data, shape (n, ...); ``input_shape`` defaults to ``X.shape[1:]``.
    steps, num_starts : int
        Of :func:`lipschitz_lower_bound`.
    seed : int
    max_iter, tol
        Of the power iterations.

    Returns
    -------
    LipschitzReport
    """
    shape = tuple(X.shape[1:]) if input_shape is None else tuple(input_shape)
    upper = network_lipschitz_bound(net, shape, max_iter=max_iter, tol=tol, seed=seed).upper
    lower = lipschitz_lower_bound(net, X, steps=steps, num_starts=num_starts, seed=seed)
    return LipschitzReport(upper=upper, lower=lower.value,
                           empirical=empirical_lipschitz(net, X, seed=seed),
                           gradient_max=gradient_lipschitz(net, X), gap=upper - lower.value)
