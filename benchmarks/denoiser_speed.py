"""What one lower-level and one CG iteration of the BSD training runs cost, per device.

    python benchmarks/denoiser_speed.py [--device cuda] [--batches 20,100,400]

The two models trained on BSD400 crops (results/denoisers/: the field of experts 24x5x5 and
the weakly convex ridge 24x5x5 with 201 knots, their learned theta), each built on a batch
of B noisy 40x40 crops mirrored by 4 pixels, as a training batch is: the mean time of one
gradient of h (one FISTA iteration), one Hessian-vector product (one CG iteration) and one
mixed product (one hypergradient's last step), synchronised on CUDA.  A minibatch MAID
iteration costs about a thousand of the first two (the runs' data.csv: cost per
iteration), so these times say how long an iteration takes on each device and how much a
larger batch costs there.  Writes results/benchmarks/denoiser_speed_DEVICE.{json,md}.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

from bilevel import experiment
from bilevel.results import environment

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

MODELS = {"FoE 24x5x5": "results/denoisers/foe24x5c5_rms_more_sigma25",
          "WCRR 24x5x5, 201 knots, rho 0.5": "results/denoisers/wcrr_foe_long_sigma25"}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(f, device, repeats):
    """Mean seconds of f() over ``repeats`` calls, after one warm-up call."""
    f()
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        f()
    sync(device)
    return (time.perf_counter() - start) / repeats


def measure(name, run_dir, batch, device, data, repeats):
    from train_denoiser import training_pairs

    import bilevel
    from bilevel import registry

    model = bilevel.load(ROOT / run_dir)
    clean, noisy, _ = training_pairs(batch, 40, 25.0, data=data)
    problem = registry.make_problem(model.spec, images=clean, noisy=noisy, sigma=25 / 255,
                                    device=device)
    theta = model.theta.to(device)
    x = problem.noisy + 0.01 * torch.randn_like(problem.noisy)  # the mirrored batch
    v = torch.randn_like(x)
    return dict(model=name, batch=batch, device=str(device), pixels=x.numel(),
                grad_s=timed(lambda: problem.lower_grad(x, theta), device, repeats),
                hvp_s=timed(lambda: problem.lower_hvp(x, theta, v), device, repeats),
                mixed_s=timed(lambda: problem.mixed_vjp(x, theta, v), device, repeats))


def add_arguments(p):
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--batches", default="20,100,400", help="batch sizes, comma-separated")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--data", default=None, help="the BSD400 training folder (bundled images "
                                                "without it)")


def compute(args, folder):
    device = torch.device(args.device)
    batches = [int(b) for b in args.batches.split(",")]
    if args.quick:
        batches, args.repeats = batches[:1], 2
    rows = []
    for name, run_dir in MODELS.items():
        for batch in batches:
            rows.append(measure(name, run_dir, batch, device, args.data, args.repeats))
            print(rows[-1], flush=True)
    label = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        environment()["cpu"]
    return dict(device=str(device), device_name=label, torch=torch.__version__,
                threads=torch.get_num_threads(), rows=rows,
                load_average=[round(v, 2) for v in os.getloadavg()])


def write_table(folder):
    r = folder.read_meta()
    lines = [f"# One lower-level / CG iteration of the BSD training models on {r['device']}",
             "", f"{r['device_name']}; torch {r['torch']}, {r['threads']} CPU thread(s); "
             f"command: `{r['command']}`.", "",
             "| model | batch (40x40 crops, border 4) | grad h (ms) | Hessian-vector (ms) | "
             "mixed product (ms) |", "|---|---|---|---|---|"]
    lines += [f"| {row['model']} | {row['batch']} | {1e3 * row['grad_s']:.2f} | "
              f"{1e3 * row['hvp_s']:.2f} | {1e3 * row['mixed_s']:.2f} |" for row in r["rows"]]
    if "load_average" in r:
        lines += ["", "Load average at the end (1, 5, 15 min): "
                  + ", ".join(f"{v:.2f}" for v in r["load_average"])
                  + f" on {os.cpu_count()} logical CPUs; other jobs inflate the CPU's times."]
    folder.write_text(folder.meta_name.replace(".json", ".md"), "\n".join(lines) + "\n")


def main(argv=None):
    return experiment.main(__doc__, "denoiser_speed", compute, summarise=write_table,
                           argv=argv, add_arguments=add_arguments, kind="benchmarks",
                           meta_name=lambda a: f"denoiser_speed_{a.device}.json")


if __name__ == "__main__":
    main()
