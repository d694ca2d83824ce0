"""Figure: the 1-D check of Lipschitz-regularised regression (docs/problems.md).

    python scripts/lipschitz_1d.py [--quick] [--seed 0]

x uniform on [-1, 1], y = sign(x), squared loss and penalty lam Lip(u) with
lam = 0.05: as n grows the minimiser approaches clamp(x / sqrt(3 lam), -1, 1),
whose Lipschitz constant is 1 / sqrt(3 lam) = 2.582.  (For u = clamp(x / a) the
objective tends to a / 3 + lam / a, smallest at a = sqrt(3 lam).)

The fit is the *exact* minimiser over all functions
(:func:`bilevel.lipschitz_training.fit_lipschitz_1d`: a convex QP in the values
at the data, solved by cvxpy/Clarabel), so what shrinks is the statistical
error alone.  For each n in 50, 200, 800, 3200 and each of several data seeds it
records the RMS distance to the limit on a grid of 4001 points of [-1, 1] and the
fitted Lipschitz constant.  The full run adds the ReLU-MLP trainer
(:func:`train_lipschitz_regression`, full batch, exact sorted-neighbour pair
ratios under a smooth maximum) at n = 200 and 800 as a cross-check.

Writes results/lipschitz_1d/{data.csv (one row per method, n and data seed: RMS
distance to the limit, Lipschitz constant), curves.csv (the fits of the first
seed, one row per point), meta.json, lipschitz_1d.png}.
"""
from __future__ import annotations

import math
import time

import _figure
import numpy as np
import torch

from bilevel import experiment
from bilevel.nn.lipschitz import lipschitz_lower_bound, network_lipschitz_bound
from bilevel.nn.lipschitz_training import fit_lipschitz_1d, mlp, train_lipschitz_regression

LAM = 0.05
SIZES = (50, 200, 800, 3200)
GRID = np.linspace(-1.0, 1.0, 4001)
FILES = {"data.csv": "one row per method (exact, mlp), n and data seed: rms distance to the "
                     "limit, lipschitz, objective, status, time",
         "curves.csv": "the fits of the first data seed: one row per method, n and point x"}


def limit(x):
    return np.clip(np.asarray(x) / math.sqrt(3 * LAM), -1.0, 1.0)


def data(n, seed):
    rng = np.random.default_rng([seed, n])
    x = rng.uniform(-1.0, 1.0, n)
    return x, np.sign(x)


def rms(values):
    return float(np.sqrt(np.mean((values - limit(GRID)) ** 2)))


def compute(args, folder):
    seeds = range(args.seed, args.seed + (3 if args.quick else 20))
    rows, curves = [], []
    for n in SIZES:
        for seed in seeds:
            x, y = data(n, seed)
            started = time.perf_counter()
            fit = fit_lipschitz_1d(x, y, LAM)
            rows.append(dict(method="exact", n=n, seed=seed, rms=rms(fit(GRID)),
                             lipschitz=fit.lipschitz, objective=fit.objective,
                             status=fit.status, time=time.perf_counter() - started))
            if seed == args.seed:
                curves += [dict(method="exact", n=n, x=t, u=v)
                           for t, v in zip(GRID[::10], fit(GRID[::10]), strict=True)]
    if not args.quick:
        rows += mlp_rows(args.seed, curves)
    limit_lip = 1 / math.sqrt(3 * LAM)
    print(f"lam = {LAM}: limit clamp(x / {math.sqrt(3 * LAM):.4f}), Lip = {limit_lip:.4f}; "
          f"{len(seeds)} data seeds per n")
    print(f"{'method':6s} {'n':>5s} {'RMS to limit (mean +- std)':>28s} "
          f"{'Lip (mean +- std)':>20s} {'mean |Lip - 2.582|':>19s}")
    for method in ("exact", "mlp"):
        for n in SIZES:
            sel = [r for r in rows if r["method"] == method and r["n"] == n]
            if not sel:
                continue
            e = np.array([r["rms"] for r in sel])
            lip = np.array([r["lipschitz"] for r in sel])
            print(f"{method:6s} {n:5d} {e.mean():17.4f} +- {e.std():.4f} "
                  f"{lip.mean():11.4f} +- {lip.std():.4f} {np.abs(lip - limit_lip).mean():19.4f}")
    folder.write_rows("data.csv", rows)
    folder.write_rows("curves.csv", curves)
    return dict(lam=LAM, sizes=SIZES, seeds=list(seeds), grid_points=len(GRID),
                limit_lipschitz=limit_lip, solver="cvxpy CLARABEL (exact QP)",
                mlp=None if args.quick else MLP_SETTINGS)


