"""Minibatch MAID (``maid_sgd``) against full-batch MAID on many training patches.

    python benchmarks/minibatch.py [--quick] [--n-train 400 --size 40] [--maid-iter 30]
                                   [--batch-size 10] [--epochs 10]

Problem: fields of experts (``--filters`` K of ``--filter-size`` s, theta_0 =
``--log-scale``; problems/fields_of_experts/) learned on ``--n-train`` random crops
of ``--size`` pixels of the training folder (BSD400 when present, else the images
bundled with scikit-image), Gaussian noise ``--sigma``.

Protocol.  Full-batch MAID (alpha0 = ``--alpha0``, the library's other defaults) runs
``--maid-iter`` iterations; the targets are the full training losses F it reaches
after every ``--maid-iter / --targets`` iterations.  Then each minibatch variant runs
until F <= the last target or ``--epochs`` epochs:

- ``maid_sgd`` with its defaults (a certified line search on every batch, accuracy
  what the search needs) and alpha0 = ``--alpha0``;
- ``maid_sgd`` with the paper's schedules (step alpha0 (1 + t)^-1/2 with alpha0 =
  ``--schedule-alpha0``, set by hand; eps0 (1 + t)^-1, t in epochs).

F is measured outside the runs, the same way for every method: a lower-level solve
to certified accuracy 1e-3 (warm-started from the previous measurement), every MAID
iteration and every ``--eval-every`` minibatch iterations (default: a quarter epoch);
its time is not counted.  "Cost" is lower-level + CG iterations as the rows count
them (an iteration on a batch counts as much as one on all images); "work" weights
each by batch / all images (full-batch iterations' worth, what the time follows).

Writes results/benchmarks/minibatch.{json (settings, one summary per method, the F
measurements), md}.
"""
from __future__ import annotations

import time
import warnings

import bilevel
from bilevel import experiment


def add_arguments(p):
    experiment.add_image_arguments(p, n_train=400, n_test=1, size=40)
    p.add_argument("--filters", type=int, default=8)
    p.add_argument("--filter-size", type=int, default=5)
    p.add_argument("--log-scale", type=float, default=-3.0)
    p.add_argument("--alpha0", type=float, default=0.1)
    p.add_argument("--maid-iter", type=int, default=60)
    p.add_argument("--targets", type=int, default=6,
                   help="targets: MAID's F after every maid-iter / targets iterations")
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--epochs", type=float, default=10)
    p.add_argument("--eval-every", type=int, default=0, help="0: a quarter epoch")
    p.add_argument("--schedule-alpha0", type=float, default=0.4)


class Measure:
    """F(theta) by a certified solve (tol 1e-3), warm-started, with its time kept apart."""

    def __init__(self, problem):
        self.problem, self.x, self.seconds = problem, None, 0.0

    def __call__(self, theta):
        start = time.perf_counter()
        sol = self.problem.solve_lower(theta, 1e-3, x0=self.x)
        self.x = sol.x
        value = float(self.problem.upper_objective(sol.x, theta))
        self.seconds += time.perf_counter() - start
        return value


def run(problem, method, settings, max_iter, every, target=None, label=""):
    """Run ``method`` measuring F every ``every`` iterations (stop at ``target``)."""
    measure = Measure(problem)
    points = [dict(iteration=0, cost=0, work=0.0, time=0.0, F=measure(problem.initial_theta()))]
    measure.seconds = 0.0

    def callback(state, row):
        last = row["iteration"] == max_iter
        if row["iteration"] % every and not last:
            return False
        before = measure.seconds  # the measurements so far ran inside this row's time
        F = measure(state.theta)
        points.append(dict(iteration=row["iteration"], cost=row["cost"],
                           work=float(row.get("work", row["cost"])),
                           time=round(row["time"] - before, 2), F=F, epoch=row.get("epoch")))
        print(f"  {label} it {row['iteration']:4d}  F {F:.5f}  cost {row['cost']:7d}  "
              f"work {points[-1]['work']:8.1f}  t {points[-1]['time']:.0f}s", flush=True)
        return target is not None and F <= target

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bilevel.ConvergenceWarning)
        result = bilevel.solve(problem, method, max_iter=max_iter, callback=callback,
                               **settings)
    return result, points


