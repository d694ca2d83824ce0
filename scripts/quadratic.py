"""Figure: MAID against fixed accuracy on the paper's quadratic problem.

    python scripts/quadratic.py [--quick] [--seed 0]

Optimality gap F - F* (closed form) against total lower-level + CG iterations,
for MAID started at eps0 in {1e-1, 1e-3, 1e-5}, MAID with L-BFGS directions
(``maid_lbfgs``) from the same accuracies, and the fixed-accuracy method at the
same accuracies.  Writes results/quadratic/{data.csv, meta.json,
quadratic.png}.
"""
from __future__ import annotations

import _figure
from bilevel_problems.quadratic import Quadratic

from bilevel import experiment

ACCURACIES = (1e-1, 1e-3, 1e-5)
METHODS = ("maid", "maid_lbfgs", "fixed")
NAMES = {"maid": "MAID", "maid_lbfgs": "MAID L-BFGS", "fixed": "fixed"}
STYLES = {"maid": "-", "maid_lbfgs": "-.", "fixed": "--"}


FILES = {"data.csv": "one row per outer iteration of each run (run, method, eps0, cost, "
                       "gap F - F*, eps, step, accepted, time)",
         "runs.csv": "one row per run: status, message, warnings"}
KEEP = ("iteration", "cost", "eps", "step", "accepted", "time")


def runs():
    for method in METHODS:
        for eps0 in ACCURACIES:
            yield experiment.Run(f"{NAMES[method]} eps0={eps0:.0e}", method,
                                 dict(eps0=eps0, delta0=eps0))


def compute(args, folder):
    size = dict(n=200, m=5) if args.quick else dict(n=1000, m=10)
    budget = 3e3 if args.quick else 1.5e5
    problem = Quadratic(**size, seed=args.seed)
    F_star = problem.value(problem.optimal_theta())

    def gap(state, row):  # the optimality gap at the point the iteration moved to
        return dict(gap=problem.value(state.theta) - F_star)

    outcomes = experiment.run_methods(problem, runs(), record=gap, tol=0, max_iter=100_000,
                           max_cost=budget)
    rows = [dict(row, eps0=outcome.run.settings["eps0"]) for outcome in outcomes
            for row in outcome.rows(KEEP)]
    folder.write_rows("data.csv", rows)
    folder.write_rows("runs.csv", experiment.summary_rows(outcomes))
    return dict(problem="quadratic", size=size, seed=args.seed, budget=budget,
                F_star=F_star, accuracies=ACCURACIES)


def plot(folder):
    plt = _figure.pyplot()
    rows = folder.read_rows("data.csv")
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
    _figure.save(fig, folder / "quadratic.png")


def main(argv=None):
    return experiment.main(__doc__, "quadratic", compute, plot=plot, argv=argv, files=FILES)


if __name__ == "__main__":
    main()
