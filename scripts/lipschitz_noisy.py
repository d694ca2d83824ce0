"""Figure: Lipschitz regularisation against label noise (Oberman and Calder 2018).

    python scripts/lipschitz_noisy.py [--quick] [--seed 0]

Classification as regression with labels in {-1, +1}, training and validation
labels flipped with probability 0.2, test labels clean; test error = how often
sign(u) differs from the clean label.

Part A (``mlp``): x uniform on [-1, 1]^2, clean label +1 inside the disc of area
2 (half the square), -1 outside.  A ReLU MLP (2-64-64-1) trained full batch with
Adam, with and without the Lipschitz penalty (smooth maximum of all pair ratios,
:func:`bilevel.lipschitz_training.train_lipschitz_regression`).  Reported for the
final parameters (no early stopping: the unregularised net memorises the flips)
and for the epoch of smallest validation loss (early stopping, itself a
regulariser); the regularised row uses the lam > 0 with the smallest final
validation loss.

Part B (``spline``): the registered bilevel problem ``lipschitz_regression`` (1-D,
y = sign(x), 41 knots): lam = e^theta learned by MAID on validation data,
against lam = e^-12 (only the ridge) and the best lam of a grid.

Writes results/lipschitz_noisy/{data.csv (one row per part, data seed, lam or
variant: errors, losses, Lipschitz constants; MAID's rows with status and
warnings), meta.json (settings and the summary lines), lipschitz_noisy.png}.
"""
from __future__ import annotations

import math
import time

import _figure
import numpy as np
import torch
from bilevel_problems.lipschitz_regression import LipschitzRegression

from bilevel import experiment
from bilevel.nn.lipschitz import empirical_lipschitz, network_lipschitz_bound
from bilevel.nn.lipschitz_training import mlp, train_lipschitz_regression

FLIP = 0.2
RADIUS = math.sqrt(2 / math.pi)  # the disc of area 2 holds half of [-1, 1]^2
FILES = {"data.csv": "part A (mlp): one row per data seed, lam and variant (final, "
                     "early_stopped); part B (spline): one row per data seed and variant "
                     "(maid, unregularised, grid_best), MAID's with status and warnings"}


def disc_data(n, flip, gen):
    x = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 2 - 1
    clean = torch.where(x.norm(dim=1, keepdim=True) < RADIUS, 1.0, -1.0).to(x)
    flipped = torch.rand(n, 1, generator=gen, dtype=torch.float64) < flip
    return x, torch.where(flipped, -clean, clean), clean


def sign_error(pred, clean):
    return float((torch.sign(pred) != clean).to(pred.dtype).mean())


def part_mlp(args):
    if args.quick:
        cfg = dict(n=100, epochs=300, lams=(0.0, 0.1), seeds=1)
    else:
        cfg = dict(n=200, epochs=1500, lams=(0.0, 0.01, 0.03, 0.1), seeds=3)
    cfg.update(hidden=(64, 64), lr=1e-2, n_test=4000, estimate="pairs", temperature=0.02)
    rows = []
    for seed in range(args.seed, args.seed + cfg["seeds"]):
        gen = torch.Generator().manual_seed(seed)
        x, y, _ = disc_data(cfg["n"], FLIP, gen)
        xv, yv, _ = disc_data(cfg["n"], FLIP, gen)
        xt, _, yt = disc_data(cfg["n_test"], 0.0, gen)
        for lam in cfg["lams"]:
            def record(model, row, xt=xt, yt=yt):
                with torch.no_grad():
                    pred = model(xt)
                row.update(test_error=sign_error(pred, yt),
                           test_mse=float(((pred - yt) ** 2).mean()))

            started = time.perf_counter()
            net = mlp(2, cfg["hidden"], seed=seed)
            result = train_lipschitz_regression(
                net, x, y, lam, X_val=xv, y_val=yv, epochs=cfg["epochs"], lr=cfg["lr"],
                estimate=cfg["estimate"], temperature=cfg["temperature"],
                patience=cfg["epochs"], restore_best=False, callback=record, seed=seed)
            final = result.history[-1]
            best = min(result.history, key=lambda r: r["val_loss"])
            with torch.no_grad():
                train_error = sign_error(net(x), y)
            common = dict(part="mlp", seed=seed, lam=lam, train_error=train_error,
                          lipschitz=empirical_lipschitz(net, xt),
                          certified_bound=network_lipschitz_bound(net).upper,
                          time=time.perf_counter() - started)
            rows.append(dict(common, variant="final", epoch=final["epoch"],
                             val_loss=final["val_loss"], test_error=final["test_error"],
                             test_mse=final["test_mse"]))
            rows.append(dict(common, variant="early_stopped", epoch=best["epoch"],
                             val_loss=best["val_loss"], test_error=best["test_error"],
                             test_mse=best["test_mse"]))
            print(f"mlp seed={seed} lam={lam:<5g} final: test error {final['test_error']:.3f} "
                  f"(train error {train_error:.3f}, Lip {common['lipschitz']:.2f}) | "
                  f"early stopped at {best['epoch']}: {best['test_error']:.3f}", flush=True)
    return rows, cfg


