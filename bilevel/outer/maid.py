"""MAID: the adaptively inexact outer method, and its fixed-accuracy baseline.

Salehi, Mukherjee, Roberts, Ehrhardt, SIAM J. Math. Data Sci. 2025
(arXiv 2308.10098); docs/certificates.md, section 5.  One iteration:

1. an inexact hypergradient z with error bound omega, accuracy tightened
   (eps, delta <- nu eps, nu delta) until omega <= (1 - eta) ||z||, which makes
   -z a certified descent direction;
2. backtracking on alpha rho^i, accepting the first step whose certified upper
   bound on F(theta+) is below the certified lower bound on F(theta) by
   lam alpha ||z||^2 -- a proof that F decreased;
3. success relaxes accuracy and enlarges the step; failure of the whole budget
   tightens accuracy, grows the budget, and retries from the same theta.
"""
from __future__ import annotations

import dataclasses
import math

import torch

from .. import value_bracket
from ..cost import Cost
from ..hypergradient import bracket_accuracy, certifiable_accuracy, hypergradient
from . import quasi_newton
from .base import (
    AT_LEAST_ONE,
    NONNEGATIVE,
    OPEN_UNIT,
    POSITIVE,
    OuterState,
    check_settings,
    converged_message,
    count,
    finite,
    handed_on,
    norm,
    one_of,
    warm,
)
from .line_search import LineSearch, certified_line_search


@dataclasses.dataclass(frozen=True)
class MAIDState(OuterState):
    alpha: float = 1e-2
    max_backtracks: int = 5
    certify_direction: bool = True  # run the descent test before the line search
    memory: tuple = ()  # L-BFGS pairs (s, y), direction="lbfgs"
    previous: tuple | None = None  # (theta, z) of the last accepted step's start
    restart_step: float | None = None  # the next search's first step after a too-long search


def _stalled(before, after):
    """Whether a refinement failed to improve a solve that missed its tolerance."""
    lower = not after.lower.converged and after.lower.error_bound >= 0.9 * before.lower.error_bound
    linear = (not after.linear.converged
              and after.linear.residual_norm >= 0.9 * before.linear.residual_norm)
    return lower or linear


