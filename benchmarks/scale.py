"""Scale benchmarks: lower-level throughput, hypergradient time, memory of implicit
against unrolled differentiation, and the data-parallel speed-up.

    python benchmarks/scale.py [--quick]

Writes results/benchmarks/scale.{json (settings and one row per measurement), md}
with the device name.  Memory is the growth of the peak
resident set of a fresh subprocess over one call (CPU; the peak is reset through
/proc/self/clear_refs first).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

from bilevel import experiment
from bilevel.results import environment

ROOT = Path(__file__).resolve().parents[1]


def device_name(device):
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    env = environment()
    return f"{env['cpu']} ({env['cpus']} logical CPUs)"


def problem(kind, n, size, dtype, device):
    import bilevel

    spec = "tv_denoising" if kind == "tv" else "fields_of_experts"
    extra = {} if kind == "tv" else dict(num_filters=48, filter_size=7)
    return bilevel.make_problem(spec, n_images=n, size=size, dtype=dtype, device=device,
                                **extra)


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def throughput(kind, n, size, dtype, device, iterations):
    """Pixels x lower-level iterations per second of FISTA, and one hypergradient's time."""
    import bilevel

    p = problem(kind, n, size, dtype, device)
    theta = p.initial_theta()
    p.solve_lower(theta, 1e-30, max_iter=2)  # warm-up
    sync(device)
    start = time.perf_counter()
    sol = p.solve_lower(theta, 1e-30, max_iter=iterations)
    sync(device)
    seconds = time.perf_counter() - start
    pixels = p.noisy.numel()
    start = time.perf_counter()
    hg = bilevel.hypergradient(p, theta, 1e-4, 1e-4, x0=sol.x)
    sync(device)
    return dict(kind=kind, device=device, dtype=str(dtype).replace("torch.", ""),
                images=n, size=size, pixel_iterations_per_s=pixels * sol.iterations / seconds,
                hypergradient_s=time.perf_counter() - start,
                hypergradient_cost=hg.lower.iterations + hg.linear.iterations)


def memory_child(mode, K, n, size):
    """One call in this (fresh) process; prints the growth of the peak RSS in MiB."""
    import bilevel

    p = problem("tv", n, size, torch.float64, "cpu")
    theta = p.initial_theta()
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS to the current RSS
    before = _status_kib("VmRSS")
    if mode == "unrolled":
        bilevel.unrolled_hypergradient(p, theta, K)
    else:
        bilevel.hypergradient(p, theta, 1e-30, 1e-8, lower_max_iter=K)  # exactly K iterations
    print(json.dumps(dict(mode=mode, K=K, peak_mib=(_status_kib("VmHWM") - before) / 1024)))


