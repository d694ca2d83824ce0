"""Speed and memory of LinearSpline against ReLU on one large batch (CPU).

    python benchmarks/spline_activation.py [--quick] [--shape 256 64 32 32] [--threads 1]

Variants, each run on an input x of ``--shape`` (float32, channel dim 1):

- ``relu``: ``torch.relu``;
- ``spline``: :class:`bilevel.splines.LinearSpline` (custom autograd function that
  saves only x), with ``--knots`` knots and with 10x as many;
- ``spline_autograd``: the same map by plain gather ops left to autograd
  (:func:`bilevel.splines.linear_spline_autograd`), the reference.

Measured for one forward + backward (y = f(x); y.backward(g), gradients with
respect to x and, for splines, the coefficients):

- time: median over ``--repeats`` runs after one warm-up;
- saved memory: bytes of the distinct storages autograd keeps for the backward
  pass, recorded with ``torch.autograd.graph.saved_tensors_hooks`` (the
  activation memory a network pays per layer between forward and backward);
  also the part that is not the input itself (x is usually alive anyway);
- peak memory: the growth of the resident-set high-water mark
  (``resource.getrusage(...).ru_maxrss``) of a fresh process during one
  forward + backward, after x, g and a warm-up on a small tensor; this counts
  everything (output, gradients, temporaries), so it is an upper bound on what
  the operation needs beyond its input.

Each variant runs in its own subprocess so the high-water marks do not mix.
Writes results/benchmarks/spline_activation.{json (settings, one row per variant),
md}; ``--quick``: a small input, ReLU and one spline.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from bilevel import experiment

VARIANTS = ("relu", "spline", "spline_many_knots", "spline_autograd")


def add_arguments(p):
    p.add_argument("--shape", type=int, nargs="+", default=[256, 64, 32, 32])
    p.add_argument("--knots", type=int, default=21)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)


def worker(args):
    """Run one variant in this (fresh) process; print a JSON line."""
    import resource

    import torch

    from bilevel.nn.splines import LinearSpline, linear_spline_autograd

    torch.set_num_threads(args.threads)
    variant = args.worker
    C = args.shape[1]
    knots = args.knots * 10 + 1 if variant == "spline_many_knots" else args.knots
    gen = torch.Generator().manual_seed(0)
    x = (2 * torch.randn(args.shape, generator=gen)).requires_grad_(True)
    g = torch.randn(args.shape, generator=gen)
    params = []
    if variant == "relu":
        f = torch.relu
    else:
        act = LinearSpline(C, knots, 3.0, init="leaky_relu")
        params = [act.coefficients]
        if variant == "spline_autograd":
            def f(t):
                return linear_spline_autograd(t, act.coefficients, act.x_range)
        else:
            f = act

    def step(inp, grad):
        y = f(inp)
        y.backward(grad)
        return y

    small = x.detach()[:2].clone().requires_grad_(True)
    step(small, g[:2])  # warm-up: loads the kernels, allocator arenas
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux

    saved = {}

    def pack(t):
        storage = t.untyped_storage()
        saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = f(x)
    saved_bytes = sum(saved.values())
    saved_not_input = sum(b for ptr, b in saved.items()
                          if ptr != x.untyped_storage().data_ptr())
    y.backward(g)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    del y
    times = []
    for _ in range(args.repeats):
        x.grad = None
        for p in params:
            p.grad = None
        t0 = time.perf_counter()
        step(x, g)
        times.append(time.perf_counter() - t0)
    n = x.numel()
    print(json.dumps(dict(variant=variant, knots=None if variant == "relu" else knots,
                          elements=n, time_s=statistics.median(times), times_s=times,
                          saved_bytes=saved_bytes, saved_bytes_per_element=saved_bytes / n,
                          saved_not_input_bytes=saved_not_input,
                          peak_extra_bytes=(peak - base) * 1024,
                          peak_extra_bytes_per_element=(peak - base) * 1024 / n)))


def compute(args, folder):
    # Each worker is a fresh process (a few seconds of imports): the quick run measures
    # two of them.
    variants = VARIANTS[:2] if args.quick else VARIANTS
    if args.quick:
        args.shape, args.repeats = [16, 8, 16, 16], 2
    rows = []
    for variant in variants:
        cmd = [sys.executable, __file__, "--worker", variant, "--shape", *map(str, args.shape),
               "--knots", str(args.knots), "--repeats", str(args.repeats),
               "--threads", str(args.threads)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{variant:18s} {r['time_s'] * 1e3:8.1f} ms  saved {r['saved_bytes'] / 2**20:7.1f} "
              f"MiB ({r['saved_bytes_per_element']:.1f} B/elem)  peak +"
              f"{r['peak_extra_bytes'] / 2**20:7.1f} MiB", flush=True)
    import torch

    return dict(shape=args.shape, dtype="float32", device="cpu", threads=args.threads,
                repeats=args.repeats, torch=torch.__version__, rows=rows)


def write_table(folder):
    """The .md beside the .json."""
    meta = folder.read_meta()
    rows, relu = meta["rows"], meta["rows"][0]
    lines = [f"# LinearSpline vs. ReLU: forward + backward on {tuple(meta['shape'])} float32 "
             "(CPU)", "",
             f"{meta['threads']} torch thread(s), median of {meta['repeats']} runs after a "
             "warm-up; each variant in a fresh process.  *saved*: bytes of the distinct "
             "storages autograd keeps for backward (saved_tensors_hooks); *not input*: of which "
             "not x itself; *peak*: growth of the process's resident-set high-water mark over "
             "one forward + backward (output, gradients and temporaries included).", "",
             "| variant | knots | time (ms) | x ReLU | saved (MiB) | saved B/elem | "
             "not input (MiB) | peak (MiB) | peak B/elem |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['knots'] or '-'} | {r['time_s'] * 1e3:.1f} | "
                     f"{r['time_s'] / relu['time_s']:.1f} | {r['saved_bytes'] / 2**20:.1f} | "
                     f"{r['saved_bytes_per_element']:.1f} | "
                     f"{r['saved_not_input_bytes'] / 2**20:.1f} | "
                     f"{r['peak_extra_bytes'] / 2**20:.1f} | "
                     f"{r['peak_extra_bytes_per_element']:.1f} |")
    folder.write_text(folder.meta_name.replace(".json", ".md"), "\n".join(lines) + "\n")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if "--worker" in argv:  # one variant, in the fresh process that compute() started
        parser = experiment.parser(__doc__)
        add_arguments(parser)
        return worker(parser.parse_args(argv))
    return experiment.main(__doc__, "spline_activation", compute, summarise=write_table,
                           argv=argv, add_arguments=add_arguments, kind="benchmarks",
                           meta_name="spline_activation.json")


if __name__ == "__main__":
    main()
