"""Learned linear-spline activations vs. ReLU in a small MLP on scikit-learn's digits.

    python scripts/spline_digits.py [--quick] [--seeds 0 1 2] [--lam 1e-3]

Network 64 -> W -> W -> 10 (W = ``--width``), trained with Adam on 75 % of the
1797 digits (stratified split per seed), tested on the other 25 %.  Variants:

- ``relu``: ReLU activations;
- ``spline``: one :class:`bilevel.splines.LinearSpline` per neuron (``--knots``
  knots on [-R, R], initialised as ReLU), no penalty;
- ``spline_tv2``: the same with the penalty ``lam * sum TV(2)`` on all splines
  (the l1 norm of the slope changes, which makes the activations sparse in knots).

Reported per variant and seed: test accuracy, active knots (interior knots whose
slope change exceeds ``--tol``), accuracy after :meth:`LinearSpline.sparsify_`
removes the others (and the largest change of any activation function it
caused), TV(2), and the network's Lipschitz bound (l2 -> l2)

    prod_l ||W_l||_2  x  prod_l max_c Lip(sigma_{l,c}),

(spectral norms of the weight matrices; 1 for ReLU).  Writes
results/spline_digits/{data.csv (one row per variant and seed), activations.csv
(the first seed's sparsified activations: curves and knots), meta.json,
summary.md, activations.png}.
"""
from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from bilevel import experiment
from bilevel.nn.splines import LinearSpline

VARIANTS = ("relu", "spline", "spline_tv2")
FILES = {"data.csv": "one row per variant and seed: accuracies, knots, Lipschitz bounds",
         "activations.csv": "the first seed's sparsified activations (first spline layer, "
                            "neurons 0-3): one row per variant, neuron and point, "
                            "kind 'curve' or 'knot'"}


def add_arguments(p):
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="data and training seeds (default: --seed and the next two)")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--knots", type=int, default=21)
    p.add_argument("--x-range", type=float, default=3.0)
    p.add_argument("--lam", type=float, default=1e-3, help="TV(2) weight")
    p.add_argument("--tol", type=float, default=1e-2, help="slope change of an active knot")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)


def load(seed):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, random_state=seed, stratify=y)
    mean, std = Xtr.mean(0), Xtr.std(0) + 1e-6  # statistics of the training part only
    f = lambda a: torch.tensor((a - mean) / std, dtype=torch.float32)  # noqa: E731
    return f(Xtr), torch.tensor(ytr), f(Xte), torch.tensor(yte)


def make_net(variant, args):
    def act():
        if variant == "relu":
            return nn.ReLU()
        return LinearSpline(args.width, args.knots, args.x_range, init="relu")

    return nn.Sequential(nn.Linear(64, args.width), act(), nn.Linear(args.width, args.width),
                         act(), nn.Linear(args.width, 10))


def splines(net):
    return [m for m in net if isinstance(m, LinearSpline)]


def accuracy(net, X, y):
    with torch.no_grad():
        return float((net(X).argmax(1) == y).float().mean())


def lipschitz_bound(net):
    """(bound, product of spectral norms, product of max activation Lipschitz constants)."""
    with torch.no_grad():
        spectral = float(np.prod([float(torch.linalg.matrix_norm(m.weight, ord=2))
                                  for m in net if isinstance(m, nn.Linear)]))
        acts = float(np.prod([float(s.lipschitz(per_channel=False)) for s in splines(net)]))
    return spectral * acts, spectral, acts


def train(variant, seed, args, data):
    Xtr, ytr, Xte, yte = data
    torch.manual_seed(seed)
    net = make_net(variant, args)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(seed)
    lam = args.lam if variant == "spline_tv2" else 0.0
    start = time.perf_counter()
    for _ in range(args.epochs):
        order = torch.randperm(len(Xtr), generator=gen)
        for i in range(0, len(Xtr), args.batch):
            idx = order[i:i + args.batch]
            loss = nn.functional.cross_entropy(net(Xtr[idx]), ytr[idx])
            if lam:
                loss = loss + lam * sum(s.tv2() for s in splines(net))
            opt.zero_grad()
            loss.backward()
            opt.step()
    seconds = time.perf_counter() - start
    bound, spectral, acts = lipschitz_bound(net)
    row = dict(variant=variant, seed=seed, test_accuracy=accuracy(net, Xte, yte),
               train_accuracy=accuracy(net, Xtr, ytr), lipschitz_bound=bound,
               spectral_product=spectral, activation_lipschitz_product=acts,
               train_time_s=round(seconds, 2))
    if splines(net):
        with torch.no_grad():
            row["tv2"] = float(sum(s.tv2() for s in splines(net)))
            row["active_knots"] = int(sum(int(s.num_active_knots(args.tol).sum())
                                          for s in splines(net)))
            row["knots_total"] = sum(s.num_activations * (s.num_knots - 2) for s in splines(net))
            reports = [s.sparsify_(args.tol) for s in splines(net)]
        row["sparsified_test_accuracy"] = accuracy(net, Xte, yte)
        row["sparsify_max_deviation"] = max(float(r.max_deviation.max()) for r in reports)
        row["lipschitz_bound_sparsified"] = lipschitz_bound(net)[0]
    return row, net


