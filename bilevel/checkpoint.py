"""Checkpoints of an outer run: state, warm starts and history, written atomically.

A checkpoint holds only tensors, numbers, strings and containers of them, so it
loads with ``torch.load(path, weights_only=True)``: no arbitrary pickles.  It is
written to a temporary file and renamed, so a run killed mid-write leaves the
previous checkpoint intact.

It also holds a fingerprint of the problem (name, class, theta shape and dtype,
a digest of each public data attribute) and the method's class and settings, so
that a run is never continued on another problem or with other settings:
:func:`load_checkpoint` refuses a mismatch with a one-line message saying what
differs.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import warnings
from pathlib import Path

import torch

from .outer.base import OuterState
from .outer.hoag import HOAG, HOAGState
from .outer.maid import MAID, FixedAccuracy, MAIDState
from .outer.minibatch import MinibatchMAID, MinibatchState
from .outer.torch_optim import TorchOptimizer, TorchOptimState

#: 2 added the problem fingerprint and the run options; 1 is still read (with a warning).
FORMAT = 2
_READABLE = (1, 2)
_METHODS = {cls.__name__: cls for cls in (MAID, FixedAccuracy, HOAG, TorchOptimizer,
                                          MinibatchMAID)}
_STATES = {cls.__name__: cls for cls in (OuterState, MAIDState, HOAGState, TorchOptimState,
                                         MinibatchState)}


class CorruptCheckpointError(ValueError):
    """A checkpoint that cannot be read back: truncated, foreign, or not plain data."""

    def __init__(self, path, what):
        super().__init__(f"corrupt checkpoint: {path}: {what}")


class CheckpointMismatchError(ValueError):
    """A checkpoint written for another problem or with another method."""


# --------------------------------------------------------------------- fingerprint
def problem_fingerprint(problem) -> dict:
    """What identifies ``problem`` as far as it is knowable from the object.

    Name, class, shape and dtype of theta, and a sketch of every public attribute
    that holds data (tensors, numbers, strings, containers of them, modules,
    dataclasses).  Private attributes are skipped: they hold caches (estimated
    constants, shapes) that a run fills in.
    """
    theta = problem.initial_theta()
    data = {}
    for name, value in sorted(vars(problem).items()):
        sketch = None if name.startswith("_") else _sketch(value)
        if sketch is not None:
            data[name] = sketch
    return dict(name=str(problem.name), cls=f"{type(problem).__module__}."
                f"{type(problem).__qualname__}", theta_shape=list(theta.shape),
                theta_dtype=str(theta.dtype), data=data)


def _sketch(value):
    """A small plain-data summary of ``value``, or None when it holds no data.

    Floating-point values are summarised by numbers that are compared with a
    tolerance, not hashed: data derived through BLAS/LAPACK differ in their last
    bits with the number of threads or the machine, and must still match.
    """
    if isinstance(value, torch.Tensor):
        return _tensor_sketch(value)
    if isinstance(value, float):
        return ["float", value]
    if value is None or isinstance(value, (bool, int, str, torch.dtype)):
        return ["exact", repr(value)]
    if isinstance(value, torch.nn.Module):
        value = dict(value.state_dict())
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):  # e.g. a data split
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        value = sorted(value.items(), key=lambda kv: repr(kv[0]))
    if isinstance(value, (list, tuple)):
        items = [_sketch(v) for v in value]
        return None if any(item is None for item in items) else ["list", items]
    return None  # a function, a process group, ...: not data


def _tensor_sketch(value):
    t = value.detach()
    t = (t.to_dense() if t.layout != torch.strided else t).cpu().reshape(-1)
    head = ["tensor", list(value.shape), str(value.dtype)]
    if t.is_complex():
        t = torch.view_as_real(t).reshape(-1)
    if not t.is_floating_point():  # integers and booleans: exact
        raw = t.contiguous().view(torch.uint8).numpy().tobytes()
        return head + [hashlib.sha256(raw).hexdigest()[:16], 0.0]
    x = t.double()
    weights = torch.arange(x.numel(), dtype=torch.float64).mul_(0.6180339887498949).frac_()
    stats = [float(x.abs().sum()), float(x.sum()), float(x.dot(weights))]
    return head + [stats, math.sqrt(torch.finfo(t.dtype).eps)]


def _matches(saved, current) -> bool:
    """Whether two sketches describe the same data (floats up to rounding)."""
    try:
        kind = saved[0]
        if kind != current[0]:
            return False
        if kind == "exact":
            return saved[1] == current[1]
        if kind == "float":
            return _near(saved[1], current[1], _RTOL * max(abs(saved[1]), abs(current[1])))
        if kind == "list":
            return len(saved[1]) == len(current[1]) and all(
                _matches(a, b) for a, b in zip(saved[1], current[1], strict=True))
        if saved[1:3] != current[1:3] or isinstance(saved[3], str):
            return saved[1:4] == current[1:4]
        scale = saved[4] * max(abs(saved[3][0]), abs(current[3][0]))
        return all(_near(a, b, scale) for a, b in zip(saved[3], current[3], strict=True))
    except (TypeError, IndexError, KeyError, ValueError):
        return False  # a malformed sketch matches nothing


_RTOL = math.sqrt(torch.finfo(torch.float64).eps)


def _near(a, b, tol) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b)) or abs(a - b) <= tol


def _problem_differences(saved: dict, current: dict) -> list[str]:
    out = [f"{key} {saved.get(key)!r} vs {current[key]!r}"
           for key in ("name", "cls", "theta_shape", "theta_dtype")
           if saved.get(key) != current[key]]
    old, new = saved.get("data") or {}, current["data"]
    changed = sorted(k for k in set(old) | set(new)
                     if k not in old or k not in new or not _matches(old[k], new[k]))
    if changed:
        out.append(f"data differ in {', '.join(changed)}")
    return out


def method_differences(saved_method: str, saved_settings: dict, method) -> list[str]:
    """What differs between a checkpoint's method and ``method`` (empty if nothing)."""
    if type(method).__name__ != saved_method:
        return [f"method {saved_method} vs {type(method).__name__}"]
    current = dataclasses.asdict(method)
    # A setting added after the checkpoint was written reads as its default there.
    saved = {**{f.name: f.default for f in dataclasses.fields(method)
                if f.name not in saved_settings and f.default is not dataclasses.MISSING},
             **saved_settings}
    return [f"{key}={saved.get(key)!r} vs {current.get(key)!r}"
            for key in sorted(set(saved) | set(current))
            if not _same(saved.get(key), current.get(key))]


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


