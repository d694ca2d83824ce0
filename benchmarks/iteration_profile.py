"""Where a training iteration's time goes: a learned ridge's ``maid_sgd`` steps, profiled.

    python benchmarks/iteration_profile.py [--run RUN_DIR] [--crops 40] [--batch 10]
        [--iterations 8] [--out results/benchmarks/iteration_profile.md]

Rebuilds a run's training problem from its folder (default
results/denoisers/wcrr24x13_symbol_saga7dp2_sigma25; meta.json: the problem, crops and noise;
theta.json: the start), keeps its first ``--crops`` crops, and runs its method settings
(meta.json) with batches of ``--batch`` (one rank's share of a data-parallel batch), without
a final check, one torch thread.  After a warm-up of one epoch it times ``--iterations``
iterations six ways, alternated twice: as the library runs them; with the spline model (the
filters, slopes, the weakly convex floor and the potentials' tables) recomputed at every
closed-form call, as before stop 41 (and so the curvatures below, which are kept with it;
the thetas must be the same to the last bit); with the
curvatures psi''(K x) recomputed at every Hessian product (the same to the last bit); with
K^T z by conv_transpose2d instead of FFTs (the thetas the same to rounding); with both, as
before stop 42; and in float32 instead of float64.  A cProfile of one more timing gives each
part's share of the time: the filter bank's correlations, the spline potentials, the floor,
SAGA's per-sample products.  Measure on an idle machine: a second process on a 2-core CPU
slows both.
"""
from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import time
import warnings
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "scripts"))
import train_denoiser  # noqa: E402  (the training crops)
from bilevel_problems import filter_bank  # noqa: E402
from bilevel_problems.ridge_regularizer import RidgeRegularizer  # noqa: E402

import bilevel  # noqa: E402
from bilevel.nn.splines import potential_tables  # noqa: E402
from bilevel.results import command_line, environment  # noqa: E402

KEPT = RidgeRegularizer._model


def recomputed(self, theta):
    """The spline model as every closed-form call computed it before stop 41."""
    alpha, C, slopes, _ = self.params(theta)
    return alpha, C, slopes, potential_tables(slopes, self.x_range)


#: cProfile entries (file suffix, function) whose cumulative time makes each share.
PARTS = {"filter bank correlations (conv2d, conv_transpose2d, FFTs)": [
             ("~", "<built-in method torch.conv2d>"),
             ("~", "<built-in method torch.conv_transpose2d>"),
             ("fft_correlation.py", "correlate_adjoint")],
         "spline potentials": [("potentials.py", "evaluate_potential")],
         "the weakly convex floor": [("weakly_convex_ridge.py", "kernel_bound")],
         "SAGA's per-sample products": [("variance_reduction.py", "sample_hypergradients")]}


def timed(problem, theta, settings, iterations):
    """(seconds an iteration, the returned theta, cost an iteration)."""
    started = time.perf_counter()
    result = bilevel.solve(problem, "maid_sgd", theta0=theta, max_iter=iterations, **settings)
    seconds = (time.perf_counter() - started) / iterations
    return seconds, result.theta, result.history[-1]["cost"] / iterations


