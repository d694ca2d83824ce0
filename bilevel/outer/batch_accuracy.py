"""How accurately a minibatch step solves its batch (``maid_sgd``'s ``accuracy``).

A batch's hypergradient is refined until the step's direction is certified where the
method asks for it (omega <= rel_error <z, d> / ||d||) and, before a line search, until
the batch loss is certified well enough for the first trial's decrease to show (MAID's
'matched' accuracy, docs/certificates.md, section 5).  Each function takes the method's
settings (:class:`bilevel.outer.minibatch.MinibatchMAID`) as ``settings``.
"""
from __future__ import annotations

import math

import torch

from .. import value_bracket
from ..cost import Cost
from ..hypergradient import bracket_accuracy, certifiable_accuracy, hypergradient
from .base import finite, norm, warm


def refined(settings, problem, theta, eps, delta, x0, q0, L, certify, first, direction=None):
    """The hypergradient, refined until the step's direction d = ``direction(z)`` (default
    z) is certified (omega <= rel_error <z, d> / ||d||, if ``certify``) and, before a
    search (``first(d)``: its first step), g well enough for the first trial's decrease to
    show: (hg, eps, delta, refinements, spent)."""
    spent, refinements = Cost(), 0
    for refinements in range(settings.max_refinements + 1):  # noqa: B007 - returned
        hg = hypergradient(problem, theta, eps, delta, x0=x0, q0=q0, smoothness=L,
                           lower_max_iter=settings.lower_max_iter,
                           cg_max_iter=settings.cg_max_iter, bound=settings.batch_bounds)
        spent, L = spent + hg.cost, hg.lower.smoothness or L
        x0, q0 = warm(hg.lower.x), warm(hg.linear.q)
        z_norm, omega = norm(hg.grad), hg.error_bound
        if not (finite(z_norm, omega) and settings.batch_bounds):
            break  # not finite, or nothing to refine on
        d = hg.grad if direction is None else direction(hg.grad)
        slope, margin = slope_and_margin(hg.grad, d)
        target = settings.rel_error * margin
        floor = max(settings.eps_min, certifiable_accuracy(problem, theta, hg.lower.x))
        need = math.inf if first is None or z_norm == 0 else \
            needed(settings, hg, first(d) * slope)
        descent = not certify or omega <= target
        if (descent and hg.lower.error_bound <= need) or eps <= floor \
                or not (hg.lower.converged and hg.linear.converged):
            break  # done, or the solvers cannot certify more (rounding, budgets)
        if not descent:
            eps, delta = rescaled(settings, hg, eps, delta, target)
        if hg.lower.error_bound > need:
            eps = min(eps, settings.nu * need)
        eps = max(eps, floor)
    return hg, eps, delta, refinements, spent


def rescaled(settings, hg, eps, delta, target):
    """(eps, delta), each scaled by what its own terms of omega need: refined where they
    exceed half of ``target``, relaxed (at most 2x) where they are far below."""
    adjoint = ("adjoint_solve", "hessian_adjoint")
    parts = ((eps, hg.lower.error_bound,
              sum(v for k, v in hg.terms.items() if k not in adjoint)),
             (delta, hg.linear.residual_norm, sum(hg.terms.get(k, 0.0) for k in adjoint)))
    out = []
    for (requested, certified, part), loosest in zip(parts, (settings.eps0, settings.delta0),
                                                     strict=True):
        share = 0.5 * target
        if part > share:  # refine from what the solve certified, as MAID does
            out.append(min(requested, certified) * min(settings.nu, max(1e-3, share / part)))
        else:  # never looser than the start: a flat batch (z = 0) says nothing
            relax = min(2.0, max(1.0, 0.25 * target / max(part, 1e-300)))
            out.append(max(requested, min(requested * relax, loosest)))
    return tuple(out)


def needed(settings, hg, decrease):
    """The lower-level accuracy at theta at which its bound on F leaves the first trial's
    ``decrease`` visible: MAID's 'matched' one, or with ``value_bounds='adjoint'`` the
    looser one of the second-order bracket (:func:`bilevel.value_bracket.accuracy_for`)."""
    need = matched(hg, decrease)
    if settings.value_bounds == "adjoint":
        need = max(need, value_bracket.accuracy_for(hg, decrease))
    return need


def matched(hg, decrease):
    """The lower-level accuracy e at which the bounds' slack ||grad_x g|| e + L_g e^2 / 2
    is a quarter of ``decrease`` (MAID's 'matched' trial accuracy)."""
    return bracket_accuracy(hg.upper_grad_norm, hg.constants.L_g, 0.25 * decrease)


def slope_and_margin(z, d):
    """(<z, d>, <z, d> / ||d||): the decrease rate along -d, and the error in z that still
    leaves -d a descent direction (0 for z = 0)."""
    slope = float(torch.dot(z.flatten(), d.flatten()))
    return slope, slope / norm(d) if slope > 0 else 0.0
