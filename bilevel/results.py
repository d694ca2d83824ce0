"""Run folders: the one writer (and reader) of what a run leaves on disk.

``python -m bilevel run --out``, every script and every benchmark write through
:class:`RunFolder`: each file atomically (a temporary file, then a rename), with
no absolute machine path in it, and ``meta.json`` (settings, machine, commit)
last, as the mark of a complete folder.  ``save_run`` / ``load_run`` are a
:class:`~bilevel.SolveResult`'s folder: history rows -> ``data.csv``, settings ->
``meta.json``, theta -> ``theta.json``.
"""
from __future__ import annotations

import csv
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def relative(arg: str) -> str:
    """``arg`` made relative to the working directory if it is an absolute path.

    Run folders are committed: an absolute path names one machine's layout.
    """
    text = str(arg)
    if os.path.isabs(text) and len(Path(text).parts) > 1 and not any(c.isspace() for c in text):
        return os.path.relpath(text)
    return text


def command_line(argv=None, script=None) -> str:
    """The command that reproduces this run, its paths relative: ``python SCRIPT ARGS``."""
    argv = sys.argv if argv is None else [script or sys.argv[0], *argv]
    return " ".join(["python", *(relative(a) for a in argv)])


def environment(command=None) -> dict:
    """Versions, machine and git commit (``git_changes``: whether tracked files differed
    from it), for meta.json; ``command`` (default: this process's command line) with its
    paths relative."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=here, timeout=5).stdout.strip()
        # tracked files changed since that commit: the numbers are not the commit's alone
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                 capture_output=True, text=True, cwd=here,
                                 timeout=5).stdout.strip() != ""
    except (OSError, subprocess.SubprocessError):
        commit, changed = "", None
    return dict(python=platform.python_version(), torch=torch.__version__,
                machine=platform.machine(), processor=platform.processor() or platform.machine(),
                cpu=_cpu_name(), platform=platform.platform(),
                cpus=os.cpu_count(), torch_threads=torch.get_num_threads(),
                cuda=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                git_commit=commit or None, git_changes=changed if commit else None,
                command=command or " ".join(relative(a) for a in sys.argv))


class CorruptRunError(ValueError):
    """A run folder whose files are missing, empty, truncated or not what they should be."""

    def __init__(self, path, what):
        super().__init__(f"corrupt run folder: {path}: {what}")


def write_csv(path, rows) -> None:
    """Write dict rows to CSV with the union of their keys as columns (first-seen order).

    Atomically (a temporary file, then a rename): a run killed mid-write leaves the
    previous file whole, never a truncated one.
    """
    path = Path(path)
    columns = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _portable(value):
    """``value`` for JSON with every absolute path (a Path, or a path string) made relative."""
    if isinstance(value, dict):
        return {k: _portable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_portable(v) for v in value]
    if isinstance(value, Path):
        return relative(str(value))
    if isinstance(value, str):
        return relative(value)
    return value


class RunFolder:
    """The folder one run writes: data files, summaries, figures and ``meta.json``.

    Parameters
    ----------
    path : str or Path
    meta_name : str
        The file of settings and environment written last (``meta.json``; a
        benchmark that shares its folder with others names its own).
    portable : bool
        Make absolute paths in JSON relative to the working directory (results that
        are committed); ``python -m bilevel run`` keeps the paths its user gave.
    """

    def __init__(self, path, meta_name="meta.json", portable=True):
        self.path = Path(path)
        self.meta_name = meta_name
        self.portable = portable

    def __truediv__(self, name) -> Path:
        return self.path / name

    def open(self) -> RunFolder:
        """Create the folder and drop a previous run's meta file: the folder is complete
        again only when this run writes its own."""
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / self.meta_name).unlink(missing_ok=True)
        return self

    def write_rows(self, name, rows) -> Path:
        write_csv(self.path / name, rows)
        return self.path / name

    def write_json(self, name, value) -> Path:
        value = _portable(value) if self.portable else value
        _atomic_write_text(self.path / name, json.dumps(value, indent=2, default=str) + "\n")
        return self.path / name

    def write_text(self, name, text) -> Path:
        _atomic_write_text(self.path / name, text)
        return self.path / name

    def write_report(self, stem, title, data: dict, text: str) -> dict:
        """STEM.json (``data`` with the environment) and STEM.md (``title``, the command
        and machine, then ``text``): a one-file benchmark's output.  Returns the
        environment."""
        self.path.mkdir(parents=True, exist_ok=True)
        env = environment(command_line())
        self.write_json(f"{stem}.json", dict(environment=env, **data))
        self.write_text(f"{stem}.md", f"# {title}\n\n`{env['command']}` ({env['cpu']}, torch "
                                      f"{env['torch']}, one thread)\n\n{text}\n")
        return env

    def write_arrays(self, name, **arrays) -> Path:
        """Arrays (tensors too) as one ``.npz`` file: what a figure shows, for ``--replot``."""
        import numpy as np

        tmp = self.path / (name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **{k: np.asarray(v) for k, v in arrays.items()})
        os.replace(tmp, self.path / name)
        return self.path / name

    def write_meta(self, meta: dict) -> Path:
        """Write the meta file with the environment added: the folder is complete."""
        return self.write_json(self.meta_name,
                               dict(meta, environment=environment(meta.get("command"))))

    def read_rows(self, name="data.csv") -> list[dict]:
        """The rows of a CSV file of the folder, numbers parsed (CorruptRunError if empty)."""
        return _load_rows(self.path / name)

    def read_json(self, name, why_missing=""):
        """A JSON file of the folder; CorruptRunError if it is missing or unreadable."""
        path = self.path / name
        if not path.is_file():
            raise CorruptRunError(self.path, f"no {name}{why_missing}")
        try:
            return json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise CorruptRunError(path, f"not valid JSON ({exc})") from None

    def read_meta(self, required=()) -> dict:
        """The meta file; CorruptRunError if it is missing, unreadable, not an object, or
        lacks one of the ``required`` keys."""
        meta = self.read_json(self.meta_name, " (not a run folder, or an unfinished one)")
        path = self.path / self.meta_name
        if not isinstance(meta, dict):
            raise CorruptRunError(path, f"holds a JSON {type(meta).__name__}, not an object")
        missing = [key for key in required if key not in meta]
        if missing:
            raise CorruptRunError(path, f"missing {', '.join(missing)}")
        return meta


#: The files of a run folder (meta.json is written last: it marks the folder complete).
RUN_FILES = ("data.csv", "theta.json", "meta.json", "checkpoint.pt", "curves.png")


def save_run(out_dir, result, meta: dict, warnings=()) -> Path:
    """Write ``data.csv``, ``theta.json`` and ``meta.json`` of a SolveResult into ``out_dir``.

    ``warnings``: the messages the run raised, recorded in meta.json.  A ``problem``
    entry of ``meta`` (the spec, ``"tv_denoising[...]"``, as ``python -m bilevel run
    --out`` writes it) makes the folder a model for :func:`bilevel.load`.
    """
    folder = RunFolder(out_dir, portable=False)
    folder.path.mkdir(parents=True, exist_ok=True)
    folder.write_rows("data.csv", result.history)
    folder.write_text("theta.json", json.dumps(result.theta.detach().cpu().tolist()))
    folder.write_meta(dict(meta, status=result.status, message=result.message,
                           iterations=len(result.history), warnings=list(warnings)))
    return folder.path


def write_meta(out_dir, meta: dict) -> None:
    """Write ``meta.json`` of a run folder atomically (as it stands: no environment added)."""
    RunFolder(out_dir, portable=False).write_json("meta.json", meta)


def load_meta(run_dir, required=()) -> dict:
    """The ``meta.json`` of a run folder (:meth:`RunFolder.read_meta`)."""
    return RunFolder(run_dir).read_meta(required)


def load_run(run_dir) -> tuple[list, dict, torch.Tensor]:
    """(history rows with numbers parsed, meta, theta) of a run folder.

    A missing, empty or truncated file is a :class:`CorruptRunError` naming it.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no run folder at {run_dir}")
    folder = RunFolder(run_dir)
    rows, meta = folder.read_rows("data.csv"), folder.read_meta()
    try:
        theta = torch.tensor(folder.read_json("theta.json"), dtype=torch.float64)
    except (TypeError, RuntimeError) as exc:
        raise CorruptRunError(run_dir / "theta.json",
                              f"not a JSON list of numbers ({exc})") from None
    return rows, meta, theta