def reached(points, target):
    """The first measurement at or below ``target`` (None if none)."""
    return next((p for p in points if p["F"] <= target), None)


def compute(args, folder):
    from bilevel_problems import datasets
    from bilevel_problems.fields_of_experts import FieldsOfExperts

    if args.quick:
        args.n_train, args.size, args.filters, args.filter_size = 8, 16, 2, 3
        args.maid_iter, args.batch_size, args.epochs, args.targets = 3, 2, 2, 3
    clean, _, _, sources = experiment.image_sets(args)
    problem = FieldsOfExperts(images=clean, noisy=datasets.add_noise(clean, args.sigma,
                                                                     args.seed),
                              num_filters=args.filters, filter_size=args.filter_size,
                              log_scale=args.log_scale, seed=args.seed)
    n = problem.n_samples
    per_epoch = -(-n // args.batch_size)
    every = args.eval_every or max(1, per_epoch // 4)
    print(f"train {tuple(clean.shape)} from {sources['train']}; {problem.dim_theta} "
          f"hyperparameters; {per_epoch} batches of {args.batch_size} per epoch", flush=True)

    maid, maid_points = run(problem, "maid", dict(alpha0=args.alpha0, tol=0.0),
                            args.maid_iter, 1, label="maid")
    stride = max(1, args.maid_iter // args.targets)
    targets = [p for p in maid_points[1:] if p["iteration"] % stride == 0
               or p["iteration"] == args.maid_iter]
    target = maid_points[-1]["F"]
    print(f"targets F = {[round(p['F'], 5) for p in targets]} (full-batch MAID after "
          f"{[p['iteration'] for p in targets]} iterations)", flush=True)
    variants = {
        "maid_sgd": dict(batch_size=args.batch_size, alpha0=args.alpha0, seed=args.seed),
        "maid_sgd (schedules)": dict(batch_size=args.batch_size, step="schedule",
                                     accuracy="schedule", alpha0=args.schedule_alpha0,
                                     seed=args.seed),
    }
    summaries = {"maid": summary(maid, maid_points, target, settings=dict(alpha0=args.alpha0))}
    curves = {"maid": maid_points}
    for label, settings in variants.items():
        result, points = run(problem, "maid_sgd", settings, int(args.epochs * per_epoch),
                             every, target=target, label=label)
        summaries[label] = summary(result, points, target, settings=settings,
                                   final_check=result.state.final_check)
        curves[label] = points
    rows = []
    for goal in targets:  # each method's first measurement at or below MAID's F there
        row = dict(maid_iteration=goal["iteration"], F=goal["F"])
        for label, points in curves.items():
            hit = reached(points, goal["F"])
            row[label] = hit and {k: hit[k] for k in ("iteration", "epoch", "cost", "work",
                                                      "time") if k in hit}
            if hit and label != "maid":
                row[label]["maid_over_this"] = {
                    k: round(goal[k] / hit[k], 2) if hit[k] else None
                    for k in ("cost", "work", "time")}
        rows.append(row)
    return dict(settings={k: v for k, v in vars(args).items() if k != "command"},
                sources=sources, n_samples=n, dim_theta=problem.dim_theta, target=target,
                methods=summaries, targets=rows, curves=curves)


def summary(result, points, target, **extra):
    return dict(status=result.status, iterations=len(result.history),
                final_F=points[-1]["F"], reached=reached(points, target),
                message=result.message, **extra)


def write_table(folder):
    """The .md beside the .json."""
    meta = folder.read_meta()
    a, methods = meta["settings"], meta["methods"]
    sgd = [label for label in methods if label != "maid"]
    lines = [f"# Minibatch MAID vs. full-batch MAID: fields of experts, {meta['n_samples']} "
             "patches", "",
             f"{a['filters']} filters {a['filter_size']}x{a['filter_size']} "
             f"({meta['dim_theta']} hyperparameters), {meta['n_samples']} crops "
             f"{a['size']}x{a['size']} from {meta['sources']['train']}, sigma = {a['sigma']}; "
             f"batch size {a['batch_size']}; {a['threads']} torch thread(s); "
             f"`{meta['command']}`, {meta['wall_time_s']:.0f} s in all.", "",
             "Targets: the full training loss F that full-batch MAID reaches after k "
             "iterations; for each method the first measurement of F at or below it (F is "
             "measured every MAID iteration and every quarter epoch of the minibatch runs).  "
             "Cost = lower-level + CG iterations as counted (an iteration on a batch counts "
             "1); work = each weighted by batch / all patches (full-batch iterations' "
             "worth); time (s) excludes the measurements of F.", "",
             "| MAID iterations | target F | MAID cost = work | MAID time | "
             + " | ".join(f"{label}: epochs, cost, work, time | MAID / {label} (work, time)"
                          for label in sgd) + " |",
             "|---|---|---|---|" + "---|---|" * len(sgd)]
    for row in meta["targets"]:
        maid = row["maid"]
        cells = [str(row["maid_iteration"]), f"{row['F']:.5f}", str(maid["cost"]),
                 _fmt(maid["time"])]
        for label in sgd:
            hit = row[label]
            if not hit:
                cells += ["not reached", "-"]
                continue
            ratio = hit["maid_over_this"]
            cells += [f"{_fmt(hit['epoch'])}, {hit['cost']}, {_fmt(hit['work'])}, "
                      f"{_fmt(hit['time'])}", f"{ratio['work']}x, {ratio['time']}x"]
        lines.append("| " + " | ".join(cells) + " |")
    last = meta["targets"][-1]
    counted = ", ".join(f"{label} {last[label]['maid_over_this']['cost']}x" for label in sgd
                        if last[label])
    lines += ["", f"At the last target, counted cost (iterations on a batch counting as much "
              f"as on all patches), MAID / this: {counted or '-'}.  The schedules variant's "
              f"alpha0 = {a['schedule_alpha0']} is set by hand (about the step the line-search "
              "variant settles on); the line-search variant takes MAID's alpha0 = "
              f"{a['alpha0']} and nothing else.  Measurements of F every quarter epoch: a "
              "minibatch run's epochs, cost, work and time are upper bounds at that "
              "resolution."]
    lines += ["", "| method | settings | status | iterations | final F |", "|---|---|---|---|---|"]
    for label, s in methods.items():
        lines.append(f"| {label} | {s['settings']} | {s['status']} | {s['iterations']} | "
                     f"{s['final_F']:.5f} |")
    lines += ["", "What the minibatch runs certify: each row's omega bounds the batch "
              "hypergradient's error against the batch loss's gradient, and each accepted "
              "line-search step a decrease of the batch loss; about F, only the final check "
              "(full batch, at the returned theta):", ""]
    for label, s in methods.items():
        if s.get("final_check"):
            c = s["final_check"]
            lines.append(f"- {label}: F in [{c['lower_bound']:.5f}, {c['upper_bound']:.5f}], "
                         f"||grad F|| in [{max(c['grad_norm'] - c['error_bound'], 0):.3e}, "
                         f"{c['grad_norm'] + c['error_bound']:.3e}] "
                         f"({'certified' if c['certified'] else 'estimated'}; it cost "
                         f"{c['cost']} lower + CG iterations)")
    folder.write_text(folder.meta_name.replace(".json", ".md"), "\n".join(lines) + "\n")


def _fmt(value):
    return "-" if value is None else f"{value:.1f}" if isinstance(value, float) else str(value)


def main(argv=None):
    return experiment.main(__doc__, "minibatch", compute, summarise=write_table, argv=argv,
                           add_arguments=add_arguments, kind="benchmarks",
                           meta_name="minibatch.json")


if __name__ == "__main__":
    main()
