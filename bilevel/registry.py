"""Problem registry: ``make_problem("name[k=v,...]")``, ``list_problems``, ``register_problem``.

The core knows no concrete problem.  Built-in problems are found through a lazy
name table of ``"module:attribute"`` strings, third-party packages through the
``bilevel.problems`` entry-point group (same string form); nothing is imported
until a problem is asked for.
"""
from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import inspect
import math
from collections.abc import Callable
from importlib import metadata
from typing import Any

import torch

# name -> "module:attribute"; the attribute is an ENTRY dict (factory,
# description, test_params) or a factory.
_BUILTIN = {
    "quadratic": "bilevel_problems.quadratic:ENTRY",
    "tv_denoising": "bilevel_problems.tv_denoising:ENTRY",
    "fields_of_experts": "bilevel_problems.fields_of_experts:ENTRY",
    "logistic_regression": "bilevel_problems.logistic_regression:ENTRY",
    "ridge_regularizer": "bilevel_problems.ridge_regularizer:ENTRY",
    "spline_regression": "bilevel_problems.spline_regression:ENTRY",
    "lipschitz_regression": "bilevel_problems.lipschitz_regression:ENTRY",
    "reconstruction": "bilevel_problems.reconstruction:ENTRY",
    "weakly_convex_ridge": "bilevel_problems.weakly_convex_ridge:ENTRY",
}


@dataclasses.dataclass(frozen=True)
class ProblemEntry:
    """A registered problem: its name, how to build it, and a small test configuration."""

    name: str
    factory: Callable[..., Any]
    description: str = ""
    test_params: dict = dataclasses.field(default_factory=dict)


_registered: dict[str, ProblemEntry] = {}
_lazy: dict[str, str] = {}