def activation_rows(nets, args):
    """The first spline layer's first four activations of each net: curves and knots."""
    rows = []
    t = torch.linspace(-1.5 * args.x_range, 1.5 * args.x_range, 400)
    for variant, net in nets.items():
        sp = splines(net)[0]
        with torch.no_grad():
            y = sp(t.view(-1, 1).expand(-1, sp.num_activations).contiguous())
        for k in range(min(4, sp.num_activations)):
            rows += [dict(variant=variant, neuron=k, kind="curve", x=float(a), y=float(b))
                     for a, b in zip(t, y[:, k], strict=True)]
            rows += [dict(variant=variant, neuron=k, kind="knot", x=float(a), y=float(b))
                     for a, b in zip(sp.grid, sp.coefficients[k].detach(), strict=True)]
    return rows


def compute(args, folder):
    args.seeds = args.seeds or [args.seed, args.seed + 1, args.seed + 2]
    if args.quick:
        args.seeds, args.epochs = args.seeds[:1], 5
    rows, nets = [], {}
    for seed in args.seeds:
        data = load(seed)
        for variant in VARIANTS:
            row, net = train(variant, seed, args, data)
            rows.append(row)
            if seed == args.seeds[0] and variant != "relu":
                nets[variant] = net
            print(f"seed {seed} {variant:10s} test acc {row['test_accuracy']:.4f}  "
                  f"Lip bound {row['lipschitz_bound']:.3g}"
                  + (f"  active knots {row['active_knots']}/{row['knots_total']}  "
                     f"after sparsify {row['sparsified_test_accuracy']:.4f}"
                     if "active_knots" in row else ""), flush=True)
    folder.write_rows("data.csv", rows)
    folder.write_rows("activations.csv", activation_rows(nets, args))
    return {k: v for k, v in vars(args).items() if k not in ("command", "replot")}


def plot(folder):
    """activations.png from activations.csv (a folder without it has nothing to draw)."""
    if not (folder / "activations.csv").is_file():
        return
    import _figure

    plt = _figure.pyplot()
    points = folder.read_rows("activations.csv")
    variants = list(dict.fromkeys(r["variant"] for r in points))
    fig, axes = plt.subplots(2, 4, figsize=(10, 4.5), sharex=True)
    for row, variant in zip(axes, variants, strict=False):
        for k, ax in enumerate(row):
            for kind, style in (("curve", dict(lw=1.2)), ("knot", dict(ls="", marker=".",
                                                                         ms=3))):
                sel = [r for r in points if r["variant"] == variant and r["neuron"] == k
                       and r["kind"] == kind]
                ax.plot([r["x"] for r in sel], [r["y"] for r in sel], **style)
            ax.set_title(f"{variant} (sparsified), neuron {k}", fontsize=8)
    _figure.save(fig, folder / "activations.png")


def summarise(folder):
    rows, meta = folder.read_rows("data.csv"), folder.read_meta()

    def stat(variant, key, fmt):
        vals = [r[key] for r in rows if r["variant"] == variant and r.get(key) not in ("", None)]
        if not vals:
            return "-"
        return (fmt.format(np.mean(vals)) + (" ± " + fmt.format(np.std(vals))
                                             if len(vals) > 1 else ""))

    lines = [f"# Spline activations vs. ReLU on digits ({len(meta['seeds'])} seed(s))", "",
             f"MLP 64-{meta['width']}-{meta['width']}-10, Adam lr {meta['lr']}, "
             f"{meta['epochs']} epochs, batch {meta['batch']}; splines: {meta['knots']} knots on "
             f"[-{meta['x_range']}, {meta['x_range']}], ReLU init; TV(2) weight {meta['lam']}; "
             f"active knot: slope change > {meta['tol']}.  Mean ± std over seeds "
             f"{meta['seeds']}.", "",
             "| variant | test acc. | active knots | test acc. after sparsify | "
             "max change of an activation by sparsify | TV(2) | "
             "Lipschitz bound | product of spectral norms | product of max Lip(sigma) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for v in VARIANTS:
        lines.append(f"| {v} | {stat(v, 'test_accuracy', '{:.4f}')} | "
                     f"{stat(v, 'active_knots', '{:.0f}')} | "
                     f"{stat(v, 'sparsified_test_accuracy', '{:.4f}')} | "
                     f"{stat(v, 'sparsify_max_deviation', '{:.3f}')} | "
                     f"{stat(v, 'tv2', '{:.1f}')} | {stat(v, 'lipschitz_bound', '{:.3g}')} | "
                     f"{stat(v, 'spectral_product', '{:.3g}')} | "
                     f"{stat(v, 'activation_lipschitz_product', '{:.3g}')} |")
    total = rows[1].get("knots_total") if len(rows) > 1 else None
    total = "None" if total in (None, "") else f"{total:.0f}"
    lines += ["", f"Interior knots in the network: {total}.  Wall time "
              f"{meta['wall_time_s']} s ({meta['threads']} torch thread(s))."]
    folder.write_text("summary.md", "\n".join(lines) + "\n")


def main(argv=None):
    return experiment.main(__doc__, "spline_digits", compute, summarise=summarise, plot=plot,
                           argv=argv, add_arguments=add_arguments, files=FILES)


if __name__ == "__main__":
    main()
