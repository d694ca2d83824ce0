"""Figure: MAID against HOAG on per-weight ridge logistic regression (digits), and scikit-learn.

    python scripts/logreg_vs_hoag.py [--quick] [--seed 0] [--budget 3e5]

The paper's logistic-regression experiment on scikit-learn's 8x8 digits (no
download): one log ridge weight per weight of the 64 x 10 model (640
hyperparameters), theta0 = -3, validation cross-entropy as upper loss.  MAID
twice (the library's defaults, whose first step is HOAG's sqrt(dim theta) / ||z0||
as in the paper's own logistic-regression runs, and the paper's settings,
``maid_paper``) and HOAG with its three accuracy schedules run under the same
budget of lower-level + CG iterations; the curves plot the
validation loss g(x~) each method reports against that cost and wall time,
and the test loss of the model x~ each method holds (which shows how 640
hyperparameters fitted to 600 validation images overfit them).

The learned models (each re-solved to certified accuracy 1e-8 where the
budget allows) are then compared with scikit-learn: LogisticRegressionCV (one
C, 5-fold cross-validation on the same training split, log-loss scoring) and
a single C chosen on the validation split from the same grid.  Writes
results/logreg_vs_hoag/{data.csv (one row per outer iteration of each method, with
the test loss of the model held), runs.csv (one row per method: status, message,
warnings), meta.json (settings, the table of models), logreg_vs_hoag.png,
summary.md}.
"""
from __future__ import annotations

import inspect
import math
import os
import time
import warnings

import _figure
import numpy as np
import torch
from bilevel_problems.logistic_regression import LogisticRegression

import bilevel
from bilevel import experiment

METHODS = ("maid", "maid_paper", "maid_lbfgs", "hoag_geometric", "hoag_quadratic",
           "hoag_cubic")
LABELS = {"maid": "MAID", "maid_paper": "MAID (paper's settings)",
          "maid_lbfgs": "MAID L-BFGS",
          "hoag_geometric": "HOAG geometric", "hoag_quadratic": "HOAG quadratic",
          "hoag_cubic": "HOAG cubic"}
#: scikit-learn's C grid (inverse ridge weight); C = 1 / (n e^theta), so with n = 600 it
#: spans e^theta from 1.7e-7 to 1.7e1 and contains theta0 = -3 (C = 0.0335) in its range.
C_GRID = np.logspace(-4, 4, 33)
#: Accuracy and iteration cap of the final re-solve of each learned model.
EVAL_TOL, EVAL_MAX_ITER = 1e-8, 50_000
KEEP = ("iteration", "cost", "upper_value", "grad_norm", "error_bound", "certified", "eps",
        "delta", "step", "backtracks", "accepted", "lower_iterations", "cg_iterations",
        "time", "next_upper_bound", "search_iterations")
FILES = {"data.csv": "one row per outer iteration of each method; test_loss_held / "
                     "test_accuracy_held: the model x~ held after it",
         "runs.csv": "one row per method: status, message, warnings"}


def _sklearn_metrics(model, data):
    from sklearn.metrics import accuracy_score, log_loss

    labels = np.arange(data.n_classes)
    out = {}
    for part in ("train", "val", "test"):
        X, y = getattr(data, f"X_{part}"), getattr(data, f"y_{part}")
        out[f"{part}_loss"] = float(log_loss(y, model.predict_proba(X), labels=labels))
        # Not model.score: LogisticRegressionCV scores with its CV scoring (log-loss here).
        out[f"{part}_accuracy"] = float(accuracy_score(y, model.predict(X)))
    return out


