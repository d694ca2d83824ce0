"""Figure: MAID's robustness to its starting accuracy and step on TV denoising.

    python scripts/tv_robustness.py [--quick] [--seed 0]

Upper loss against total lower-level + CG iterations for MAID started at eps0
from 1e2 down to 1e-5 (alpha0 = 1e-2) and at several alpha0 (eps0 = 1e-1),
against fixed accuracy at eps in {1e-1, 1e-3, 1e-5}, MAID with the paper's
settings, MAID with L-BFGS directions (``maid_lbfgs``) and HOAG's three accuracy
schedules (a TV race of several images); and
the accuracy eps and step MAID chose against outer iterations.  Writes results/tv_robustness/
{data.csv, meta.json, tv_robustness.png}.
"""
from __future__ import annotations

import _figure

import bilevel
from bilevel import experiment

EPS0 = (1e2, 1e0, 1e-1, 1e-3, 1e-5)
ALPHA0 = (1e-4, 1e-2, 1e0)
FIXED = (1e-1, 1e-3, 1e-5)


FILES = {"data.csv": "one row per outer iteration of each run (run, method, cost, "
                       "upper_value, eps, step, accepted, time)",
         "runs.csv": "one row per run: status, message, warnings"}
KEEP = ("iteration", "cost", "upper_value", "eps", "step", "accepted", "time")


def runs():
    Run = experiment.Run
    for eps0 in EPS0:
        yield Run(f"MAID eps0={eps0:.0e}", "maid", dict(eps0=eps0, delta0=eps0))
    for alpha0 in ALPHA0:
        yield Run(f"MAID alpha0={alpha0:.0e}", "maid", dict(alpha0=alpha0))
    for eps in FIXED:
        yield Run(f"fixed eps={eps:.0e}", "fixed", dict(eps0=eps, delta0=eps))
    yield Run("MAID (paper's settings)", "maid_paper")
    yield Run("MAID L-BFGS", "maid_lbfgs")
    for schedule in ("geometric", "quadratic", "cubic"):
        yield Run(f"HOAG {schedule}", f"hoag_{schedule}")


def compute(args, folder):
    size = dict(n_images=2, size=16) if args.quick else dict(n_images=4, size=48)
    max_iter = 10 if args.quick else 100
    problem = bilevel.make_problem("tv_denoising", seed=args.seed, **size)
    outcomes = experiment.run_methods(problem, runs(), max_iter=max_iter, tol=0)
    folder.write_rows("data.csv", experiment.history_rows(outcomes, KEEP))
    folder.write_rows("runs.csv", experiment.summary_rows(outcomes))
    return dict(problem="tv_denoising", params=size, seed=args.seed, max_iter=max_iter,
                eps0=EPS0, alpha0=ALPHA0, fixed=FIXED)


def plot(folder):
    plt = _figure.pyplot()
    rows = folder.read_rows("data.csv")
    labels = list(dict.fromkeys(r["run"] for r in rows))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for i, label in enumerate(labels):
        sel = [r for r in rows if r["run"] == label]
        style = "--" if label.startswith("fixed") else ":" if label.startswith("HOAG") else "-"
        color = plt.cm.tab20(i % 20)
        axes[0].plot([int(r["cost"]) for r in sel], [float(r["upper_value"]) for r in sel],
                     style, color=color, label=label)
        if label.startswith("MAID"):
            its = [int(r["iteration"]) for r in sel]
            axes[1].plot(its, [float(r["eps"]) for r in sel], color=color, label=label)
            steps = [(int(r["iteration"]), float(r["step"])) for r in sel if float(r["step"]) > 0]
            axes[2].plot(*zip(*steps, strict=True), color=color, label=label)
    axes[0].set(xlabel="lower-level + CG iterations", ylabel="upper loss g(x~)", xscale="log",
                yscale="log", title="upper loss against cost")
    axes[1].set(xlabel="outer iteration", ylabel="eps", yscale="log", title="accuracy eps")
    axes[2].set(xlabel="outer iteration", ylabel="accepted step", yscale="log",
                title="step size")
    axes[0].legend(fontsize=7)
    _figure.save(fig, folder / "tv_robustness.png")


def main(argv=None):
    return experiment.main(__doc__, "tv_robustness", compute, plot=plot, argv=argv,
                           files=FILES)


if __name__ == "__main__":
    main()
