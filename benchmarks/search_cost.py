"""What the line search of a maid_sgd run cost, read from its data.csv.

    python benchmarks/search_cost.py RUN_DIR

For each number of backtracks: how many iterations took it and their mean lower-level and CG
iterations (each backtrack is one more lower-level solve of the batch), then the accepted
steps' range and median: the numbers behind the step experiment of docs/denoisers.md.
"""
from __future__ import annotations

import argparse
import itertools
import statistics
from pathlib import Path

from bilevel.results import RunFolder


def search_cost(rows):
    """({backtracks: (iterations, mean lower, mean CG)}, accepted steps) of a run's rows;
    the first row is left out (its cumulative counts start from nothing)."""
    by, steps = {}, []
    for before, row in itertools.pairwise(rows[1:]):
        lower = float(row["lower_iterations"]) - float(before["lower_iterations"])
        cg = float(row["cg_iterations"]) - float(before["cg_iterations"])
        by.setdefault(int(float(row["backtracks"])), []).append((lower, cg))
        if str(row["accepted"]) == "True":
            steps.append(float(row["step"]))
    table = {b: (len(v), statistics.mean(x for x, _ in v), statistics.mean(y for _, y in v))
             for b, v in sorted(by.items())}
    return table, steps


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    args = p.parse_args(argv)
    table, steps = search_cost(RunFolder(args.run).read_rows("data.csv"))
    for backtracks, (n, lower, cg) in table.items():
        print(f"{backtracks} backtracks: {n} iterations, {lower:.0f} lower + {cg:.0f} CG each")
    print(f"accepted steps from {min(steps):.3g} to {max(steps):.3g}, median "
          f"{statistics.median(steps):.3g}")
    return table, steps


if __name__ == "__main__":
    main()