def sklearn_baselines(data, seed, quick):
    """LogisticRegressionCV on the training split, and one C chosen on the validation split."""
    from sklearn.linear_model import LogisticRegression as SkLogReg
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.metrics import log_loss
    from sklearn.model_selection import StratifiedKFold

    grid = C_GRID[::8] if quick else C_GRID
    n = len(data.y_train)
    common = {"fit_intercept": False, "tol": 1e-6, "max_iter": 10_000}
    # Newer scikit-learn deprecates the implicit l1_ratios and legacy attributes; ask
    # for the plain ridge and the new attributes when the version knows them.
    extra = {k: v for k, v in (("l1_ratios", (0.0,)), ("use_legacy_attributes", False))
             if k in inspect.signature(LogisticRegressionCV).parameters}
    rows = []
    # lbfgs warns that it does not converge at the weakest ridges: counted in the table.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        folds = StratifiedKFold(3 if quick else 5, shuffle=True, random_state=seed)
        cv = LogisticRegressionCV(Cs=grid, cv=folds,
                                   scoring="neg_log_loss", **common, **extra)
        cv.fit(data.X_train, data.y_train)
        wall = time.perf_counter() - start
        C = float(np.ravel(cv.C_)[0])
        rows.append({"model": f"sklearn LogisticRegressionCV ({folds.n_splits}-fold CV on train)",
                     "hyperparameters": 1, "C": C, "theta": -math.log(n * C), "wall_time": wall,
                     "warnings": len(caught), **_sklearn_metrics(cv, data)})
        seen = len(caught)

        start = time.perf_counter()
        best = None
        for C in grid:
            model = SkLogReg(C=C, **common).fit(data.X_train, data.y_train)
            val = log_loss(data.y_val, model.predict_proba(data.X_val),
                           labels=np.arange(data.n_classes))
            if best is None or val < best[0]:
                best = (val, C, model)
        wall = time.perf_counter() - start
        rows.append({"model": "sklearn LogisticRegression, C chosen on validation",
                     "hyperparameters": 1, "C": float(best[1]),
                     "theta": -math.log(n * best[1]), "wall_time": wall,
                     "warnings": len(caught) - seen, **_sklearn_metrics(best[2], data)})
    return rows


def hoag_first_step(problem):
    """sqrt(dim theta) / ||z0||: HOAG's first step (1 / L_lambda0) at its eps0 = 1e-1.

    MAID's default first step (``alpha0=None``) is this one, computed inside the
    run; it is recorded here for the summary.
    """
    hg = bilevel.hypergradient(problem, problem.initial_theta(), eps=1e-1, delta=1e-1)
    return math.sqrt(hg.grad.numel()) / float(torch.linalg.vector_norm(hg.grad))


def compute(args, folder):
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    budget = 600 if args.quick else args.budget
    max_iter = 20 if args.quick else 5_000
    n = 300 if args.quick else 600
    problem = LogisticRegression(layout="weight", theta0=-3.0, n_train=n, n_val=n,
                                 seed=args.seed)
    table, runs = [], {}
    start = time.perf_counter()
    table.append({"model": "theta0 = -3 (starting point, uniform ridge)",
                  "hyperparameters": problem.n_hyper, "wall_time": 0.0,
                  **problem.evaluate(problem.initial_theta(), tol=EVAL_TOL,
                                     max_iter=EVAL_MAX_ITER)})
    alpha0 = hoag_first_step(problem)
    print(f"HOAG's first step sqrt(dim theta) / ||z0|| = {alpha0:.4g}", flush=True)

    def record(state, row):
        # Test loss and accuracy of the model x~ the method holds after the iteration
        # (one product with the test design matrix; no extra solve).
        m = problem.metrics(state.x)
        return {"test_loss_held": m["test_loss"], "test_accuracy_held": m["test_accuracy"]}

    outcomes = []
    for method in METHODS:
        outcome = experiment.run_method(problem, experiment.Run(LABELS[method], method),
                                        record=record, max_iter=max_iter, max_cost=budget)
        outcomes.append(outcome)
        result = outcome.result
        last = result.history[-1]
        theta = result.theta
        metrics = problem.evaluate(theta, x=result.state.x, tol=EVAL_TOL,
                                   max_iter=EVAL_MAX_ITER)
        runs[method] = {"status": result.status, "message": result.message,
                        "warnings": outcome.warnings,
                        "iterations": len(result.history), "cost": last["cost"],
                        "time": last["time"], "theta_min": float(theta.min()),
                        "theta_max": float(theta.max()),
                        "final_eps": last["eps"], "final_error_bound": last["error_bound"]}
        table.append({"model": f"{LABELS[method]} (per-weight, bilevel)",
                      "hyperparameters": problem.n_hyper, "wall_time": last["time"],
                      "cost": last["cost"], "status": result.status,
                      "theta_range": f"[{float(theta.min()):.2f}, {float(theta.max()):.2f}]",
                      **metrics})
        print(f"{method:15s} {result.status:15s} iterations={len(result.history):5d} "
              f"cost={last['cost']:>8d} time={last['time']:7.1f}s g(x~)={last['upper_value']:.4f} "
              f"val={metrics['val_loss']:.4f} test={metrics['test_loss']:.4f} "
              f"acc={metrics['test_accuracy']:.4f} (model bound {metrics['error_bound']:.1e})",
              flush=True)
    table += sklearn_baselines(problem.data, args.seed, args.quick)
    for row in table[-2:]:
        print(f"{row['model']}: C={row['C']:.3g} val={row['val_loss']:.4f} "
              f"test={row['test_loss']:.4f} acc={row['test_accuracy']:.4f} "
              f"time={row['wall_time']:.2f}s", flush=True)
    import sklearn

    folder.write_rows("data.csv", experiment.history_rows(outcomes, KEEP))
    folder.write_rows("runs.csv", experiment.summary_rows(outcomes))
    settings = {"problem": "logistic_regression", "layout": "weight", "data": problem.data.source,
                "n_train": len(problem.data.y_train), "n_val": len(problem.data.y_val),
                "n_test": len(problem.data.y_test), "n_features": problem.n_features,
                "n_classes": problem.n_classes, "theta0": -3.0, "fit_bias": False,
                "seed": args.seed, "budget": budget, "max_iter": max_iter,
                "method_settings": "library defaults (MAID: docs/certificates.md section 5; "
                                   "maid_paper: the paper's settings; HOAG: Pedregosa's); "
                                   "lower level: Newton-CG (the problem's default)",
                "hoag_first_step": alpha0,
                "eval_tol": EVAL_TOL, "eval_max_iter": EVAL_MAX_ITER,
                "sklearn_C_grid": [float(c) for c in (C_GRID[::8] if args.quick else C_GRID)],
                "sklearn_version": sklearn.__version__, "torch_threads": torch.get_num_threads(),
                "runs": runs, "table": table,
                "compute_time_s": round(time.perf_counter() - start, 1)}
    if load_start is not None:
        settings.update(load_average=[load_start, os.getloadavg()[0]], cpus=os.cpu_count())
    return settings


