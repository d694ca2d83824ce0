"""Two maid_sgd runs compared batch by batch: same seed and data, so iteration k of each drew
the same batch, and the difference of their batch losses there is a paired sample.

    python benchmarks/paired_batches.py RUN_A RUN_B [--windows 0,100,200]

RUN_A and RUN_B are run folders (data.csv) or checkpoints (OUT/checkpoint.pt: the history
of a run still going, or stopped).  Prints, per window of iterations, the mean of
upper_value(A) - upper_value(B) with its standard error, and each run's cumulative cost at
the window's end.
"""
from __future__ import annotations

import argparse
import math
import statistics
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
    args = p.parse_args(argv)
    windows = [int(w) for w in args.windows.split(",")]
    rows = paired(history(args.run_a), history(args.run_b), windows)
    for first, last, mean, error, cost_a, cost_b in rows:
        print(f"iterations {first}-{last}: A - B = {mean:+.5f} +- {error:.5f} (se); "
              f"cost A {cost_a:.0f}, B {cost_b:.0f}")
    return rows


if __name__ == "__main__":
    main()
