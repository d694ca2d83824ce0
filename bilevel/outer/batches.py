"""Which samples a minibatch step sees, and the moving averages it keeps.

A sample-separable problem (:meth:`bilevel.BilevelProblem.subset`) is drawn from in epochs:
each epoch a permutation of the samples, seeded by the method's seed, the epoch and the rank,
so that the same seed gives the same run and a resumed run the batches the uninterrupted one
drew.  In a data-parallel run every rank holds as many samples and draws its share of each
batch from its own.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from ..problem import NOT_SAMPLE_SEPARABLE, BilevelProblem


class Layout(NamedTuple):
    """How the samples and a batch are spread over the ranks."""

    here: int  # samples on this rank
    total: int  # samples over all ranks
    batch: int  # this rank's share of a batch
    world: int
    rank: int


def layout(problem, batch_size: int) -> Layout:
    """The problem's :class:`Layout` for batches of ``batch_size`` over all ranks; refuses a
    problem without samples, and ranks with unequal shares."""
    if type(problem).subset is BilevelProblem.subset:
        raise NotImplementedError(f"{problem.name}: {NOT_SAMPLE_SEPARABLE}")
    n = int(problem.n_samples)
    if not problem.parallel.active:
        return Layout(n, n, min(batch_size, n), 1, 0)
    rank, world = problem.parallel.rank_and_world()
    count_here = torch.tensor(float(n), dtype=torch.float64)
    if batch_size % world or float(problem.parallel.max(count_here)) != \
            -float(problem.parallel.max(-count_here)):
        raise ValueError(f"{problem.name}: a data-parallel minibatch run needs the same "
                         f"number of samples on every rank and batch_size "
                         f"({batch_size}) divisible by the {world} ranks")
    return Layout(n, n * world, min(batch_size // world, n), world, rank)


def draw(where: Layout, seed: int, epoch: int, position: int):
    """(this rank's sample indices, the next (epoch, position)): the batch that starts
    ``position`` samples into epoch ``epoch``'s permutation."""
    gen = torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 1009 + where.rank)
    order = torch.randperm(where.here, generator=gen)
    index = order[position:position + where.batch]
    position += index.numel()
    return index, (epoch + 1, 0) if position >= where.here else (epoch, position)


def moving_average(previous, value, beta, k):
    """The k-th normalised moving average sum_j beta^(k-j) value_j / sum_j beta^(k-j) from
    the (k-1)-th (``previous``, None at k = 1).  s_k = beta s_(k-1) + (1 - beta) value_k =
    (1 - beta^k) average_k; the setting is fixed for a run, resumed ones included, so k
    counts every iteration and the normaliser need not be stored."""
    previous = value if previous is None else previous
    return previous + (1.0 - beta) / (1.0 - beta ** k) * (value - previous)


def rmsprop_direction(second_moment, z, beta, eps, k):
    """(P z, the k-th moving average v of the squared hypergradients after z):
    P = diag(1 / (sqrt(v) + eps max sqrt(v))), the diagonal scaling of ``precondition=
    'rmsprop'`` (:mod:`bilevel.outer.minibatch`)."""
    v = moving_average(second_moment, z * z, beta, k)
    root = v.sqrt()
    return z / (root + eps * root.max()).clamp_min(1e-300), v