@dataclasses.dataclass(frozen=True)
class MAID:
    """Method of Adaptive Inexact Descent.

    The defaults are the paper's experimental settings (docs/certificates.md,
    section 5) except four choices that spend less for the same certificates,
    measured on the project's races (README, "Gallery"): ``alpha0=None``,
    ``refinement="predicted"``, ``trial_accuracy="matched"`` and
    ``direction_test="after_failure"``.  :data:`PAPER` holds the paper's values
    of those four; ``method="maid_paper"`` runs them.

    Parameters
    ----------
    eps0, delta0 : float
        Starting lower-level accuracy and CG residual (1e-1: start loose, MAID
        tightens only when a certificate demands it).
    alpha0 : float or None
        Starting step (the paper's 1e-2).  None (default) takes HOAG's first step
        sqrt(dim theta) / ||z0||
        (a move of about one unit per hyperparameter, scale-free for log-parameters);
        backtracking corrects it if it is too long.
    rho : float
        Backtracking factor (0.5).
    rho_bar : float
        Step enlargement after success (10/9: grows slowly, so one lucky step
        does not cause a run of failures).
    nu : float
        Accuracy tightening factor (0.5).
    nu_bar : float
        Accuracy relaxation after success (1.05: relaxes slowly, so the warm
        starts stay nearly certified and the next solve is cheap).
    eta : float
        Descent margin: omega <= (1 - eta) ||z|| makes <grad F, z> >= eta ||z||^2.
    lam : float, optional
        Sufficient-decrease fraction, in (0, eta); default eta / 2, which a small
        enough step always attains when the accuracy is tight enough.
    max_backtracks : int
        Starting backtracking budget (5); grows by ``backtrack_growth`` after a failure.
    max_refinements : int
        Cap on accuracy refinements for the descent test in one iteration.
    refinement : {'predicted', 'halve'}
        How the descent test tightens the accuracies.  'halve' (the paper's):
        eps and delta both times nu.  'predicted': omega is a sum of terms
        proportional to the lower-level error and to the CG residual
        (:meth:`~bilevel.BoundConstants.omega_terms`), so each accuracy is
        scaled, from what its solve actually certified, by the factor that brings
        its own terms under half of the margin (1 - eta) ||z|| / 2 (at least nu,
        at most 1e-3 per refinement); an accuracy whose terms are already small
        is left alone.  One or two refinements instead of many halvings, and no CG
        spent where only the lower level is short (or the reverse).
    trial_accuracy : {'matched', 'same'}
        Accuracy of the line search's solves at trial points.  'same' (the
        paper's): eps.  'matched': the looser of eps and the accuracy at which the
        bounds' slack ||grad_x g|| eps_t + L_g eps_t^2 / 2 is a quarter of the
        first-order decrease step ||z||^2 (the test needs only lam << 1 of it).
        The test stays certified -- it uses the accuracy the solve certifies --
        and the next hypergradient refines the accepted point from there.
    direction_test : {'after_failure', 'always'}
        'always' (the paper's): certify -z as a descent direction (step 1) before
        every line search.  'after_failure': search along -z at the accuracy at
        hand and run the descent test only on the retry after a failed search.
        Every accepted step still carries the line search's proof that F
        decreased by lam alpha ||z||^2 (certified bounds on F at both ends); what
        is skipped is the proof, before searching, that a small enough step
        would succeed -- the failure branch restores it.  Each row says whether
        the direction was certified (``direction_certified``).
    direction : {'gradient', 'lbfgs'}
        The search direction.  'gradient' (the paper's): -z.  'lbfgs': -H z, with H
        the L-BFGS model of the inverse Hessian of F from the last ``memory_size``
        accepted steps and hypergradient differences (pairs without positive
        curvature skipped), tried at the unit step first.  H is positive definite, so
        the line search's test F(theta+) <= F(theta) - lam alpha <z, H z> is a proof
        of decrease exactly as for -z; a failed search drops the memory and searches
        along -z next, once the descent test (tightening eps and delta from where they
        are) has certified -z a descent direction (a failure there is handled as always).
    memory_size : int
        L-BFGS pairs kept (10).
    eps_min : float
        Accuracy floor; below it the run stops with status 'accuracy_floor'.  The
        floor is raised to what the dtype can certify, 4 finfo(dtype).eps
        max(1, ||x~||) / mu: below it ||grad_x h|| is rounding noise, and asking
        for more would spin the solvers at their iteration budgets (float32:
        about 5e-7 ||x~|| / mu).
    tol : float
        Stop when ||z|| + omega <= tol (then ||grad F(theta)|| <= tol).
    lower_max_iter, cg_max_iter : int
        Budgets of each lower-level solve and each CG solve.
    value_bounds : {'first_order', 'adjoint'}
        How the line search bounds F at both ends.  'first_order' (the paper's): g(x~) +-
        (||grad_x g|| e + L_g e^2 / 2).  'adjoint': the second-order bracket of
        :mod:`bilevel.value_bracket` (g(x~) - <q~, grad_x h(x~)> +- (rho ||grad_x h|| / mu +
        (M + L_g) e^2 / 2)), free at theta (the hypergradient's adjoint) and bought at a
        trial with one CG solve, whose adjoint warm-starts the next hypergradient; the trial's
        lower level then needs e about sqrt(decrease / (M + L_g)) instead of
        decrease / ||grad_x g||.  Needs the problem's ``hessian_lipschitz_along`` (else it is
        the first-order bracket, plus the CG).
    max_conditioning_growth : float
        A trial whose certified L / mu is more than this times its value at theta is
        backtracked without a solve (100; ``math.inf`` solves every trial;
        bilevel.outer.line_search).  A search that solved no trial at all (every step
        stiff, overflowing or degenerate) was too long, not too inexact: the next search
        goes on backtracking from where it stopped, at the same accuracy and budget, with
        the L-BFGS memory kept.

    Besides the common history columns, a row holds ``direction_certified``
    (omega <= (1 - eta) ||z|| at the accuracy used), ``search_iterations``
    (lower-level iterations spent at trial points; the rest of the row's cost went
    to hypergradients: where the cost goes), ``nonfinite_trials``, ``stiff_trials`` (trials
    backtracked unsolved, far stiffer than theta: bilevel.outer.line_search), ``memory``
    (L-BFGS pairs used for the direction; 0: -z) and, on accepted
    rows, ``next_upper_bound``: the certified upper bound on F at the new theta,
    known when the row ends.
    """

    eps0: float = 1e-1
    delta0: float = 1e-1
    alpha0: float | None = None
    rho: float = 0.5
    rho_bar: float = 10 / 9
    nu: float = 0.5
    nu_bar: float = 1.05
    eta: float = 1e-4
    lam: float | None = None
    max_backtracks: int = 5
    backtrack_growth: int = 1
    max_refinements: int = 30
    refinement: str = "predicted"
    trial_accuracy: str = "matched"
    direction_test: str = "after_failure"
    direction: str = "gradient"
    memory_size: int = 10
    eps_min: float = 1e-13
    tol: float = 1e-6
    lower_max_iter: int = 10_000
    cg_max_iter: int = 10_000
    max_conditioning_growth: float = 100.0
    value_bounds: str = "first_order"
    adaptive = True  # the fixed-accuracy baseline switches this off

    def __post_init__(self):
        check_settings(
            self, eps0=POSITIVE, delta0=POSITIVE, rho=OPEN_UNIT, rho_bar=AT_LEAST_ONE,
            nu=OPEN_UNIT, nu_bar=AT_LEAST_ONE, eta=OPEN_UNIT,
            lam=(lambda v: v is None or (OPEN_UNIT[0](v) and v < self.eta),
                 f"None or a number in (0, eta={self.eta})"),
            alpha0=(lambda v: v is None or POSITIVE[0](v), "None or a finite number > 0"),
            max_backtracks=count(1), backtrack_growth=count(0), max_refinements=count(0),
            refinement=one_of("halve", "predicted"), trial_accuracy=one_of("same", "matched"),
            direction_test=one_of("always", "after_failure"), direction=one_of("gradient", "lbfgs"),
            memory_size=count(1), eps_min=POSITIVE, tol=NONNEGATIVE,
            value_bounds=one_of("first_order", "adjoint"),
            lower_max_iter=count(1), cg_max_iter=count(1),
            max_conditioning_growth=(lambda v: v == math.inf or AT_LEAST_ONE[0](v),
                                     "a number >= 1 or math.inf"))

    @property
    def sufficient_decrease(self):
        return self.eta / 2 if self.lam is None else self.lam

    def init_state(self, problem, theta0):
        return MAIDState(theta=theta0, eps=self.eps0, delta=self.delta0,
                         alpha=math.nan if self.alpha0 is None else self.alpha0,
                         max_backtracks=self.max_backtracks,
                         certify_direction=self.direction_test == "always")

    def _trial_accuracy(self, eps, decrease, hg):
        """Lower-level accuracy of a line-search trial (see ``trial_accuracy``)."""
        if self.trial_accuracy == "same":
            return eps
        return max(eps, bracket_accuracy(hg.upper_grad_norm, hg.constants.L_g, 0.25 * decrease))

    def _direction(self, state, z):
        """(memory, H z): the memory with the newest pair, and the direction's H z."""
        memory = state.memory
        if self.direction == "gradient":
            return (), z
        if state.previous is not None:
            theta_prev, z_prev = state.previous
            memory = quasi_newton.add_pair(memory, state.theta - theta_prev, z - z_prev,
                                           self.memory_size)
        return memory, quasi_newton.direction(memory, z)

    def _margin(self, z, Hz):
        """The largest omega that certifies -H z a descent direction:
        <grad F, H z> >= <z, H z> - omega ||H z|| >= eta <z, H z>."""
        return (1 - self.eta) * float(torch.dot(z, Hz)) / max(norm(Hz), 1e-300)

    def _first_step(self, state, memory, z):
        """The line search's first trial step: where a too-long search stopped, else 1 along
        an L-BFGS direction (its natural scale), else the step carried over (HOAG's
        sqrt(dim theta) / ||z|| at the start)."""
        if state.restart_step is not None:
            return state.restart_step
        if memory:
            return 1.0
        return math.sqrt(z.numel()) / norm(z) if math.isnan(state.alpha) else state.alpha

    def _floor(self, problem, theta, x):
        """The smallest accuracy worth asking for: eps_min, or the dtype's rounding level."""
        return max(self.eps_min, certifiable_accuracy(problem, theta, x))

    def _refined(self, hg, eps, delta, margin):
        """The accuracies of the next refinement of the descent test (see ``refinement``)."""
        if self.refinement == "halve" or not finite(hg.error_bound) or not hg.terms:
            return self.nu * eps, self.nu * delta
        share = 0.25 * margin  # half the margin, split between the two
        terms = hg.terms
        adjoint = ("adjoint_solve", "hessian_adjoint")
        parts = ((eps, hg.lower.error_bound, sum(v for k, v in terms.items() if k not in adjoint)),
                 (delta, hg.linear.residual_norm, sum(terms.get(k, 0.0) for k in adjoint)))
        out = []
        for requested, certified, part in parts:
            if part <= share:
                out.append(requested)
                continue
            factor = min(self.nu, max(1e-3, share / part))
            out.append(min(requested, certified) * factor)
        return tuple(out)

    def _descent_direction(self, problem, state):
        """Step 1: tighten until -z is a certified descent direction.

        Returns (hypergradient, eps, delta, failure or None, cost of every refinement).
        """
        eps, delta, x, q, constants = state.eps, state.delta, state.x, state.q, None
        previous, nonfinite, spent, L = None, 0, Cost(), state.smoothness
        for _ in range(self.max_refinements + 1):
            hg = hypergradient(problem, state.theta, eps, delta, x0=x, q0=q,
                               constants=constants, lower_max_iter=self.lower_max_iter,
                               cg_max_iter=self.cg_max_iter, smoothness=L)
            spent += hg.cost
            L = hg.lower.smoothness or L
            # A NaN solution is no warm start: the next solve starts afresh, and a
            # hypergradient that is not finite from a fresh start ends the run.
            x, q = warm(hg.lower.x), warm(hg.linear.q)
            nonfinite = 0 if finite(norm(hg.grad), hg.error_bound) else nonfinite + 1
            if nonfinite == 2:
                return hg, eps, delta, "diverged", spent
            if previous is not None and _stalled(previous, hg):
                # The solvers spent their whole budgets without improving their
                # certificates (rounding error): tightening further only burns cost.
                return hg, eps, delta, "accuracy_floor", spent
            previous = hg
            # Certified constants may depend on x~ (e.g. ||B(x~)||) and are cheap: recompute
            # them at the new x~.  Estimated ones are costly and no truer near x~: reuse.
            constants = None if hg.constants.certified else hg.constants
            z_norm = norm(hg.grad)
            usable = finite(z_norm, hg.error_bound)
            if not state.certify_direction and finite(z_norm) and z_norm > 0:
                # Search first (the direction is certified only after a failure), with
                # F(theta) known well enough for the first trial's decrease to show.
                memory, Hz = self._direction(state, hg.grad)
                alpha = self._first_step(state, memory, hg.grad)
                need = self._trial_accuracy(0.0, alpha * float(torch.dot(hg.grad, Hz)), hg)
                floor = self._floor(problem, state.theta, hg.lower.x)
                if hg.lower.error_bound <= need or eps <= floor:
                    return hg, eps, delta, None, spent
                eps = max(min(self.nu * eps, need), floor)
                continue
            margin = self._margin(hg.grad, self._direction(state, hg.grad)[1]) \
                if usable and z_norm > 0 else 0.0
            if usable and (z_norm + hg.error_bound <= self.tol or hg.error_bound <= margin
                           or not self.adaptive):
                return hg, eps, delta, None, spent
            if not self.adaptive:
                return hg, eps, delta, "diverged", spent
            eps, delta = self._refined(hg, eps, delta, margin) if usable \
                else (self.nu * eps, self.nu * delta)
            if eps < self._floor(problem, state.theta, hg.lower.x):
                return hg, eps, delta, "accuracy_floor", spent
        return hg, eps, delta, "refinement_limit", spent

    def update(self, problem, state):
        hg, eps, delta, failure, spent = self._descent_direction(problem, state)
        z, z_norm, omega = hg.grad, norm(hg.grad), hg.error_bound
        memory, Hz = self._direction(state, z) if finite(z_norm) else ((), z)
        row = dict(upper_value=hg.upper_value, grad_norm=z_norm, error_bound=omega,
                   certified=hg.certified, eps=eps, delta=delta, memory=len(memory),
                   direction_certified=bool(finite(z_norm) and z_norm > 0
                                            and omega <= self._margin(z, Hz)))
        state = dataclasses.replace(handed_on(state, hg.lower), x=warm(hg.lower.x),
                                    q=warm(hg.linear.q), eps=eps, delta=delta,
                                    iteration=state.iteration + 1)
        stop = None
        if failure is not None:
            stop = failure, self._failure_message(problem, state, hg, failure, eps)
        elif z_norm + omega <= self.tol:
            stop = "converged", converged_message(z_norm, omega, self.tol, hg.certified)
        if stop is not None:
            return (dataclasses.replace(state, status=stop[0], message=stop[1]),
                    {**row, **LineSearch().row(), "spent": spent})
        if math.isnan(state.alpha):  # alpha0=None: HOAG's first step
            state = dataclasses.replace(state, alpha=math.sqrt(z.numel()) / z_norm)

        # Step 2: backtracking with certified bounds on F at both ends.
        L_g = hg.constants.L_g
        slope = float(torch.dot(z, Hz))  # <z, H z> > 0
        lower_now, accuracy, bracket = value_bracket.for_search(
            problem, state.theta, hg, slope, self.cg_max_iter,
            lambda step: self._trial_accuracy(eps, step * slope, hg), self.value_bounds)
        first = self._first_step(state, memory, z)
        search = certified_line_search(
            problem, state.theta, Hz, slope, first=first,
            rho=self.rho, backtracks=state.max_backtracks, lam=self.sufficient_decrease,
            lower_now=lower_now, L_g=L_g, x0=state.x, lower_max_iter=self.lower_max_iter,
            smoothness=state.smoothness, max_conditioning_growth=self.max_conditioning_growth,
            accuracy=accuracy, bracket=bracket)
        row = {**row, **search.row(), "spent": spent + search.cost}
        if search.accepted:
            q = state.q if search.q is None else search.q
            return dataclasses.replace(
                handed_on(state, search), theta=search.theta, x=search.x, q=q,
                alpha=state.alpha if memory else self.rho_bar * search.step,
                eps=self.nu_bar * eps, delta=self.nu_bar * delta,
                certify_direction=self.direction_test == "always", memory=memory,
                previous=(state.theta, z) if self.direction == "lbfgs" else None,
                restart_step=None), row
        if search.too_long:
            return dataclasses.replace(
                state, restart_step=first * self.rho ** search.backtracks), row
        return self._after_failure(problem, state, hg, memory), row

    def _failure_message(self, problem, state, hg, failure, eps):
        floor = self._floor(problem, state.theta, hg.lower.x)
        return {
            "accuracy_floor": f"no descent direction certified down to eps={eps:.2e} "
                              f"(the floor: eps_min={self.eps_min:g} or what "
                              f"{hg.lower.x.dtype} can certify, {floor:.1e}; "
                              "or the solvers' certificates stalled at their budgets)",
            "refinement_limit": f"{self.max_refinements} accuracy refinements (down to "
                                f"eps={eps:.2e}) did not certify a descent direction",
            "diverged": "the hypergradient is not finite (twice, the second time from "
                        "fresh warm starts)",
        }[failure] + f" (omega={hg.error_bound:.3e}, ||z||={norm(hg.grad):.3e})"

    def _after_failure(self, problem, state, hg, memory):
        """Step 3: tighten accuracy, grow the budget, retry at the same theta."""
        eps, delta = state.eps, state.delta
        if not self.adaptive:
            return dataclasses.replace(state, status="line_search_failed", message=(
                f"the line search failed at fixed accuracy eps={eps:g}: the "
                "certified bounds cannot show further decrease"))
        if memory:
            # The curvature model misled the search (inexact pairs, a region of other
            # curvature): drop it and search along -z, certified a descent direction first
            # (from the accuracy at hand, not a tighter one).  Without it, pairs built from
            # hypergradients whose errors dwarf their differences can fail every L-BFGS
            # search while each -z search succeeds, and the accuracy never tightens.
            return dataclasses.replace(state, memory=(), previous=None, restart_step=None,
                                       certify_direction=True)
        failed = dataclasses.replace(state, eps=self.nu * eps, delta=self.nu * delta,
                                     max_backtracks=state.max_backtracks + self.backtrack_growth,
                                     certify_direction=True)
        if not (hg.lower.converged and hg.linear.converged):
            # The solvers already missed the current accuracy within their budgets
            # (lower_max_iter, cg_max_iter): asking for more only burns cost.
            return dataclasses.replace(failed, status="accuracy_floor", message=(
                f"the line search needs more accuracy than the solvers reach: their "
                f"certificates stalled at eps={hg.lower.error_bound:.2e}, "
                f"delta={hg.linear.residual_norm:.2e} (requested {eps:.2e}, {delta:.2e}) "
                "within lower_max_iter / cg_max_iter"))
        floor = self._floor(problem, state.theta, hg.lower.x)
        if failed.eps < floor:
            return dataclasses.replace(
                failed, status="accuracy_floor",
                message=f"line search failed down to the accuracy floor {floor:.1e} "
                        f"(eps_min={self.eps_min:g}, or the rounding level of "
                        f"{hg.lower.x.dtype})")
        return failed


#: The paper's values of the settings where :class:`MAID`'s defaults differ.
PAPER = dict(alpha0=1e-2, refinement="halve", trial_accuracy="same", direction_test="always")


@dataclasses.dataclass(frozen=True)
class FixedAccuracy(MAID):
    """The same certified line search with eps and delta never changed.

    Without adaptivity a failed line search cannot be repaired, so the run
    stops there with status 'line_search_failed': the accuracy was too loose
    for the loss level reached.
    """

    eps0: float = 1e-3
    delta0: float = 1e-3
    nu_bar: float = 1.0
    # The paper's baseline: one accuracy everywhere, the direction tested every time.
    alpha0: float | None = 1e-2
    refinement: str = "halve"
    trial_accuracy: str = "same"
    direction_test: str = "always"
    adaptive = False
