"""Learned convex ridge regularizer vs. Charbonnier fields of experts of the same size.

    python benchmarks/ridge_vs_foe.py [--quick] [--train-dir DIR --test-dir DIR]

Both models have K filters of s x s (default 4 of 5 x 5, zero-mean, the same
DCT starting bank):

- ``ridge_regularizer``: convex ridge regularizer with learned monotone spline
  potentials (problems/ridge_regularizer.py), 1 + K s^2 + K (N - 1) parameters;
- ``fields_of_experts``: Charbonnier potentials with learned weights and
  smoothings (problems/fields_of_experts/), 1 + 2K + K s^2 parameters.

Protocol.  Training set: ``--n-train`` random crops of ``--size`` pixels from the
training folder (BSD400 when present, else the images bundled with
scikit-image), Gaussian noise ``--sigma`` (default 25/255).  Each model first
gets its global scale theta_0 picked on a small grid by training loss (so both
start from a sensible denoiser, not one from the identity), then MAID runs
``--max-iter`` iterations (alpha0 = ``--alpha0``; other settings the paper's).
Test: centre crops of ``--test-size`` of the first ``--n-test`` images of the test
folder (Set68 when present), other noise (seed + 1); mean PSNR / SSIM of the
lower-level solution to certified accuracy 1e-3.

Writes results/benchmarks/ridge_vs_foe.{json (settings, per-model summaries, one row
per model and theta), md} and ridge_vs_foe_history.csv (one row per MAID iteration
of each model).
"""
from __future__ import annotations

import time

from bilevel_problems import datasets

from bilevel import experiment


def add_arguments(p):
    experiment.add_image_arguments(p, n_train=8, n_test=8, size=40, test_size=128,
                                   sigma=25 / 255)
    p.add_argument("--filters", type=int, default=4)
    p.add_argument("--filter-size", type=int, default=5)
    p.add_argument("--knots", type=int, default=11)
    p.add_argument("--max-iter", type=int, default=60)
    p.add_argument("--alpha0", type=float, default=0.1)
    p.add_argument("--models", default="ridge_regularizer,fields_of_experts")


def build(name, args, images, noisy, log_scale):
    common = dict(images=images, noisy=noisy, num_filters=args.filters,
                  filter_size=args.filter_size, log_scale=log_scale, seed=args.seed)
    if name == "ridge_regularizer":
        from bilevel_problems.ridge_regularizer import RidgeRegularizer
        return RidgeRegularizer(num_knots=args.knots, **common)
    from bilevel_problems.fields_of_experts import FieldsOfExperts
    return FieldsOfExperts(**common)


def scale_grid(name):
    # theta_0 multiplies different potentials (a spline with slopes <= 1 vs. a
    # Charbonnier with nu = 0.05), so each model gets its own grid.
    return ((-3.0, -2.0, -1.0, 0.0, 1.0) if name == "ridge_regularizer"
            else (-6.0, -5.0, -4.0, -3.0, -2.0))


def train(name, args, train_images, noisy_train):
    """The global scale picked on a grid by training loss, then MAID; (problem, outcome, info)."""
    t0 = time.perf_counter()
    calib = []
    for ls in scale_grid(name):
        problem = build(name, args, train_images, noisy_train, ls)
        sol = problem.solve_lower(problem.initial_theta(), 1e-3)
        calib.append((float(problem.upper_objective(sol.x, problem.initial_theta())), ls))
        print(f"  {name}: theta_0 = {ls:+.1f}: training loss {calib[-1][0]:.4f}", flush=True)
    log_scale = min(calib)[1]
    problem = build(name, args, train_images, noisy_train, log_scale)

    def callback(state, row):
        print(f"  {name} it {row['iteration']:3d}  F {row['upper_value']:.4f}  "
              f"|z| {row['grad_norm']:.2e}  eps {row['eps']:.1e}  step {row['step']:.2e}  "
              f"t {row['time']:.0f}s", flush=True)
        return False

    outcome = experiment.run_method(problem, experiment.Run(name, "maid",
                                                            dict(alpha0=args.alpha0)),
                                    callback=callback, max_iter=args.max_iter)
    info = dict(log_scale_start=log_scale, calibration=calib, status=outcome.result.status,
                warnings=outcome.warnings, iterations=len(outcome.history),
                final_upper=outcome.last["upper_value"], cost=outcome.last["cost"],
                train_time_s=round(time.perf_counter() - t0, 1))
    return problem, outcome, info


