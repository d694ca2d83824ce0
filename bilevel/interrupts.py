"""Stopping a long run by a signal, as its budget would stop it.

Ctrl-C raises KeyboardInterrupt, which the outer loop turns into status 'interrupted' with
the last iterate (and a checkpoint to resume from).  A run in the background is stopped by
``kill PID`` (SIGTERM, also what a batch scheduler sends), which by default ends the
process with nothing written; :func:`sigterm_interrupts` makes it a KeyboardInterrupt too.
"""
from __future__ import annotations

import contextlib
import signal
import threading


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def sigterm_interrupts():
    """Inside, SIGTERM ends the run like Ctrl-C: with what it has."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def signals_ignored():
    """Inside, Ctrl-C and SIGTERM are ignored (while a run folder is written, a moment),
    so that a second Ctrl-C does not lose what the first one saved."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT,
                                                                     signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
