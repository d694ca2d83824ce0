"""Any torch.optim optimizer fed hypergradients of fixed accuracy (a baseline)."""
from __future__ import annotations

import dataclasses

import torch

from ..hypergradient import hypergradient
from .base import (
    NONNEGATIVE,
    POSITIVE,
    OuterState,
    check_settings,
    converged_message,
    count,
    degenerate,
    finite,
    handed_on,
    norm,
    warm,
)


@dataclasses.dataclass(frozen=True)
class TorchOptimState(OuterState):
    optimizer: torch.optim.Optimizer | None = None
    parameter: torch.Tensor | None = None


@dataclasses.dataclass(frozen=True)
class TorchOptimizer:
    """Adapter: ``optimizer`` is a torch.optim class name ('Adam', 'SGD', ...).

    Parameters
    ----------
    optimizer : str
        Name of a class in ``torch.optim``.
    lr : float
        Learning rate.
    eps, delta : float
        Fixed accuracies of every hypergradient.
    options : dict
        Further keyword arguments of the optimizer.
    tol : float
        Stop when ||z|| + omega <= tol.
    """

    optimizer: str = "Adam"
    lr: float = 1e-2
    eps: float = 1e-3
    delta: float = 1e-3
    options: dict = dataclasses.field(default_factory=dict)
    tol: float = 1e-6
    lower_max_iter: int = 10_000
    cg_max_iter: int = 10_000

    def __post_init__(self):
        cls = getattr(torch.optim, self.optimizer, None)
        if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
            raise ValueError(f"unknown torch.optim optimizer {self.optimizer!r}")
        check_settings(self, lr=POSITIVE, eps=POSITIVE, delta=POSITIVE, tol=NONNEGATIVE,
                       lower_max_iter=count(1), cg_max_iter=count(1),
                       options=(lambda v: isinstance(v, dict), "a dict of keyword arguments"))

    def init_state(self, problem, theta0):
        parameter = theta0.detach().clone().requires_grad_(True)
        opt = getattr(torch.optim, self.optimizer)([parameter], lr=self.lr, **self.options)
        return TorchOptimState(theta=theta0, eps=self.eps, delta=self.delta, optimizer=opt,
                               parameter=parameter)

    def update(self, problem, state):
        hg = hypergradient(problem, state.theta, self.eps, self.delta, x0=state.x, q0=state.q,
                           lower_max_iter=self.lower_max_iter, cg_max_iter=self.cg_max_iter,
                           smoothness=state.smoothness)
        z_norm = norm(hg.grad)
        row = dict(upper_value=hg.upper_value, grad_norm=z_norm, error_bound=hg.error_bound,
                   certified=hg.certified, eps=self.eps, delta=self.delta, step=self.lr,
                   backtracks=0, accepted=True, spent=hg.cost)
        state = dataclasses.replace(handed_on(state, hg.lower), x=warm(hg.lower.x),
                                    q=warm(hg.linear.q), iteration=state.iteration + 1)
        if not finite(z_norm, hg.error_bound):
            return dataclasses.replace(state, status="diverged",
                                       message="the hypergradient is not finite"), row
        if z_norm + hg.error_bound <= self.tol:
            return dataclasses.replace(state, status="converged", message=converged_message(
                z_norm, hg.error_bound, self.tol, hg.certified)), row
        state.parameter.grad = hg.grad.detach().clone()
        state.optimizer.step()
        theta = state.parameter.detach().clone()
        reason = degenerate(problem, theta)
        if reason is not None:  # an optimizer has no line search to back off with
            return dataclasses.replace(state, status="diverged", message=(
                f"the {self.optimizer} step led where the lower problem is degenerate "
                f"({reason}); theta is the last good one")), row
        return dataclasses.replace(state, theta=theta), row
