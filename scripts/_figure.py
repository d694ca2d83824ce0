"""Shared plumbing of the figure scripts: arguments, the run folder, meta.json."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from bilevel.results import environment, write_csv

#: The BSD images beside the repository (../shared/data/bsd); absent on a user's
#: machine, where the scripts fall back to the images bundled with scikit-image.
BSD = Path(__file__).resolve().parents[2] / "shared" / "data" / "bsd"


def bsd_folder(name: str, given: str | None = None) -> str | None:
    """``given`` if set, else BSD/``name`` when that folder exists, else None (fallback)."""
    if given:
        return given
    folder = BSD / name
    # Relative to the working directory: loads the same, and no run folder records a
    # machine's absolute path (../shared/data/bsd/... from the repository root).
    return os.path.relpath(folder) if folder.is_dir() else None


def parser(doc: str, name: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes, seconds (used by tests)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=f"results/{name}", help="output folder")
    p.add_argument("--no-plot", action="store_true", help="compute only")
    p.add_argument("--replot", action="store_true",
                   help="only redraw the figure from an existing --out folder")
    return p


def write(out, rows, settings: dict, started: float) -> Path:
    """Write tidy ``data.csv`` and ``meta.json`` (settings, seed, versions, machine, commit)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "data.csv", rows)
    meta = dict(settings, wall_time_s=round(time.perf_counter() - started, 2),
                environment=environment())
    (out / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
    return out


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def main(doc: str, name: str, compute, plot, argv=None, add_arguments=None) -> Path:
    """Parse the common arguments, compute, write the run folder and plot it.

    ``add_arguments(parser)`` adds a script's own options; ``args.command`` is the
    command line that reproduces the run.
    """
    p = parser(doc, name)
    if add_arguments is not None:
        add_arguments(p)
    args = p.parse_args(argv)
    args.command = " ".join([f"python scripts/{name}.py",
                             *(sys.argv[1:] if argv is None else argv)])
    if args.replot:
        plot(Path(args.out))
        print(f"redrew {args.out}")
        return Path(args.out)
    started = time.perf_counter()
    rows, settings = compute(args)
    out = write(args.out, rows, dict(settings, quick=args.quick), started)
    if not args.no_plot:
        plot(out)
    print(f"wrote {out}")
    return out
