"""The work a computation spent, as a record that adds up.

Every solver result carries its :class:`Cost` (``LowerSolution.cost``,
``CGResult.cost``, ``Hypergradient.cost``, MAID's ``LineSearch.cost``); an outer
iteration adds the records of what it ran, and :func:`bilevel.outer.base.run`
keeps the running total.  Nothing else counts.
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Cost:
    """Lower-level iterations, CG iterations, and every oracle call.

    ``total`` (lower + CG iterations) is the paper's cost unit; ``oracle_calls``
    counts every derivative evaluation (gradients, Hessian- and mixed-vector
    products, upper-level evaluations, estimates of constants).
    """

    lower_iterations: int = 0
    cg_iterations: int = 0
    oracle_calls: int = 0

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.lower_iterations + other.lower_iterations,
                    self.cg_iterations + other.cg_iterations,
                    self.oracle_calls + other.oracle_calls)

    @property
    def total(self) -> int:
        return self.lower_iterations + self.cg_iterations

    def as_row(self) -> dict:
        """The history columns of this cost."""
        return dict(lower_iterations=self.lower_iterations, cg_iterations=self.cg_iterations,
                    cost=self.total, oracle_calls=self.oracle_calls)
