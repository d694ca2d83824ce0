"""What every outer method shares: the state record, the run loop, the result.

An outer method is a frozen dataclass of settings with ``init_state(problem,
theta0)`` and ``update(problem, state) -> (state, row)``, the row holding the
iteration's :class:`~bilevel.cost.Cost` under ``"spent"``; :func:`run` drives it,
keeps the history (tidy rows, cumulative costs, wall time), and stops on
convergence, ``max_iter``, a cost budget, a callback, or a status set by the
method.  Non-convergence is a :class:`ConvergenceWarning` and a status.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import numbers
import time
import warnings
from collections.abc import Callable

import torch

from ..budget import BudgetExhausted, limit
from ..contract import check_mu, check_theta
from ..cost import Cost

logger = logging.getLogger("bilevel")


class ConvergenceWarning(UserWarning):
    """An outer or inner solve stopped before reaching its tolerance."""


@dataclasses.dataclass(frozen=True)
class OuterState:
    """The state of an outer method between iterations (immutable).

    ``x`` and ``q`` are the warm starts of the lower-level solver and of CG, and
    ``smoothness`` the lower solver's estimate of L (for problems without one).
    A method ends the run by returning a state whose ``status`` is set.
    """

    theta: torch.Tensor
    eps: float
    delta: float
    x: torch.Tensor | None = None
    q: torch.Tensor | None = None
    iteration: int = 0
    status: str | None = None
    message: str = ""
    smoothness: float | None = None  # the lower solver's estimate of L, handed on


@dataclasses.dataclass(frozen=True)
class SolveResult:
    """Outcome of :func:`bilevel.solve`.

    Attributes
    ----------
    theta : torch.Tensor
        The final hyperparameters.
    history : list of dict
        One row per outer iteration (see :data:`HISTORY_COLUMNS`).
    status : str
        'converged', 'max_iter', 'max_cost', 'max_time', 'callback',
        'interrupted' (Ctrl-C), or a method's own reason to stop
        ('accuracy_floor', 'line_search_failed', ...).
    message : str
        A sentence saying why the run stopped.
    state : OuterState
        The final state (warm starts included), to continue a run.
    """

    theta: torch.Tensor
    history: list
    status: str
    message: str
    state: OuterState

    @property
    def converged(self) -> bool:
        return self.status == "converged"


#: Columns every history row holds (methods may add more).
HISTORY_COLUMNS = (
    "iteration", "upper_value", "grad_norm", "error_bound", "certified", "eps", "delta",
    "step", "backtracks", "accepted", "lower_iterations", "cg_iterations", "cost",
    "oracle_calls", "time",
)

_STATUS_WARNS = {"max_iter", "max_cost", "max_time", "interrupted", "accuracy_floor",
                 "refinement_limit", "line_search_failed", "diverged"}


def run(method, problem, theta0=None, *, max_iter: int = 100, max_cost: float | None = None,
        max_time: float | None = None, callback: Callable | None = None,
        progress: bool = False, state: OuterState | None = None, history: list | None = None,
        checkpoint: Callable | None = None, checkpoint_every: int = 0) -> SolveResult:
    """Run an outer method from ``theta0``, or continue from ``state`` and ``history``.

    Parameters
    ----------
    max_iter : int
        Outer iterations (line-search failures count as iterations).
    max_cost : float, optional
        Budget of lower-level + CG iterations, enforced inside an iteration too:
        an iteration that would overrun it is abandoned (its partial work is not
        a row; theta stays at the last completed iteration) and the run ends
        with status 'max_cost'.
    max_time : float, optional
        Wall-time budget in seconds, enforced the same way (status 'max_time').
    callback : callable, optional
        ``callback(state, row) -> bool``, called after every iteration (the last
        included); returning True stops the run.  ``row`` is the history row of
        the iteration (see below).
    progress : bool
        Show a tqdm progress bar.
    state, history : optional
        Continue a run (from :func:`bilevel.checkpoint.load_checkpoint`): ``max_iter``,
        ``max_cost`` and ``max_time`` count from the start of the original run, so a
        resumed run ends where the uninterrupted one would have.
    checkpoint : callable, optional
        ``checkpoint(state, history)``, called every ``checkpoint_every`` iterations.

    Ctrl-C (KeyboardInterrupt) ends the run with status 'interrupted' and the
    history of the completed iterations, instead of losing them.

    History rows
    ------------
    Every row holds :data:`HISTORY_COLUMNS`:

    - ``iteration``: 1, 2, ... (a line-search failure is an iteration);
    - ``upper_value``: g(x~, theta) at the iteration's theta;
    - ``grad_norm``: ||z||, the inexact hypergradient's norm;
    - ``error_bound``: omega >= ||z - grad F(theta)||;
    - ``certified``: whether omega is a proof (False: some constant was estimated);
    - ``eps``, ``delta``: the lower-level accuracy and CG residual asked for;
    - ``step``: the step taken (0 if none), ``backtracks``: trials rejected,
      ``accepted``: whether theta moved;
    - ``lower_iterations``, ``cg_iterations``, ``oracle_calls``: cumulative counts;
      ``cost`` = lower + CG iterations (cumulative);
    - ``time``: seconds since the start of the run.

    MAID adds ``direction_certified``, ``search_iterations``, ``nonfinite_trials``,
    ``stiff_trials``, ``memory`` and ``next_upper_bound`` (see :class:`~bilevel.outer.MAID`).
    """
    if max_iter < 0:
        raise ValueError(f"max_iter must be >= 0, got {max_iter}")
    for label, value in (("max_cost", max_cost), ("max_time", max_time)):
        if value is not None and not (_is_number(value) and value > 0):
            raise ValueError(f"{label} must be a positive number (or None: no budget), "
                             f"got {value!r}")
    if state is None:
        theta0 = problem.initial_theta() if theta0 is None else theta0
        state = method.init_state(problem, check_theta(problem, theta0).detach().clone())
    history = list(history or [])
    totals = Cost()
    if history:
        last = history[-1]
        totals = Cost(last["lower_iterations"], last["cg_iterations"], last["oracle_calls"])
    start = time.perf_counter() - (history[-1]["time"] if history else 0.0)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=max_iter, initial=len(history), mininterval=0.5,
                   desc=f"{type(method).__name__.lower()} {problem.name}")
    status, message = "max_iter", f"reached max_iter={max_iter}"
    if state.status is not None:  # a finished run, resumed: nothing left to do
        return SolveResult(theta=state.theta, history=history, status=state.status,
                           message=state.message, state=state)
    deadline = math.inf if max_time is None else start + max_time
    labels = dict(max_cost_label=f"max_cost={max_cost:g}" if max_cost else "",
                  max_time_label=f"max_time={max_time:g} s" if max_time else "")
    try:
        for _ in range(max_iter - len(history)):
            spent = totals.total
            if max_cost is not None and spent >= max_cost:
                status, message = "max_cost", f"spent the cost budget max_cost={max_cost:g}"
                break
            if _past(deadline, problem):
                status, message = "max_time", f"spent the time budget max_time={max_time:g} s"
                break
            remaining = math.inf if max_cost is None else max_cost - spent
            # Data-parallel ranks read different clocks: a rank leaving an iteration
            # alone would leave the others waiting in a collective, so there the time
            # budget is checked between iterations only, and collectively.
            inside = math.inf if problem.parallel.active else deadline
            with limit(remaining, inside, **labels):
                updated, row = method.update(problem, state)
            totals += row.pop("spent")  # the one place where costs are summed
            row = dict(iteration=updated.iteration, **row, **totals.as_row(),
                       time=time.perf_counter() - start)
            history.append(row)
            state = updated  # only with its row: an interrupt never splits the two
            logger.debug("%s", row)
            if checkpoint is not None and checkpoint_every and len(history) % checkpoint_every == 0:
                checkpoint(state, history)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(F=f"{row['upper_value']:.4g}", z=f"{row['grad_norm']:.2e}",
                                eps=f"{row['eps']:.1e}", refresh=False)
            # The callback sees every row, the last one of a finished run included.
            stop = callback is not None and callback(state, row)
            if state.status is not None:
                status, message = state.status, state.message
                break
            if stop:
                status, message = "callback", "stopped by the callback"
                break
    except BudgetExhausted as out:
        status = out.reason
        message = (f"{out}: iteration {len(history) + 1} was abandoned after "
                   f"{out.spent} lower-level + CG iterations; theta is the one of "
                   f"iteration {len(history)}")
    except KeyboardInterrupt:
        status = "interrupted"
        message = (f"interrupted (KeyboardInterrupt) during iteration {len(history) + 1}; "
                   f"theta is the one of iteration {len(history)}")
    finally:
        if bar is not None:
            bar.close()
    if status in _STATUS_WARNS:
        warnings.warn(f"{problem.name}: {message}", ConvergenceWarning, stacklevel=3)
    return SolveResult(theta=state.theta, history=history, status=status, message=message,
                       state=state)


def degenerate(problem, theta) -> str | None:
    """Why the lower problem cannot be solved at ``theta`` (mu not a positive number,
    constants that overflow), or None.  Outer methods reject such points like NaN ones
    instead of letting the error end the run."""
    try:
        check_mu(problem, theta)
    except (ValueError, ArithmeticError) as err:
        return f"{type(err).__name__}: {err}"
    return None


def handed_on(state, lower):
    """``state`` with the warm starts a lower solution hands on: its estimate of L."""
    if lower.smoothness is None:
        return state
    return dataclasses.replace(state, smoothness=lower.smoothness)


def warm(start):
    """``start`` as a warm start, or None where it holds NaN or inf (it would poison the
    next solve)."""
    return start if start is None or bool(torch.isfinite(start).all()) else None


def _past(deadline, problem) -> bool:
    """Whether the time budget is spent; in a data-parallel run, on any rank."""
    past = time.perf_counter() >= deadline
    if math.isinf(deadline) or not problem.parallel.active:
        return past
    return bool(problem.parallel.max(torch.tensor(float(past))) > 0)


def converged_message(grad_norm, omega, tol, certified):
    kind = "certified" if certified else "estimated (bound constants are estimates)"
    return (f"||z|| + omega = {grad_norm + omega:.3e} <= tol = {tol:g}: "
            f"||grad F|| <= tol, {kind}")


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _finite_number(value) -> bool:
    return _is_number(value) and math.isfinite(value)


# Ranges of method settings, as (predicate, what is accepted) for check_settings.
POSITIVE = (lambda v: _finite_number(v) and v > 0, "a finite number > 0")
NONNEGATIVE = (lambda v: _finite_number(v) and v >= 0, "a finite number >= 0")
AT_LEAST_ONE = (lambda v: _finite_number(v) and v >= 1, "a finite number >= 1")
OPEN_UNIT = (lambda v: _finite_number(v) and 0 < v < 1, "a number in (0, 1)")


def count(minimum):
    return (lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool)
            and v >= minimum, f"an integer >= {minimum}")


def one_of(*options):
    return (lambda v: v in options, "one of " + ", ".join(map(repr, options)))


def check_settings(method, **rules):
    """Refuse the first setting outside its range, in one line naming it and the range.

    ``rules`` maps a setting's name to ``(predicate, accepted)``, e.g. ``eps0=POSITIVE``.
    """
    for name, (ok, accepted) in rules.items():
        value = getattr(method, name)
        if not ok(value):
            raise ValueError(f"{type(method).__name__}: invalid {name}={value!r}; "
                             f"accepted: {accepted}")


def norm(t) -> float:
    return float(torch.linalg.vector_norm(t))


def finite(*values) -> bool:
    return all(math.isfinite(v) for v in values)
