"""HOAG (Pedregosa 2016): a-priori accuracy schedules and an adaptive 1/L step.

docs/certificates.md, section 7.  The accuracy at iteration k follows a schedule fixed
in advance (geometric eps0 0.9^k, quadratic eps0 / k^2, cubic eps0 / k^3); the
step is -z / L_lambda with L_lambda adapted from the (inexact) upper values:

    g_k <= g_{k-1} + C eps_k + eps_{k-1} (C + 1) ||dtheta|| - L_lambda ||dtheta||^2
        -> take the step, L_lambda <- 0.95 L_lambda
    g_k >= 1.2 g_{k-1}
        -> reject it: back to the previous theta, L_lambda <- 2 L_lambda, eps halved
    otherwise take it.

Nothing here certifies a decrease; that is the point of comparing with MAID.
"""
from __future__ import annotations

import dataclasses
import math

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
    one_of,
    warm,
)

SCHEDULES = {
    "geometric": lambda eps0, k: eps0 * 0.9 ** k,
    "quadratic": lambda eps0, k: eps0 / (k + 1) ** 2,
    "cubic": lambda eps0, k: eps0 / (k + 1) ** 3,
}


@dataclasses.dataclass(frozen=True)
class HOAGState(OuterState):
    L_lambda: float = math.nan
    scale: float = 1.0  # halved at each rejection
    previous: tuple | None = None  # (theta, z, g, eps) of the last accepted point


@dataclasses.dataclass(frozen=True)
class HOAG:
    """HOAG with an a-priori accuracy schedule.

    Parameters
    ----------
    schedule : {'geometric', 'quadratic', 'cubic'}
    eps0 : float
        Accuracy of the first iteration; delta follows the same schedule.
    C : float
        Constant of the acceptance test (0.25, Pedregosa's).
    tol : float
        Stop when ||z|| + omega <= tol.
    eps_min : float
        Floor of the schedule: below about 1e-12 float64 solves stall on
        rounding error and a schedule that keeps shrinking only burns iterations.
    """

    schedule: str = "geometric"
    eps0: float = 1e-1
    C: float = 0.25
    tol: float = 1e-6
    eps_min: float = 1e-12
    lower_max_iter: int = 10_000
    cg_max_iter: int = 10_000

    def __post_init__(self):
        check_settings(self, schedule=one_of(*SCHEDULES), eps0=POSITIVE, C=NONNEGATIVE,
                       tol=NONNEGATIVE, eps_min=POSITIVE, lower_max_iter=count(1),
                       cg_max_iter=count(1))

    def init_state(self, problem, theta0):
        return HOAGState(theta=theta0, eps=self.eps0, delta=self.eps0)

    def update(self, problem, state):
        k = state.iteration
        eps = max(state.scale * SCHEDULES[self.schedule](self.eps0, k), self.eps_min)
        hg = hypergradient(problem, state.theta, eps, eps, x0=state.x, q0=state.q,
                           lower_max_iter=self.lower_max_iter, cg_max_iter=self.cg_max_iter,
                           smoothness=state.smoothness)
        z, z_norm, g = hg.grad, norm(hg.grad), hg.upper_value
        row = dict(upper_value=g, grad_norm=z_norm, error_bound=hg.error_bound,
                   certified=hg.certified, eps=eps, delta=eps, backtracks=0, accepted=True,
                   spent=hg.cost)
        state = dataclasses.replace(handed_on(state, hg.lower), x=warm(hg.lower.x),
                                    q=warm(hg.linear.q), eps=eps, delta=eps, iteration=k + 1)
        L, scale, base = state.L_lambda, state.scale, (state.theta, z, g, eps)
        if state.previous is None:
            L = z_norm / math.sqrt(z.numel())
        else:
            theta_prev, z_prev, g_prev, eps_prev = state.previous
            incr = norm(state.theta - theta_prev)
            if not finite(g, z_norm) or g >= 1.2 * g_prev:
                # Reject: step again from the previous point with a smaller step.
                L, scale, base = 2 * L, 0.5 * scale, state.previous
                row["accepted"] = False
            elif g <= g_prev + self.C * eps + eps_prev * (self.C + 1) * incr - L * incr ** 2:
                L = 0.95 * L
        if row["accepted"] and finite(z_norm, hg.error_bound) \
                and z_norm + hg.error_bound <= self.tol:
            return (dataclasses.replace(state, status="converged", message=converged_message(
                z_norm, hg.error_bound, self.tol, hg.certified)), {**row, "step": 0.0})
        if not L > 0 or not math.isfinite(L):
            return (dataclasses.replace(state, status="diverged",
                                        message=f"HOAG step constant L_lambda={L}"),
                    {**row, "step": 0.0})
        theta_base, z_base = base[0], base[1]
        for _ in range(60):
            if degenerate(problem, theta_base - z_base / L) is None:
                break
            # The lower problem cannot be solved there (mu not > 0, overflow): a
            # rejection like g >= 1.2 g_prev, before it costs a solve.
            L, scale = 2 * L, 0.5 * scale
        else:
            return (dataclasses.replace(state, status="diverged", message=(
                "HOAG: every step along -z down to 1/L_lambda="
                f"{1 / L:.1e} leads where the lower problem is degenerate")), {**row, "step": 0.0})
        row["step"] = 1.0 / L
        new = dataclasses.replace(state, theta=theta_base - z_base / L, L_lambda=L,
                                  scale=scale, previous=base)
        return new, row
