"""What the local rates buy: omega, and the cost of minibatch MAID, with and without them.

    python benchmarks/local_rate_cost.py [--model results/denoisers/wcrr_rho09_sigma25]
        [--crops 100] [--iterations 15] [--omega-crops 4] [--patch-size 40] [--quick]
        [--out results/benchmarks]

``hessian_lipschitz_along`` and ``mixed_lipschitz_along`` (docs/certificates.md, sections 2
and 4) only ever lower omega.
Here a learned model (a run folder of ``scripts/train_denoiser.py``) is put on the first
``--crops`` BSD400 training crops (40 x 40, sigma 25, noise seed 0; one per image) and

- omega is split into its terms at eps = delta in {1e-4, 1e-6, 1e-8} on ``--omega-crops``
  of them, with the problem's local rates, without them (the global L_Ainv and L_B), and
  with them and the lower level certified through a Newton step (``newton_certificate``,
  docs/certificates.md, section 1);
- ``maid_sgd`` (batches of 20, rmsprop, alpha0 0.01, no final check) runs ``--iterations``
  steps from the learned theta, the three ways.  Where both take the same decisions (steps
  accepted, backtracks), what differs is the accuracy eps they ask for, hence the lower +
  CG iterations they pay.

``--quick``: 8 crops of 16 x 16, one for omega, 2 iterations.  Writes
OUT/local_rate_cost.json and OUT/local_rate_cost.md.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "scripts"))
import train_denoiser  # noqa: E402  (the training crops)

import bilevel  # noqa: E402
from bilevel import registry  # noqa: E402
from bilevel.results import RunFolder  # noqa: E402

WAYS = ("local rates", "global constants", "local rates + newton")


def problem_on(spec, crops, way, patch_size=40):
    clean, noisy, _ = train_denoiser.training_pairs(crops, patch_size, 25.0)
    problem = registry.make_problem(spec, images=clean, noisy=noisy, sigma=25 / 255)
    if way == "global constants":
        problem.hessian_lipschitz_along = lambda *args, **kwargs: None
        problem.mixed_lipschitz_along = lambda *args, **kwargs: None
    # the lower level certified through a Newton step (bilevel.newton_certificate)
    problem.newton_certificate = way.endswith("newton")
    return problem


def omega_rows(spec, theta, crops, patch_size=40):
    rows = []
    for way in WAYS:
        problem = problem_on(spec, crops, way, patch_size)
        for eps in (1e-4, 1e-6, 1e-8):
            hg = bilevel.hypergradient(problem, theta.to(problem.theta0), eps, eps)
            rows.append(dict(way=way, eps=eps, omega=hg.error_bound,
                             grad_norm=float(hg.grad.norm()),
                             terms={k: float(v) for k, v in hg.terms.items()}))
    return rows


def training_rows(spec, theta, crops, iterations, patch_size=40):
    rows = []
    for way in WAYS:
        problem = problem_on(spec, crops, way, patch_size)
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", bilevel.ConvergenceWarning)  # max_iter, meant
            result = bilevel.solve(problem, "maid_sgd", theta0=theta.to(problem.theta0),
                                   max_iter=iterations, batch_size=20, alpha0=0.01,
                                   precondition="rmsprop", final_check=False)
        history = result.history
        rows.append(dict(way=way, iterations=len(history), cost=history[-1]["cost"],
                         seconds=time.perf_counter() - start,
                         eps=[row["eps"] for row in history],
                         losses=[row["upper_value"] for row in history],
                         decisions=[(row["accepted"], row["backtracks"]) for row in history]))
    return rows


def table(model, omega, training):
    lines = ["| eps = delta | norm of z | omega, local rates | omega, global constants | ratio "
             "| omega, local rates + newton |", "|---|---|---|---|---|---|"]
    for local, plain, newton in zip(omega[:3], omega[3:6], omega[6:], strict=True):
        lines.append(f"| {local['eps']:.0e} | {local['grad_norm']:.3g} | {local['omega']:.3g} "
                     f"| {plain['omega']:.3g} | {plain['omega'] / local['omega']:.0f} "
                     f"| {newton['omega']:.3g} |")
    lines += ["", "| maid_sgd | iterations | lower + CG iterations | median eps | s |",
              "|---|---|---|---|---|"]
    for row in training:
        eps = sorted(row["eps"])[len(row["eps"]) // 2]
        lines.append(f"| {row['way']} | {row['iterations']} | {row['cost']:.0f} | {eps:.1e} "
                     f"| {row['seconds']:.0f} |")
    first = training[0]
    notes = []
    for other in training[1:]:
        gap = max(abs(x - y) for x, y in zip(first["losses"], other["losses"], strict=False))
        same = first["decisions"] == other["decisions"]
        notes.append(f"with {other['way']} the run "
                     + ("accepted and backtracked alike at every iteration" if same else
                        "took different decisions (accepted steps, backtracks)")
                     + f", batch losses within {gap:.1e} (each read at its own x~)")
    lines += ["", f"Model `{model}`.  Against the local rates: " + "; ".join(notes) + "."]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="results/denoisers/wcrr_rho09_sigma25")
    p.add_argument("--crops", type=int, default=100)
    p.add_argument("--omega-crops", type=int, default=4)
    p.add_argument("--iterations", type=int, default=15)
    p.add_argument("--patch-size", type=int, default=40)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default="results/benchmarks")
    args = p.parse_args(argv)
    if args.quick:
        args.crops, args.omega_crops, args.iterations, args.patch_size = 8, 1, 2, 16
    torch.set_num_threads(1)
    model = bilevel.load(args.model)
    omega = omega_rows(model.spec, model.theta, args.omega_crops, args.patch_size)
    training = training_rows(model.spec, model.theta, args.crops, args.iterations,
                             args.patch_size)
    text = table(args.model, omega, training)
    RunFolder(Path(args.out)).write_report(
        "local_rate_cost", "The local rates' effect",
        dict(quick=args.quick, model=args.model, omega=omega, training=training), text)
    print(text)


if __name__ == "__main__":
    main()
