"""The ridge's filter bank on a training batch: image by image against one batched call.

    python benchmarks/filter_bank_speed.py [--sizes 5,7,9,11,13] [--batch 20] [--patch 40]
        [--filters 24] [--repeats 7] [--out results/benchmarks]

Writes ``filter_bank_speed.json`` and ``filter_bank_speed.md`` to ``--out``.  For each
filter size s the batch is that of ``scripts/train_denoiser.py`` with ``--border s - 1``:
``--batch`` crops of (patch + 2 (s - 1))^2 pixels, float64, one torch thread.  Timed: K x
and K^T z by :func:`bilevel_problems.filter_bank.correlate` and ``correlate_adjoint``
(on the CPU one ``conv2d`` / ``conv_transpose2d`` per image) and by one batched call on the
whole batch (what they were before), with the largest difference between the two results.
The minimum over ``--repeats`` calls after a warm-up, so that other processes on a shared
machine inflate it as little as possible; the load average is recorded.
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


def best_time(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(s, batch, patch, filters, repeats):
    gen = torch.Generator().manual_seed(s)
    side = patch + 2 * (s - 1)
    x = torch.randn(batch, side, side, generator=gen, dtype=torch.float64)
    C = filter_bank.zero_mean(torch.randn(filters, s * s, generator=gen, dtype=torch.float64))
    weight = C.view(-1, 1, s, s)
    z = filter_bank.correlate(x, C, s)
    pairs = {
        "K x": (lambda: filter_bank.correlate(x, C, s),
                lambda: F.conv2d(x.unsqueeze(1), weight)),
        "K^T z": (lambda: filter_bank.correlate_adjoint(z, C, s),
                  lambda: F.conv_transpose2d(z, weight).squeeze(1)),
    }
    rows = []
    for op, (library, batched) in pairs.items():
        diff = float((library() - batched()).abs().max())
        t_lib, t_batch = best_time(library, repeats), best_time(batched, repeats)
        rows.append({"filter_size": s, "crop": side, "operation": op,
                     "image_by_image_ms": 1e3 * t_lib, "batched_ms": 1e3 * t_batch,
                     "speedup": t_batch / t_lib, "max_difference": diff})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="5,7,9,11,13")
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--patch", type=int, default=40)
    parser.add_argument("--filters", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    rows = [row for s in map(int, args.sizes.split(","))
            for row in measure(s, args.batch, args.patch, args.filters, args.repeats)]
    record = {"settings": {k: v for k, v in vars(args).items() if k != "out"},
              "machine": {"processor": platform.processor() or platform.machine(),
                          "cpus": os.cpu_count(), "torch": torch.__version__, "threads": 1,
                          "load_average_before": load_before,
                          "load_average_after": os.getloadavg()},
              "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "filter_bank_speed.json").write_text(json.dumps(record, indent=1) + "\n")
    lines = ["# The ridge's filter bank: image by image against one batched call", "",
             f"{args.batch} crops of ({args.patch} + 2 (s - 1))^2, {args.filters} filters, "
             f"float64, one thread, torch {torch.__version__}; minimum of {args.repeats} "
             f"calls (`python benchmarks/filter_bank_speed.py`).  Load average "
             f"{load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after.", "",
             "| s | crop | operation | image by image (ms) | batched (ms) | speedup | max diff |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['filter_size']} | {r['crop']} | {r['operation']} | "
              f"{r['image_by_image_ms']:.2f} | {r['batched_ms']:.2f} | {r['speedup']:.2f}x | "
              f"{r['max_difference']:.1e} |" for r in rows]
    (args.out / "filter_bank_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
