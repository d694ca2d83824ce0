"""Data-parallel bilevel solves on ``torch.distributed`` (gloo on CPU, nccl on GPU).

A multi-sample problem is block separable: h = sum_i h_i(x_i, theta) and
g = (1/N) sum_i g_i(x_i, theta).  Its samples are sharded over ranks: each rank
holds the problem built on its own samples (still dividing g by the global N)
and solves its own lower-level blocks and CG systems.  Every inner product,
objective value and theta-gradient of the solvers passes through
``problem.parallel`` (a :class:`Reduction`) -- all-reduces once :func:`data_parallel`
has joined the problem to the group -- so every rank sees the global certificate, upper
loss and hypergradient and takes the same MAID decision that one process
holding every sample would (up to the order of floating-point sums).

A problem supports this when its factory accepts ``shard=(rank, world)`` and it
computes its bound constants through ``self.parallel.sum`` / ``self.parallel.max``,
so that they are the global problem's constants.

Launch::

    torchrun --nproc-per-node 2 -m bilevel run tv_denoising --distributed

or from Python, in each process::

    bilevel.distributed.init()                  # from torchrun's environment
    problem = bilevel.distributed.data_parallel("tv_denoising", n_images=16)
    result = bilevel.solve(problem, "maid")
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist

from .contract import check_mu


def init(backend: str | None = None) -> tuple[int, int]:
    """Join the process group described by torchrun's environment; (rank, world size)."""
    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed")
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def finish() -> None:
    """Wait for every rank, then leave the process group (call once, at the end).

    Leaving without it can abort a rank whose peer is still writing its outputs.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def all_reduce(value: torch.Tensor, op: str, group) -> torch.Tensor:
    """All-reduce a copy of ``value`` (``op`` in 'sum', 'max', 'min')."""
    out = value.detach().clone()
    ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
    dist.all_reduce(out, op=ops[op], group=None if group is _DEFAULT else group)
    return out


#: Marks "the default process group" (torch spells it None, which here means "no group").
_DEFAULT = object()


class Reduction:
    """Sums, maxima and norms over the processes that share a problem's samples.

    Every inner product, norm, objective value and theta-shaped contribution of
    the solvers goes through a problem's ``parallel`` (``problem.parallel.sum``,
    ``.max``, ``.norm``): in one process these are the identity and the plain
    norm; after :func:`data_parallel` they are all-reduces over the group, so that
    every rank takes the decisions one process holding every sample would.
    """

    def __init__(self, group=None):
        self.group = group  # None: one process

    @property
    def active(self) -> bool:
        return self.group is not None

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        return value if self.group is None else all_reduce(value, "sum", self.group)

    def max(self, value: torch.Tensor) -> torch.Tensor:
        return value if self.group is None else all_reduce(value, "max", self.group)

    def dot(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """<a, b> over all ranks (a 0-d tensor)."""
        return self.sum(torch.sum(a * b))

    def norm(self, t: torch.Tensor) -> float:
        """||t|| over all ranks."""
        return math.sqrt(float(self.sum(torch.sum(t * t))))

    def rank_and_world(self) -> tuple[int, int]:
        """(this process's rank, the number of ranks) in the group; (0, 1) in one process."""
        if self.group is None:
            return 0, 1
        group = None if self.group is _DEFAULT else self.group
        return dist.get_rank(group), dist.get_world_size(group)

    def __repr__(self):
        return "Reduction(one process)" if self.group is None else "Reduction(data parallel)"


#: The reduction of a problem that is not split over processes.
ONE_PROCESS = Reduction()


def shard(n: int, rank: int, world: int) -> list[int]:
    """Contiguous block of ``range(n)`` for ``rank``; concatenated over ranks, the
    shards give the one-process order back."""
    if not 0 <= rank < world or n < world:
        raise ValueError(f"cannot shard {n} samples over {world} ranks (rank {rank})")
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return list(range(start, start + base + (rank < extra)))


def data_parallel(spec: str, group=None, **params):
    """Build this rank's shard of a registered problem, joined to the others.

    Parameters
    ----------
    spec : str
        Registry name (``"name[k=v,...]"``); its factory must accept ``shard=(rank, world)``.
    group : ProcessGroup, optional
        The default group if None.
    **params
        Parameters of the problem, the same on every rank.
    """
    from .problem import BilevelProblem
    from .registry import make_problem

    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("data_parallel needs torch.distributed to be initialised "
                           "(call bilevel.distributed.init() first)")
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    try:
        problem = make_problem(spec, shard=(rank, world), **params)
    except (TypeError, ValueError) as exc:  # the factory's own, or the registry's check
        if "shard" not in str(exc):
            raise
        raise TypeError(f"problem {spec!r} does not support data-parallel solves: its "
                        "factory takes no shard=(rank, world) parameter") from None
    if type(problem).solve_lower is not BilevelProblem.solve_lower \
            and not getattr(problem, "solve_lower_is_data_parallel", False):
        # Its own solver would stop on this rank's certificate; FISTA (the default)
        # stops on the global one, the same on every rank.
        raise TypeError(f"{problem.name}: its own solve_lower is not known to reduce over "
                        "ranks; data-parallel solves need the default (FISTA), or a solver "
                        "that takes every norm through problem.parallel and says so with "
                        "solve_lower_is_data_parallel = True")
    problem.parallel = Reduction(_DEFAULT if group is None else group)
    mu = torch.tensor(check_mu(problem, problem.initial_theta()), dtype=torch.float64)
    if float(problem.parallel.max(mu)) != float(mu):
        raise ValueError(f"{problem.name}: ranks disagree on mu; a sharded problem must "
                         "report the global strong convexity constant")
    return problem
