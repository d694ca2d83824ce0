"""Cost and wall-time budgets that hold inside an outer iteration.

One outer iteration can run many lower-level and CG solves (refinements, a line
search); a budget checked only between iterations can be overrun by minutes.
:func:`run <bilevel.outer.base.run>` opens a :func:`limit` around each update, and
the solvers :func:`charge` every iteration they spend; when the budget is gone,
:class:`BudgetExhausted` unwinds the iteration and the run ends cleanly with the
history of the iterations it completed.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
import time


class BudgetExhausted(Exception):
    """Raised by :func:`charge` when the open budget is spent; ``reason`` says which."""

    def __init__(self, reason: str, message: str, spent: int):
        super().__init__(message)
        self.reason, self.spent = reason, spent


@dataclasses.dataclass
class _Budget:
    max_cost: float  # lower-level + CG iterations still allowed
    deadline: float  # time.perf_counter() value
    max_cost_label: str
    max_time_label: str
    spent: int = 0


_open: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("bilevel_budget",
                                                                       default=None)
#: Read the clock only every this many iterations (a solver iteration can be microseconds).
_CLOCK_EVERY = 16


def charge(iterations: int = 1) -> None:
    """Count solver iterations against the open budget (none open: nothing happens)."""
    budget = _open.get()
    if budget is None:
        return
    budget.spent += iterations
    if budget.spent > budget.max_cost:
        raise BudgetExhausted("max_cost", f"spent the cost budget {budget.max_cost_label} "
                              "inside an iteration", budget.spent)
    if budget.spent % _CLOCK_EVERY < iterations and time.perf_counter() > budget.deadline:
        raise BudgetExhausted("max_time", f"spent the time budget {budget.max_time_label} "
                              "inside an iteration", budget.spent)


@contextlib.contextmanager
def limit(max_cost: float = math.inf, deadline: float = math.inf, *,
          max_cost_label: str = "", max_time_label: str = ""):
    """Open a budget of ``max_cost`` solver iterations, ending at ``deadline``."""
    token = _open.set(_Budget(max_cost, deadline, max_cost_label, max_time_label))
    try:
        yield
    finally:
        _open.reset(token)
