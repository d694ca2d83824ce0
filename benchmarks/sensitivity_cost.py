"""What the sharper certificates buy on a reconstruction: omega, MAID's cost, the final bound.

    python benchmarks/sensitivity_cost.py [--operators blur,mri] [--images 4] [--size 32]
        [--iterations 40] [--quick] [--out results/benchmarks]

``reconstruction[sensitivity_by_solves=True]`` bounds K >= ||A^{-1} B|| by two CG solves at
every hypergradient instead of ||B|| / gamma (bilevel.sensitivity); ``newton_certificate``
certifies the lower level through a Newton step instead of ||grad h|| / gamma
(bilevel.newton_certificate; docs/certificates.md, sections 1 and 2).  For each operator
(the registry's presets, ``--images`` images of ``--size``, gamma 1e-3), three ways (plain,
the solves, the solves and the Newton certificate):

- omega at eps = delta in {1e-4, 1e-6, 1e-8} at theta0, with the hypergradient's lower +
  CG iterations;
- MAID for ``--iterations`` iterations from theta0: its cost, F at the end;
- at MAID's theta, one hypergradient at eps = delta = 1e-6: the certified interval
  ||z|| +- omega for ||grad F|| and the lower-level certificate.

``--quick``: 2 images of 12 x 12, 3 iterations.  Writes OUT/sensitivity_cost.{json,md}.
"""
from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import torch

import bilevel
from bilevel.results import RunFolder

WAYS = {"B_norm / mu": (False, False), "solves": (True, False),
        "solves + newton": (True, True)}


def problem(operator, images, size, way):
    solves, newton = WAYS[way]
    p = bilevel.make_problem("reconstruction", operator=operator, n_images=images,
                             size=size, sensitivity_by_solves=solves)
    p.newton_certificate = newton
    return p


def omega_rows(operator, images, size):
    rows = []
    for way in WAYS:
        p = problem(operator, images, size, way)
        for eps in (1e-4, 1e-6, 1e-8):
            hg = bilevel.hypergradient(p, p.initial_theta(), eps, eps, lower_max_iter=200_000)
            rows.append(dict(operator=operator, way=way, eps=eps, omega=hg.error_bound,
                             grad_norm=float(hg.grad.norm()), K=hg.sensitivity,
                             lower_bound=hg.lower.error_bound, cost=hg.cost.total))
    return rows


def maid_rows(operator, images, size, iterations):
    rows = []
    for way in WAYS:
        p = problem(operator, images, size, way)
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", bilevel.ConvergenceWarning)  # max_iter, meant
            result = bilevel.solve(p, "maid", max_iter=iterations)
        seconds = time.perf_counter() - start
        last = result.history[-1]
        hg = bilevel.hypergradient(p, result.theta, 1e-6, 1e-6, lower_max_iter=200_000)
        z = float(hg.grad.norm())
        rows.append(dict(operator=operator, way=way, iterations=len(result.history),
                         cost=last["cost"], upper_value=last["upper_value"], seconds=seconds,
                         final_z=z, final_omega=hg.error_bound,
                         final_lower_bound=hg.lower.error_bound, final_cost=hg.cost.total))
    return rows


def table(omega, maid):
    ways = list(WAYS)
    lines = ["| operator | eps = delta | norm of z | "
             + " | ".join(f"omega, {w}" for w in ways) + " | K, solves | "
             + " | ".join(f"cost, {w}" for w in ways) + " |",
             "|---|---|---|" + "---|" * (2 * len(ways) + 1)]
    block = len(ways) * 3
    for first in range(0, len(omega), block):
        rows = omega[first:first + block]
        for i in range(3):
            by_way = [rows[3 * k + i] for k in range(len(ways))]
            a = by_way[0]
            lines.append(f"| {a['operator']} | {a['eps']:.0e} | {a['grad_norm']:.3g} | "
                         + " | ".join(f"{r['omega']:.3g}" for r in by_way)
                         + f" | {by_way[1]['K']:.3g} | "
                         + " | ".join(str(r["cost"]) for r in by_way) + " |")
    lines += ["", "| operator | MAID with | iterations | lower + CG iterations | F | s "
              "| norm of grad F at the end, certified | lower-level bound there |",
              "|---|---|---|---|---|---|---|---|"]
    for row in maid:
        z, w = row["final_z"], row["final_omega"]
        lines.append(f"| {row['operator']} | {row['way']} | {row['iterations']} | {row['cost']} "
                     f"| {row['upper_value']:.7g} | {row['seconds']:.1f} "
                     f"| [{max(z - w, 0):.2e}, {z + w:.2e}] (cost {row['final_cost']}) "
                     f"| {row['final_lower_bound']:.2e} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--operators", default="blur,mri")
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--iterations", type=int, default=40)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default="results/benchmarks")
    args = p.parse_args(argv)
    if args.quick:
        args.images, args.size, args.iterations = 2, 12, 3
    torch.set_num_threads(1)
    omega, maid = [], []
    for operator in args.operators.split(","):
        omega += omega_rows(operator, args.images, args.size)
        maid += maid_rows(operator, args.images, args.size, args.iterations)
    text = table(omega, maid)
    RunFolder(Path(args.out)).write_report(
        "sensitivity_cost", "Sharper certificates on reconstructions",
        dict(quick=args.quick, omega=omega, maid=maid), text)
    print(text)


if __name__ == "__main__":
    main()
