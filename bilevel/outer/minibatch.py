"""Minibatch MAID: steps on batches of samples (``method="maid_sgd"``).

For sample-separable problems (h = sum_i h_i(x_i, theta), g = mean_i g_i(x_i, theta):
:meth:`bilevel.BilevelProblem.subset`), after the inexact stochastic bilevel methods of
Salehi, Mukherjee, Roberts and Ehrhardt (arXiv 2412.12049, 2511.06774).  Iteration k:

1. the next batch B of a permutation of the samples drawn per epoch (seeded by
   ``seed`` and the epoch: the same seed gives the same run, a resumed run the batches
   the uninterrupted one drew);
2. the batch problem's hypergradient z_B with its omega >= ||z_B - grad F_B||,
   F_B = mean_{i in B} g_i(x_i*(theta)), warm-started from each sample's last
   lower-level solution and adjoint (kept per sample across epochs);
3. a step: MAID's certified line search on F_B (default; it proves F_B decreased by
   lam alpha ||z_B||^2, docs/certificates.md, section 5), or alpha0 (1 + t)^-step_power
   (t = epochs elapsed; alpha0=None: the first step from a search on the first batch).

The accuracy ('accuracy'): 'search' (default) asks what the search needs, as MAID's
``direction_test="after_failure"``, and certifies the direction (omega <= rel_error
||z_B||) only on the batch after a failed search; 'adaptive' certifies it on every
batch; 'schedule' takes eps0 (1 + t)^-accuracy_power whatever omega is.

What is certified (docs/certificates.md, section 8): a row's omega, and a search's
decrease, concern the batch loss F_B, not F.  At the end (``final_check``),
:func:`bilevel.solve` adds one full-batch certified hypergradient at the returned theta:
certified bounds on F(theta) and ||grad F(theta)||, in the result's message and in
``state.final_check`` (its cost there too, outside the history and the budgets).

Averaging (``average`` = beta > 0): the state also keeps the exponential moving average
of the iterates, sum_j beta^(k-j) theta_j / sum_j beta^(k-j) (about the last
1 / (1 - beta) iterates), which carries less of the last batches' noise than the last
iterate; the final check (:mod:`bilevel.outer.final_check`) chooses between the two.

Diagonal scaling (``precondition="rmsprop"``): the steps go along d = P z_B instead of z_B,
P = diag(1 / (sqrt(v) + eps max sqrt(v))) with v the moving average of the squared batch
hypergradients (beta ``precondition_beta``, normalised as the iterate average): parameters
of very different scales (a log-weight, a filter tap) each get a step of their own size.  P
is positive, so d is a descent direction of F_B wherever omega <= rel_error <z_B, d> /
||d|| (then <grad F_B, d> >= (1 - rel_error) <z_B, d> > 0): that is the certified
direction's test here, and the search proves F_B(theta - alpha d) <= F_B(theta) - lam alpha
<z_B, d> as for any direction (docs/certificates.md, section 8).

Variance reduction (``variance_reduction="saga"``, scheduled steps only): the step goes along
SAGA's unbiased estimate of grad F from the batch and a table of each sample's last
hypergradient (:mod:`bilevel.outer.variance_reduction`) instead of z_B.
"""
from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import torch

from .. import value_bracket
from . import final_check as _final
from .base import (
    AT_LEAST_ONE,
    NONNEGATIVE,
    OPEN_UNIT,
    POSITIVE,
    OuterState,
    check_settings,
    count,
    degenerate,
    finite,
    norm,
    one_of,
    warm,
)
from .batch_accuracy import matched, refined, rescaled, slope_and_margin
from .batches import draw, layout, moving_average, rmsprop_direction
from .line_search import certified_line_search
from .variance_reduction import saga_direction, sample_hypergradients


