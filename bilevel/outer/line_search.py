"""MAID's certified backtracking line search (docs/certificates.md, section 5).

A trial theta+ = theta - alpha d is accepted only when a certified upper bound on
F(theta+) lies below a certified lower bound on F(theta) by lam alpha <z, d>: a
proof that F decreased, whatever the direction d.  The outcome is a record, like
optax's line-search info: what was tried, what it cost, and what it proved.

A trial whose certified condition number L / mu exceeds ``max_conditioning_growth`` (100)
times that at theta is backtracked without solving it: an over-long step (a first
quasi-Newton step, HOAG's first alpha on a filter bank) can land where the lower level is
millions of times stiffer, and a single such solve then spends ``lower_max_iter``
iterations to fail (measured: L / mu from about 20 to 6e6 on the weakly convex ridge, half
an hour of FISTA).  Rejecting a trial never touches a certificate; a step within the growth
costs at most sqrt(100) = 10 times the current solve's iterations (FISTA's rate).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch

from ..contract import check_mu
from ..cost import Cost
from ..hypergradient import solve_lower, upper_bounds, upper_value
from .base import degenerate, finite


@dataclasses.dataclass(frozen=True)
class LineSearch:
    """The outcome of one certified backtracking search.

    Attributes
    ----------
    accepted : bool
        Whether a trial proved a decrease.
    step : float
        The accepted step alpha (0 if none).
    backtracks : int
        Trials rejected before the accepted one (all trials if none was).
    theta, x : torch.Tensor or None
        The accepted point and its certified lower-level solution.
    next_upper_bound : float
        The certified upper bound on F(theta+) (NaN if none was accepted).
    nonfinite_trials : int
        Trials rejected because the lower problem was degenerate there (mu not
        > 0, overflow) or a solve or bound was not finite.
    stiff_trials : int
        Trials backtracked unsolved: L / mu there above ``max_conditioning_growth`` times
        its value at theta (module docstring).
    search_iterations : int
        Lower-level iterations spent at trial points.
    solved_trials : int
        Trials whose lower level was solved (0 with trials tried: every one was too long,
        :attr:`too_long`).
    cost : Cost
        Everything the search spent.
    smoothness : float or None
        The accepted solve's estimate of L (``LowerSolution.smoothness``).
    q : torch.Tensor or None
        The accepted trial's adjoint, where the bounds on F there came from it
        (``bracket``): the next hypergradient's warm start.
    """

    accepted: bool = False
    step: float = 0.0
    backtracks: int = 0
    theta: torch.Tensor | None = None
    x: torch.Tensor | None = None
    next_upper_bound: float = float("nan")
    nonfinite_trials: int = 0
    stiff_trials: int = 0
    search_iterations: int = 0
    solved_trials: int = 0
    cost: Cost = Cost()
    smoothness: float | None = None
    q: torch.Tensor | None = None

    @property
    def too_long(self) -> bool:
        """Whether the search failed without solving a single trial: every step was stiff,
        overflowing or degenerate, so the failure says the steps were too long and nothing
        about the accuracy."""
        return not self.accepted and self.backtracks > 0 and self.solved_trials == 0

    def row(self) -> dict:
        """The history columns of the search."""
        return dict(step=self.step, backtracks=self.backtracks, accepted=self.accepted,
                    next_upper_bound=self.next_upper_bound,
                    nonfinite_trials=self.nonfinite_trials, stiff_trials=self.stiff_trials,
                    search_iterations=self.search_iterations)


#: How much stiffer (L / mu) than at theta a trial may be and still be solved.
MAX_CONDITIONING_GROWTH = 100.0


def conditioning(problem, theta) -> float | None:
    """The certified L / mu at ``theta``: None without a certified L or where mu is not
    positive (``degenerate``'s case), inf where the constants overflow."""
    try:
        L = problem.smoothness(theta)
        if L is None:
            return None
        kappa = float(L) / check_mu(problem, theta)
    except ValueError:
        return None
    except ArithmeticError:
        return math.inf
    return kappa if math.isfinite(kappa) else math.inf


def _solve_trial(problem, theta, eps, x0, max_iter, smoothness):
    """The lower solve at a trial point; None where the lower problem is degenerate."""
    if degenerate(problem, theta) is not None:
        return None
    try:
        return solve_lower(problem, theta, eps, x0, max_iter, smoothness)
    except ArithmeticError:  # the problem's constants overflow at this theta
        return None


def certified_line_search(problem, theta, d, slope, *, first, rho, backtracks, lam, lower_now,
                          accuracy: Callable[[float], float], L_g, x0=None,
                          lower_max_iter=10_000, smoothness=None,
                          max_conditioning_growth=MAX_CONDITIONING_GROWTH,
                          bracket=None) -> LineSearch:
    """Backtrack along -d from ``first`` by ``rho`` until F provably decreased.

    Parameters
    ----------
    d : torch.Tensor
        The direction's H z (steps go to theta - alpha d).
    slope : float
        <z, d> > 0: the first-order decrease rate the test demands a share of.
    lower_now : float
        A certified lower bound on F(theta).
    accuracy : callable
        alpha -> the lower-level accuracy of the trial at step alpha.
    L_g : float
        Lipschitz constant of grad_x g (for the bound on g(x*) at trials).
    max_conditioning_growth : float
        Trials with L / mu above this times its value at theta are backtracked unsolved
        (module docstring); ``math.inf`` solves every trial.
    bracket : callable, optional
        (trial theta, its LowerSolution, step, the bound the test needs) -> (upper bound on
        F there, Cost, adjoint or None): the bound on F at a trial from elsewhere than g(x~)
        and ||grad_x g|| alone (MAID's ``value_bounds='adjoint'``: :mod:`bilevel.value_bracket`).
    """
    convex = problem.upper_convex_in_x
    spent, nonfinite, stiff, searched, tried, solved = Cost(), 0, 0, 0, 0, 0
    kappa = conditioning(problem, theta)
    for i in range(backtracks):
        tried = i + 1
        step = first * rho ** i
        trial = theta - step * d
        trial_kappa = conditioning(problem, trial)
        if trial_kappa == math.inf:  # the constants overflow there
            nonfinite += 1
            continue
        if None not in (kappa, trial_kappa) and trial_kappa > max_conditioning_growth * kappa:
            stiff += 1
            continue
        sol = _solve_trial(problem, trial, accuracy(step), x0, lower_max_iter, smoothness)
        if sol is not None:
            solved += 1
            spent += sol.cost
            searched += sol.iterations
        if sol is None or not finite(sol.error_bound):
            # Rejects this trial only; theta never moves where F cannot be bounded.
            nonfinite += 1
            continue
        if not sol.converged:
            break  # out of iterations at this accuracy: smaller steps will not help
        q = None
        if bracket is None:
            value, gx_norm = upper_value(problem, sol.x, trial)
            spent += Cost(oracle_calls=1)
            _, upper_next = upper_bounds(value, gx_norm, sol.error_bound, L_g, convex)
        else:
            upper_next, cost, q = bracket(trial, sol, step, lower_now - lam * step * slope)
            spent += cost
        if not finite(upper_next):
            nonfinite += 1
            continue
        if upper_next - lower_now + lam * step * slope <= 0:
            return LineSearch(accepted=True, step=step, backtracks=i, theta=trial, x=sol.x,
                              next_upper_bound=upper_next, nonfinite_trials=nonfinite,
                              stiff_trials=stiff, search_iterations=searched,
                              solved_trials=solved, cost=spent, smoothness=sol.smoothness,
                              q=q)
    return LineSearch(backtracks=tried, nonfinite_trials=nonfinite, stiff_trials=stiff,
                      search_iterations=searched, solved_trials=solved, cost=spent)