MLP_SETTINGS = dict(sizes=(200, 800), hidden=(64, 64), activation="relu", epochs=3000,
                    lr=3e-3, temperature=0.01, estimate="pairs", batch="full")


def mlp_rows(seed, curves):
    rows = []
    grid = torch.tensor(GRID)[:, None]
    for n in MLP_SETTINGS["sizes"]:
        x, y = data(n, seed)
        X, Y = torch.tensor(x)[:, None], torch.tensor(y)[:, None]
        net = mlp(1, MLP_SETTINGS["hidden"], seed=seed)
        started = time.perf_counter()
        train_lipschitz_regression(net, X, Y, LAM, epochs=MLP_SETTINGS["epochs"],
                                   lr=MLP_SETTINGS["lr"], temperature=MLP_SETTINGS["temperature"],
                                   seed=seed, progress=True)
        with torch.no_grad():
            u = net(grid)[:, 0].numpy()
        lip = float(np.max(np.abs(np.diff(u)) / np.diff(GRID)))  # exact on the grid
        fit = np.mean((net(X).detach().numpy()[:, 0] - y) ** 2) + LAM * lip
        rows.append(dict(method="mlp", n=n, seed=seed, rms=rms(u), lipschitz=lip, objective=fit,
                         status="trained", time=time.perf_counter() - started,
                         lower_bound=lipschitz_lower_bound(net, X).value,
                         certified_bound=network_lipschitz_bound(net).upper))
        curves += [dict(method="mlp", n=n, x=t, u=v)
                   for t, v in zip(GRID[::10], u[::10], strict=True)]
    return rows


def plot(folder):
    plt = _figure.pyplot()
    rows, curves = folder.read_rows("data.csv"), folder.read_rows("curves.csv")
    fig, (ax_u, ax_e, ax_l) = plt.subplots(1, 3, figsize=(14, 4))
    ax_u.plot(GRID, limit(GRID), "k--", lw=2, label="limit clamp(x/sqrt(3 lam))")
    for i, n in enumerate(SIZES):
        sel = [c for c in curves if c["method"] == "exact" and int(c["n"]) == n]
        ax_u.plot([float(c["x"]) for c in sel], [float(c["u"]) for c in sel], color=f"C{i}",
                  lw=1, label=f"exact fit, n={n}")
    for n in sorted({int(c["n"]) for c in curves if c["method"] == "mlp"}):
        sel = [c for c in curves if c["method"] == "mlp" and int(c["n"]) == n]
        ax_u.plot([float(c["x"]) for c in sel], [float(c["u"]) for c in sel], ":", lw=1.5,
                  label=f"ReLU MLP, n={n}")
    ax_u.set(xlabel="x", ylabel="u(x)", title="fits (first data seed)", xlim=(-0.7, 0.7))
    ax_u.legend(fontsize=7)
    for method, marker in (("exact", "o-"), ("mlp", "s")):
        ns = [n for n in SIZES if any(r["method"] == method and int(r["n"]) == n for r in rows)]
        if not ns:
            continue
        for ax, key in ((ax_e, "rms"), (ax_l, "lipschitz")):
            vals = [[float(r[key]) for r in rows if r["method"] == method and int(r["n"]) == n]
                    for n in ns]
            ax.errorbar(ns, [np.mean(v) for v in vals], yerr=[np.std(v) for v in vals],
                        fmt=marker, capsize=3, label=method)
    ax_e.set(xscale="log", yscale="log", xlabel="n", ylabel="RMS distance to the limit",
             title="distance to the limit (mean +- std over seeds)")
    ax_l.axhline(1 / math.sqrt(3 * LAM), color="k", ls="--", label="1/sqrt(3 lam) = 2.582")
    ax_l.set(xscale="log", xlabel="n", ylabel="Lip(u)", title="fitted Lipschitz constant")
    for ax in (ax_e, ax_l):
        ax.legend(fontsize=8)
    _figure.save(fig, folder / "lipschitz_1d.png")


def main(argv=None):
    return experiment.main(__doc__, "lipschitz_1d", compute, plot=plot, argv=argv, files=FILES)


if __name__ == "__main__":
    main()