@dataclasses.dataclass(frozen=True)
class MinibatchState(OuterState):
    """``x`` and ``q`` hold every sample's warm start (stacked along dim 0)."""

    epoch: int = 0  # epochs started
    position: int = 0  # samples of this epoch's permutation already drawn (here)
    alpha: float = math.nan  # the schedule's alpha0, or the last search's step (NaN: none)
    certify: bool = False  # accuracy='search': certify the direction (after a failure)
    work: float = 0.0  # cumulative lower + CG iterations weighted by batch / all samples
    final_check: dict | None = None
    restart_step: float | None = None  # the next search's first step after a too-long search
    theta_average: torch.Tensor | None = None  # average > 0: the moving average of the iterates
    second_moment: torch.Tensor | None = None  # precondition: moving average of z_B^2 (or v^2)
    table: torch.Tensor | None = None  # variance_reduction: each sample's last G_i (here)


@dataclasses.dataclass(frozen=True)
class MinibatchMAID:
    """Minibatch MAID (module docstring).

    Parameters
    ----------
    batch_size : int
        Samples per batch, over all ranks of a data-parallel run (each rank draws
        batch_size / world of its own).  An epoch's last batch holds the rest.
    step : {'line_search', 'schedule'}
        A certified line search on every batch (first trial ``growth`` times the last
        step, backtracking by 1/2, sufficient decrease ``lam``), or alpha0 (1 + t)^-step_power.
    alpha0 : float or None
        The first step (None: HOAG's sqrt(dim theta) / ||z||, then the search's).
    accuracy : {'search', 'adaptive', 'schedule'}
        Module docstring.  'adaptive' refines eps and delta each by its own terms of
        omega (MAID's 'predicted' refinement) and relaxes them where omega was well
        inside; every accuracy is also refined until g is certified well enough for
        the first trial of a search to show its decrease (MAID's 'matched' accuracy).
    rel_error : float
        The certified relative error of a certified direction and of the final check
        (below 1: -z_B is a descent direction of F_B).
    eps0, delta0 : float
        The first (and loosest) accuracies, lower level and CG.
    seed : int
        Seed of the batch order.
    final_check : {True, 'loss', False}
        End :func:`bilevel.solve` with a full-batch certified hypergradient at theta:
        refined until omega <= rel_error ||z|| (True), or with the lower level solved only
        until F's certified bracket has relative half-width ``final_loss_rtol`` ('loss':
        the bound ||grad F|| <= ||z|| + omega comes as it is, without the refinement that
        can cost more than the training on a large set).
    final_loss_rtol : float
        final_check='loss': the relative half-width of F's certified bracket (1e-5).
    max_conditioning_growth : float
        As MAID's: a trial over this many times stiffer (certified L / mu) than theta is
        backtracked unsolved, and a search that solved no trial goes on backtracking on the
        next batch without tightening the accuracy.
    average : float
        beta in [0, 1): keep the moving average of the iterates (module docstring) and let
        the final check choose between it and the last iterate; 0 (default): no average.
    precondition : {'none', 'rmsprop'}
        Step along z_B (default) or along the diagonally scaled P z_B (module docstring).
    precondition_beta : float
        beta in [0, 1) of the squared hypergradients' moving average (default 0.99).
    precondition_eps : float
        P's floor, relative to the largest sqrt(v) (default 1e-3): no entry of P exceeds
        1 / (eps max sqrt(v)), so coordinates whose hypergradient has been zero move too.
    value_bounds : {'first_order', 'adjoint'}
        The bounds on F_B in the line search, as MAID's (:mod:`bilevel.value_bracket`):
        with 'adjoint' the batch's hypergradient and its trials are solved only as far as
        the second-order bracket needs, its adjoint giving the bracket at theta for free.
    batch_bounds : bool
        Compute each batch's omega (default).  With a scheduled step and accuracy
        (``step='schedule'``, ``accuracy='schedule'``, ``alpha0`` given) no decision reads
        it: False skips its constants and local rates (half of a loose batch
        hypergradient's time on a 24x13x13 ridge, docs/certificates.md), and the rows then
        say ``error_bound`` inf, ``certified`` False.  The final check certifies F as
        before.  Refused with a search or another accuracy, which need omega.  A resumed
        run may switch it (``bilevel.resume(..., batch_bounds=False)``).
    variance_reduction : {'none', 'saga'}
        'saga' steps along SAGA's direction z_B - mean_B T_i + mean T_i, T_i the last
        hypergradient of sample i's own loss, instead of z_B (after the first epoch, which
        fills the table): an unbiased estimate of grad F with far less of the batches'
        noise (:mod:`bilevel.outer.variance_reduction`).  Keeps a (samples x dim theta)
        table in the state.  Needs a scheduled step and accuracy (the search certifies the
        batch's decrease, which SAGA's direction need not give).

    Rows hold the common columns (``upper_value``: the batch's g; ``error_bound``: its
    omega; ``step``, ``backtracks``, ``accepted``: the search's) and ``epoch`` (epochs
    elapsed after the row), ``batch_size``, ``relative_error`` (omega / ||z_B||),
    ``refinements`` and ``work`` (cumulative lower + CG iterations, each weighted by
    batch / all samples: full-batch iterations' worth, what the time follows).
    """

    #: What a resumed run may change (:func:`bilevel.resume`): how it ends, what it records.
    resumable_settings: ClassVar[frozenset] = frozenset({"final_check", "batch_bounds"})

    batch_size: int = 8
    step: str = "line_search"
    alpha0: float | None = None
    step_power: float = 0.5
    lam: float = 0.1
    growth: float = 2.0
    max_backtracks: int = 20
    accuracy: str = "search"
    rel_error: float = 0.5
    eps0: float = 1e-1
    delta0: float = 1e-1
    accuracy_power: float = 1.0
    nu: float = 0.5
    max_refinements: int = 30
    eps_min: float = 1e-13
    seed: int = 0
    final_check: bool | str = True
    final_loss_rtol: float = 1e-5
    lower_max_iter: int = 10_000
    cg_max_iter: int = 10_000
    max_conditioning_growth: float = 100.0
    average: float = 0.0
    precondition: str = "none"
    precondition_beta: float = 0.99
    precondition_eps: float = 1e-3
    value_bounds: str = "first_order"
    batch_bounds: bool = True
    variance_reduction: str = "none"

    def __post_init__(self):
        check_settings(
            self, batch_size=count(1), step=one_of("line_search", "schedule"),
            alpha0=(lambda v: v is None or POSITIVE[0](v), "None or a finite number > 0"),
            step_power=NONNEGATIVE, lam=OPEN_UNIT, growth=AT_LEAST_ONE, max_backtracks=count(1),
            accuracy=one_of("search", "adaptive", "schedule"), rel_error=OPEN_UNIT,
            eps0=POSITIVE, delta0=POSITIVE, accuracy_power=NONNEGATIVE, nu=OPEN_UNIT,
            max_refinements=count(0), eps_min=POSITIVE, seed=count(0),
            final_check=(lambda v: v is True or v is False or v == "loss",
                         "True, False or 'loss'"),
            final_loss_rtol=POSITIVE, lower_max_iter=count(1), cg_max_iter=count(1),
            max_conditioning_growth=(lambda v: v == math.inf or AT_LEAST_ONE[0](v),
                                     "a number >= 1 or math.inf"),
            average=(lambda v: NONNEGATIVE[0](v) and v < 1, "a number in [0, 1)"),
            precondition=one_of("none", "rmsprop"),
            precondition_beta=(lambda v: NONNEGATIVE[0](v) and v < 1, "a number in [0, 1)"),
            precondition_eps=POSITIVE, value_bounds=one_of("first_order", "adjoint"),
            batch_bounds=(lambda v: v is True or v is False, "True or False"),
            variance_reduction=one_of("none", "saga"))
        if self.variance_reduction != "none" and (
                (self.step, self.accuracy) != ("schedule", "schedule") or self.alpha0 is None):
            raise ValueError(f"MinibatchMAID: variance_reduction={self.variance_reduction!r} "
                             "needs step='schedule', accuracy='schedule' and alpha0 (the "
                             "search certifies the batch's decrease, which its direction need "
                             f"not give), got step={self.step!r}, accuracy={self.accuracy!r}, "
                             f"alpha0={self.alpha0!r}")
        if not self.batch_bounds and (self.step, self.accuracy) != ("schedule", "schedule"):
            raise ValueError("MinibatchMAID: batch_bounds=False needs step='schedule' and "
                             "accuracy='schedule' (the search and the other accuracies read "
                             f"omega), got step={self.step!r}, accuracy={self.accuracy!r}")
        if not self.batch_bounds and self.alpha0 is None:
            raise ValueError("MinibatchMAID: batch_bounds=False needs alpha0 (without it the "
                             "first step comes from a search, which reads omega)")

    def init_state(self, problem, theta0):
        n = layout(problem, self.batch_size).here
        x = problem.initial_x(theta0)
        if x.shape[0] != n:
            raise ValueError(f"{problem.name}: x must be stacked by sample along dim 0 "
                             f"({n} samples), got shape {tuple(x.shape)}")
        return MinibatchState(theta=theta0, eps=self.eps0, delta=self.delta0, x=x,
                              q=torch.zeros_like(x),
                              alpha=math.nan if self.alpha0 is None else self.alpha0)

    def _first_step(self, state, d):
        """The line search's first trial along direction ``d``: alpha0 (None: HOAG's
        sqrt(dim theta) / ||d||) at the start, else ``growth`` times the last accepted
        step; None where no search runs."""
        if self.step == "schedule" and not math.isnan(state.alpha):
            return None
        if state.restart_step is not None:
            return state.restart_step
        if math.isnan(state.alpha):
            return math.sqrt(d.numel()) / norm(d)
        return state.alpha if state.iteration == 0 else self.growth * state.alpha

    # ------------------------------------------------------------------ one step
    def update(self, problem, state):
        where = layout(problem, self.batch_size)
        n, n_all = where.here, where.total
        index, (epoch, position) = draw(where, self.seed, state.epoch, state.position)
        total = int(problem.parallel.sum(torch.tensor(float(index.numel()))))
        batch = problem.subset(index, total)
        t = state.epoch + state.position / n  # epochs elapsed
        eps, delta = state.eps, state.delta
        if self.accuracy == "schedule":
            eps = max(self.eps0 * (1 + t) ** -self.accuracy_power, self.eps_min)
            delta = eps * self.delta0 / self.eps0
        certify = self.accuracy == "adaptive" or (self.accuracy == "search" and state.certify)
        searching = self.step == "line_search" or math.isnan(state.alpha)
        hg, eps, delta, refinements, spent = refined(
            self, batch, state.theta, eps, delta, state.x[index], state.q[index], state.smoothness,
            certify, (lambda d: self._first_step(state, d)) if searching else None,
            lambda z: self._direction(state, z)[0])
        z, z_norm, omega = hg.grad, norm(hg.grad), hg.error_bound
        v, table = z, state.table
        if self.variance_reduction == "saga" and finite(z_norm):
            shares = sample_hypergradients(batch, state.theta, hg.lower.x, hg.linear.q, total)
            v, table = saga_direction(z, shares, table, index, problem.parallel,
                                      (n, n_all, total), state.epoch)
        d, second_moment = self._direction(state, v)
        slope, margin = slope_and_margin(z, d)
        if self.accuracy == "adaptive" and finite(z_norm, omega):
            following = rescaled(self, hg, eps, delta, self.rel_error * margin)
        elif self.accuracy == "search" and not certify:  # relax slowly, as MAID's nu_bar
            following = (min(1.25 * eps, self.eps0), delta)
        else:
            following = (eps, delta)
        x, q = state.x.clone(), state.q.clone()
        for store, solved in ((x, warm(hg.lower.x)), (q, warm(hg.linear.q))):
            if solved is not None:
                store[index] = solved
        row = dict(upper_value=hg.upper_value, grad_norm=z_norm, error_bound=omega,
                   certified=hg.certified, eps=eps, delta=delta, backtracks=0, accepted=False,
                   step=0.0, batch_size=total, refinements=refinements,
                   relative_error=omega / z_norm if z_norm > 0 else math.inf)
        new = dataclasses.replace(state, x=x, q=q, eps=following[0], delta=following[1],
                                  iteration=state.iteration + 1, epoch=epoch, position=position,
                                  smoothness=hg.lower.smoothness or state.smoothness,
                                  final_check=None, table=table)
        if not finite(z_norm, omega if self.batch_bounds else 0.0):
            new = dataclasses.replace(new, status="diverged", message=(
                f"the hypergradient of batch {index.tolist()} is not finite"))
        elif z_norm > 0 and searching:
            # The first trial from the state before this row (``new`` counts it already).
            first = self._first_step(state, d)
            new, row, spent = self._search(batch, new, row, spent, hg, index, first, d, slope)
        elif z_norm > 0:
            alpha = state.alpha * (1 + t) ** -self.step_power
            theta = state.theta - alpha * d
            if degenerate(problem, theta) is None:
                new = dataclasses.replace(new, theta=theta)
                row.update(step=alpha, accepted=True)
            else:  # a step into a degenerate point: reject it, halve the schedule
                new = dataclasses.replace(new, alpha=0.5 * state.alpha)
        new = dataclasses.replace(new, work=state.work + spent.total * total / n_all,
                                  second_moment=second_moment,
                                  **self._averaged(state, new.theta))
        return new, {**row, "epoch": epoch + position / n, "work": new.work, "spent": spent}

    def _averaged(self, state, theta):
        """The moving average's fields after iterate ``theta`` (none without ``average``)."""
        if not self.average:
            return {}
        return dict(theta_average=moving_average(state.theta_average, theta, self.average,
                                                 state.iteration + 1))

    def _direction(self, state, z):
        """(d, the squared hypergradients' average after z): the step's direction, z or
        the diagonally scaled P z (module docstring)."""
        if self.precondition == "none":
            return z, None
        return rmsprop_direction(state.second_moment, z, self.precondition_beta,
                                 self.precondition_eps, state.iteration + 1)

    def _search(self, batch, state, row, spent, hg, index, first, d, slope):
        """MAID's certified line search on the batch along -d (slope <z, d>): every step,
        or the first one only (step='schedule', alpha0=None: the step found is the
        schedule's alpha0)."""
        L_g = hg.constants.L_g
        lower_now, accuracy, bracket = value_bracket.for_search(
            batch, state.theta, hg, slope, self.cg_max_iter,
            lambda step: max(hg.lower.error_bound, matched(hg, step * slope)),
            self.value_bounds)
        search = certified_line_search(
            batch, state.theta, d, slope, first=first, rho=0.5,
            backtracks=self.max_backtracks, lam=self.lam, lower_now=lower_now,
            accuracy=accuracy, bracket=bracket,
            L_g=L_g, x0=hg.lower.x, lower_max_iter=self.lower_max_iter,
            smoothness=state.smoothness, max_conditioning_growth=self.max_conditioning_growth)
        spent = spent + search.cost
        row = {**row, "step": search.step, "backtracks": search.backtracks,
               "accepted": search.accepted}
        if search.too_long:  # nothing solved: shorter steps, not more accuracy
            return dataclasses.replace(state, restart_step=first * 0.5 ** search.backtracks), \
                row, spent
        if not search.accepted:
            # Certify the next direction (omega <= rel_error <z, d> / ||d||), tighten the
            # accuracy: MAID's answer to a failed search, on the next batch.
            return dataclasses.replace(state, eps=self.nu * state.eps,
                                       delta=self.nu * state.delta, certify=True), row, spent
        x = state.x.clone()
        x[index] = search.x  # the batch's solution at the new theta: the better warm start
        return dataclasses.replace(state, theta=search.theta, x=x, alpha=search.step,
                                   certify=False, restart_step=None), row, spent

    # ------------------------------------------------------------------ the end
    def finish(self, problem, result, progress=False):
        """The final check (``final_check``): a full-batch certified hypergradient at
        ``result.theta`` (and at the moving average, with ``average``: the result's theta
        is then the one with the lower certified upper bound on F); 'loss' skips the
        refinement of the gradient's direction; called by
        :func:`bilevel.solve` and :func:`bilevel.resume` after the run (``run`` alone
        does not).  :mod:`bilevel.outer.final_check`."""
        return _final.finish(self, problem, result, progress)

