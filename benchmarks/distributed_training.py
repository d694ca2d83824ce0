"""One training on one process against the same training on data-parallel ranks: time per
iteration, the same work.

    python benchmarks/distributed_training.py [--ranks 2] [--patches 100] [--max-iter 30]
        [--out results/benchmarks/distributed_training.md] [-- TRAIN_DENOISER_OPTIONS ...]

Runs ``scripts/train_denoiser.py`` (default: the 24x13x13 weakly convex ridge of
results/denoisers at sigma 25, loose scheduled accuracy, batch 20) once as one process and
once under ``torchrun --nproc-per-node RANKS ... --distributed``, each for ``--max-iter``
iterations with its final check, one torch thread per process, and reports each run's wall
time, its iterations' time (the history's, without the crops' loading and the check), its
lower + CG iterations, the rest of its wall time (interpreter, crops, final check) and
its final check's lower + CG iterations.  The two runs draw their batches
differently (each rank draws its share from its own samples), so their thetas differ; their
work per iteration is of the same size.  Measure on an otherwise idle machine: with RANKS
processes on RANKS cores the comparison is one model on all cores against one on one core.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "scripts" / "train_denoiser.py"
#: The model of results/denoisers/wcrr24x13_* with the loose scheduled accuracy of stop 39.
DEFAULT = ["--model", "wcrr", "--sigma", "25", "--filters", "24", "--filter-size", "13",
           "--knots", "201", "--x-range", "0.6", "--rho", "0.95", "--floor-bound", "symbol",
           "--border", "12", "--set", "precondition=rmsprop", "--set", "step=schedule",
           "--set", "step_power=0", "--set", "accuracy=schedule", "--set", "eps0=1e-1",
           "--set", "delta0=1e-4", "--set", "accuracy_power=0", "--set", "batch_bounds=False",
           "--set", "final_check=loss", "--alpha0", "0.000075"]


def timed_run(command, out):
    """(wall seconds, meta.json, data.csv's last row time) of one training."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{done.stderr[-3000:]}")
    meta = json.loads((out / "meta.json").read_text())
    rows = (out / "data.csv").read_text().strip().splitlines()
    header = rows[0].split(",")
    last = dict(zip(header, rows[-1].split(","), strict=True))
    return wall, meta, float(last["time"])


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    given = " ".join(argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else DEFAULT
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--patches", type=int, default=100)
    p.add_argument("--max-iter", type=int, default=30)
    p.add_argument("--out", default="results/benchmarks/distributed_training.md")
    args = p.parse_args(argv)
    common = [str(TRAIN), *extra, "--patches", str(args.patches), "--max-iter",
              str(args.max_iter), "--checkpoint-every", "0", "--no-plot"]
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        runs = {"1 process": [sys.executable], f"{args.ranks} ranks": [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc-per-node", str(args.ranks)]}
        for name, launch in runs.items():
            out = Path(tmp) / name.replace(" ", "_")
            flags = ["--distributed"] if "ranks" in name else []
            wall, meta, train = timed_run(launch + common + flags + ["--out", str(out)], out)
            check = meta["final_check"] or {}
            lines.append(f"| {name} | {wall:.0f} | {train:.0f} | {train / args.max_iter:.2f} | "
                         f"{meta['cost']} | {wall - train:.0f} | {check.get('cost')} |")
            print(lines[-1], flush=True)
    table = ["| run | wall s | iterations' s | s / iteration | lower + CG iterations | "
             "the rest, s (start, crops, final check) | final check's lower + CG |",
             "|---|---|---|---|---|---|---|", *lines]
    text = "\n".join([
        "# One model on one process against data-parallel ranks", "",
        f"`python benchmarks/distributed_training.py {given}` ({platform.machine()}, "
        f"{os.cpu_count()} cores, one torch thread per process): scripts/train_denoiser.py "
        f"with `{' '.join(extra)}`, {args.patches} patches, {args.max_iter} iterations, "
        "each from the problem's start (cold warm starts in the first epoch, as a new run "
        "has).", "", *table, ""])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
