"""The minibatch method's final check: what a run certifies about F itself.

A run of ``method="maid_sgd"`` certifies its batches only (docs/certificates.md,
section 8).  At the end, one full-batch certified hypergradient at the returned theta
bounds F(theta) and ||grad F(theta)||.  With ``average`` > 0 it is taken at the last
iterate and at the moving average of the iterates, and the result's theta is the one with
the lower certified upper bound on F: the choice rests on the full training loss.

``final_check="loss"`` takes that hypergradient once, at the batches' last accuracy
(scaled to all samples), instead of refining it until omega <= rel_error ||z||: near a
stationary point ||z|| is small, and the refinement asks for lower-level accuracies (1e-8
on 800 crops of a weakly convex ridge) that can cost more than the training did.  Its
bounds are as certified; the one on ||grad F|| may then read [0, ||z|| + omega].
"""
from __future__ import annotations

import dataclasses
import math

import torch

from ..cost import Cost
from ..hypergradient import upper_bounds
from .base import degenerate, norm


def finish(method, problem, result):
    """The final check of ``method`` (a :class:`MinibatchMAID`) on ``result``
    (module docstring)."""
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
    try:
        checked = {name: _check(method, problem, state, theta)
                   for name, theta in candidates.items()}
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
        kind += ", at the batches' accuracy: the gradient's direction not refined"
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


def _check(method, problem, state, theta):
    """One full-batch certified hypergradient at ``theta``: (bounds on F and its
    gradient, with the check's own cost, the cost)."""
    _, n_all, b, world, _ = method._layout(problem)
    # The batches' accuracy per sample: over all samples the norm is sqrt(N / B) larger.
    scale = math.sqrt(n_all / (b * world))
    refine = method.final_check is True
    hg, _, _, _, spent = method._refined(problem, theta, scale * state.eps, scale * state.delta,
                                         state.x, state.q, state.smoothness, refine, None)
    low, high = upper_bounds(hg.upper_value, hg.upper_grad_norm, hg.lower.error_bound,
                             hg.constants.L_g, problem.upper_convex_in_x)
    return dict(upper_value=hg.upper_value, lower_bound=low, upper_bound=high,
                grad_norm=norm(hg.grad), error_bound=hg.error_bound,
                certified=hg.certified, refined=refine, eps=hg.lower.error_bound,
                delta=hg.linear.residual_norm, samples=n_all, **spent.as_row()), spent


def chosen(state):
    """The theta a final check chose: the moving average or the last iterate."""
    return state.theta_average if state.final_check.get("theta") == "average" else state.theta