def _status_kib(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def memory(Ks, n, size):
    rows = []
    for mode in ("implicit", "unrolled"):
        for K in Ks:
            out = subprocess.run([sys.executable, __file__, "--memory-child", mode, str(K),
                                  str(n), str(size)], capture_output=True, text=True,
                                 check=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    return rows


DP_DRIVER = """
import json, sys, time, torch
import bilevel, bilevel.distributed as bd
torch.set_num_threads(1)
world = int(sys.argv[2])
if world > 1:
    bd.init("gloo")
    problem = bd.data_parallel("tv_denoising", n_images=int(sys.argv[3]), size=int(sys.argv[4]))
else:
    problem = bilevel.make_problem("tv_denoising", n_images=int(sys.argv[3]), size=int(sys.argv[4]))
start = time.perf_counter()
bilevel.solve(problem, "maid", max_iter=int(sys.argv[5]), tol=0)
seconds = time.perf_counter() - start
if world == 1 or torch.distributed.get_rank() == 0:
    json.dump(dict(world=world, seconds=seconds), open(sys.argv[1], "w"))
bd.finish()
"""


def data_parallel(n, size, iterations, tmp):
    script = Path(tmp) / "dp_driver.py"
    script.write_text(DP_DRIVER)
    rows = []
    for world in (1, 2):
        out = Path(tmp) / f"dp{world}.json"
        if world == 1:
            cmd = [sys.executable, str(script)]
        else:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                   "--master-addr", "127.0.0.1", "--master-port", str(port), str(script)]
        done = subprocess.run(cmd + [str(out), str(world), str(n), str(size), str(iterations)],
                       cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"),
                       capture_output=True, text=True)
        if not out.exists():
            raise RuntimeError(f"the {world}-process run failed:\n{done.stderr[-2000:]}")
        rows.append(json.loads(out.read_text()))
        print(rows[-1], flush=True)
    return rows


def add_arguments(p):
    p.add_argument("--memory-child", nargs=4, help=argparse.SUPPRESS)


def compute(args, folder):
    n, size = (2, 32) if args.quick else (8, 128)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    speed = []
    for device in devices:
        for dtype in (torch.float64, torch.float32):
            for kind in ("tv", "foe"):
                speed.append(throughput(kind, n, size, dtype, device, 20 if args.quick else 100))
                print(speed[-1], flush=True)
    mem_n, mem_size = (2, 32) if args.quick else (4, 96)
    dp_setting = (2, 16, 1) if args.quick else (8, 256, 10)  # images, size, MAID iterations
    mem = memory([10] if args.quick else [25, 50, 100, 200, 400], mem_n, mem_size)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        dp = data_parallel(*dp_setting, tmp)
    return dict(devices={d: device_name(d) for d in devices}, torch=torch.__version__,
                threads=torch.get_num_threads(), images=n, size=size, speed=speed,
                memory=mem, memory_images=mem_n, memory_size=mem_size, data_parallel=dp,
                data_parallel_setting=dp_setting,
                load_average=[round(v, 2) for v in os.getloadavg()])


def write_table(folder):
    """The .md beside the .json.  A JSON written before the memory and data-parallel
    settings were recorded is a full run: 4 images 96x96, and 8 images 256x256 for 10
    iterations."""
    r = folder.read_meta()
    n, size, speed, mem, dp = r["images"], r["size"], r["speed"], r["memory"], \
        r["data_parallel"]
    mem_n, mem_size = r.get("memory_images", 4), r.get("memory_size", 96)
    dp_setting = r.get("data_parallel_setting", (8, 256, 10))
    lines = ["# Scale benchmarks\n", f"Devices: {r['devices']}; torch {r['torch']}; "
             f"command: `{r['command']}`\n",
             f"## Lower-level throughput and hypergradient time ({n} images {size}x{size}; "
             "FoE 48 filters 7x7)\n",
             "| problem | device | dtype | pixels x iterations / s | hypergradient (s) at "
             "eps=delta=1e-4 | its lower+CG iterations |", "|---|---|---|---|---|---|"]
    lines += [f"| {s['kind']} | {s['device']} | {s['dtype']} | "
              f"{s['pixel_iterations_per_s']:.3g} | {s['hypergradient_s']:.3f} | "
              f"{s['hypergradient_cost']} |" for s in speed]
    lines += ["", f"## Peak memory (TV, {mem_n} images {mem_size}x{mem_size}, float64, CPU)\n",
              "| K (lower-level iterations) | implicit (MiB) | unrolled (MiB) |", "|---|---|---|"]
    by = {(m["mode"], m["K"]): m["peak_mib"] for m in mem}
    lines += [f"| {K} | {by[('implicit', K)]:.0f} | {by[('unrolled', K)]:.0f} |"
              for K in sorted({m["K"] for m in mem})]
    t1, t2 = dp[0]["seconds"], dp[1]["seconds"]
    lines += ["", "## Data parallel (gloo, one thread per process)\n",
              f"TV, {dp_setting[0]} images {dp_setting[1]}x{dp_setting[1]}, MAID "
              f"{dp_setting[2]} iterations: 1 process {t1:.2f} s, 2 processes "
              f"{t2:.2f} s, speed-up {t1 / t2:.2f}x."]
    if "load_average" in r:
        load = r["load_average"]
        lines += ["", f"Load average at the end (1, 5, 15 min): {load[0]:.2f}, {load[1]:.2f}, "
                      f"{load[2]:.2f}; other jobs on this shared machine inflate times."]
    folder.write_text(folder.meta_name.replace(".json", ".md"), "\n".join(lines) + "\n")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if "--memory-child" in argv:  # one measurement, in the fresh process memory() started
        parser = experiment.parser(__doc__)
        add_arguments(parser)
        mode, K, n, size = parser.parse_args(argv).memory_child
        return memory_child(mode, int(K), int(n), int(size))
    # One thread: on a 2-core machine shared with other processes, two threads per
    # process oversubscribe the cores and small operations slow down erratically.
    return experiment.main(__doc__, "scale", compute, summarise=write_table, argv=argv,
                           add_arguments=add_arguments, kind="benchmarks",
                           meta_name="scale.json")


if __name__ == "__main__":
    main()