def _load_rows(path: Path) -> list[dict]:
    if not path.is_file():
        raise CorruptRunError(path.parent, f"no {path.name}")
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            raw = list(reader)
            columns = reader.fieldnames
    except (csv.Error, UnicodeDecodeError) as exc:
        raise CorruptRunError(path, f"not a CSV file ({exc})") from None
    if not columns or not raw:
        raise CorruptRunError(path, "holds no rows (an empty run, or a truncated file)")
    for number, row in enumerate(raw, start=2):  # line numbers, the header being line 1
        if None in row or None in row.values():  # DictReader's marks of a ragged line
            raise CorruptRunError(path, f"line {number} does not have the {len(columns)} "
                                        "fields of the header (truncated?)")
    return [{k: _parse(v) for k, v in row.items()} for row in raw]


def _parse(value):
    if value in ("True", "False"):
        return value == "True"
    try:
        return float(value)
    except ValueError:
        return value


#: Columns plot_run draws, all numbers.
_PLOTTED = ("iteration", "cost", "upper_value", "grad_norm", "error_bound", "eps", "step")


def _check_plottable(rows, path) -> None:
    for number, row in enumerate(rows, start=2):
        for column in _PLOTTED:
            value = row.get(column)
            if not isinstance(value, float):
                what = "missing" if column not in row else f"not a number ({value!r})"
                raise CorruptRunError(path, f"line {number}: column {column!r} is {what}")


def plot_run(run_dir, path=None):
    """Draw upper loss, ||z||, accuracy and step of a run against cost; returns the PNG path."""
    # A Figure without pyplot: no global backend is chosen for the caller.
    from matplotlib.figure import Figure

    rows, meta, _ = load_run(run_dir)
    _check_plottable(rows, Path(run_dir) / "data.csv")
    cost = [r["cost"] for r in rows]
    fig = Figure(figsize=(13, 3.6))
    axes = fig.subplots(1, 3)
    axes[0].plot(cost, [r["upper_value"] for r in rows])
    axes[0].set(xlabel="lower-level + CG iterations", ylabel="upper loss g(x~)", yscale="log")
    axes[1].plot(cost, [r["grad_norm"] for r in rows], label="||z||")
    axes[1].plot(cost, [r["error_bound"] for r in rows], label="omega (bound)")
    axes[1].set(xlabel="lower-level + CG iterations", yscale="log")
    axes[1].legend()
    iters = [r["iteration"] for r in rows]
    axes[2].plot(iters, [r["eps"] for r in rows], label="eps")
    axes[2].plot(iters, [max(r["step"], 1e-300) for r in rows], label="step")
    axes[2].set(xlabel="outer iteration", yscale="log")
    axes[2].legend()
    fig.suptitle(f"{meta.get('problem', '')} - {meta.get('method', '')} ({meta.get('status', '')})")
    fig.tight_layout()
    path = Path(run_dir) / "curves.png" if path is None else Path(path)
    fig.savefig(path, dpi=120)
    return path