def register_problem(name: str, factory: Callable[..., Any], *, description: str = "",
                     test_params: dict | None = None, overwrite: bool = False,
                     replace: bool = False) -> ProblemEntry:
    """Register ``factory(**params) -> BilevelProblem`` under ``name``.

    ``test_params`` is a small, fast configuration; the conformance test runs
    :func:`bilevel.testing.check_problem` on every registered problem with it.
    A name already taken -- registered here, built in, or offered by an
    installed package's entry point, loaded or not -- is refused unless
    ``overwrite=True`` (or its alias ``replace=True``) says to replace it.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"problem names must be identifiers, got {name!r}")
    if not callable(factory):
        raise TypeError(f"register_problem({name!r}): factory must be callable")
    if test_params is not None and not isinstance(test_params, dict):
        raise TypeError(f"register_problem({name!r}): test_params must be a dict, got "
                        f"{type(test_params).__name__}")
    if not (overwrite or replace) and (name in _registered or name in _discover()):
        kind = "built in" if name in _BUILTIN else "already registered"
        raise ValueError(f"problem {name!r} is {kind}; pass replace=True (or overwrite=True) "
                         "to replace it")
    entry = ProblemEntry(name, factory, description, dict(test_params or {}))
    _registered[name] = entry
    return entry


def _discover():
    if not _lazy:
        _lazy.update(_BUILTIN)
        for ep in metadata.entry_points(group="bilevel.problems"):
            _lazy.setdefault(ep.name, ep.value)
    return _lazy


def _available():
    names = {name for name, target in _discover().items()
             if _module_exists(target.split(":")[0])}
    return sorted(names | set(_registered))


def _module_exists(module):
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def get_entry(name: str) -> ProblemEntry:
    """The registry entry of ``name``; ValueError listing the known names if unknown."""
    if name in _registered:
        return _registered[name]
    target = _discover().get(name)
    if target is None or not _module_exists(target.split(":")[0]):
        raise ValueError(f"unknown problem {name!r}; known problems: "
                         f"{', '.join(_available())}")
    module, _, attr = target.partition(":")
    obj = getattr(importlib.import_module(module), attr)
    if isinstance(obj, ProblemEntry):
        entry = obj
    elif isinstance(obj, dict):
        entry = ProblemEntry(name=name, **obj)
    else:
        entry = ProblemEntry(name=name, factory=obj)
    _registered[name] = entry
    return entry


def list_problems() -> list[str]:
    """Sorted names of every problem that can be made here."""
    return _available()


def parse_spec(spec: str) -> tuple[str, dict]:
    """Split ``"name[k=v,...]"`` into the name and a dict of Python literals.

    Values are read by :func:`ast.literal_eval` (numbers, strings, tuples, lists,
    True/False/None); a bare word is a string.  Commas inside brackets, braces,
    parentheses or quotes do not split, so ``theta0=(-3,-3)`` and
    ``size=(64,48)`` are single values.
    """
    if not isinstance(spec, str):
        raise TypeError(f"a problem spec is a string 'name[k=v,...]', got {type(spec).__name__}")
    spec = spec.strip()
    if "[" not in spec:
        _check_name(spec, spec)
        return spec, {}
    if not spec.endswith("]"):
        raise ValueError(f"bad problem spec {spec!r}: expected 'name[k=v,...]'")
    name, _, body = spec[:-1].partition("[")
    name = name.strip()
    _check_name(name, spec)
    params = {}
    for item in _split_top_level(body, spec):
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ValueError(f"bad parameter {item!r} in {spec!r}: expected k=v")
        if key in params:
            raise ValueError(f"parameter {key!r} given twice in {spec!r}")
        params[key] = _literal(raw.strip(), key, spec)
    return name, params


def _check_name(name, spec):
    if not name:
        raise ValueError(f"bad problem spec {spec!r}: no problem name (expected 'name[k=v,...]')")


_CLOSING = {")": "(", "]": "[", "}": "{"}


def _split_top_level(body, spec):
    """The comma-separated items of ``body``, ignoring commas nested in brackets or quotes."""
    items, stack, quote, start = [], [], None, 0
    for i, ch in enumerate(body):
        if quote:
            if ch == quote and body[i - 1] != "\\":
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            stack.append(ch)
        elif ch in _CLOSING:
            if not stack or stack.pop() != _CLOSING[ch]:
                raise ValueError(f"bad problem spec {spec!r}: unbalanced {ch!r}")
        elif ch == "," and not stack:
            items.append(body[start:i])
            start = i + 1
    if quote or stack:
        raise ValueError(f"bad problem spec {spec!r}: unclosed {quote or stack[-1]!r}")
    items.append(body[start:])
    return [item.strip() for item in items if item.strip()]


#: Non-finite floats, which literal_eval does not read; a problem then names its range.
_SPECIAL_FLOATS = {"nan": math.nan, "inf": math.inf, "+inf": math.inf, "-inf": -math.inf}


def _literal(raw, key, spec):
    """A Python literal, a special float, or ``raw`` itself as a bare string (a name, a path).

    Something that opens like a literal (a bracket or a quote) but does not parse
    is an error rather than a string: it was meant as a tuple or a string.
    """
    if not raw:
        raise ValueError(f"bad parameter {key!r} in {spec!r}: no value after '='")
    if raw.lower() in _SPECIAL_FLOATS:
        return _SPECIAL_FLOATS[raw.lower()]
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        if raw[0] in "([{'\"":
            raise ValueError(f"bad value {raw!r} for parameter {key!r} in {spec!r}: expected a "
                             "Python literal (number, 'string', tuple, list, True/False/None)"
                             ) from None
        return raw


def make_problem(spec: str, **params):
    """Build a registered problem: ``make_problem("quadratic", n=200)`` or
    ``make_problem("quadratic[n=200]")``; keyword arguments override the spec.

    A parameter the factory does not take is refused with the list of those it
    takes (before anything is built).
    """
    name, spec_params = parse_spec(spec)
    entry = get_entry(name)
    params = {**spec_params, **params}
    _check_parameters(entry, params)
    for key, convert in (("dtype", _dtype), ("device", _device)):
        if key in params:
            params[key] = convert(entry.name, params[key])
    return entry.factory(**params)


#: dtype names a spec may give (``quadratic[dtype=float32]``).
_DTYPES = {"float64": torch.float64, "double": torch.float64, "float32": torch.float32,
           "float": torch.float32, "float16": torch.float16, "half": torch.float16,
           "bfloat16": torch.bfloat16}


def _dtype(problem, value):
    """A torch dtype from a dtype or its name ('float32', 'torch.float64')."""
    if isinstance(value, torch.dtype):
        return value
    name = value.removeprefix("torch.") if isinstance(value, str) else None
    if name not in _DTYPES:
        raise ValueError(f"{problem}: dtype must be one of {', '.join(_DTYPES)}, got {value!r}")
    return _DTYPES[name]


def _device(problem, value):
    """A torch device from a device or its name ('cpu', 'cuda:0')."""
    try:
        return torch.device(value)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{problem}: device must be a torch device such as 'cpu' or 'cuda:0', "
                         f"got {value!r}") from None


def _check_parameters(entry, params):
    """ValueError naming an unknown parameter and the accepted ones, if the factory says."""
    try:
        signature = inspect.signature(entry.factory)
    except (TypeError, ValueError):  # a builtin or C factory: let it check for itself
        return
    accepted = [p.name for p in signature.parameters.values()
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
        return
    unknown = [key for key in params if key not in accepted]
    if unknown:
        raise ValueError(f"{entry.name}: unknown parameter{'s' if len(unknown) > 1 else ''} "
                         f"{', '.join(map(repr, unknown))}; accepted: {', '.join(accepted)}")
