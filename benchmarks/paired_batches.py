"""Two maid_sgd runs compared batch by batch: same seed and data, so iteration k of each drew
the same batch, and the difference of their batch losses there is a paired sample.

    python benchmarks/paired_batches.py RUN_A RUN_B [--windows 0,100,200] [--plot FILE.png]

RUN_A and RUN_B are run folders (data.csv) or checkpoints (OUT/checkpoint.pt: the history
of a run still going, or stopped).  Prints, per window of iterations, the mean of
upper_value(A) - upper_value(B) with its standard error, and each run's cumulative cost at
the window's end.  ``--plot`` draws the differences against the iteration, with their mean
over the last ``--span`` iterations (an epoch, say) and its band of two standard errors.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

import torch

from bilevel.results import RunFolder


def history(path):
    """The rows (upper_value, cost) of a run folder's data.csv or a checkpoint's history."""
    path = Path(path)
    if path.is_dir():
        rows = RunFolder(path).read_rows("data.csv")
    else:
        rows = torch.load(path, weights_only=False, map_location="cpu")["history"]
    return [(float(r["upper_value"]), float(r["cost"])) for r in rows]


def paired(a, b, windows):
    """[(first, last, mean difference, standard error, cost of a, cost of b)] per window
    (iterations first..last, 1-based) over the iterations both runs have."""
    n = min(len(a), len(b))
    out = []
    for start, stop in zip(windows, [*windows[1:], n], strict=True):
        stop = min(stop, n)
        if stop - start < 2:
            continue
        diff = [a[i][0] - b[i][0] for i in range(start, stop)]
        error = statistics.stdev(diff) / math.sqrt(len(diff))
        out.append((start + 1, stop, statistics.mean(diff), error, a[stop - 1][1],
                    b[stop - 1][1]))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_a")
    p.add_argument("run_b")
    p.add_argument("--windows", default="0,100,200", help="window starts, 0-based")
    p.add_argument("--plot", default=None, metavar="FILE.png",
                   help="draw the paired differences and their running mean")
    p.add_argument("--span", type=int, default=40,
                   help="iterations of the plot's running mean (40: an epoch of 800 crops)")
    p.add_argument("--labels", default="A,B", help="the two runs' names in the plot")
    args = p.parse_args(argv)
    windows = [int(w) for w in args.windows.split(",")]
    a, b = history(args.run_a), history(args.run_b)
    rows = paired(a, b, windows)
    for first, last, mean, error, cost_a, cost_b in rows:
        print(f"iterations {first}-{last}: A - B = {mean:+.5f} +- {error:.5f} (se); "
              f"cost A {cost_a:.0f}, B {cost_b:.0f}")
    if args.plot:
        plot(a, b, args.plot, args.span, args.labels.split(",", 1))
    return rows


def plot(a, b, path, span, labels):
    """Each iteration's A - B faint, its running mean over ``span`` iterations bold with a
    band of two standard errors, and zero."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import _figure

    diff = [x[0] - y[0] for x, y in zip(a, b, strict=False)]
    plt = _figure.pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    k = range(1, len(diff) + 1)
    ax.plot(k, diff, ".", ms=2, alpha=0.25, color="C0", label="one batch")
    ends = range(span, len(diff) + 1)
    means = [statistics.mean(diff[e - span:e]) for e in ends]
    errors = [2 * statistics.stdev(diff[e - span:e]) / math.sqrt(span) for e in ends]
    ax.plot(ends, means, "-", color="C0", label=f"mean of the last {span}")
    ax.fill_between(ends, [m - e for m, e in zip(means, errors, strict=True)],
                    [m + e for m, e in zip(means, errors, strict=True)], color="C0", alpha=0.2,
                    label="two standard errors")
    ax.axhline(0, color="k", lw=0.8)
    scale = max([abs(m) + e for m, e in zip(means, errors, strict=True)] or [0]) or 1e-3
    ax.set_ylim(-4 * scale, 4 * scale)
    ax.set_xlabel("iteration (the same batch in both runs)")
    ax.set_ylabel(f"batch loss: {labels[0]} - {labels[-1]}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
    _figure.save(fig, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