def part_spline(args):
    cfg = dict(n_train=200, n_val=200, n_test=4000, num_knots=41, flip=FLIP, theta0=-3.0,
               theta_unregularised=-12.0, seeds=2 if args.quick else 5, max_iter=300, tol=1e-6)
    rows = []
    grid = torch.linspace(-10, 2, 121, dtype=torch.float64)
    for seed in range(args.seed, args.seed + cfg["seeds"]):
        problem = LipschitzRegression(n_train=cfg["n_train"], n_val=cfg["n_val"],
                                      n_test=cfg["n_test"], num_knots=cfg["num_knots"],
                                      flip=cfg["flip"], theta0=cfg["theta0"], seed=seed)
        started = time.perf_counter()
        outcome = experiment.run_method(problem, experiment.Run(f"spline seed={seed}", "maid",
                                                                dict(tol=cfg["tol"])),
                                        max_iter=cfg["max_iter"])
        result = outcome.result
        maid_time = time.perf_counter() - started
        values, x = [], None
        for t in grid:
            value, x = problem.value(t.reshape(1), x0=x)
            values.append(value)
        thetas = dict(maid=float(result.theta[0]), unregularised=cfg["theta_unregularised"],
                      grid_best=float(grid[int(np.argmin(values))]))
        for variant, theta in thetas.items():
            value, c = problem.value(torch.tensor([theta], dtype=torch.float64))
            rows.append(dict(part="spline", seed=seed, variant=variant, theta=theta,
                             lam=math.exp(theta), val_loss=value,
                             lipschitz=problem.lipschitz(c), **problem.test_metrics(c),
                             status=result.status if variant == "maid" else "",
                             warnings=" | ".join(outcome.warnings) if variant == "maid" else "",
                             iterations=len(result.history) if variant == "maid" else 0,
                             time=maid_time if variant == "maid" else 0.0,
                             coefficients=" ".join(f"{v:.6g}" for v in c.tolist())))
        maid, free = rows[-3], rows[-2]
        print(f"spline seed={seed}: MAID lam={maid['lam']:.4f} ({result.status}, "
              f"{len(result.history)} its, {maid_time:.1f}s) test error {maid['test_error']:.4f} "
              f"mse {maid['test_mse']:.4f} | unregularised: test error {free['test_error']:.4f} "
              f"mse {free['test_mse']:.4f} | grid best val {min(values):.4f} vs MAID "
              f"{maid['val_loss']:.4f}", flush=True)
    return rows, cfg


