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

Writes results/benchmarks/ridge_vs_foe.{json,md} and ridge_vs_foe_history.csv.
"""
from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

import torch
from bilevel_problems import datasets

import bilevel
from bilevel.results import environment, write_csv

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "bsd"  # absent: skimage


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, seconds")
    p.add_argument("--train-dir", default=None, help="default: BSD400 if present, else skimage")
    p.add_argument("--test-dir", default=None, help="default: Set68 if present, else skimage")
    p.add_argument("--n-train", type=int, default=8)
    p.add_argument("--size", type=int, default=40)
    p.add_argument("--n-test", type=int, default=8)
    p.add_argument("--test-size", type=int, default=128)
    p.add_argument("--sigma", type=float, default=25 / 255)
    p.add_argument("--filters", type=int, default=4)
    p.add_argument("--filter-size", type=int, default=5)
    p.add_argument("--knots", type=int, default=11)
    p.add_argument("--max-iter", type=int, default=60)
    p.add_argument("--alpha0", type=float, default=0.1)
    p.add_argument("--models", default="ridge_regularizer,fields_of_experts")
    p.add_argument("--threads", type=int, default=1, help="torch threads (shared machine)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/benchmarks")
    return p.parse_args()


def load_sets(args):
    # Relative to the working directory: no machine path in results/.
    train_dir = args.train_dir or (os.path.relpath(SHARED / "train")
                                   if (SHARED / "train").is_dir() else None)
    test_dir = args.test_dir or (os.path.relpath(SHARED / "Set68")
                                 if (SHARED / "Set68").is_dir() else None)
    train, test, _, sources = datasets.train_test_images(
        train_dir, test_dir, args.n_train, args.n_test, args.size, args.test_size, seed=args.seed)
    return train, test, sources


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


def main():
    args = parse_args()
    if args.quick:
        args.n_train, args.size, args.n_test, args.test_size = 2, 16, 2, 24
        args.max_iter, args.filters, args.filter_size, args.knots = 3, 2, 3, 5
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    train, test, sources = load_sets(args)
    noisy_train = datasets.add_noise(train, args.sigma, args.seed)
    noisy_test = datasets.add_noise(test, args.sigma, args.seed + 1)
    base = dict(noisy_train_psnr=float(datasets.psnr(noisy_train, train).mean()),
                noisy_test_psnr=float(datasets.psnr(noisy_test, test).mean()))
    print(f"train {tuple(train.shape)} from {sources['train']}, test {tuple(test.shape)} from "
          f"{sources['test']}; noisy test PSNR {base['noisy_test_psnr']:.2f}", flush=True)
    rows, history, summary = [], [], {}
    for name in args.models.split(","):
        t0 = time.perf_counter()
        calib = []
        for ls in scale_grid(name):
            problem = build(name, args, train, noisy_train, ls)
            sol = problem.solve_lower(problem.initial_theta(), 1e-3)
            calib.append((float(problem.upper_objective(sol.x, problem.initial_theta())), ls))
            print(f"  {name}: theta_0 = {ls:+.1f}: training loss {calib[-1][0]:.4f}", flush=True)
        log_scale = min(calib)[1]
        problem = build(name, args, train, noisy_train, log_scale)
        theta0 = problem.initial_theta()

        def callback(state, row, name=name):
            history.append(dict(model=name, **row))
            print(f"  {name} it {row['iteration']:3d}  F {row['upper_value']:.4f}  "
                  f"|z| {row['grad_norm']:.2e}  eps {row['eps']:.1e}  step {row['step']:.2e}  "
                  f"t {row['time']:.0f}s", flush=True)
            return False

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", bilevel.ConvergenceWarning)
            result = bilevel.solve(problem, "maid", max_iter=args.max_iter, alpha0=args.alpha0,
                                   callback=callback)
        train_time = time.perf_counter() - t0
        evals = {}
        for label, theta in (("start", theta0), ("learned", result.theta)):
            q = problem.quality(theta, clean=test, noisy=noisy_test, tol=1e-3)
            qt = problem.quality(theta, tol=1e-3)
            evals[label] = dict(test_psnr=q["psnr"], test_ssim=q["ssim"], train_psnr=qt["psnr"],
                                test_psnr_per_image=q["psnr_per_image"])
            rows.append(dict(model=name, theta=label, test_psnr=q["psnr"], test_ssim=q["ssim"],
                             train_psnr=qt["psnr"]))
        summary[name] = dict(parameters=int(theta0.numel()), log_scale_start=log_scale,
                             calibration=calib, status=result.status,
                             iterations=len(result.history),
                             final_upper=result.history[-1]["upper_value"],
                             cost=result.history[-1]["cost"], train_time_s=round(train_time, 1),
                             **evals)
        print(f"{name}: test PSNR start {evals['start']['test_psnr']:.2f} -> learned "
              f"{evals['learned']['test_psnr']:.2f} ({train_time:.0f} s)", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "ridge_vs_foe_quick" if args.quick else "ridge_vs_foe"
    write_csv(out / f"{stem}_history.csv", history)
    meta = dict(settings=vars(args), sources=sources, baseline=base, models=summary, rows=rows,
                wall_time_s=round(time.perf_counter() - started, 1), environment=environment())
    (out / f"{stem}.json").write_text(json.dumps(meta, indent=2, default=str))
    lines = [f"# Ridge regularizer vs. fields of experts ({args.filters} filters "
             f"{args.filter_size}x{args.filter_size})", "",
             f"Train: {args.n_train} crops {args.size}x{args.size} from {sources['train']}; "
             f"test: {args.n_test} centre crops {args.test_size}x{args.test_size} from "
             f"{sources['test']}; sigma = {args.sigma:.4f}; MAID {args.max_iter} iterations "
             f"(alpha0 = {args.alpha0}); {args.threads} torch thread(s).", "",
             f"Noisy test PSNR: {base['noisy_test_psnr']:.2f} dB.", "",
             "| model | parameters | theta | test PSNR | test SSIM | train PSNR |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {summary[r['model']]['parameters']} | {r['theta']} | "
                     f"{r['test_psnr']:.2f} | {r['test_ssim']:.3f} | {r['train_psnr']:.2f} |")
    lines += ["", "| model | status | iterations | cost (lower+CG its) | training time (s) |",
              "|---|---|---|---|---|"]
    for name, s in summary.items():
        lines.append(f"| {name} | {s['status']} | {s['iterations']} | {s['cost']} | "
                     f"{s['train_time_s']} |")
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / stem}.{{json,md}} in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
