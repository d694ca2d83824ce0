"""Experiments: runs of (label, method, settings) on a problem, and the command line
that every script and benchmark shares.

The runner: :func:`run_methods` solves one problem with each :class:`Run` and returns
an :class:`Outcome` per run, whose history rows carry ``run`` and ``method`` columns
and whose summary row carries the status, the message and every warning the run
raised (recorded, not printed and not silenced).

The command line (:func:`main`): a script is ``compute(args, folder) -> meta``, which
writes its data files through ``folder`` (a :class:`~bilevel.results.RunFolder`), and
``summarise(folder)`` / ``plot(folder)``, which read those files back and write the
summaries and the figures.  The options mean the same everywhere:

``--quick``
    a small run that finishes in seconds (what the tests run); without ``--out`` it
    writes to a temporary folder, never over a committed result.
``--replot``
    summaries and figures again from the files of ``--out``; nothing is computed and
    no data file is written.
``--no-plot``
    compute and summarise, draw nothing.
``--out DIR``, ``--seed N``, ``--threads T`` (torch threads; small problems run
fastest on one).
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from .outer import solve
from .results import RunFolder, command_line

#: The repository this module sits in (an editable install); a wheel has none.
REPOSITORY = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ the runner
@dataclasses.dataclass(frozen=True)
class Run:
    """One run of an experiment: a label, an outer method (a name or an object), settings."""

    label: str
    method: object = "maid"
    settings: dict = dataclasses.field(default_factory=dict)

    @property
    def method_name(self) -> str:
        return self.method if isinstance(self.method, str) else type(self.method).__name__


@dataclasses.dataclass
class Outcome:
    """What one :class:`Run` gave: the SolveResult, its warnings, the recorded columns."""

    run: Run
    result: object  # bilevel.SolveResult
    warnings: list
    recorded: dict  # iteration -> extra columns of that iteration's row

    @property
    def history(self) -> list:
        return self.result.history

    @property
    def last(self) -> dict:
        return self.result.history[-1] if self.result.history else {}

    def rows(self, keep=None) -> list[dict]:
        """The history rows labelled ``run`` and ``method``, the recorded columns added;
        ``keep``: only these history columns."""
        return [{"run": self.run.label, "method": self.run.method_name,
                 **{k: v for k, v in row.items() if keep is None or k in keep},
                 **self.recorded.get(row["iteration"], {})} for row in self.history]

    def summary(self) -> dict:
        """One row: the run, its settings, how it ended and what it warned about."""
        last = self.last
        return dict(run=self.run.label, method=self.run.method_name,
                    settings=json.dumps(self.run.settings, default=str),
                    status=self.result.status, message=self.result.message,
                    iterations=len(self.history), cost=last.get("cost", 0),
                    upper_value=last.get("upper_value"), time=last.get("time", 0.0),
                    warnings=" | ".join(self.warnings))

    def line(self) -> str:
        last = self.last
        upper = f"{last['upper_value']:.6g}" if "upper_value" in last else "-"
        noted = f" ({len(self.warnings)} warning(s))" if self.warnings else ""
        return (f"{self.run.label:28s} {self.result.status:18s} its={len(self.history):6d} "
                f"cost={last.get('cost', 0):>8} upper={upper}{noted}")


def run_method(problem, run: Run, *, record=None, callback=None, **common) -> Outcome:
    """Solve ``problem`` with ``run``'s method and settings, warnings recorded.

    ``record(state, row) -> dict`` adds columns to each iteration's row (the test loss
    of the iterate, say); ``callback(state, row) -> bool`` may stop the run;
    ``common`` are :func:`bilevel.solve`'s arguments (``max_iter``, ``max_cost``,
    ``tol``, ...), which ``run.settings`` override.
    """
    recorded = {}

    def observe(state, row):
        if record is not None:
            recorded[row["iteration"]] = record(state, row)
        return bool(callback(state, row)) if callback is not None else False

    hooked = record is not None or callback is not None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # each one recorded, none lost to the once-filter
        result = solve(problem, run.method, callback=observe if hooked else None,
                       **{**common, **run.settings})
    messages = list(dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught))
    return Outcome(run, result, messages, recorded)


def run_methods(problem, runs, *, report=True, **common) -> list[Outcome]:
    """:func:`run_method` for each run on the same problem; a line per run if ``report``."""
    outcomes = []
    for run in runs:
        outcomes.append(run_method(problem, run, **common))
        if report:
            print(outcomes[-1].line(), flush=True)
    return outcomes


def history_rows(outcomes, keep=None) -> list[dict]:
    """Every run's labelled history rows, one table (a script's ``data.csv``)."""
    return [row for outcome in outcomes for row in outcome.rows(keep)]


def summary_rows(outcomes) -> list[dict]:
    """One row per run: status, message and warnings as columns (``runs.csv``)."""
    return [outcome.summary() for outcome in outcomes]


# ------------------------------------------------------------------ data folders
def _value(text):
    """A Python literal, else a string; 'nan' and 'inf' are floats (methods refuse
    them where a finite number is needed, naming the setting)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        word = text.strip()
        if word.lower().lstrip("+-") in ("nan", "inf", "infinity"):
            return float(word)
        return word