def summarise(rows):
    """Mean test numbers: unregularised against regularised, per part."""
    lines = []
    mlp_rows = [r for r in rows if r["part"] == "mlp"]
    for variant in ("final", "early_stopped"):
        sel = [r for r in mlp_rows if r["variant"] == variant]
        seeds = sorted({r["seed"] for r in sel})
        free = [next(r for r in sel if r["seed"] == s and r["lam"] == 0) for s in seeds]
        # lam > 0 chosen per seed by the final validation loss (no test data involved)
        finals = [r for r in mlp_rows if r["variant"] == "final" and r["lam"] > 0]
        chosen = [min((r for r in finals if r["seed"] == s), key=lambda r: r["val_loss"])["lam"]
                  for s in seeds]
        reg = [next(r for r in sel if r["seed"] == s and r["lam"] == lam)
               for s, lam in zip(seeds, chosen, strict=True)]
        lines.append(f"MLP ({variant}): test error unregularised "
                     f"{np.mean([r['test_error'] for r in free]):.4f}, Lipschitz-regularised "
                     f"{np.mean([r['test_error'] for r in reg]):.4f} (lam chosen on validation: "
                     f"{chosen}); test MSE {np.mean([r['test_mse'] for r in free]):.4f} vs "
                     f"{np.mean([r['test_mse'] for r in reg]):.4f}")
    spline = [r for r in rows if r["part"] == "spline"]
    for variant in ("unregularised", "maid", "grid_best"):
        sel = [r for r in spline if r["variant"] == variant]
        lines.append(f"spline ({variant}): test error {np.mean([r['test_error'] for r in sel]):.4f}"
                     f", test MSE {np.mean([r['test_mse'] for r in sel]):.4f}, "
                     f"Lip {np.mean([r['lipschitz'] for r in sel]):.2f}, "
                     f"lam {np.mean([r['lam'] for r in sel]):.4g}")
    return lines


def plot(folder):
    plt = _figure.pyplot()
    rows = folder.read_rows("data.csv")
    fig, (ax_a, ax_b, ax_c) = plt.subplots(1, 3, figsize=(14, 4))
    mlp_rows = [r for r in rows if r["part"] == "mlp"]
    lams = sorted({float(r["lam"]) for r in mlp_rows})
    for variant, marker in (("final", "o-"), ("early_stopped", "s--")):
        vals = [[float(r["test_error"]) for r in mlp_rows
                 if r["variant"] == variant and float(r["lam"]) == lam] for lam in lams]
        ax_a.errorbar(range(len(lams)), [np.mean(v) for v in vals],
                      yerr=[np.std(v) for v in vals], fmt=marker, capsize=3, label=variant)
    ax_a.set_xticks(range(len(lams)), [f"{lam:g}" for lam in lams])
    ax_a.set(xlabel="lam", ylabel="test error (clean labels)",
             title=f"A: ReLU MLP, 2-D disc, {int(FLIP * 100)}% flipped labels")
    ax_a.legend(fontsize=8)

    spline = [r for r in rows if r["part"] == "spline"]
    first = min(int(r["seed"]) for r in spline)
    for r in spline:
        if int(r["seed"]) != first or r["variant"] == "grid_best":
            continue
        c = np.array([float(v) for v in r["coefficients"].split()])
        knots = np.linspace(-1, 1, len(c))
        ax_b.plot(knots, c, label=f"{r['variant']} (lam={float(r['lam']):.3g})")
    t = np.linspace(-1, 1, 401)
    ax_b.plot(t, np.sign(t), "k:", label="clean sign(x)")
    ax_b.set(xlabel="x", ylabel="u(x)", title=f"B: 1-D spline, seed {first}")
    ax_b.legend(fontsize=8)
    seeds = sorted({int(r["seed"]) for r in spline})
    for i, variant in enumerate(("unregularised", "maid", "grid_best")):
        vals = [float(next(r["test_mse"] for r in spline
                           if int(r["seed"]) == s and r["variant"] == variant)) for s in seeds]
        ax_c.bar(np.arange(len(seeds)) + 0.27 * (i - 1), vals, width=0.27, label=variant)
    ax_c.set_xticks(range(len(seeds)), [str(s) for s in seeds])
    ax_c.set(xlabel="data seed", ylabel="test MSE against clean labels",
             title="B: lam learned by MAID vs none")
    ax_c.legend(fontsize=8)
    _figure.save(fig, folder / "lipschitz_noisy.png")


def compute(args, folder):
    rows_a, cfg_a = part_mlp(args)
    rows_b, cfg_b = part_spline(args)
    rows = rows_a + rows_b
    summary = summarise(rows)
    print("\n".join(summary))
    folder.write_rows("data.csv", rows)
    return dict(mlp=cfg_a, spline=cfg_b, flip=FLIP, summary=summary)


def main(argv=None):
    return experiment.main(__doc__, "lipschitz_noisy", compute, plot=plot, argv=argv,
                           files=FILES)


if __name__ == "__main__":
    main()