# ------------------------------------------------------------------------- write
def _state_fields(state):
    fields = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
    if isinstance(state, TorchOptimState):
        fields["optimizer"] = state.optimizer.state_dict()
        fields["parameter"] = None
    return fields


def save_checkpoint(path, method, state, history, extra: dict | None = None, *,
                    problem: dict | None = None, run: dict | None = None) -> Path:
    """Write ``method`` settings, ``state`` and ``history`` to ``path`` atomically.

    ``problem`` is :func:`problem_fingerprint` of the problem (computed once per
    run by the caller: it hashes the problem's data); ``run`` the run options
    (``max_iter``, ``max_cost``), kept for the record: a resumed run may grow them.
    """
    path = Path(path)
    payload = dict(format=FORMAT, method=type(method).__name__,
                   settings=dataclasses.asdict(method), state_type=type(state).__name__,
                   state=_state_fields(state), history=list(history), extra=dict(extra or {}),
                   problem=problem, run=dict(run or {}))
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def rank_path(path, problem) -> Path:
    """This process's checkpoint file: ``path`` itself in one process; in a data-parallel
    run ``STEM.rank{r}of{w}SUFFIX`` beside it, since each rank's state holds the warm
    starts of its own samples (theta and the history are the same on every rank)."""
    path = Path(path)
    parallel = getattr(problem, "parallel", None)
    if parallel is None or not parallel.active:
        return path
    rank, world = parallel.rank_and_world()
    return path.with_name(f"{path.stem}.rank{rank}of{world}{path.suffix}")


def rank_file(path, problem) -> Path:
    """:func:`rank_path` of a checkpoint to read; in a data-parallel run every rank refuses
    alike when any rank's file is missing (so that none waits for the others)."""
    mine = rank_path(path, problem)
    parallel = getattr(problem, "parallel", None)
    if mine == Path(path) and not mine.is_file():
        ranks = sorted(mine.parent.glob(f"{mine.stem}.rank*of*{mine.suffix}"))
        if ranks:
            raise FileNotFoundError(f"no checkpoint at {mine}: the run was written by "
                                    f"data-parallel ranks ({ranks[0].name}, ...); resume it "
                                    "with as many ranks (bilevel.distributed)")
    if parallel is not None and parallel.active:
        here = torch.tensor(0.0 if mine.is_file() else 1.0, dtype=torch.float64)
        if float(parallel.max(here)):
            world = parallel.rank_and_world()[1]
            raise FileNotFoundError(f"no checkpoint of each of {world} ranks beside {path} "
                                    f"(such as {mine.name}); one written by another number "
                                    "of ranks holds other samples' warm starts")
    return mine


def fail_together(problem, path, failed: bool) -> None:
    """In a data-parallel resume, refuse on every rank where any rank ``failed`` to load its
    checkpoint (a corrupt file, other settings): a rank that went on would wait for the
    others forever.  The rank that failed raises its own error after this call."""
    parallel = getattr(problem, "parallel", None)
    if parallel is None or not parallel.active:
        return
    anyone = float(parallel.max(torch.tensor(float(failed), dtype=torch.float64)))
    if anyone and not failed:
        raise CheckpointMismatchError(f"another rank could not resume from its checkpoint "
                                      f"beside {path} (that rank's error says why)")


