"""MAID with first-order against second-order (adjoint) bounds on F in its line search.

    python benchmarks/value_bounds.py [--out results/benchmarks]

``value_bounds="first_order"`` (the paper's bracket g(x~) +- (||grad_x g|| e + L_g e^2 / 2))
against ``"adjoint"`` (bilevel.value_bracket: g(x~) - <q~, grad_x h> with a second-order
slack; docs/certificates.md, section 5), MAID's defaults otherwise, on five registered
problems (small instances, one torch thread).  Reported: the cost (lower-level + CG
iterations) at which each run first reaches F_0 - f (F_0 - F_best) for f = 0.9, 0.99, 0.999,
F_best the lower of the two final upper values (g at x~, as the rows report it), and the
final values.  Then the minibatch final check (``final_check="loss"``) of one maid_sgd run,
started at the first-order accuracy guess and at 30 times it (the default), and 12
maid_sgd steps from a learned weakly convex ridge with both bounds.  Writes
value_bounds.{json,md} in ``--out``.
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


#: The final check's runs: maid_sgd on 10 images, batches of 3, 40 iterations.
CHECKS = [
    ("weakly_convex_ridge", dict(n_images=10, size=32, num_filters=4, filter_size=5,
                                 num_knots=11, x_range=0.3)),
    ("tv_denoising", dict(n_images=10, size=32)),
]


def final_check_costs(spec, options, starts=(1.0, 30.0)):
    """{start: {candidate: (cost, bracket width, eps)}}: the 'loss' final check of the same
    maid_sgd run with its first accuracy at ``start`` times the first-order guess."""
    from bilevel.outer import final_check

    problem = bilevel.make_problem(spec, **options)
    out, default = {}, final_check.SECOND_ORDER_START
    try:
        for start in starts:
            final_check.SECOND_ORDER_START = start
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", bilevel.ConvergenceWarning)
                state = bilevel.solve(problem, "maid_sgd", max_iter=40, batch_size=3,
                                      alpha0=0.05, final_check="loss", average=0.9).state
            checks = state.final_check.get("candidates", {state.final_check["theta"]:
                                                          state.final_check})
            out[start] = {name: dict(cost=c["cost"], width=c["upper_bound"] - c["lower_bound"],
                                     eps=c["eps"]) for name, c in checks.items()}
    finally:
        final_check.SECOND_ORDER_START = default
    return out


def minibatch_costs(model="results/denoisers/wcrr_rho095_sigma25", crops=8, iterations=12):
    """maid_sgd from a learned weakly convex ridge on its first training crops (batches of 4,
    rmsprop): {way: (cost, lower, CG, accepted, the last batch loss)}."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import train_denoiser  # the training crops

    learned = bilevel.load(model)
    clean, noisy, _ = train_denoiser.training_pairs(crops, 40, 25.0)
    problem = bilevel.make_problem(learned.spec, images=clean, noisy=noisy, sigma=25 / 255)
    out = {}
    for way in WAYS:
        h = bilevel.solve(problem, "maid_sgd", theta0=learned.theta, max_iter=iterations,
                          batch_size=4, alpha0=0.01, final_check=False, precondition="rmsprop",
                          value_bounds=way).history
        out[way] = dict(cost=h[-1]["cost"], lower=h[-1]["lower_iterations"],
                        cg=h[-1]["cg_iterations"], accepted=sum(r["accepted"] for r in h),
                        last_batch_loss=h[-1]["upper_value"])
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
    checks, check_lines = {}, ["", "The minibatch final check ('loss', relative half-width "
                               "1e-5, second-order bracket) started at the first-order guess "
                               "rtol |g| / ||grad_x g|| and at 30 times it (the default):", "",
                               "| problem | candidate | cost, start 1 / 30 | bracket width, "
                               "start 1 / 30 |", "|---|---|---|---|"]
    for spec, options in CHECKS:
        checks[spec] = found = final_check_costs(spec, options)
        for name in found[1.0]:
            a, b = found[1.0][name], found[30.0][name]
            check_lines.append(f"| {spec} | {name} | {a['cost']} / {b['cost']} | "
                               f"{a['width']:.2e} / {b['width']:.2e} |")
        print("\n".join(check_lines[-len(found[1.0]):]), flush=True)
    minibatch = minibatch_costs()
    check_lines += ["", "maid_sgd, 12 iterations from `results/denoisers/wcrr_rho095_sigma25` "
                    "on its first 8 training crops (batches of 4, rmsprop, alpha0 0.01):", "",
                    "| value_bounds | lower + CG | lower | CG | accepted | last batch loss |",
                    "|---|---|---|---|---|---|"]
    check_lines += [f"| {way} | {m['cost']} | {m['lower']} | {m['cg']} | {m['accepted']} | "
                    f"{m['last_batch_loss']:.6g} |" for way, m in minibatch.items()]
    print("\n".join(check_lines[-2:]), flush=True)
    text = "\n".join(lines + check_lines) + (
        "\n\nCost: lower-level + CG iterations as the rows count them; '-': the target was "
        "not reached within the iterations.  The gap: from F at the start to the lower of the "
        "two final values.")
    RunFolder(args.out).write_report("value_bounds", "First-order and adjoint bounds on F "
                                     "in MAID's line search", dict(
                                         cases=results, final_checks={
                                             spec: {str(k): v for k, v in found.items()}
                                             for spec, found in checks.items()},
                                         minibatch=minibatch), text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
