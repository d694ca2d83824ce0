"""Upper-level methods behind one entry point, :func:`solve`."""
from __future__ import annotations

import dataclasses
import functools

from .base import HISTORY_COLUMNS, ConvergenceWarning, OuterState, SolveResult, run
from .hoag import HOAG
from .maid import MAID, PAPER, FixedAccuracy
from .torch_optim import TorchOptimizer

#: method name -> factory of the method's settings object.
METHODS = {
    "maid": MAID,
    "maid_paper": functools.partial(MAID, **PAPER),
    "fixed": FixedAccuracy,
    "hoag": HOAG,
    "hoag_geometric": functools.partial(HOAG, schedule="geometric"),
    "hoag_quadratic": functools.partial(HOAG, schedule="quadratic"),
    "hoag_cubic": functools.partial(HOAG, schedule="cubic"),
    "adam": functools.partial(TorchOptimizer, optimizer="Adam"),
    "sgd": functools.partial(TorchOptimizer, optimizer="SGD"),
    "torch_optim": TorchOptimizer,
}


def make_method(method="maid", **settings):
    """The settings object of ``method``; errors name unknown methods and settings."""
    if not isinstance(method, str):
        return method  # already a method object
    factory = METHODS.get(method)
    if factory is None:
        raise ValueError(f"unknown method {method!r}; known methods: {', '.join(METHODS)}")
    cls = factory.func if isinstance(factory, functools.partial) else factory
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise TypeError(f"method {method!r} has no setting(s) {', '.join(unknown)}; "
                        f"its settings are: {', '.join(sorted(known))}")
    return factory(**settings)


def solve(problem, method="maid", *, theta0=None, max_iter=100, max_cost=None, callback=None,
          progress=False, checkpoint_path=None, checkpoint_every=0, **settings) -> SolveResult:
    """Minimise the upper-level loss of ``problem`` over theta.

    Parameters
    ----------
    problem : BilevelProblem or str
        A problem, or a registry spec such as ``"quadratic[n=200]"``.
    method : str or method object
        'maid' (default), 'maid_paper' (the paper's settings), 'fixed', 'hoag' (with
        ``schedule=``), 'hoag_geometric',
        'hoag_quadratic', 'hoag_cubic', 'adam', 'sgd', 'torch_optim'.
    theta0 : torch.Tensor, optional
        Starting hyperparameters (``problem.initial_theta()`` by default).
    max_iter : int
        Outer iterations.
    max_cost : float, optional
        Budget in lower-level + CG iterations.
    callback : callable, optional
        ``callback(state, row) -> bool``; True stops the run.
    progress : bool
        Show a progress bar.
    checkpoint_path : str or Path, optional
        Write a checkpoint (state, warm starts, history) here every
        ``checkpoint_every`` iterations and at the end; continue with :func:`resume`.
    **settings
        The method's settings (e.g. ``eps0``, ``alpha0``, ``tol``).

    Returns
    -------
    SolveResult
    """
    if isinstance(problem, str):
        from ..registry import make_problem
        problem = make_problem(problem)
    method = make_method(method, **settings)
    return _run_with_checkpoints(method, problem, theta0, checkpoint_path, checkpoint_every,
                                 max_iter=max_iter, max_cost=max_cost, callback=callback,
                                 progress=progress)


def resume(problem, checkpoint_path, *, max_iter=100, max_cost=None, callback=None,
           progress=False, checkpoint_every=0) -> SolveResult:
    """Continue a run from its checkpoint; ``max_iter`` counts from the original start.

    A run resumed after an interruption ends with exactly the theta of an
    uninterrupted run (the state holds every warm start).
    """
    from ..checkpoint import load_checkpoint

    method, state, history, _ = load_checkpoint(checkpoint_path, problem)
    return _run_with_checkpoints(method, problem, None, checkpoint_path, checkpoint_every,
                                 state=state, history=history, max_iter=max_iter,
                                 max_cost=max_cost, callback=callback, progress=progress)


def _run_with_checkpoints(method, problem, theta0, path, every, **kwargs):
    if path is None:
        return run(method, problem, theta0, **kwargs)
    from ..checkpoint import save_checkpoint

    def write(state, history):
        save_checkpoint(path, method, state, history)

    result = run(method, problem, theta0, checkpoint=write, checkpoint_every=every, **kwargs)
    write(result.state, result.history)
    return result


__all__ = ["solve", "resume", "make_method", "METHODS", "MAID", "FixedAccuracy", "HOAG",
           "TorchOptimizer", "OuterState", "SolveResult", "ConvergenceWarning",
           "HISTORY_COLUMNS", "run"]
