"""Command line: ``python -m bilevel list | run NAME | plot RUN_DIR``.

A mistake in what was asked (a spec, a flag, a run folder) is one line on stderr,
``error: ...``, exit status 2, before anything is computed.  A run interrupted by
Ctrl-C or SIGTERM writes what it has (history, theta, a checkpoint, meta.json with
status 'interrupted') and exits with status 130; ``--resume`` continues it.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shutil
import sys
import warnings
from pathlib import Path

from . import registry
from .experiment import parse_settings
from .interrupts import signals_ignored, sigterm_interrupts

#: Exit status of a run ended by Ctrl-C or SIGTERM (the shell's 128 + SIGINT).
INTERRUPTED = 130


# ------------------------------------------------------------------- arguments
def _count(text):
    """argparse type: an integer >= 0."""
    value = int(text)
    if value < 0:
        raise ValueError(text)
    return value


_count.__name__ = "integer >= 0"  # argparse names the type in its message


def _budget(text):
    """argparse type: a finite number > 0."""
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(text)
    return value


_budget.__name__ = "finite number > 0"


# ---------------------------------------------------------------- the run plan
@dataclasses.dataclass
class _Plan:
    """What a ``run`` will do, settled (and checked) before anything is computed."""

    spec: str
    method_name: str
    settings: dict
    method: object
    max_iter: int
    max_cost: float | None
    max_time: float | None
    out: Path | None
    source: Path | None = None  # the checkpoint a resumed run continues
    new_folder: bool = True  # out is a new run folder, not the resumed one
    writer: bool = True  # writes the folder: rank 0 of a data-parallel run

    @property
    def meta(self) -> dict:
        meta = dict(problem=self.spec, method=self.method_name, max_iter=self.max_iter,
                    max_cost=self.max_cost, max_time=self.max_time, settings=self.settings)
        if self.source is not None and self.new_folder:
            meta["resumed_from"] = str(self.source.parent)
        return meta


def _fresh_plan(args) -> _Plan:
    from .outer import make_method

    if args.problem is None:
        raise ValueError("run needs a problem name (or --resume RUN_DIR)")
    settings = parse_settings(args.set)
    if args.tol is not None:
        settings["tol"] = args.tol
    method_name = args.method or "maid"
    method = make_method(method_name, **settings)  # names a bad setting now, not after a run
    return _Plan(args.problem, method_name, settings, method,
                 100 if args.max_iter is None else args.max_iter, args.max_cost,
                 args.max_time, _check_out(args.out, args.overwrite))


def _resume_plan(args) -> _Plan:
    """Continue RUN_DIR: its problem, method and settings; a budget may grow."""
    from .checkpoint import method_differences
    from .outer import make_method
    from .results import load_meta

    run_dir = Path(args.resume)
    if not run_dir.is_dir():
        raise ValueError(f"--resume {run_dir}: no such folder")
    meta = load_meta(run_dir, required=("problem", "method", "settings", "max_iter",
                                        "max_cost"))
    source = run_dir / "checkpoint.pt"
    if not source.is_file() and not any(run_dir.glob("checkpoint.rank*of*.pt")):
        raise ValueError(f"--resume {run_dir}: no checkpoint.pt there (a run written without "
                         "--checkpoint-every) and no data-parallel ranks' checkpoints")
    _check_saved_run(run_dir, meta)
    spec, method_name, settings = meta["problem"], meta["method"], dict(meta["settings"])
    if args.problem is not None and registry.parse_spec(args.problem) != \
            registry.parse_spec(spec):
        raise ValueError(f"--resume {run_dir}: the run solves {spec!r}, not {args.problem!r}; "
                         "start a new run (another --out) to solve another problem")
    if args.method is not None and args.method != method_name:
        raise ValueError(f"--resume {run_dir}: the run uses --method {method_name}, not "
                         f"{args.method}; start a new run to use another method")
    method = make_method(method_name, **settings)
    asked = dict(parse_settings(args.set), **({} if args.tol is None else {"tol": args.tol}))
    changed = method_differences(type(method).__name__, dataclasses.asdict(method),
                                 make_method(method_name, **{**settings, **asked}))
    if changed:
        raise ValueError(f"--resume {run_dir}: a resumed run keeps its settings "
                         f"({'; '.join(changed)}; saved vs asked); start a new run to "
                         "change them")
    in_place = args.out is None or Path(args.out).resolve() == run_dir.resolve()
    return _Plan(spec, method_name, settings, method,
                 meta["max_iter"] if args.max_iter is None else args.max_iter,
                 meta["max_cost"] if args.max_cost is None else args.max_cost,
                 meta.get("max_time") if args.max_time is None else args.max_time,
                 run_dir if in_place else _check_out(args.out, args.overwrite),
                 source=source, new_folder=not in_place)


def _check_saved_run(run_dir, meta) -> None:
    """The fields of meta.json that a resumed run reads, checked for their types."""
    from .results import CorruptRunError

    number = (int, float)
    checks = (("problem", isinstance(meta["problem"], str)),
              ("method", isinstance(meta["method"], str)),
              ("settings", isinstance(meta["settings"], dict)),
              ("max_iter", isinstance(meta["max_iter"], int) and meta["max_iter"] >= 0),
              ("max_cost", meta["max_cost"] is None or isinstance(meta["max_cost"], number)),
              ("max_time", meta.get("max_time") is None
               or isinstance(meta.get("max_time"), number)))
    for key, ok in checks:
        if not ok:
            raise CorruptRunError(run_dir / "meta.json", f"{key}={meta.get(key)!r} is not valid")


def _check_out(out, overwrite) -> Path | None:
    """The run folder ``out``, refused now if it cannot be written or holds a run."""
    from .results import RUN_FILES

    if out is None:
        if overwrite:
            raise ValueError("--overwrite needs --out DIR")
        return None
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {out}: exists and is not a folder")
    ancestor = path.absolute()
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(f"--out {out}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out}: cannot write in {ancestor} (permission denied)")
    held = [name for name in RUN_FILES if (path / name).exists()]
    if held and not overwrite:
        raise ValueError(f"--out {out}: already holds a run ({', '.join(held)}); pass "
                         f"--overwrite to replace it, or --resume {out} to continue it")
    return path


def _open_out(plan: _Plan, problem) -> Path | None:
    """Create the run folder, mark it 'running'; the checkpoint the run writes there (in a
    data-parallel run each rank its own, :func:`bilevel.checkpoint.rank_path`)."""
    import torch

    from .checkpoint import rank_path
    from .results import RUN_FILES, write_meta

    if plan.out is None:
        return None
    checkpoint = plan.out / "checkpoint.pt"
    if plan.writer:
        plan.out.mkdir(parents=True, exist_ok=True)
        if plan.new_folder:  # --overwrite was checked: the old run's files must not linger
            for path in [plan.out / name for name in RUN_FILES] + \
                    list(plan.out.glob("checkpoint.rank*of*.pt")):
                path.unlink(missing_ok=True)
        write_meta(plan.out, dict(plan.meta, status="running"))
    problem.parallel.sum(torch.zeros(1))  # every rank waits until the folder is ready
    if plan.new_folder and plan.source is not None:  # resumed elsewhere: starts as a copy
        shutil.copyfile(rank_path(plan.source, problem), rank_path(checkpoint, problem))
    return checkpoint


# ---------------------------------------------------------------------- run
def cmd_list(args):
    for name in registry.list_problems():
        try:
            description = registry.get_entry(name).description
        except Exception as exc:  # a broken third-party entry must not hide the others
            description = f"(cannot load: {exc})"
        print(f"{name:24s} {description}")


def cmd_run(args):
    if args.checkpoint_every and not args.out and not args.resume:
        raise ValueError("--checkpoint-every needs --out DIR (the checkpoint lives there)")
    plan = _resume_plan(args) if args.resume else _fresh_plan(args)
    rank = 0
    if args.distributed:
        from . import distributed

        rank, _ = distributed.init()
        problem = distributed.data_parallel(plan.spec)
        args.quiet = args.quiet or rank != 0  # one progress bar, one summary
    else:
        problem = registry.make_problem(plan.spec)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if plan.source is not None:  # refuse another problem before touching a file
                from .checkpoint import load_checkpoint, rank_file
                load_checkpoint(rank_file(plan.source, problem), problem, method=plan.method)
            plan.writer = rank == 0  # rank 0 writes the run folder, each rank its checkpoint
            result = _execute(args, plan, problem)
        if result is None:
            return INTERRUPTED
        if rank == 0:  # every rank holds the same theta and history; rank 0 reports them
            return _report(args, plan, problem, result, caught)
        return 0
    finally:
        if args.distributed:
            distributed.finish()


def _execute(args, plan: _Plan, problem):
    """Solve or resume; the result, or None if interrupted before an iteration ended.

    meta.json never stays 'running': an error or an interrupt rewrites it.
    """
    from .outer import resume, solve

    common = dict(max_iter=plan.max_iter, max_cost=plan.max_cost, max_time=plan.max_time,
                  progress=not args.quiet,
                  checkpoint_every=args.checkpoint_every)
    try:
        checkpoint = _open_out(plan, problem)
        with sigterm_interrupts():
            if plan.source is not None:
                return resume(problem, checkpoint, method=plan.method, **common)
            # The object already holds the settings.
            return solve(problem, plan.method, checkpoint_path=checkpoint, **common)
    except KeyboardInterrupt:
        what = "interrupted before the first iteration ended: nothing to save"
        print(f"\n{what}", file=sys.stderr)
        _mark(plan, "interrupted", what)
        return None
    except BaseException as exc:
        _mark(plan, "failed", f"{type(exc).__name__}: {exc}")
        raise


def _mark(plan: _Plan, status, message) -> None:
    """Record in meta.json how a run ended that left no result to save."""
    if plan.writer and plan.out is not None and (plan.out / "meta.json").exists():
        from .results import write_meta
        write_meta(plan.out, dict(plan.meta, status=status, message=message))


def _report(args, plan: _Plan, problem, result, caught):
    from .results import save_run

    last = result.history[-1] if result.history else {}
    print(f"\n{problem.name} / {plan.method_name}: {result.status} - {result.message}")
    if last:
        print(f"  iterations {len(result.history)}, upper loss {last['upper_value']:.6g}, "
              f"||z|| {last['grad_norm']:.3e}, bound {last['error_bound']:.3e} "
              f"({'certified' if last['certified'] else 'estimated'}), eps {last['eps']:.2e}")
        print(f"  cost: {last['lower_iterations']} lower-level + {last['cg_iterations']} CG "
              f"iterations, {last['oracle_calls']} oracle calls, {last['time']:.2f} s")
    theta = result.theta.detach().cpu()
    shown = ", ".join(f"{v:.4g}" for v in theta[:8].tolist())
    print(f"  theta ({theta.numel()}): [{shown}{', ...' if theta.numel() > 8 else ''}]")
    messages = list(dict.fromkeys(str(w.message) for w in caught))  # each one once
    for message in messages:
        print(f"  warning: {message}", file=sys.stderr)
    if plan.out is not None:
        with signals_ignored():
            out = save_run(plan.out, result, plan.meta, warnings=messages)
        print(f"  wrote {out}/data.csv, meta.json, theta.json")
        if result.status == "interrupted":
            ranks = problem.parallel.rank_and_world()[1]
            launch = (f"torchrun --nproc-per-node {ranks} -m bilevel run --distributed"
                      if ranks > 1 else "python -m bilevel run")
            print(f"  continue with: {launch} --resume {out}")
    if result.status == "interrupted":
        return INTERRUPTED
    return 0 if result.status in ("converged", "max_iter", "max_cost", "max_time",
                                  "callback") else 1


def cmd_plot(args):
    from .results import plot_run

    print(f"wrote {plot_run(args.run_dir, args.output)}")


# ---------------------------------------------------------------------- main
def _parser():
    parser = argparse.ArgumentParser(prog="python -m bilevel",
                                     description="Bilevel hyperparameter learning (MAID).")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list registered problems").set_defaults(func=cmd_list)
    run = sub.add_parser("run", help="solve a registered problem")
    run.add_argument("problem", nargs="?", help="problem name, optionally 'name[k=v,...]'")
    run.add_argument("--method", default=None,
                     help="maid (default), fixed, hoag_geometric, hoag_quadratic, hoag_cubic, "
                          "adam, sgd")
    run.add_argument("--max-iter", type=_count, default=None,
                     help="outer iterations (default 100; with --resume, the run's own)")
    run.add_argument("--max-cost", type=_budget, default=None,
                     help="budget of lower-level + CG iterations")
    run.add_argument("--max-time", type=_budget, default=None,
                     help="wall-time budget in seconds (both budgets hold inside an iteration)")
    run.add_argument("--tol", type=float, default=None, help="stop when ||z|| + omega <= tol")
    run.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="a method setting, e.g. --set eps0=1e-3 (repeatable)")
    run.add_argument("--out", default=None,
                     help="write a run folder here (with a checkpoint.pt for --resume)")
    run.add_argument("--overwrite", action="store_true",
                     help="replace the run that --out already holds")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument("--checkpoint-every", type=_count, default=0, metavar="K",
                     help="also write OUT/checkpoint.pt every K iterations (atomically; "
                          "--distributed: OUT/checkpoint.rank{r}of{N}.pt, one per rank)")
    run.add_argument("--distributed", action="store_true",
                     help="data-parallel over the processes of torchrun (gloo on CPU, "
                          "nccl on GPU): torchrun --nproc-per-node N -m bilevel run ...")
    run.add_argument("--resume", metavar="RUN_DIR", default=None,
                     help="continue the run of RUN_DIR (its problem, method and settings; "
                          "--max-iter / --max-cost may extend it; --out writes a copy)")
    run.set_defaults(func=cmd_run)
    plot = sub.add_parser("plot", help="draw the curves of a run folder")
    plot.add_argument("run_dir")
    plot.add_argument("--output", default=None)
    plot.set_defaults(func=cmd_plot)
    return parser


def main(argv=None):
    args = _parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except (ValueError, TypeError) as exc:  # what was asked is wrong: say what, one line
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file that cannot be read or written
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return INTERRUPTED


def _one_line(exc) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
