"""The training loss F of learned models on the same training crops: runs compared on one scale.

    python benchmarks/training_loss.py --model NAME=RUN_DIR [--model NAME=CHECKPOINT.pt ...]
        [--spec SPEC] [--crops 100] [--patches 2000] [--crops-per-image 5] [--sigma 25]
        [--seed 0] [--tol 1e-9] [--out results/training_loss]

A run's certified F is on its own training crops, so two runs on different crops, or a run
stopped before its final check, cannot be compared by their logs.  Here every model is
solved on the same ``--crops`` crops: those of ``scripts/train_denoiser.py`` for
``--patches``, ``--crops-per-image``, ``--sigma`` and ``--seed`` (the runs' training set),
every (patches / crops)-th one so that each image is represented.  For each theta,
F(theta) = mean_i 1/2 ||x_i*(theta) - x_i||^2 is bracketed from a lower-level solve with
certified ||x - x*|| <= ``--tol`` (section 5 of docs/certificates.md: |g(x) - g(x*)| <=
||grad g(x)|| tol + L_g tol^2 / 2).

A run folder gives its returned theta (theta.json); a checkpoint (RUN_DIR/checkpoint.pt of a
run still going, or stopped) gives its last iterate and, with ``average``, its moving
average, built with ``--spec`` (the problem spec of the run: meta.json's ``problem``).
Writes OUT/training_loss.json (the brackets, the crops, the command) and prints a table.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "scripts"))
import train_denoiser  # noqa: E402  (the training crops)

import bilevel  # noqa: E402
from bilevel.hypergradient import upper_bounds, upper_value  # noqa: E402
from bilevel.results import RunFolder, command_line  # noqa: E402


def thetas(path, spec):
    """(problem spec, {label: theta}) of a run folder or a checkpoint."""
    path = Path(path)
    if path.is_dir():
        model = bilevel.load(path)
        return model.spec, {"returned": model.theta}
    if spec is None:
        raise SystemExit(f"training_loss: {path} is a checkpoint; pass --spec, the problem "
                         "spec of its run (meta.json's 'problem')")
    state = torch.load(path, weights_only=False, map_location="cpu")["state"]
    found = {"last iterate": state["theta"]}
    if state.get("theta_average") is not None:
        found["average"] = state["theta_average"]
    return spec, found


def bracket(problem, theta, tol):
    """(lower, upper) certified bounds on F(theta) from a solve to ``tol``."""
    sol = problem.solve_lower(theta, tol, max_iter=1_000_000)
    if not sol.converged:
        raise RuntimeError(f"the lower level did not reach {tol:g} ({sol.message})")
    value, grad_norm = upper_value(problem, sol.x, theta)
    L_g = problem.bound_constants(theta, sol.x).L_g
    return upper_bounds(value, grad_norm, sol.error_bound, L_g, problem.upper_convex_in_x)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", action="append", required=True, metavar="NAME=PATH")
    p.add_argument("--spec", default=None, help="the problem spec for checkpoints")
    p.add_argument("--crops", type=int, default=100)
    p.add_argument("--patches", type=int, default=2000)
    p.add_argument("--crops-per-image", type=int, default=5)
    p.add_argument("--patch-size", type=int, default=40)
    p.add_argument("--sigma", type=float, default=25.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tol", type=float, default=1e-9)
    p.add_argument("--data", default=None, help="the BSD400 training folder (docs/data.md)")
    p.add_argument("--out", default="results/training_loss")
    args = p.parse_args(argv)
    if not 0 < args.crops <= args.patches:
        raise SystemExit(f"--crops must be in [1, --patches={args.patches}], got {args.crops}")
    torch.set_num_threads(1)
    clean, noisy, source = train_denoiser.training_pairs(
        args.patches, args.patch_size, args.sigma, args.seed, args.data, args.crops_per_image)
    index = torch.arange(0, args.patches, args.patches // args.crops)[:args.crops]
    rows = []
    for item in args.model:
        name, sep, path = item.partition("=")
        if not sep:
            raise SystemExit(f"--model takes NAME=PATH, got {item!r}")
        spec, found = thetas(path, args.spec)
        problem = bilevel.make_problem(spec, images=clean[index], noisy=noisy[index],
                                       sigma=args.sigma / 255)
        for label, theta in found.items():
            low, high = bracket(problem, theta.to(problem.theta0), args.tol)
            rows.append(dict(model=name, theta=label, path=path, lower_bound=low,
                             upper_bound=high))
            print(f"{name:28s} {label:13s} F in [{low:.7f}, {high:.7f}]", flush=True)
    folder = RunFolder(args.out)
    folder.open()
    folder.write_json("training_loss.json", dict(
        command=command_line(argv, script="benchmarks/training_loss.py"), source=str(source),
        crops=index.tolist(), patches=args.patches, crops_per_image=args.crops_per_image,
        sigma=args.sigma, seed=args.seed, tol=args.tol, rows=rows))
    return rows


if __name__ == "__main__":
    main()
