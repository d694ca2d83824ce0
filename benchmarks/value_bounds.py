"""MAID with first-order against second-order (adjoint) bounds on F in its line search.

    python benchmarks/value_bounds.py [--out results/benchmarks]

``value_bounds="first_order"`` (the paper's bracket g(x~) +- (||grad_x g|| e + L_g e^2 / 2))
against ``"adjoint"`` (bilevel.value_bracket: g(x~) - <q~, grad_x h> with a second-order
slack; docs/certificates.md, section 5), MAID's defaults otherwise, on five registered
problems (small instances, one torch thread).  Reported: the cost (lower-level + CG
iterations) at which each run first reaches F_0 - f (F_0 - F_best) for f = 0.9, 0.99, 0.999,
F_best the lower of the two final upper values (g at x~, as the rows report it), and the
final values.  Writes value_bounds.{json,md} in ``--out``.
"""
from __future__ import annotations

import argparse
import time
import warnings

import torch

import bilevel
from bilevel.results import RunFolder

CASES = [
    ("tv_denoising", dict(n_images=2, size=32), 150),
    ("weakly_convex_ridge", dict(n_images=2, size=24, num_filters=4, filter_size=5,
                                 num_knots=11, x_range=0.3), 80),
    ("logistic_regression", dict(layout="feature"), 100),
    ("fields_of_experts", dict(n_images=2, size=24), 80),
    ("reconstruction", dict(), 80),
]
WAYS = ("first_order", "adjoint")
FRACTIONS = (0.9, 0.99, 0.999)


def race(spec, options, iterations):
    """Both runs of one problem: {way: history}, and the seconds each took."""
    problem = bilevel.make_problem(spec, **options)
    histories, seconds = {}, {}
    for way in WAYS:
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", bilevel.ConvergenceWarning)  # max_iter, meant
            histories[way] = bilevel.solve(problem, "maid", max_iter=iterations,
                                           value_bounds=way).history
        seconds[way] = time.perf_counter() - started
    return histories, seconds


def costs_to_targets(histories):
    """{fraction: {way: the cost at the first row at or below the target, or None}}."""
    start = histories[WAYS[0]][0]["upper_value"]
    best = min(h[-1]["upper_value"] for h in histories.values())
    out = {}
    for f in FRACTIONS:
        target = best + (1 - f) * (start - best)
        out[f] = {way: next((row["cost"] for row in h if row["upper_value"] <= target), None)
                  for way, h in histories.items()}
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/benchmarks")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results, lines = [], ["| problem | iterations | " + " | ".join(
        f"cost to {f:g} of the gap, first order / adjoint" for f in FRACTIONS)
        + " | final F, first order / adjoint |", "|---" * (3 + len(FRACTIONS)) + "|"]
    for spec, options, iterations in CASES:
        histories, seconds = race(spec, options, iterations)
        costs = costs_to_targets(histories)
        finals = {way: h[-1]["upper_value"] for way, h in histories.items()}
        results.append(dict(problem=spec, options=options, iterations=iterations,
                            costs={str(f): c for f, c in costs.items()}, final_upper=finals,
                            final_cost={way: h[-1]["cost"] for way, h in histories.items()},
                            seconds=seconds))
        cells = [" / ".join("-" if c[w] is None else f"{c[w]:,}" for w in WAYS)
                 for c in costs.values()]
        lines.append(f"| {spec} | {iterations} | " + " | ".join(cells)
                     + f" | {finals['first_order']:.8g} / {finals['adjoint']:.8g} |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + (
        "\n\nCost: lower-level + CG iterations as the rows count them; '-': the target was "
        "not reached within the iterations.  The gap: from F at the start to the lower of the "
        "two final values.")
    RunFolder(args.out).write_report("value_bounds", "First-order and adjoint bounds on F "
                                     "in MAID's line search", dict(cases=results), text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
