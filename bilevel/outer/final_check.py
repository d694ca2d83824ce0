"""The minibatch method's final check: what a run certifies about F itself.

A run of ``method="maid_sgd"`` certifies its batches only (docs/certificates.md,
section 8).  At the end, one full-batch certified hypergradient at the returned theta
bounds F(theta) and ||grad F(theta)||.  With ``average`` > 0 it is taken at the last
iterate and at the moving average of the iterates, and the result's theta is the one with
the lower certified upper bound on F: the choice rests on the full training loss.

``final_check="loss"`` does not refine the hypergradient until omega <= rel_error ||z||:
near a stationary point ||z|| is small, and that refinement asks for lower-level accuracies
(1e-8 on 800 crops of a weakly convex ridge) that can cost more than the training did.  It
solves the lower level only as far as F's certified bracket needs to have relative
half-width ``final_loss_rtol`` (1e-5: enough to choose between the iterate and the average,
whose F differ by 1e-3 to 1e-4 on the runs of results/denoisers): it starts at the accuracy
30 rtol |g| / ||grad_x g|| read at the warm starts (the first-order guess, 30 times looser),
and tightens it only if the solved bracket is wider.  The second candidate starts at the
accuracy the first ended at (their F lie a few 1e-3 apart, so the first-order guess would
pay the same tightenings again).  The bracket is the second-order one
of :mod:`bilevel.value_bracket`, read from the hypergradient's own adjoint (its width
falls like e^2, not e, so the tightening is by the square root of the shortfall).  Its
bounds are as certified; the one on ||grad F|| may then read [0, ||z|| + omega].
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time

import torch

from ..cost import Cost
from ..hypergradient import certifiable_accuracy, hypergradient, upper_value
from ..value_bracket import hypergradient_bounds
from .base import degenerate, finite, norm, warm
from .batch_accuracy import refined
from .batches import layout

#: The first accuracy of the 'loss' check, as a multiple of the first-order guess
#: rtol |g| / ||grad_x g||: the second-order bracket is narrow enough far above it (on the
#: tests' WCRR and TV minibatch runs 30x saved 27% of the check; 300x needed a refinement).
SECOND_ORDER_START = 30.0


def finish(method, problem, result, progress=False):
    """The final check of ``method`` (a :class:`MinibatchMAID`) on ``result``
    (module docstring); ``progress``: a line on stderr as each candidate's check starts
    and ends (on a large set each is a solve of every sample, minutes)."""
    state = result.state
    if not method.final_check or result.status == "interrupted":
        return result
    if state.final_check:  # a checked run, resumed as it was: its choice stands
        return dataclasses.replace(result, theta=chosen(state))
    candidates = {"last iterate": state.theta}
    average = state.theta_average
    if average is not None and not torch.equal(average, state.theta) \
            and degenerate(problem, average) is None:
        candidates["average"] = average
    checked, start = {}, None
    try:
        for name, theta in candidates.items():
            checked[name] = _reported(progress, name, _check, method, problem, state, theta,
                                      start)
            # The candidates lie close (F a few 1e-3 apart): the next starts at the
            # accuracy this one ended at, not at a first-order guess that needs tightening.
            start = checked[name][0]["eps"]
    except KeyboardInterrupt:  # the run itself is complete: keep it
        return dataclasses.replace(result, message=f"{result.message}; the final check "
                                   "was interrupted (KeyboardInterrupt)")
    checks = {name: check for name, (check, _) in checked.items()}
    name = min(checks, key=lambda k: checks[k]["upper_bound"])  # ties: the last iterate
    spent = sum((cost for _, cost in checked.values()), Cost())
    check = dict(checks[name], theta=name, **spent.as_row())
    if len(checks) > 1:
        check["candidates"] = checks
    kind = "certified" if all(c["certified"] for c in checks.values()) else \
        "estimated (bound constants are estimates)"
    if method.final_check == "loss":
        kind += (f", F to {method.final_loss_rtol:g} relative: the gradient's direction not "
                 "refined")
    low, high, z_norm, omega = (check[k] for k in ("lower_bound", "upper_bound",
                                                   "grad_norm", "error_bound"))
    choice = "" if len(checks) == 1 else " F at the " + ", at the ".join(
        f"{k} in [{c['lower_bound']:.6g}, {c['upper_bound']:.6g}]"
        for k, c in checks.items()) + f"; theta is the {name}:"
    message = (f"{result.message}; final check on all {check['samples']} samples ({kind})"
               f":{choice} F(theta) in [{low:.6g}, {high:.6g}], ||grad F(theta)|| in "
               f"[{max(z_norm - omega, 0):.3e}, {z_norm + omega:.3e}] (||z|| = "
               f"{z_norm:.3e}, omega = {omega:.3e}); it cost {spent.total} lower + CG "
               "iterations, not in the history")
    # The warm starts stay the run's own, so that a resumed run ends where an
    # uninterrupted one would.
    state = dataclasses.replace(state, final_check=check)
    return dataclasses.replace(result, theta=chosen(state), state=state, message=message)


def _check(method, problem, state, theta, start=None):
    """One full-batch certified hypergradient at ``theta``: (bounds on F and its
    gradient, with the check's own cost, the cost); ``start``: the 'loss' check's first
    lower-level accuracy (None: the first-order guess)."""
    _, n_all, b, world, _ = layout(problem, method.batch_size)
    # The batches' accuracy per sample: over all samples the norm is sqrt(N / B) larger.
    scale = math.sqrt(n_all / (b * world))
    refine = method.final_check is True
    if refine:
        hg, _, _, _, spent = refined(method, problem, theta, scale * state.eps,
                                     scale * state.delta, state.x, state.q,
                                     state.smoothness, True, None)
    else:
        hg, spent = _bracketed(method, problem, theta, scale * method.eps0, state, start)
    low, high = hypergradient_bounds(problem, theta, hg)
    return dict(upper_value=hg.upper_value, lower_bound=low, upper_bound=high,
                grad_norm=norm(hg.grad), error_bound=hg.error_bound,
                certified=hg.certified, refined=refine, eps=hg.lower.error_bound,
                delta=hg.linear.residual_norm, samples=n_all, **spent.as_row()), spent


def _reported(progress, name, check, *args):
    """``check(*args)``, announced on stderr if ``progress``."""
    if not progress:
        return check(*args)
    started = time.perf_counter()
    print(f"final check at the {name}: a full-batch certified hypergradient ...",
          file=sys.stderr, flush=True)
    bounds, spent = check(*args)
    print(f"final check at the {name}: F in [{bounds['lower_bound']:.6g}, "
          f"{bounds['upper_bound']:.6g}], {spent.total} lower + CG iterations, "
          f"{time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return bounds, spent


def _bracketed(method, problem, theta, loosest, state, start=None):
    """The full-batch hypergradient at a lower-level accuracy (at most ``loosest``; the
    first one ``start``, or the first-order guess) at which F's certified bracket has
    half-width final_loss_rtol |g| (module docstring): (hg, cost)."""
    spent, x0, q0, L = Cost(), state.x, state.q, state.smoothness
    if start is None or not 0 < start < math.inf:
        # A guess from the warm starts (solutions at earlier thetas); the solve's own
        # bracket decides.
        value, grad_norm = upper_value(problem, x0, theta)
        start = method.final_loss_rtol * abs(value) / grad_norm if grad_norm > 0 \
            else math.inf
        start *= SECOND_ORDER_START
    eps = min(start, loosest)
    for _ in range(method.max_refinements + 1):
        # CG at the lower level's accuracy (in the ratio of the first accuracies), not at
        # the batches' last delta: that was 3e-11 on 2000 crops, half an hour of CG for a
        # gradient bound this check does not refine.
        delta = eps * method.delta0 / method.eps0
        hg = hypergradient(problem, theta, eps, delta, x0=x0, q0=q0, smoothness=L,
                           lower_max_iter=method.lower_max_iter, cg_max_iter=method.cg_max_iter)
        spent, L = spent + hg.cost, hg.lower.smoothness or L
        x0, q0 = warm(hg.lower.x), warm(hg.linear.q)
        low, high = hypergradient_bounds(problem, theta, hg)
        budget = method.final_loss_rtol * abs(hg.upper_value)
        floor = max(method.eps_min, certifiable_accuracy(problem, theta, hg.lower.x))
        if 0.5 * (high - low) <= budget or not finite(high - low) or eps <= floor \
                or not (hg.lower.converged and hg.linear.converged):
            break  # done, or the solvers cannot certify more (rounding, budgets)
        # the bracket's width falls like eps^2: the square root of the shortfall, with room
        shortfall = budget / (0.5 * (high - low))
        eps = max(min(method.nu, max(1e-3, 0.8 * math.sqrt(shortfall))) * eps, floor)
    return hg, spent


def chosen(state):
    """The theta a final check chose: the moving average or the last iterate."""
    return state.theta_average if state.final_check.get("theta") == "average" else state.theta
