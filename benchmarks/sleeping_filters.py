"""Which filters of a learned ridge act, and how much gradient reaches the others.

    python benchmarks/sleeping_filters.py [--run results/denoisers/ridge_tv_sigma25 ...]
                                          [--patches 40] [--wake 0.05] [--quick]

For each learned (weakly) convex ridge (``--run``, repeatable; default: the committed
sigma-25 ridges), on the first ``--patches`` training crops it saw (40x40 BSD400 crops,
sigma 25/255, seed 0; bundled images without the data):

- ``asleep``: the filters whose slopes all lie below 0.01 s_max (the TV start switches
  filters off at 0.001 s_max), and each filter's largest slope;
- ``F`` and the certified hypergradient z at the learned theta (eps = delta = 1e-6), with
  the root-mean-square of z over the taps and over the slope parameters q of the awake
  filters and of the sleeping ones: how strongly the gradient pulls each kind;
- ``woken``: the same at ``ridge_embedding.embed(..., wake=--wake)``, the sleeping filters
  switched on (unit norm, slopes wake s_max in the central window).

Writes results/benchmarks/sleeping_filters.{json,md}.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

import bilevel
from bilevel import experiment

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
RUNS = ("results/denoisers/ridge_sigma25", "results/denoisers/ridge_tv_sigma25",
        "results/denoisers/wcrr_sigma25", "results/denoisers/wcrr_tv_sigma25")
ASLEEP = 0.01  # a filter whose slopes all lie below this fraction of s_max
ACCURACY = 1e-6


def add_arguments(p):
    p.add_argument("--run", action="append", default=None, help="a learned ridge run folder")
    p.add_argument("--patches", type=int, default=None, help="training patches (40; quick 2)")
    p.add_argument("--wake", type=float, default=0.05)


def _patches(args):
    import train_denoiser

    clean, noisy, _ = train_denoiser.training_pairs(args.patches, 16 if args.quick else 40,
                                                    sigma=25.0)
    return clean, noisy


def _pull(problem, theta, asleep):
    """F, and the RMS of the certified hypergradient over taps and q, awake vs asleep."""
    hg = bilevel.hypergradient(problem, theta, ACCURACY, ACCURACY)
    K, s2, M = problem.K, problem.s ** 2, problem.M
    taps, q = hg.grad[1:1 + K * s2].view(K, s2), hg.grad[1 + K * s2:].view(K, M)
    awake = torch.ones(K, dtype=torch.bool)
    awake[asleep] = False

    def rms(block, rows):
        return float(block[rows].pow(2).mean().sqrt()) if bool(rows.any()) else None

    return dict(F=hg.upper_value, omega=hg.error_bound, z_norm=float(hg.grad.norm()),
                taps_awake=rms(taps, awake), taps_asleep=rms(taps, ~awake),
                q_awake=rms(q, awake), q_asleep=rms(q, ~awake))


def compute(args, folder):
    from bilevel_problems.ridge_embedding import embed

    torch.set_num_threads(1)
    args.patches = args.patches or (2 if args.quick else 40)
    clean, noisy = _patches(args)
    rows = []
    for run in args.run or RUNS:
        model = bilevel.load(run)
        problem = bilevel.make_problem(model.spec, images=clean, noisy=noisy, sigma=25 / 255)
        theta = model.theta.to(problem.theta0)
        slopes = problem.slopes(theta).amax(dim=1)
        asleep = (slopes < ASLEEP * problem.s_max).nonzero().flatten().tolist()
        kappa = problem.smoothness(theta) / problem.strong_convexity(theta)
        row = dict(run=run, spec=model.spec, filters=problem.K, asleep=asleep,
                   largest_slopes=[round(float(v), 4) for v in slopes],
                   conditioning=kappa, learned=_pull(problem, theta, asleep))
        if asleep:
            woken = embed(problem, problem, theta, wake=args.wake)
            row["woken"] = _pull(problem, woken, asleep)
        rows.append(row)
        print(row, flush=True)
    return dict(patches=args.patches, wake=args.wake, accuracy=ACCURACY, rows=rows)


def _fmt(value):
    return "-" if value is None else f"{value:.2e}"


def write_table(folder):
    meta = folder.read_meta()
    lines = [f"# Sleeping filters of the learned ridges ({meta['patches']} training patches)",
             "", f"`{meta['command']}`", "",
             f"Asleep: every slope below {ASLEEP} s_max. z: the certified hypergradient "
             f"(eps = delta = {meta['accuracy']:g}); RMS of its entries over the filters' taps "
             "and slope parameters q. Woken: the sleeping filters switched on at "
             f"{meta['wake']} s_max (bilevel_problems.ridge_embedding).", "",
             "| run | asleep / filters | L / mu | theta | F | taps awake | taps asleep "
             "| q awake | q asleep |", "|---|---|---|---|---|---|---|---|---|"]
    for r in meta["rows"]:
        for kind in ("learned", "woken"):
            if kind not in r:
                continue
            v = r[kind]
            lines.append(
                f"| {Path(r['run']).name} | {len(r['asleep'])} / {r['filters']} | "
                f"{r['conditioning']:.0f} | {kind} | {v['F']:.5f} | {_fmt(v['taps_awake'])} | "
                f"{_fmt(v['taps_asleep'])} | {_fmt(v['q_awake'])} | {_fmt(v['q_asleep'])} |")
    folder.write_text("sleeping_filters.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None):
    return experiment.main(__doc__, "sleeping_filters", compute, summarise=write_table,
                           argv=argv, add_arguments=add_arguments, kind="benchmarks",
                           meta_name="sleeping_filters.json")


if __name__ == "__main__":
    main()
