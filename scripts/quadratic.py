"""Figure: MAID against fixed accuracy on the paper's quadratic problem.

    python scripts/quadratic.py [--quick] [--seed 0]

Optimality gap F - F* (closed form) against total lower-level + CG iterations,
for MAID started at eps0 in {1e-1, 1e-3, 1e-5}, MAID with L-BFGS directions
(``maid_lbfgs``) from the same accuracies, and the fixed-accuracy method at the
same accuracies.  Writes results/quadratic/{data.csv, meta.json,
quadratic.png}.
"""
from __future__ import annotations

import csv
import warnings
from pathlib import Path

import _figure
from bilevel_problems.quadratic import Quadratic

import bilevel

ACCURACIES = (1e-1, 1e-3, 1e-5)
METHODS = ("maid", "maid_lbfgs", "fixed")
NAMES = {"maid": "MAID", "maid_lbfgs": "MAID L-BFGS", "fixed": "fixed"}
STYLES = {"maid": "-", "maid_lbfgs": "-.", "fixed": "--"}


def compute(args):
    size = dict(n=200, m=5) if args.quick else dict(n=1000, m=10)
    budget = 3e3 if args.quick else 1.5e5
    problem = Quadratic(**size, seed=args.seed)
    F_star = problem.value(problem.optimal_theta())
    rows = []
    for method in METHODS:
        for eps0 in ACCURACIES:
            thetas = [problem.initial_theta()]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", bilevel.ConvergenceWarning)
                result = bilevel.solve(problem, method, eps0=eps0, delta0=eps0, tol=0,
                                       max_iter=100_000, max_cost=budget,
                                       callback=lambda s, r, seen=thetas:
                                       seen.append(s.theta) and False)
            for row, theta in zip(result.history, thetas[1:], strict=True):
                rows.append(dict(method=method, eps0=eps0, iteration=row["iteration"],
                                 cost=row["cost"], gap=problem.value(theta) - F_star,
                                 eps=row["eps"], step=row["step"], accepted=row["accepted"],
                                 time=row["time"]))
            print(f"{method:10s} eps0={eps0:.0e}: {result.status:18s} cost={rows[-1]['cost']:>7d} "
                  f"gap={rows[-1]['gap']:.3e}", flush=True)
    return rows, dict(problem="quadratic", size=size, seed=args.seed, budget=budget,
                      F_star=F_star, accuracies=ACCURACIES)


def plot(out):
    plt = _figure.pyplot()
    with open(Path(out) / "data.csv") as f:
        rows = list(csv.DictReader(f))
    fig, (ax, ax_eps) = plt.subplots(1, 2, figsize=(11, 4))
    colors = dict(zip(map(str, ACCURACIES), ("C0", "C1", "C2"), strict=True))
    present = [m for m in METHODS if any(r["method"] == m for r in rows)]
    for method, eps0 in ((m, str(e)) for m in present for e in ACCURACIES):
        sel = [r for r in rows if r["method"] == method and float(r["eps0"]) == float(eps0)]
        label = f"{NAMES[method]} eps0={float(eps0):.0e}"
        ax.plot([int(r["cost"]) for r in sel], [float(r["gap"]) for r in sel], STYLES[method],
                color=colors[eps0], label=label)
        if method != "fixed":
            ax_eps.plot([int(r["iteration"]) for r in sel], [float(r["eps"]) for r in sel],
                        STYLES[method], color=colors[eps0], label=label)
    ax.set(xlabel="lower-level + CG iterations", ylabel="F(theta) - F*", yscale="log",
           title="optimality gap")
    ax.legend(fontsize=8)
    ax_eps.set(xlabel="outer iteration", ylabel="eps", yscale="log",
               title="accuracy chosen by MAID")
    fig.tight_layout()
    fig.savefig(Path(out) / "quadratic.png", dpi=120)
    plt.close(fig)


def main(argv=None):
    return _figure.main(__doc__, "quadratic", compute, plot, argv)


if __name__ == "__main__":
    main()
