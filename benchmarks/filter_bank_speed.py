"""The ridge's filter bank on the CPU: image by image, through FFTs, in groups of samples.

    python benchmarks/filter_bank_speed.py [--sizes 5,7,9,11,13] [--batch 20] [--patch 40]
        [--filters 24] [--repeats 7] [--check-crops 800] [--check-size 11]
        [--out results/benchmarks]

Writes ``filter_bank_speed.json`` and ``filter_bank_speed.md`` to ``--out``.  For each
filter size s the batch is that of ``scripts/train_denoiser.py`` with ``--border s - 1``:
``--batch`` crops of (patch + 2 (s - 1))^2 pixels, float64, one torch thread.  Timed: K x
and K^T z the library's way (:func:`bilevel_problems.filter_bank.correlate` and
``correlate_adjoint``: on the CPU one ``conv2d`` per image, and one ``conv_transpose2d`` per
image or, from ``filter_bank.FFT_ADJOINT_FROM``, FFTs image by image), by one conv call per
image, and by one batched conv call on the whole batch, with the largest difference
between the library's result and the batched call's, relative to its largest entry.
Then the ridge's gradient and Hessian-vector product (24 filters of ``--check-size``, 201
knots) and the weighted patch Grams of its bound constants on ``--check-crops`` crops, as a
final check computes them: in groups of samples
(:func:`bilevel_problems.filter_bank.by_samples`, :func:`~bilevel_problems.filter_bank.patch_grams`)
and in one piece.
The minimum over ``--repeats`` rounds after a warm-up, the ways alternating, so that
other processes on a shared machine inflate them as little and as alike as possible; the
load average is recorded.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from bilevel_problems import filter_bank
from bilevel_problems.ridge_regularizer import RidgeRegularizer


def best_times(calls, repeats):
    """The minimum time of each call over ``repeats`` alternating rounds, so that a change
    in the machine's load falls on all of them."""
    for fn in calls:
        fn()
    times = [[] for _ in calls]
    for _ in range(repeats):
        for fn, spent in zip(calls, times, strict=True):
            start = time.perf_counter()
            fn()
            spent.append(time.perf_counter() - start)
    return [min(spent) for spent in times]


def measure(s, batch, patch, filters, repeats):
    gen = torch.Generator().manual_seed(s)
    side = patch + 2 * (s - 1)
    x = torch.randn(batch, side, side, generator=gen, dtype=torch.float64)
    C = filter_bank.zero_mean(torch.randn(filters, s * s, generator=gen, dtype=torch.float64))
    weight = C.view(-1, 1, s, s)
    z = filter_bank.correlate(x, C, s)
    fft = s >= filter_bank.FFT_ADJOINT_FROM
    ways = {
        "K x": ("conv2d image by image", lambda: filter_bank.correlate(x, C, s),
                lambda: filter_bank._image_by_image(F.conv2d, x.unsqueeze(1), weight),
                lambda: F.conv2d(x.unsqueeze(1), weight)),
        "K^T z": ("FFT image by image" if fft else "conv_transpose2d image by image",
                  lambda: filter_bank.correlate_adjoint(z, C, s),
                  lambda: filter_bank._image_by_image(F.conv_transpose2d, z,
                                                          weight).squeeze(1),
                  lambda: F.conv_transpose2d(z, weight).squeeze(1)),
    }
    rows = []
    for op, (way, library, one_by_one, batched) in ways.items():
        reference = batched()
        diff = float((library() - reference).abs().max() / reference.abs().max())
        t_lib, t_one, t_batch = best_times((library, one_by_one, batched), repeats)
        rows.append({"filter_size": s, "crop": side, "operation": op, "library_way": way,
                     "library_ms": 1e3 * t_lib, "image_by_image_ms": 1e3 * t_one,
                     "batched_ms": 1e3 * t_batch, "speedup_over_batched": t_batch / t_lib,
                     "max_relative_difference": diff})
    return rows


