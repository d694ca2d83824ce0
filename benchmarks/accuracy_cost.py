"""What a maid_sgd run's accuracy buys: cost and error of batch hypergradients per (eps, delta).

    python benchmarks/accuracy_cost.py RUN_DIR [--batches 6]
        [--accuracies 1e-4:1e-7,1e-3:1e-6] [--reference 1e-6:1e-9] [--out FILE]

RUN_DIR is a folder of ``scripts/train_denoiser.py`` with its checkpoint.pt (kept locally,
not committed): the training crops are rebuilt from meta.json, and the checkpoint's state
gives theta, the warm starts of every sample and the rmsprop second moment.  For the next
``--batches`` batches the run would draw, each accuracy eps:delta (the lower level's
||x - x*|| <= eps, CG's residual <= delta; ``bilevel.hypergradient``) is asked from the
same warm starts as the run would have, and compared with a much tighter reference:

- lower and CG iterations (the training's cost unit),
- the relative error of the hypergradient z and of the step's direction d (z scaled as
  the run scales it, by rmsprop's second moment; what a constant step moves theta along),
- the certified bound omega on the z error (``Hypergradient.error_bound``), relative too,
  and the share of the time its constants and local rates take (the same hypergradient
  asked again with ``bound=False``, which must give the same z; wall times, so measured
  beside other processes they are a guide, the counts are exact),
- against the noise of sampling: how far one batch's reference direction lies from the
  mean over the batches drawn, relative to that mean.

An accuracy whose direction error lies far below the sampling noise buys nothing the
batch draw does not blur away.  One torch thread.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "scripts"))
import train_denoiser  # noqa: E402  (the training crops)

from bilevel.checkpoint import load_checkpoint  # noqa: E402
from bilevel.hypergradient import hypergradient  # noqa: E402
from bilevel.outer.batches import draw, layout  # noqa: E402
from bilevel.results import RunFolder, command_line, environment  # noqa: E402


def accuracies(text):
    """'1e-4:1e-7,1e-3:1e-6' -> [(1e-4, 1e-7), (1e-3, 1e-6)]."""
    try:
        pairs = [tuple(float(v) for v in item.split(":")) for item in text.split(",") if item]
    except ValueError:
        pairs = []
    if not pairs or any(len(p) != 2 or not all(0 < v < math.inf for v in p) for p in pairs):
        raise argparse.ArgumentTypeError(f"expected eps:delta,... of positive numbers: {text!r}")
    return pairs


def relative(a, b):
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def ask(batch, state, method, eps, delta, x0, q0, bound=True):
    """(z, d, cost, omega, seconds) of the batch hypergradient at the state's theta at
    accuracy eps:delta; omega its certified error bound (inf with ``bound=False``)."""
    started = time.perf_counter()
    hg = hypergradient(batch, state.theta, eps, delta, x0=x0, q0=q0, bound=bound,
                       lower_max_iter=method.lower_max_iter, cg_max_iter=method.cg_max_iter)
    seconds = time.perf_counter() - started
    d = method._direction(state, hg.grad)[0]  # the run's own direction
    return hg.grad, d, hg.cost, hg.error_bound, seconds


def measure(problem, method, state, batches, settings, reference):
    """({eps:delta: one row per batch: lower and CG iterations, then the z and d errors,
    omega and the reference's omega, relative to the reference's ||z|| (d's to its d), and
    omega's share of the time}, the reference directions)."""
    where = layout(problem, method.batch_size)
    rows, directions = {s: [] for s in settings}, []
    for _ in range(batches):
        index, (epoch, position) = draw(where, method.seed, state.epoch, state.position)
        state = dataclasses.replace(state, epoch=epoch, position=position)
        batch, warm = problem.subset(index), (state.x[index], state.q[index])
        z_ref, d_ref, _, omega_ref, _ = ask(batch, state, method, *reference, *warm)
        directions.append(d_ref)
        scale = float(torch.linalg.vector_norm(z_ref))
        for eps, delta in settings:
            z, d, cost, omega, seconds = ask(batch, state, method, eps, delta, *warm)
            bare, _, _, _, bare_seconds = ask(batch, state, method, eps, delta, *warm,
                                              bound=False)
            if not torch.equal(bare, z):
                raise AssertionError("the hypergradient without its bound differs")
            rows[(eps, delta)].append((cost.lower_iterations, cost.cg_iterations,
                                       relative(z, z_ref), relative(d, d_ref), omega / scale,
                                       omega_ref / scale, 1 - bare_seconds / seconds))
    return rows, directions


def report(rows, directions, reference, run, env):
    mean = torch.stack(directions).mean(dim=0)
    noise = [relative(d, mean) for d in directions]
    lines = [f"# Batch hypergradients of `{run}` per accuracy", "",
             f"{len(directions)} batches, the run's next; reference eps:delta = "
             f"{reference[0]:g}:{reference[1]:g}.  Sampling noise of the direction "
             f"(||d_batch - mean d|| / ||mean d|| over these batches): median "
             f"{statistics.median(noise):.3g} (min {min(noise):.3g}).", "",
             f"Command: `{env['command']}` ({env['cpu']}, torch {env['torch']}, "
             f"{env['torch_threads']} thread).", "",
             "| eps:delta | lower its / batch | CG its / batch | lower + CG | "
             "z error (median, max) | d error (median, max) | certified z error (median) | "
             "omega's share of the time (median) |",
             "|---|---|---|---|---|---|---|---|"]
    for (eps, delta), r in rows.items():
        lower, cg, ez, ed, bound, _, share = (list(c) for c in zip(*r, strict=True))
        lower, cg = statistics.mean(lower), statistics.mean(cg)
        lines.append(f"| {eps:g}:{delta:g} | {lower:.1f} | {cg:.1f} | {lower + cg:.1f} | "
                     f"{statistics.median(ez):.2g}, {max(ez):.2g} | "
                     f"{statistics.median(ed):.2g}, {max(ed):.2g} | "
                     f"{statistics.median(bound):.2g} | {statistics.median(share):.0%} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("--batches", type=int, default=6)
    p.add_argument("--accuracies", type=accuracies, default=accuracies("1e-4:1e-7,1e-3:1e-6"))
    p.add_argument("--reference", type=accuracies, default=accuracies("1e-6:1e-9"))
    p.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = p.parse_args(argv)
    if args.batches < 2:
        p.error("--batches must be at least 2 (the sampling noise needs two)")
    torch.set_num_threads(1)
    meta = RunFolder(args.run).read_json("meta.json")
    problem = train_denoiser.training_problem(meta)
    method, state, _, _ = load_checkpoint(args.run / "checkpoint.pt", problem)
    rows, directions = measure(problem, method, state, args.batches, args.accuracies,
                               args.reference[0])
    text = report(rows, directions, args.reference[0], args.run.name,
                  environment(command_line(argv, "benchmarks/accuracy_cost.py")))
    print(text)
    if args.out:
        args.out.write_text(text)
    return rows


if __name__ == "__main__":
    main()