def parse_settings(pairs) -> dict:
    """``--set KEY=VALUE`` pairs as method settings (VALUE a Python literal, 'inf' or a
    string); a pair without '=' is a ValueError."""
    settings = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects KEY=VALUE, got {pair!r}")
        settings[key.strip()] = _value(raw)
    return settings


def image_folder(name: str, given=None) -> str | None:
    """The folder of the image set ``name`` (``train``, ``Set68``, ``Set12``), or None.

    The search order and the sets' layout are in docs/data.md: ``given`` (it must
    exist), then ``$BILEVEL_DATA``, then a shared development copy beside the
    repository; None means the images bundled with scikit-image.  The path comes back
    relative to the working directory, so that no run folder records a machine's layout.
    """
    if given:
        if not Path(given).is_dir():
            raise ValueError(f"image folder {given}: no such folder")
        return str(given)
    roots = [Path(os.environ["BILEVEL_DATA"])] if os.environ.get("BILEVEL_DATA") else []
    roots.append(REPOSITORY.parent / "shared" / "data")
    for root in roots:
        if (root / "bsd" / name).is_dir():
            return os.path.relpath(root / "bsd" / name)
    return None


def add_image_arguments(p, n_train, n_test, size=64, test_size=96, sigma=0.1) -> None:
    """The options of a denoising experiment's image sets, read by :func:`image_sets`."""
    p.add_argument("--train-dir", default=None,
                   help="training PNGs (default: BSD400 if image_folder finds it, else skimage)")
    p.add_argument("--test-dir", default=None,
                   help="test PNGs (default: Set68 if image_folder finds it, else skimage)")
    p.add_argument("--n-train", type=int, default=n_train)
    p.add_argument("--size", type=int, default=size, help="training crop side")
    p.add_argument("--n-test", type=int, default=n_test)
    p.add_argument("--test-size", type=int, default=test_size, help="test crop side")
    p.add_argument("--sigma", type=float, default=sigma, help="noise level")


def image_sets(args):
    """(train, test, test names, sources) of :func:`add_image_arguments`' options: random
    training crops and centre test crops of the folders :func:`image_folder` finds, else
    scikit-image's images (``bilevel_problems.datasets.train_test_images``)."""
    from bilevel_problems import datasets

    return datasets.train_test_images(image_folder("train", args.train_dir),
                                      image_folder("Set68", args.test_dir), args.n_train,
                                      args.n_test, args.size, args.test_size, seed=args.seed)


# -------------------------------------------------------------- the command line
def parser(doc: str, threads=1) -> argparse.ArgumentParser:
    """The options every script and benchmark takes (see the module's docstring)."""
    p = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="a small run, seconds (what the tests run); a temporary --out")
    p.add_argument("--replot", action="store_true",
                   help="only redraw summaries and figures from the files of --out")
    p.add_argument("--no-plot", action="store_true", help="compute and summarise only")
    p.add_argument("--out", default=None, help="the run folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=threads,
                   help="torch threads" + ("" if threads is None else f" (default {threads})"))
    return p


def main(doc: str, name: str, compute: Callable, *, summarise=None, plot=None, argv=None,
         add_arguments=None, files=None, kind="scripts", meta_name="meta.json",
         threads=1) -> Path:
    """Parse the common options, then compute (or only redraw) a run folder.

    ``kind``: 'scripts' (default ``--out results/NAME``) or 'benchmarks'
    (``--out results/benchmarks``, shared: ``meta_name``, a file name or a function of
    the arguments, names the benchmark's own meta file).  ``files``: what each file
    of the folder holds, recorded in the meta file.  ``args.command`` is the command
    line that reproduces the run.
    """
    p = parser(doc, threads)
    if add_arguments is not None:
        add_arguments(p)
    args = p.parse_args(argv)
    args.command = command_line(argv, f"{kind}/{name}.py")
    if args.out is None:
        args.out = str(Path(tempfile.gettempdir()) / "bilevel-quick" / name) if args.quick \
            else ("results/benchmarks" if kind == "benchmarks" else f"results/{name}")
    folder = RunFolder(args.out, meta_name(args) if callable(meta_name) else meta_name)
    if args.replot:
        return redraw(folder, summarise, plot)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    record = dict(script=f"{kind}/{name}.py", command=args.command, quick=args.quick,
                  seed=args.seed)
    record.update(compute(args, folder.open()))
    if files:
        record["files"] = files
    folder.write_meta(dict(record, wall_time_s=round(time.perf_counter() - started, 2)))
    if summarise is not None:
        summarise(folder)
    if plot is not None and not args.no_plot:
        plot(folder)
    print(f"wrote {folder.path}")
    return folder.path


def redraw(folder: RunFolder, summarise=None, plot=None) -> Path:
    """``--replot``: summaries and figures from the folder's files, nothing computed."""
    if not (folder / folder.meta_name).is_file():
        raise SystemExit(f"--replot: {folder.path} holds no finished run (no "
                         f"{folder.meta_name})")
    for draw in (summarise, plot):
        if draw is not None:
            draw(folder)
    print(f"redrew {folder.path}")
    return folder.path
