"""Checks of the parameters the built-in problems are built from.

A value from the command line arrives as a Python literal or a bare string
(``quadratic[n=abc]`` gives ``n='abc'``), so a constructor cannot trust its
types.  Each check returns the value converted, or raises a one-line
``ValueError`` naming the problem, the parameter, the accepted range and the
value given -- instead of a comparison of ``str`` with ``int`` or a negative
tensor dimension deep inside torch.
"""
from __future__ import annotations

import math
import numbers

import torch


def _fail(problem, name, accepted, value):
    raise ValueError(f"{problem}: {name} must be {accepted}, got {value!r}")


def integer(problem: str, name: str, value, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum``; bools and non-integral floats are refused."""
    accepted = f"an integer >= {minimum}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        _fail(problem, name, accepted, value)
    if not (math.isfinite(value) and float(value) == int(value)) or int(value) < minimum:
        _fail(problem, name, accepted, value)
    return int(value)


def number(problem: str, name: str, value, minimum: float | None = None,
           positive: bool = False) -> float:
    """``value`` as a finite float; ``> 0`` with ``positive``, ``>= minimum`` if given."""
    accepted = "a finite number" + (" > 0" if positive else "") + (
        f" >= {minimum:g}" if minimum is not None else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        _fail(problem, name, accepted, value)
    value = float(value)
    if not math.isfinite(value) or (positive and value <= 0) or (
            minimum is not None and value < minimum):
        _fail(problem, name, accepted, value)
    return value


def size2(problem: str, name: str, value, minimum: int = 1) -> tuple[int, int]:
    """An image size: one integer or a pair (height, width), each >= ``minimum``."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            _fail(problem, name, f"an integer or a pair (height, width) of integers >= "
                                 f"{minimum}", value)
        return tuple(integer(problem, name, v, minimum) for v in value)
    side = integer(problem, name, value, minimum)
    return side, side


def vector(problem: str, name: str, value, size: int, what: str = "") -> torch.Tensor:
    """``value`` as ``size`` finite float64 entries; one number stands for all of them.

    ``what`` says what the entries are (for the message), e.g. "(log weight, log smoothing)".
    """
    accepted = f"a number or {size} numbers{' ' + what if what else ''}"
    try:
        entries = torch.as_tensor(value, dtype=torch.float64).flatten()
    except (TypeError, ValueError, RuntimeError):
        _fail(problem, name, accepted, value)
    if entries.numel() == 1:
        entries = entries.expand(size)
    if entries.numel() != size:
        raise ValueError(f"{problem}: {name} must be {accepted}, got {entries.numel()} "
                         f"entries ({value!r})")
    if not torch.isfinite(entries).all():
        _fail(problem, name, accepted + " (finite)", value)
    return entries.clone()


def choice(problem: str, name: str, value, options) -> str:
    """``value`` if it is one of ``options``."""
    if value not in options:
        _fail(problem, name, f"one of {tuple(options)}", value)
    return value
