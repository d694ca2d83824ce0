"""Closed-form derivatives against autograd double backward, and the FoE gradient's FLOP rate.

    python benchmarks/hvp_closed_form.py [--quick] [--threads T] [--out results/benchmarks]

Writes ``hvp_closed_form.json`` (settings, one row per problem, operation and
implementation, throughputs) and ``hvp_closed_form.md`` to ``--out`` (default
results/benchmarks; ``_threads{T}`` appended when ``--threads`` is given);
``--quick`` measures the peak memory of one call only; ``--replot`` rewrites the .md
from the .json.

What is measured (paper setting: 20 gray images of 256 x 256, sigma = 0.1):

1. For TV denoising and fields of experts (48 filters of 7 x 7), float64: the
   time and the peak memory of ``lower_grad``, ``lower_hvp`` and ``mixed_vjp``
   in the problem's closed form and in the autograd default of
   :class:`bilevel.BilevelProblem` (double backward for the last two), at the
   noisy images with a random direction.  For FoE also the closed form with the
   'conv' backend (``conv2d`` / ``conv_transpose2d`` on the whole batch).
2. This machine's ``torch.matmul`` throughput on large square matrices, float64
   and float32, and the FoE gradient's FLOP rate as a fraction of it.  A
   gradient is two convolution passes of 2 K s^2 H W N FLOPs each (the
   count of the task; the 'valid' outputs are slightly fewer, so this
   overstates the rate by (H W) / ((H - s + 1)(W - s + 1)) = 1.05).
3. The candidate implementations of that gradient: ``conv2d`` +
   ``conv_transpose2d`` with K channels, ``F.unfold`` + one GEMM + ``F.fold`` on
   the whole batch, the previous 'gemm' backend (patches + GEMM + ``F.fold`` on
   cache-sized chunks, one chunk at a time with the BLAS threaded inside), and
   the problem's 'gemm' backend (the flat layout, chunks spread over the threads,
   each single-threaded) for several chunk sizes ``chunk`` of output pixels.

Timing: the minimum over ``--repeats`` calls after one warm-up call, so that
other processes on a shared machine inflate it as little as possible; the load
average before and after is recorded.  Throughput fractions: the median over
``--throughput-repeats`` rounds of back-to-back ratios (more rounds than
``--repeats``: a median of three moved by several points from run to run).
Peak memory: each measurement runs in a fresh subprocess that holds the problem
and the inputs, resets the kernel's peak-RSS mark (``/proc/self/clear_refs``),
calls the operation once and reads ``VmHWM - VmRSS(before)`` from
``/proc/self/status``, with glibc told to return freed blocks above 64 KiB to
the system (``MALLOC_MMAP_THRESHOLD_``) so that earlier allocations cannot hide
the peak.  This counts every byte the operation touches on the heap, torch or
not (``tracemalloc`` sees no torch memory; the torch profiler only sees torch's
allocator).
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from bilevel_problems import datasets
from bilevel_problems.fields_of_experts import CHUNK_COLUMNS

from bilevel import BilevelProblem, experiment
from bilevel.results import environment

OPS = ("lower_grad", "lower_hvp", "mixed_vjp")
CHUNKS = (1024, 2048, 4096, 8192, 16384)
GEMM = "gemm backend"
BEFORE = "gemm backend before (F.fold, serial chunks)"


# ---------------------------------------------------------------- the problems
def load_images(n, size, folder):
    """n gray images size x size: a folder of PNGs if given, else scikit-image crops."""
    if folder is not None:
        return datasets.load_images(str(folder), n=n, size=size), folder
    crops, seed = [], 0
    while sum(len(c) for c in crops) < n:
        crops.append(datasets.load_images(None, size=size, mode="crop", seed=seed))
        seed += 1
    return torch.cat(crops)[:n], "scikit-image bundled images, random crops"


def make(name, images, dtype=torch.float64, **kw):
    if name == "tv":
        from bilevel_problems.tv_denoising import TVDenoising
        return TVDenoising(images=images.to(dtype), dtype=dtype, **kw)
    from bilevel_problems.fields_of_experts import FieldsOfExperts
    return FieldsOfExperts(images=images.to(dtype), num_filters=kw.pop("num_filters", 48),
                           filter_size=kw.pop("filter_size", 7), dtype=dtype, **kw)


def operation(problem, op, impl):
    """A zero-argument callable running ``op`` of ``problem`` in ``impl`` at fixed inputs."""
    theta = problem.initial_theta()
    x = problem.noisy.clone()
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(0),
                    dtype=torch.float64).to(x.dtype)
    owner = BilevelProblem if impl == "autograd" else type(problem)
    fn = getattr(owner, op)
    if op == "lower_grad":
        return lambda: fn(problem, x, theta)
    return lambda: fn(problem, x, theta, v)


def best_time(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


# ------------------------------------------------------------------- memory
def _status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure_memory_here(spec):
    """Peak extra resident memory (MiB) of one call; runs inside the subprocess."""
    torch.set_num_threads(spec["threads"])
    images = torch.load(spec["images"])
    problem = make(spec["problem"], images, **spec["kw"])
    fn = operation(problem, spec["op"], spec["impl"])
    # The FoE 'gemm' backend keeps per-thread buffers from call to call; the checks
    # at construction made them already: drop them, so that this call's peak has them.
    problem.__dict__.pop("_workspaces", None)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS mark to the current RSS
    before = _status_kib("VmRSS")
    fn()
    return (_status_kib("VmHWM") - before) / 1024


def measure_memory(spec):
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run([sys.executable, __file__, "--memory-probe", json.dumps(spec)],
                         env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- throughput
def gradient_throughput(images, dtype, repeats, n_mm, K, s):
    """GFLOP/s of the FoE gradient's convolutions by implementation, and of matmul.

    Each repeat times the matmul and every variant back to back, and the fraction
    of matmul throughput is the median over repeats of the per-repeat ratios:
    on a shared machine both then see about the same competition for the cores.
    """
    import torch.nn.functional as F
    from bilevel_problems.fields_of_experts import dct_filters

    gen = torch.Generator().manual_seed(0)
    a = torch.randn((n_mm, n_mm), generator=gen, dtype=dtype)
    b = torch.randn((n_mm, n_mm), generator=gen, dtype=dtype)
    x = images.to(dtype).unsqueeze(1)
    N, _, H, W = x.shape
    C = dct_filters(s, K).to(dtype).view(K, s * s)
    nu2 = 0.05 ** 2
    flops = 2 * (2 * K * s * s * H * W * N)

    def conv():
        w = C.view(K, 1, s, s)
        z = F.conv2d(x, w)
        return F.conv_transpose2d(z * torch.rsqrt(z * z + nu2), w)

    def gemm_whole():
        z = torch.matmul(C, F.unfold(x, s))
        return F.fold(torch.matmul(C.T, z * torch.rsqrt(z * z + nu2)), (H, W), s)

    def gemm_one_chunk_at_a_time(p):
        """The 'gemm' backend before the flat layout and the threaded sweep."""
        theta = p.initial_theta()
        prm = p.params(theta)
        nu2_k = (prm.nu * prm.nu).view(-1, 1)
        Ca = prm.alpha.view(-1, 1) * prm.filters
        x = p.noisy

        def run():
            out = x - p.noisy
            for ch in p._chunks(prm, x.shape):  # compact layout, F.fold
                z = ch.response(x)
                ch.adjoint_into(out, torch.addcmul(nu2_k, z, z).rsqrt_().mul_(z), Ca)
            return out
        return run

    variants = {"conv2d + conv_transpose2d": conv}
    if N * s * s * H * W * x.element_size() < 4 * 2 ** 30:  # skip if > 4 GiB of patches
        variants["unfold + GEMM, whole batch"] = gemm_whole
    for chunk in CHUNKS:
        p = make("foe", images, dtype=dtype, num_filters=K, filter_size=s, backend="gemm",
                 chunk_columns=chunk)
        if chunk == CHUNK_COLUMNS:
            variants[f"{BEFORE}, chunks of {chunk}"] = gemm_one_chunk_at_a_time(p)
        variants[f"{GEMM}, chunks of {chunk}"] = functools.partial(
            p.lower_grad, p.noisy, p.initial_theta())
    for fn in variants.values():
        fn()  # warm up
    matmul_s, times = [], {name: [] for name in variants}
    for _ in range(repeats):
        matmul_s.append(best_time(lambda: a @ b, 1))
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    mm_flops = 2 * n_mm ** 3
    fraction = {name: statistics.median(mm_s * flops / (t * mm_flops)
                                        for mm_s, t in zip(matmul_s, ts, strict=True))
                for name, ts in times.items()}
    return flops, dict(matmul_gflops=mm_flops / min(matmul_s) / 1e9,
                       gradient_gflops={n: flops / min(ts) / 1e9 for n, ts in times.items()},
                       fraction_of_matmul=fraction)


# -------------------------------------------------------------------- report
def machine():
    env = environment()
    return dict(cpu=env["cpu"], logical_cpus=env["cpus"], torch=env["torch"],
                threads=torch.get_num_threads(), python=env["python"],
                blas=("MKL" if torch.backends.mkl.is_available() else "other"),
                mkldnn=torch.backends.mkldnn.is_available())


def markdown(res):
    m, cfg = res["machine"], res["config"]
    lines = [
        "# Closed-form derivatives vs autograd double backward",
        "",
        f"Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, torch {m['torch']} "
        f"({m['threads']} threads, BLAS {m['blas']}).  Load average (1, 5, 15 min) before / "
        f"after: {res['load_before']} / {res['load_after']}; on a shared machine other jobs "
        "ran alongside, so times are minima over repeats and throughput fractions are "
        "medians of back-to-back ratios.",
        f"Images: {cfg['n_images']} x {cfg['size']}x{cfg['size']} ({cfg['images']}); "
        f"FoE with {cfg['num_filters']} filters of {cfg['filter_size']}x{cfg['filter_size']}; "
        "float64.",
        f"Command: `{res['command']}`",
        "",
        "## Time and peak memory per call (float64)",
        "",
        "| problem | operation | implementation | time (s) | speed-up vs autograd | "
        "peak memory (MiB) |",
        "|---|---|---|---|---|---|",
    ]
    for r in res["derivatives"]:
        peak = "-" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
        lines.append(f"| {r['problem']} | {r['op']} | {r['impl']} | {r['seconds']:.3f} | "
                     f"{r['speedup_vs_autograd']:.1f}x | {peak} |")
    lines += ["", f"Peak memory: {res['memory_method']}.", "",
              "## FoE gradient throughput", "",
              f"One gradient = {res['gradient_flops']:.3g} FLOPs (2 convolution passes of "
              "2 K s^2 H W N).  Percentages: of `torch.matmul` on "
              f"{res['matmul_n']}x{res['matmul_n']} matrices of the same dtype.", "",
              "| | float64 GFLOP/s | % of matmul | float32 GFLOP/s | % of matmul |",
              "|---|---|---|---|---|"]
    t64, t32 = res["throughput"]["float64"], res["throughput"]["float32"]
    lines.append(f"| torch.matmul | {t64['matmul_gflops']:.1f} | 100% | "
                 f"{t32['matmul_gflops']:.1f} | 100% |")
    for name, g in t64["gradient_gflops"].items():
        g32 = t32["gradient_gflops"].get(name, math.nan)
        f32 = t32["fraction_of_matmul"].get(name, math.nan)
        lines.append(f"| {name} | {g:.1f} | {100 * t64['fraction_of_matmul'][name]:.0f}% | "
                     f"{g32:.1f} | {100 * f32:.0f}% |")
    lines += ["", "'whole batch' is `F.unfold` + GEMM + `F.fold` on all images at once (GiB "
              "of patches, out of cache).  'gemm backend' rows are the problem's 'gemm' "
              "backend with `chunk_columns` set: the flat layout (the fold as two small "
              "GEMVs on shifted views), chunks spread over the torch threads, each "
              "single-threaded.  'before' is that backend as it was: the compact layout "
              "with `F.fold`, one chunk at a time, each operation on all the torch "
              "threads.", ""]
    lines += ["## Verdict", ""] + [f"- {v}" for v in res["verdict"]] + [""]
    return "\n".join(lines)


def stem(args):
    return "hvp_closed_form" + (f"_threads{args.threads}" if args.threads else "")


def add_arguments(p):
    p.add_argument("--n-images", type=int, default=20)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--filters", type=int, default=48)
    p.add_argument("--filter-size", type=int, default=7)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--throughput-repeats", type=int, default=9)
    p.add_argument("--images", default=None,
                   help="folder of PNGs (default: Set68 where bilevel.experiment.image_folder "
                        "finds it, else scikit-image crops)")
    p.add_argument("--memory-probe", help=argparse.SUPPRESS)


def derivative_rows(images, args, threads):
    """Time (and peak memory) of each derivative in each implementation."""
    foe_kw = dict(num_filters=args.filters, filter_size=args.filter_size)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "images.pt")
        torch.save(images, path)
        # The autograd defaults do not depend on the backend: measured once per problem.
        cases = [("tv", "TV (isotropic)", {}, ("closed", "autograd")),
                 ("foe", "FoE", dict(foe_kw, backend="gemm"), ("closed", "autograd")),
                 ("foe", "FoE", dict(foe_kw, backend="conv"), ("closed",))]
        for name, label, kw, impls in cases:
            problem = make(name, images, **kw)
            for op in OPS:
                for impl in impls:
                    seconds = best_time(operation(problem, op, impl), args.repeats)
                    # Each probe is a fresh process (seconds of imports): --quick probes one.
                    probe = not args.quick or not rows
                    mib = measure_memory(dict(problem=name, kw=kw, op=op, impl=impl,
                                              images=path, threads=threads)) if probe else None
                    if impl == "closed" and "backend" in kw:
                        impl = f"closed ({kw['backend']})"
                    rows.append(dict(problem=label, op=op, impl=impl, seconds=seconds,
                                     peak_mib=mib))
                    print(f"{label:15s} {op:11s} {impl:15s} {seconds:8.3f} s "
                          f"{'-' if mib is None else f'{mib:.0f}':>8s} MiB", flush=True)
    for row in rows:
        ref = next(r for r in rows if r["problem"] == row["problem"] and r["op"] == row["op"]
                   and r["impl"] == "autograd")
        row["speedup_vs_autograd"] = ref["seconds"] / row["seconds"]
        row["memory_vs_autograd"] = (None if row["peak_mib"] is None or not ref["peak_mib"]
                                     else row["peak_mib"] / ref["peak_mib"])
    return rows


def compute(args, folder):
    if args.quick:
        args.n_images, args.size, args.repeats, args.throughput_repeats = 2, 64, 2, 2
    threads = torch.get_num_threads()
    load_before = [round(v, 2) for v in os.getloadavg()]
    images, source = load_images(args.n_images, args.size,
                                 experiment.image_folder("Set68", args.images))
    rows = derivative_rows(images, args, threads)
    n_mm = 1024 if args.quick else 4096
    throughput = {}
    for dt in (torch.float64, torch.float32):
        key = str(dt).removeprefix("torch.")
        flops, throughput[key] = gradient_throughput(images, dt, args.throughput_repeats,
                                                     n_mm, args.filters, args.filter_size)
        print(key, json.dumps(throughput[key], indent=1), flush=True)
    load_after = [round(v, 2) for v in os.getloadavg()]
    verdict = verdicts(rows, throughput)
    print("\n".join(verdict))
    return dict(machine=machine(), load_before=load_before, load_after=load_after,
                config=dict(n_images=args.n_images, size=args.size, images=source,
                            num_filters=args.filters, filter_size=args.filter_size,
                            repeats=args.repeats, throughput_repeats=args.throughput_repeats,
                            dtype="float64"),
                memory_method="fresh subprocess per measurement; /proc/self/clear_refs reset "
                              "of the peak RSS, then VmHWM - VmRSS around one call; "
                              "MALLOC_MMAP_THRESHOLD_=65536",
                derivatives=rows, gradient_flops=flops, matmul_n=n_mm, throughput=throughput,
                verdict=verdict)


def verdicts(rows, throughput):
    def speedups(problem, impl):
        return ", ".join(f"{r['op']} {r['speedup_vs_autograd']:.1f}x" for r in rows
                         if r["problem"] == problem and r["impl"] == impl)

    default = f"{GEMM}, chunks of {CHUNK_COLUMNS}"
    verdict = [
        "speed-up of the closed forms over autograd (target >= 3x): FoE (gemm) "
        + speedups("FoE", "closed (gemm)") + "; FoE (conv) " + speedups("FoE", "closed (conv)")
        + "; TV " + speedups("TV (isotropic)", "closed") + ".",
    ]
    for key, tp in throughput.items():
        best = max(tp["fraction_of_matmul"], key=tp["fraction_of_matmul"].get)
        verdict.append(
            f"{key}: FoE gradient as the problem computes it ({default}) at "
            f"{100 * tp['fraction_of_matmul'][default]:.0f}% of matmul throughput "
            f"(target >= 50%); best variant {best} at "
            f"{100 * tp['fraction_of_matmul'][best]:.0f}%.")
    return verdict


def write_markdown(folder):
    """The .md beside the .json."""
    folder.write_text(folder.meta_name.replace(".json", ".md"), markdown(folder.read_meta()))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if "--memory-probe" in argv:  # one measurement, in the fresh process measure_memory started
        parser = experiment.parser(__doc__, threads=None)
        add_arguments(parser)
        print(measure_memory_here(json.loads(parser.parse_args(argv).memory_probe)))
        return
    return experiment.main(__doc__, "hvp_closed_form", compute, summarise=write_markdown,
                           argv=argv, add_arguments=add_arguments, kind="benchmarks",
                           meta_name=lambda args: f"{stem(args)}.json", threads=None)


if __name__ == "__main__":
    main()