def check_ranks_agree(problem, path, history) -> None:
    """Refuse, on every rank alike, a data-parallel resume whose ranks' checkpoints were
    written at different iterations (a run stopped while its ranks were writing)."""
    parallel = getattr(problem, "parallel", None)
    if parallel is None or not parallel.active:
        return
    n = len(history)
    most, least = (int(v) for v in parallel.max(torch.tensor([n, -n], dtype=torch.float64)))
    if most != -least:
        raise CheckpointMismatchError(f"checkpoints beside {path} hold {-least} to {most} "
                                      "iterations across the ranks: the run stopped while "
                                      "they were being written; resume from a copy taken "
                                      "at one iteration or start again")


# -------------------------------------------------------------------------- read
def load_checkpoint(path, problem=None, *, method=None):
    """Read a checkpoint: ``(method, state, history, extra)``.

    With ``problem``, refuse (:class:`CheckpointMismatchError`) a checkpoint
    written for another problem; with ``method`` (a settings object), one written
    by another method or settings.  ``problem`` is also needed to rebuild a
    torch.optim optimizer's state.  A checkpoint that cannot be read is a
    :class:`CorruptCheckpointError` ("corrupt checkpoint: PATH: what").
    A checkpoint of format 1 (no fingerprint) loads with a warning.
    """
    payload = _read(path)
    if problem is not None:
        _check_problem(path, payload, problem)
    if method is not None:
        differences = method_differences(payload["method"], payload["settings"], method)
        if differences:
            raise CheckpointMismatchError(f"checkpoint {path} was written with other method "
                                          f"settings: {'; '.join(differences)} (saved vs asked)")
    if payload["state_type"] == TorchOptimState.__name__ and problem is None:
        raise ValueError("load_checkpoint: a torch.optim run needs the problem to resume")
    try:
        return _rebuild(payload, problem)
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
        raise CorruptCheckpointError(path, f"cannot rebuild the run ({_one_line(exc)})") from None


def _read(path) -> dict:
    """The payload of ``path``, checked for the keys every checkpoint holds."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    # A checkpoint written on a GPU still loads on a machine without one.
    location = None if torch.cuda.is_available() else "cpu"
    try:
        payload = torch.load(path, weights_only=True, map_location=location)
    except Exception as exc:  # torch raises EOFError, UnpicklingError, RuntimeError...
        raise CorruptCheckpointError(path, f"not a readable plain-data torch file "
                                           f"({_one_line(exc)})") from None
    if not isinstance(payload, dict):
        raise CorruptCheckpointError(path, f"holds a {type(payload).__name__}, not a dict")
    if payload.get("format") not in _READABLE:
        raise CorruptCheckpointError(path, f"unknown format {payload.get('format')!r} "
                                           f"(this version reads {_READABLE})")
    missing = [k for k in ("method", "settings", "state_type", "state", "history", "extra")
               if k not in payload]
    if missing:
        raise CorruptCheckpointError(path, f"missing {', '.join(missing)}")
    if payload["method"] not in _METHODS or payload["state_type"] not in _STATES:
        raise CorruptCheckpointError(path, f"unknown method {payload['method']!r} or state "
                                           f"{payload['state_type']!r}")
    if not isinstance(payload["settings"], dict) or not isinstance(payload["state"], dict):
        raise CorruptCheckpointError(path, "settings and state must be dicts")
    if not (isinstance(payload["history"], list)
            and all(isinstance(row, dict) for row in payload["history"])):
        raise CorruptCheckpointError(path, "history must be a list of rows (dicts)")
    if not isinstance(payload["state"].get("theta"), torch.Tensor):
        raise CorruptCheckpointError(path, "the state holds no theta tensor")
    return payload


def _check_problem(path, payload, problem) -> None:
    saved = payload.get("problem")
    if saved is None:
        warnings.warn(f"checkpoint {path} has no fingerprint of its problem (written by an "
                      "older version, or without problem=): cannot check that it belongs to "
                      "this problem", stacklevel=3)
        return
    if not isinstance(saved, dict):
        raise CorruptCheckpointError(path, "the problem fingerprint is not a dict")
    differences = _problem_differences(saved, problem_fingerprint(problem))
    if differences:
        raise CheckpointMismatchError(f"checkpoint {path} belongs to another problem: "
                                      f"{'; '.join(differences)} (saved vs given)")


def _rebuild(payload, problem):
    method = _METHODS[payload["method"]](**payload["settings"])
    fields = dict(payload["state"])
    state_cls = _STATES[payload["state_type"]]
    if state_cls is TorchOptimState:
        fresh = method.init_state(problem, fields["theta"])
        fresh.optimizer.load_state_dict(fields.pop("optimizer"))
        fields.update(optimizer=fresh.optimizer, parameter=fresh.parameter)
    if isinstance(fields.get("previous"), list):
        fields["previous"] = tuple(fields["previous"])
    return method, state_cls(**fields), payload["history"], payload["extra"]


def _one_line(exc) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