def compute(args, folder):
    if args.quick:
        args.n_train, args.size, args.n_test, args.test_size = 2, 16, 2, 24
        args.max_iter, args.filters, args.filter_size, args.knots = 3, 2, 3, 5
    train_images, test, _, sources = experiment.image_sets(args)
    noisy_train = datasets.add_noise(train_images, args.sigma, args.seed)
    noisy_test = datasets.add_noise(test, args.sigma, args.seed + 1)
    base = dict(noisy_train_psnr=float(datasets.psnr(noisy_train, train_images).mean()),
                noisy_test_psnr=float(datasets.psnr(noisy_test, test).mean()))
    print(f"train {tuple(train_images.shape)} from {sources['train']}, test "
          f"{tuple(test.shape)} from {sources['test']}; noisy test PSNR "
          f"{base['noisy_test_psnr']:.2f}", flush=True)
    rows, history, summary = [], [], {}
    for name in args.models.split(","):
        problem, outcome, info = train(name, args, train_images, noisy_train)
        history += [dict(model=name, **row) for row in outcome.rows()]
        evals = {}
        for label, theta in (("start", problem.initial_theta()), ("learned",
                                                                  outcome.result.theta)):
            q = problem.quality(theta, clean=test, noisy=noisy_test, tol=1e-3)
            qt = problem.quality(theta, tol=1e-3)
            evals[label] = dict(test_psnr=q["psnr"], test_ssim=q["ssim"], train_psnr=qt["psnr"],
                                test_psnr_per_image=q["psnr_per_image"])
            rows.append(dict(model=name, theta=label, test_psnr=q["psnr"], test_ssim=q["ssim"],
                             train_psnr=qt["psnr"]))
        summary[name] = dict(parameters=int(problem.initial_theta().numel()), **info, **evals)
        print(f"{name}: test PSNR start {evals['start']['test_psnr']:.2f} -> learned "
              f"{evals['learned']['test_psnr']:.2f} ({info['train_time_s']:.0f} s)", flush=True)
    folder.write_rows("ridge_vs_foe_history.csv", history)
    return dict(settings={k: v for k, v in vars(args).items() if k != "command"},
                sources=sources, baseline=base, models=summary, rows=rows)


def write_table(folder):
    """The .md beside the .json."""
    meta = folder.read_meta()
    a, base, summary, sources = meta["settings"], meta["baseline"], meta["models"], \
        meta["sources"]
    lines = [f"# Ridge regularizer vs. fields of experts ({a['filters']} filters "
             f"{a['filter_size']}x{a['filter_size']})", "",
             f"Train: {a['n_train']} crops {a['size']}x{a['size']} from {sources['train']}; "
             f"test: {a['n_test']} centre crops {a['test_size']}x{a['test_size']} from "
             f"{sources['test']}; sigma = {a['sigma']:.4f}; MAID {a['max_iter']} iterations "
             f"(alpha0 = {a['alpha0']}); {a['threads']} torch thread(s).", "",
             f"Noisy test PSNR: {base['noisy_test_psnr']:.2f} dB.", "",
             "| model | parameters | theta | test PSNR | test SSIM | train PSNR |",
             "|---|---|---|---|---|---|"]
    for r in meta["rows"]:
        lines.append(f"| {r['model']} | {summary[r['model']]['parameters']} | {r['theta']} | "
                     f"{r['test_psnr']:.2f} | {r['test_ssim']:.3f} | {r['train_psnr']:.2f} |")
    lines += ["", "| model | status | iterations | cost (lower+CG its) | training time (s) |",
              "|---|---|---|---|---|"]
    for name, s in summary.items():
        lines.append(f"| {name} | {s['status']} | {s['iterations']} | {s['cost']} | "
                     f"{s['train_time_s']} |")
    folder.write_text(folder.meta_name.replace(".json", ".md"), "\n".join(lines) + "\n")


def main(argv=None):
    return experiment.main(__doc__, "ridge_vs_foe", compute, summarise=write_table, argv=argv,
                           add_arguments=add_arguments, kind="benchmarks",
                           meta_name="ridge_vs_foe.json")


if __name__ == "__main__":
    main()