def measure_groups(crops, s, patch, filters, repeats):
    gen = torch.Generator().manual_seed(crops)
    side = patch + 2 * (s - 1)
    images = torch.rand(crops, side, side, generator=gen, dtype=torch.float64)
    problem = RidgeRegularizer(images=images, noisy=images, num_filters=filters,
                               filter_size=s, num_knots=201, x_range=0.6)
    theta, x = problem.theta0, images + 0.1
    v = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    weights = torch.rand(crops, filters, patch + s - 1, patch + s - 1, generator=gen,
                         dtype=torch.float64)
    operations = {"gradient": lambda: problem.lower_grad(x, theta),
                  "Hessian product": lambda: problem.lower_hvp(x, theta, v),
                  "patch Grams": lambda: torch.cat([g.flatten() for g in
                                                    filter_bank.patch_grams(x, s, weights)])}
    saved = filter_bank.CPU_RESPONSES

    def in_one_piece(fn):
        def call():
            filter_bank.CPU_RESPONSES = 1 << 62
            try:
                return fn()
            finally:
                filter_bank.CPU_RESPONSES = saved
        return call
    grouped, whole = {}, {}
    for op, fn in operations.items():
        times = best_times((fn, in_one_piece(fn)), repeats)
        grouped[op], whole[op] = (fn(), times[0]), (in_one_piece(fn)(), times[1])
    return [{"filter_size": s, "crops": crops, "crop": side, "operation": op,
             "grouped_ms_per_crop": 1e3 * grouped[op][1] / crops,
             "one_piece_ms_per_crop": 1e3 * whole[op][1] / crops,
             "speedup": whole[op][1] / grouped[op][1],
             "max_relative_difference": float((grouped[op][0] - whole[op][0]).abs().max()
                                              / whole[op][0].abs().max())}
            for op in operations]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="5,7,9,11,13")
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--patch", type=int, default=40)
    parser.add_argument("--filters", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--check-crops", type=int, default=800)
    parser.add_argument("--check-size", type=int, default=11)
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    rows = [row for s in map(int, args.sizes.split(","))
            for row in measure(s, args.batch, args.patch, args.filters, args.repeats)]
    groups = measure_groups(args.check_crops, args.check_size, args.patch, args.filters,
                            max(2, args.repeats // 3))
    record = {"settings": {k: v for k, v in vars(args).items() if k != "out"},
              "machine": {"processor": platform.processor() or platform.machine(),
                          "cpus": os.cpu_count(), "torch": torch.__version__, "threads": 1,
                          "load_average_before": load_before,
                          "load_average_after": os.getloadavg()},
              "rows": rows, "groups": groups}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "filter_bank_speed.json").write_text(json.dumps(record, indent=1) + "\n")
    lines = ["# The ridge's filter bank on the CPU: image by image, through FFTs, in groups "
             "of samples", "",
             f"{args.batch} crops of ({args.patch} + 2 (s - 1))^2, {args.filters} filters, "
             f"float64, one thread, torch {torch.__version__}; minimum of {args.repeats} "
             f"alternating rounds (`python benchmarks/filter_bank_speed.py`).  Load average "
             f"{load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after.", "",
             "| s | crop | operation | the library's way | library (ms) | "
             "conv image by image (ms) | batched conv (ms) | speedup | max rel. diff |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['filter_size']} | {r['crop']} | {r['operation']} | {r['library_way']} | "
              f"{r['library_ms']:.2f} | {r['image_by_image_ms']:.2f} | {r['batched_ms']:.2f} | "
              f"{r['speedup_over_batched']:.2f}x | {r['max_relative_difference']:.1e} |"
              for r in rows]
    lines += ["", f"The ridge ({args.filters} filters of {args.check_size}x{args.check_size}, 201 "
              f"knots) on {args.check_crops} crops, as a final check: in groups of samples "
              f"(`filter_bank.by_samples`, about {filter_bank.CPU_RESPONSES:,} responses a "
              "group; the patch Grams of the bound constants, `filter_bank.patch_grams`, a group "
              "of patches that size) and in one piece; the largest difference relative to the "
              "largest entry (the Grams' sums run in another order).", "",
              "| operation | grouped (ms a crop) | one piece (ms a crop) | speedup "
              "| max rel. diff |",
              "|---|---|---|---|---|"]
    lines += [f"| {r['operation']} | {r['grouped_ms_per_crop']:.2f} | "
              f"{r['one_piece_ms_per_crop']:.2f} | {r['speedup']:.2f}x | "
              f"{r['max_relative_difference']:.1e} |" for r in groups]
    (args.out / "filter_bank_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