def _fmt(value, spec):
    return "" if value is None or value == "" else format(value, spec)


def summarise(folder):
    settings = folder.read_meta()
    settings.setdefault("cpus", settings.get("environment", {}).get("cpus"))
    table = settings["table"]
    lines = [
        "# Per-weight ridge logistic regression on digits: MAID, HOAG and scikit-learn",
        "",
        f"Data: {settings['data']}; n_train={settings['n_train']}, n_val={settings['n_val']}, "
        f"n_test={settings['n_test']}; {settings['n_features']} standardised features, "
        f"{settings['n_classes']} classes, no bias.  Bilevel runs: {settings['n_features']} x "
        f"{settings['n_classes']} = {settings['n_features'] * settings['n_classes']} "
        f"hyperparameters, theta0 = -3, budget {settings['budget']:g} lower-level + CG "
        f"iterations (max_iter {settings['max_iter']}), seed {settings['seed']}.",
        "",
        "Losses are mean cross-entropies.  Bilevel models are re-solved at the final theta "
        f"to certified accuracy {settings['eval_tol']:g} (at most {settings['eval_max_iter']} "
        "iterations); 'bound' is the certified ||x - x*(theta)|| of the model evaluated "
        "(a bound above 1e-6 means the lower level could not be solved at that theta and the "
        "numbers are those of an unconverged model).  Wall time: the outer solve (bilevel) "
        "or the fit including the search over C (scikit-learn), in seconds.",
        "",
        "| model | #hyper | val loss | val acc | test loss | test acc | wall time (s) | cost "
        "| bound | status |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table:
        extra = f"C = {r['C']:.3g} (theta = {r['theta']:.2f})" if "C" in r else r.get("status", "")
        if "theta_range" in r:
            extra += f", theta in {r['theta_range']}"
        lines.append(
            f"| {r['model']} | {r['hyperparameters']} | {r['val_loss']:.4f} | "
            f"{r['val_accuracy']:.4f} | {r['test_loss']:.4f} | {r['test_accuracy']:.4f} | "
            f"{r['wall_time']:.2f} | {_fmt(r.get('cost'), 'd')} | "
            f"{_fmt(r.get('error_bound'), '.1e')} | {extra} |")
    lines += ["", "Why each bilevel run stopped:", ""]
    for method, run in settings["runs"].items():
        lines.append(f"- {LABELS[method]}: {run['status']} after {run['iterations']} "
                     f"iterations, cost {run['cost']}, {run['time']:.1f} s; {run['message']}")
    lines += _path_lines(folder.read_rows("data.csv"), table)
    load = settings.get("load_average")
    if load:
        lines += ["", f"Machine load (1-minute load average at start and end): {load[0]:.1f}, "
                      f"{load[1]:.1f} on {settings.get('cpus')} CPUs; wall times grow with it."]
    folder.write_text("summary.md", "\n".join(lines) + "\n")


def _path_lines(rows, table):
    """Numbers read off the paths in data.csv: speed, and the test loss along the way."""
    reference = next((r for r in table if "chosen on validation" in r["model"]), None)
    lines = ["", "Along the paths (test loss of the model x~ each method holds after each "
                 "iteration; no extra solve):", "",
             "| method | cost to val loss <= sklearn's | time (s) | cost to a certified val "
             "loss <= sklearn's | lowest test loss on the path "
             "| at cost | its val loss | its test acc | final test loss of x~ |",
             "|---|---|---|---|---|---|---|---|---|"]
    for method in METHODS:
        sel = [r for r in rows if r["method"] == method]
        held = [r for r in sel if r.get("test_loss_held")]
        if not held:
            continue
        reach = next((r for r in sel if reference is not None
                      and float(r["upper_value"]) <= reference["val_loss"]), None)
        best = min(held, key=lambda r: float(r["test_loss_held"]))
        speed = (f"{int(reach['cost'])} | {float(reach['time']):.1f}" if reach
                 else "not reached | ")
        # MAID's accepted rows end holding a point whose loss is certified below
        # next_upper_bound; no HOAG row certifies a loss.
        proved = next((r for r in sel if reference is not None and r.get("next_upper_bound")
                       and float(r["next_upper_bound"]) <= reference["val_loss"]), None)
        proved = int(proved["cost"]) if proved else ("-" if method.startswith("hoag") else "never")
        lines.append(f"| {LABELS[method]} | {speed} | {proved} | "
                     f"{float(best['test_loss_held']):.4f} | "
                     f"{int(best['cost'])} | {float(best['upper_value']):.4f} | "
                     f"{float(best['test_accuracy_held']):.4f} | "
                     f"{float(held[-1]['test_loss_held']):.4f} |")
    return lines


def plot(folder):
    plt = _figure.pyplot()
    rows, table = folder.read_rows("data.csv"), folder.read_meta()["table"]
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.4))
    for method in METHODS:
        sel = [r for r in rows if r["method"] == method]
        if not sel:
            continue
        value = [float(r["upper_value"]) for r in sel]
        axes[0].plot([int(r["cost"]) for r in sel], value, label=LABELS[method])
        axes[1].plot([float(r["time"]) for r in sel], value, label=LABELS[method])
        held = [r for r in sel if r.get("test_loss_held")]
        axes[2].plot([int(r["cost"]) for r in held], [float(r["test_loss_held"]) for r in held],
                     label=LABELS[method])
    sk = [r for r in table if "C" in r]
    for r, color in zip(sk, ("gray", "black"), strict=False):
        label = r["model"].replace("sklearn ", "sklearn: ")
        for ax in axes[:2]:
            ax.axhline(r["val_loss"], color=color, ls=":", lw=1, label=label)
        axes[2].axhline(r["test_loss"], color=color, ls=":", lw=1, label=label)
    axes[0].set(xlabel="lower-level + CG iterations", ylabel="validation loss g(x~)",
                xscale="log", yscale="log", title="upper loss (640 per-weight ridges, digits)")
    axes[1].set(xlabel="wall time (s)", ylabel="validation loss g(x~)", xscale="log",
                yscale="log", title="upper loss against time")
    axes[2].set(xlabel="lower-level + CG iterations", ylabel="test loss of x~", xscale="log",
                yscale="log", title="held-out test loss of the current model")
    axes[0].legend(fontsize=8)
    _figure.save(fig, folder / "logreg_vs_hoag.png")


def add_arguments(p):
    p.add_argument("--budget", type=float, default=3e5,
                   help="lower-level + CG iterations per method (full run)")


def main(argv=None):
    return experiment.main(__doc__, "logreg_vs_hoag", compute, summarise=summarise, plot=plot,
                           argv=argv, add_arguments=add_arguments, files=FILES)


if __name__ == "__main__":
    main()