def shares(problem, theta, settings, iterations):
    """{part: its share of the profiled time}, and the profiled total."""
    profile = cProfile.Profile()
    profile.enable()
    timed(problem, theta, settings, iterations)
    profile.disable()
    stats = pstats.Stats(profile).stats
    total = max(entry[3] for entry in stats.values())
    out = {}
    for part, keys in PARTS.items():
        out[part] = sum(entry[3] for (path, _, name), entry in stats.items()
                        if any(path.endswith(f) and name == n for f, n in keys)) / total
    return out, total


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default="results/denoisers/wcrr24x13_symbol_saga7dp2_sigma25")
    p.add_argument("--crops", type=int, default=40)
    p.add_argument("--batch", type=int, default=10)
    p.add_argument("--iterations", type=int, default=8)
    p.add_argument("--out", default="results/benchmarks/iteration_profile.md")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")  # every short run ends on its max_iter
    run = Path(args.run)
    meta = json.loads((run / "meta.json").read_text())
    theta = torch.tensor(json.loads((run / "theta.json").read_text()), dtype=torch.float64)
    settings = dict(meta["settings"], batch_size=args.batch, final_check=False)
    problems = {}
    for dtype in (torch.float64, torch.float32):
        clean, noisy, _ = train_denoiser.training_pairs(
            args.crops, meta["patch_size"], meta["sigma"], meta["seed"], None,
            meta["crops_per_image"])
        problems[dtype] = bilevel.make_problem(meta["problem"], images=clean.to(dtype),
                                               noisy=noisy.to(dtype), sigma=meta["sigma"] / 255,
                                               dtype=dtype)
    warm = args.crops // args.batch  # one epoch: the warm starts filled
    fft_from = filter_bank.FFT_ADJOINT_FROM
    fft_from, kept = filter_bank.FFT_ADJOINT_FROM, RidgeRegularizer.KEPT_CURVATURES
    ways = {"as the library runs": (torch.float64, KEPT, kept, fft_from),
            "spline model recomputed at every call": (torch.float64, recomputed, kept, fft_from),
            "curvatures recomputed at every Hessian product": (torch.float64, KEPT, -1,
                                                               fft_from),
            "K^T z by conv_transpose2d": (torch.float64, KEPT, kept, 1 << 30),
            "both, as before stop 42": (torch.float64, KEPT, -1, 1 << 30),
            "float32": (torch.float32, KEPT, kept, fft_from)}
    seconds, thetas, costs = {w: [] for w in ways}, {}, {}
    for _ in range(2):
        for way, (dtype, model, curvatures, fft) in ways.items():
            RidgeRegularizer._model, filter_bank.FFT_ADJOINT_FROM = model, fft
            RidgeRegularizer.KEPT_CURVATURES = curvatures
            start = theta.to(problems[dtype].initial_theta().dtype)
            timed(problems[dtype], start, settings, warm)
            s, thetas[way], costs[way] = timed(problems[dtype], start, settings, args.iterations)
            seconds[way].append(s)
            print(f"{way}: {s:.2f} s an iteration", flush=True)
    RidgeRegularizer._model, filter_bank.FFT_ADJOINT_FROM = KEPT, fft_from
    RidgeRegularizer.KEPT_CURVATURES = kept
    ours = thetas["as the library runs"]
    same = all(torch.equal(ours, thetas[way]) for way in (
        "spline model recomputed at every call", "curvatures recomputed at every Hessian product"))
    by_conv = thetas["K^T z by conv_transpose2d"]
    conv_gap = float((ours - by_conv).abs().max() / by_conv.abs().max())
    parts, total = shares(problems[torch.float64], theta, settings, args.iterations)
    env = environment(command_line(argv))
    lines = ["# Where a training iteration's time goes", "",
             f"`{env['command']}` ({env['cpu']}, {env['cpus']} cores, one torch thread, "
             f"torch {env['torch']}, commit {(env['git_commit'] or '')[:7]}"
             f"{' with uncommitted changes' if env['git_changes'] else ''}): "
             f"`{meta['problem']}`, the "
             f"first {args.crops} crops of the run's training set ({meta['patch_size']}x"
             f"{meta['patch_size']} plus the border), the run's method settings"
             f" as changed here, {settings}; {args.iterations} "
             "iterations after one epoch's warm-up, each way timed twice (alternated).", "",
             "| way | s an iteration (two timings) | lower + CG iterations an iteration |",
             "|---|---|---|"]
    lines += [f"| {way} | {' / '.join(f'{s:.2f}' for s in seconds[way])} | "
              f"{costs[way]:.1f} |" for way in ways]
    lines += ["", "The library's thetas and those with the model or the curvatures recomputed "
              f"are "
              f"{'the same to the last bit' if same else 'DIFFERENT'}; those with K^T z by "
              f"conv_transpose2d differ from the library's by {conv_gap:.1e} of the largest "
              f"entry (K^T z through FFTs from {fft_from}x{fft_from} filters).", "",
              f"Shares of a profiled timing ({total:.1f} s under cProfile, the library's way):",
              "", "| part | share |", "|---|---|"]
    lines += [f"| {part} | {share:.0%} |" for part, share in parts.items()]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if not same:
        raise SystemExit("the kept spline model or curvatures changed the iterates")


if __name__ == "__main__":
    main()
