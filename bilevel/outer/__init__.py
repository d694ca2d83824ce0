"""Upper-level methods behind one entry point, :func:`solve`."""
from __future__ import annotations

import dataclasses
import functools

from .base import HISTORY_COLUMNS, ConvergenceWarning, OuterState, SolveResult, run
from .hoag import HOAG
from .maid import MAID, PAPER, FixedAccuracy
from .minibatch import MinibatchMAID
from .torch_optim import TorchOptimizer

#: method name -> factory of the method's settings object.
METHODS = {
    "maid": MAID,
    "maid_paper": functools.partial(MAID, **PAPER),
    "maid_lbfgs": functools.partial(MAID, direction="lbfgs"),
    "fixed": FixedAccuracy,
    "hoag": HOAG,
    "hoag_geometric": functools.partial(HOAG, schedule="geometric"),
    "hoag_quadratic": functools.partial(HOAG, schedule="quadratic"),
    "hoag_cubic": functools.partial(HOAG, schedule="cubic"),
    "adam": functools.partial(TorchOptimizer, optimizer="Adam"),
    "sgd": functools.partial(TorchOptimizer, optimizer="SGD"),
    "torch_optim": TorchOptimizer,
    "maid_sgd": MinibatchMAID,
}


def make_method(method="maid", **settings):
    """The settings object of ``method``; errors name unknown methods and settings.

    ``method`` is a name of :data:`METHODS` or a method object; ``settings``
    override the object's own (``make_method(MAID(eps0=1e-2), tol=1e-4)``).
    """
    if isinstance(method, str):
        factory = METHODS.get(method)
        if factory is None:
            raise ValueError(f"unknown method {method!r}; known methods: {', '.join(METHODS)}")
        cls, label = (factory.func if isinstance(factory, functools.partial) else factory), method
    elif dataclasses.is_dataclass(method) and not isinstance(method, type):
        cls, label = type(method), type(method).__name__
    else:
        raise TypeError(f"method must be a name ({', '.join(METHODS)}) or a method object, "
                        f"got {method!r}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise TypeError(f"method {label!r} has no setting(s) {', '.join(unknown)}; "
                        f"its settings are: {', '.join(sorted(known))}")
    if not isinstance(method, str):
        return dataclasses.replace(method, **settings) if settings else method
    return factory(**settings)


def solve(problem, method="maid", *, theta0=None, max_iter=100, max_cost=None, max_time=None,
          callback=None, progress=False, checkpoint_path=None, checkpoint_every=0,
          **settings) -> SolveResult:
    """Minimise the upper-level loss of ``problem`` over theta.

    Parameters
    ----------
    problem : BilevelProblem or str
        A problem, or a registry spec such as ``"quadratic[n=200]"``.
    method : str or method object
        'maid' (default), 'maid_paper' (the paper's settings), 'maid_lbfgs' (L-BFGS
        directions), 'fixed', 'hoag' (with
        ``schedule=``), 'hoag_geometric',
        'hoag_quadratic', 'hoag_cubic', 'adam', 'sgd', 'torch_optim', 'maid_sgd'
        (minibatches of a sample-separable problem, :class:`MinibatchMAID`).
    theta0 : torch.Tensor, optional
        Starting hyperparameters (``problem.initial_theta()`` by default).
    max_iter : int
        Outer iterations.
    max_cost : float, optional
        Budget in lower-level + CG iterations (enforced inside an iteration too).
    max_time : float, optional
        Wall-time budget in seconds (enforced inside an iteration too).
    callback : callable, optional
        ``callback(state, row) -> bool``; True stops the run.  ``row`` is the
        iteration's history row; its fields are listed in :func:`bilevel.outer.base.run`.
    progress : bool
        Show a progress bar.
    checkpoint_path : str or Path, optional
        Write a checkpoint (state, warm starts, history) here every
        ``checkpoint_every`` iterations and at the end; continue with :func:`resume`.
        In a data-parallel run (:mod:`bilevel.distributed`) each rank writes its own,
        ``STEM.rank{r}of{w}SUFFIX`` beside it, and resumes from it with the same ranks.
    **settings
        The method's settings (e.g. ``eps0``, ``alpha0``, ``tol``); with a method
        object they override the object's.

    Returns
    -------
    SolveResult
    """
    if isinstance(problem, str):
        from ..registry import make_problem
        problem = make_problem(problem)
    method = make_method(method, **settings)
    return _run_with_checkpoints(method, problem, theta0, checkpoint_path, checkpoint_every,
                                 max_iter=max_iter, max_cost=max_cost, max_time=max_time,
                                 callback=callback, progress=progress)


#: Statuses that end a run without finishing it: a resumed run goes on from them.
_REOPENED = frozenset({"interrupted", "max_iter", "max_cost", "max_time", "callback"})


