"""Where a maid_sgd run's final check spends its time: cProfile of one of its candidates.

    python benchmarks/final_check_profile.py RUN_DIR [--candidate average|last] [--rows 30]

RUN_DIR is a folder of ``scripts/train_denoiser.py`` with its checkpoint.pt (kept locally,
not committed).  The training crops are rebuilt from meta.json (``problem``, ``patches``,
``patch_size``, ``crops_per_image``, ``sigma``, ``seed``: the run's own), the checkpoint's
state gives the warm starts, and the check of :mod:`bilevel.outer.final_check` runs once at
the moving average (or the last iterate), in one torch thread, under cProfile.  Prints its
wall time, F's certified bracket, its lower + CG iterations and the functions with the most
cumulative and own time.
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "scripts"))
import train_denoiser  # noqa: E402  (the training crops)

from bilevel.checkpoint import load_checkpoint  # noqa: E402
from bilevel.outer import final_check  # noqa: E402
from bilevel.results import RunFolder  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("--candidate", choices=("average", "last"), default="average")
    p.add_argument("--rows", type=int, default=30)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    meta = RunFolder(args.run).read_json("meta.json")
    problem = train_denoiser.training_problem(meta)
    method, state, _, _ = load_checkpoint(args.run / "checkpoint.pt", problem)
    theta = state.theta if args.candidate == "last" else state.theta_average
    if theta is None:
        raise SystemExit(f"{args.run}: the run keeps no moving average; use --candidate last")
    profile = cProfile.Profile()
    started = time.perf_counter()
    profile.enable()
    bounds, spent = final_check._check(method, problem, state, theta)
    profile.disable()
    print(f"{args.candidate}: {time.perf_counter() - started:.0f} s, F in "
          f"[{bounds['lower_bound']:.6g}, {bounds['upper_bound']:.6g}], {spent.total} lower + "
          f"CG iterations")
    for key in ("cumulative", "tottime"):
        pstats.Stats(profile).sort_stats(key).print_stats(args.rows)


if __name__ == "__main__":
    main()