def resume(problem, checkpoint_path, *, max_iter=100, max_cost=None, max_time=None,
           callback=None, progress=False, checkpoint_every=0, method=None,
           **changes) -> SolveResult:
    """Continue a run from its checkpoint.

    ``max_iter``, ``max_cost`` and ``max_time`` count from the start of the original
    run, so a larger budget extends a finished run.  A run that stopped on a budget,
    a callback or an interrupt goes on; one that its method ended ('converged',
    'accuracy_floor', ...) is returned as it is.  A run resumed after an
    interruption ends with exactly the theta of an uninterrupted run (the state
    holds every warm start).

    The checkpoint must belong to ``problem`` (and, if ``method`` -- a method
    object -- is given, to its class and settings): a mismatch is a
    :class:`~bilevel.checkpoint.CheckpointMismatchError` saying what differs, an
    unreadable file a :class:`~bilevel.checkpoint.CorruptCheckpointError`.  In a
    data-parallel run (each rank its own file, :func:`bilevel.checkpoint.rank_path`) a
    rank that cannot resume raises its error and every other rank a
    CheckpointMismatchError, so that none waits for it.

    ``changes`` replace settings that the run's method lets a resumed run change,
    those that change how it ends or what its rows record but never an iterate (the
    class's ``resumable_settings``: the minibatch method's ``final_check`` -- so that a
    run trained without a check, or whose check was interrupted, can be given one --
    and ``batch_bounds`` -- so that a run can stop paying for bounds no step reads).
    A change the method does not allow is a ValueError; None leaves a setting as saved.
    """
    from ..checkpoint import check_ranks_agree, fail_together, rank_file

    given, checkpoint_path = checkpoint_path, rank_file(checkpoint_path, problem)
    try:
        saved, state, history = _resumable(checkpoint_path, problem, method, changes)
    except Exception:
        fail_together(problem, given, True)
        raise
    fail_together(problem, given, False)
    check_ranks_agree(problem, given, history)
    if state.status in _REOPENED:
        # run() returns at once on a state with a status; this one may go on.
        state = dataclasses.replace(state, status=None, message="")
    return _run_with_checkpoints(saved, problem, None, given, checkpoint_every,
                                 state=state, history=history, max_iter=max_iter,
                                 max_cost=max_cost, max_time=max_time, callback=callback,
                                 progress=progress)


def _resumable(path, problem, method, changes):
    """(method, state, history) of the checkpoint at ``path``, its settings changed by
    ``changes`` where the method allows it, and checked against ``method`` if given."""
    from ..checkpoint import CheckpointMismatchError, load_checkpoint, method_differences

    changes = {name: value for name, value in changes.items() if value is not None}
    if not changes:
        saved, state, history, _ = load_checkpoint(path, problem, method=method)
    else:  # ``method`` is compared with the saved settings as the changes make them
        saved, state, history, _ = load_checkpoint(path, problem)
        allowed = getattr(type(saved), "resumable_settings", frozenset())
        refused = sorted(set(changes) - set(allowed))
        if refused:
            raise ValueError(f"{', '.join(refused)}: not a setting that a resumed "
                             f"{type(saved).__name__} run may change (those it may: "
                             f"{', '.join(sorted(allowed)) or 'none'})")
        saved = dataclasses.replace(saved, **changes)  # validated here
        differences = [] if method is None else method_differences(
            type(saved).__name__, dataclasses.asdict(saved), method)
        if differences:
            raise CheckpointMismatchError(f"checkpoint {path} was written with "
                                          f"other method settings: {'; '.join(differences)} "
                                          "(saved, with the changes, vs asked)")
    return saved, state, history


def _run_with_checkpoints(method, problem, theta0, path, every, **kwargs):
    """:func:`run`, writing a checkpoint to ``path`` (if any) every ``every`` iterations
    and at the end -- an interrupted end included (run() returns it as a result), so
    that the run can be resumed.  A method with a ``finish(problem, result, progress)`` (the
    minibatch method's full-batch check) has it applied to the result first."""
    finish = getattr(method, "finish", None)
    if path is None:
        result = run(method, problem, theta0, **kwargs)
        return result if finish is None else finish(problem, result, kwargs.get("progress"))
    from ..checkpoint import problem_fingerprint, rank_path, save_checkpoint

    path = rank_path(path, problem)
    fingerprint = problem_fingerprint(problem)  # once per run: it hashes the data
    options = {key: kwargs.get(key) for key in ("max_iter", "max_cost", "max_time")}

    def write(state, history):
        save_checkpoint(path, method, state, history, problem=fingerprint, run=options)

    result = run(method, problem, theta0, checkpoint=write, checkpoint_every=every, **kwargs)
    if finish is not None:
        result = finish(problem, result, kwargs.get("progress"))
    write(result.state, result.history)
    return result


__all__ = ["solve", "resume", "make_method", "METHODS", "MAID", "FixedAccuracy", "HOAG",
           "TorchOptimizer", "MinibatchMAID", "OuterState", "SolveResult", "ConvergenceWarning",
           "HISTORY_COLUMNS", "run"]
