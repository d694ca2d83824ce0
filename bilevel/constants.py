"""Constants of the hypergradient error bound, and their numerical estimates.

docs/certificates.md, section "The hypergradient bound": with x~ certified
||x~ - x*|| <= eps, q~ the CG solution with residual delta, and the exact
adjoints q^ = A(x~)^{-1} grad_x g(x~), q* = A(x*)^{-1} grad_x g(x*),

    z - grad F = [grad_theta g(x~) - grad_theta g(x*)]        <= L_gtheta eps
                 - B(x~)^T (q~ - q^)                           <= K delta
                 - B(x~)^T A(x*)^{-1} (grad_x g(x~) - grad_x g(x*))   <= K L_g eps
                 - B(x~)^T A(x*)^{-1} (A(x*) - A(x~)) q^       <= H eps
                 - (B(x~) - B(x*))^T q*                        <= N eps

K bounds ||A(x')^{-1} B(x~)|| for x' in {x~, x*} (default ||B|| / mu; a problem
may give a sharper ``sensitivity``).  H is the smaller of L_Ainv ||grad_x g|| ||B||
and K M, with M the problem's ``hessian_lipschitz_along`` (a bound on
||(A(x') - A(x~)) q'|| / ||x' - x~|| for the q' near q~ at hand).  N is the
problem's ``mixed_lipschitz_along`` when given, else L_B times a bound on ||q*||:
the smaller of (||grad_x g|| + L_g eps) / mu and ||q~|| + ||q~ - q*||.  With no
local information this is the bound of the paper,

    omega = c eps + (||B|| / mu) delta + (L_B L_g / mu) eps^2,
    c = L_g ||B|| / mu + L_Ainv ||grad_x g|| ||B|| + L_B ||grad_x g|| / mu + L_gtheta,

and every local quantity can only lower it.
"""
from __future__ import annotations

import dataclasses
import math

import torch


@dataclasses.dataclass(frozen=True)
class BoundConstants:
    """Constants of the hypergradient bound near the current point.

    ``problem.bound_constants(theta, x~)`` is called at the approximate solution
    x~ and recomputed whenever x~ changes; the constants need only hold on the
    segment between x~ and x*(theta) (a ball of radius eps around x~), not
    globally.  So ||B|| may be ||B(x~)|| itself, and the Lipschitz constants may
    be local ones on that ball.

    Attributes
    ----------
    L_g : float
        Lipschitz constant of grad_x g (in x).
    B_norm : float
        Bound on the operator norm of the mixed derivative B near x*.
    L_B : float
        Lipschitz constant of x -> B(x) between x~ and x*.
    L_Ainv : float
        Lipschitz constant of x -> A(x)^{-1} between x~ and x* (<= L_A / mu^2).
    L_gtheta : float
        Lipschitz constant of x -> grad_theta g(x, theta); 0 if g ignores theta.
    sensitivity : float, optional
        A bound K on ||A(x')^{-1} B(x~)|| for x' = x~ and every x' within eps of
        x~ (the norm of the solution map's derivative dx*/dtheta = -A^{-1} B).
        None means ||B|| / mu; give it where the curvature is larger along the
        directions B reaches than mu (e.g. ridges of different weights).
    certified : bool
        True when every constant is a proven bound, False when any is estimated.
    cost : int
        Oracle calls spent to obtain them (0 for closed forms).
    """

    L_g: float
    B_norm: float
    L_B: float = 0.0
    L_Ainv: float = 0.0
    L_gtheta: float = 0.0
    sensitivity: float | None = None
    certified: bool = True
    cost: int = 0

    def solution_sensitivity(self, mu: float) -> float:
        """K >= ||A(x')^{-1} B(x~)||: ``sensitivity`` if given (and smaller), else ||B|| / mu."""
        plain = self.B_norm / mu
        return plain if self.sensitivity is None else min(plain, self.sensitivity)

    def _hessian_rates(self, mu, grad_x_norm, hessian_along):
        """Per unit eps: rates of ||(A(x~)^{-1} - A(x*)^{-1}) grad_x g|| and of its B^T image."""
        adjoint = self.L_Ainv * grad_x_norm
        image = adjoint * self.B_norm
        if hessian_along is not None:
            adjoint = min(adjoint, hessian_along / mu)
            image = min(image, self.solution_sensitivity(mu) * hessian_along)
        return adjoint, image

    def adjoint_radius(self, eps: float, delta: float, mu: float, grad_x_norm: float,
                       hessian_along: float | None = None) -> float:
        """A bound on ||q~ - q*||: delta / mu (CG) plus the move of the exact adjoint.

        q^ - q* = A(x*)^{-1} [(grad_x g(x~) - grad_x g(x*)) - (A(x*) - A(x~)) q^].
        """
        adjoint_rate, _ = self._hessian_rates(mu, grad_x_norm, hessian_along)
        return delta / mu + (self.L_g / mu + adjoint_rate) * eps

    def omega_terms(self, eps: float, delta: float, mu: float, grad_x_norm: float,
                    hessian_along: float | None = None, adjoint_norm: float | None = None,
                    mixed_along: float | None = None,
                    hessian_at_q: float | None = None) -> dict:
        """The terms of the bound (module docstring), by name; omega is their sum.

        ``hessian_along`` is the problem's M
        (:meth:`~bilevel.BilevelProblem.hessian_lipschitz_along`), ``adjoint_norm``
        is ||q~||, ``mixed_along`` the problem's N
        (:meth:`~bilevel.BilevelProblem.mixed_lipschitz_along`); each is optional
        and only ever lowers the bound.  ``hessian_at_q`` is M at radius 0 (at q~
        itself): it splits the Hessian term into the part at q~ ('hessian') and
        the part due to the CG residual ('hessian_adjoint'), which tightening
        delta, not eps, removes.  The sum does not depend on it.
        """
        K = self.solution_sensitivity(mu)
        _, hessian_rate = self._hessian_rates(mu, grad_x_norm, hessian_along)
        q_star = (grad_x_norm + self.L_g * eps) / mu
        if adjoint_norm is not None:
            q_star = min(q_star, adjoint_norm + self.adjoint_radius(eps, delta, mu, grad_x_norm,
                                                                     hessian_along))
        mixed = self.L_B * q_star
        if mixed_along is not None:
            mixed = min(mixed, mixed_along)
        at_q = hessian_rate
        if hessian_at_q is not None and hessian_along is not None:
            at_q = min(hessian_rate, self._hessian_rates(mu, grad_x_norm, hessian_at_q)[1])
        return dict(upper_theta=self.L_gtheta * eps, adjoint_solve=K * delta,
                    upper_grad=K * self.L_g * eps, hessian=at_q * eps,
                    hessian_adjoint=(hessian_rate - at_q) * eps, mixed=mixed * eps)

    def omega(self, eps: float, delta: float, mu: float, grad_x_norm: float,
              hessian_along: float | None = None, adjoint_norm: float | None = None,
              mixed_along: float | None = None) -> float:
        """The a-posteriori bound on ||z - grad F(theta)|| (the sum of :meth:`omega_terms`)."""
        return sum(self.omega_terms(eps, delta, mu, grad_x_norm, hessian_along, adjoint_norm,
                                    mixed_along).values())


def _unit(like, generator):
    v = torch.randn(like.shape, generator=generator, dtype=like.dtype).to(like.device)
    return v / v.norm()


def _power(apply, v, iterations):
    """Largest eigenvalue of a symmetric PSD operator by power iteration."""
    value = 0.0
    for _ in range(iterations):
        w = apply(v)
        value = float(w.norm())
        if value == 0.0:
            return 0.0
        v = w / value
    return value


def _upper_hvp(problem, x, theta, v):
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        (gx,) = torch.autograd.grad(problem.upper_objective(x, theta), x, create_graph=True)
        (hv,) = torch.autograd.grad(gx, x, grad_outputs=v, allow_unused=True)
    return torch.zeros_like(x) if hv is None else hv


def _mixed_jvp(problem, x, theta, u):
    """B u = d/dt grad_x h(x, theta + t u), by double backward."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        theta = theta.detach().requires_grad_(True)
        (gt,) = torch.autograd.grad(problem.lower_objective(x, theta), theta,
                                    create_graph=True)
        (bu,) = torch.autograd.grad(gt, x, grad_outputs=u, allow_unused=True)
    return torch.zeros_like(x) if bu is None else bu


def estimate_bound_constants(problem, theta, x, *, iterations=15, probes=3, seed=0,
                             safety=2.0) -> BoundConstants:
    """Estimate the bound constants near ``x`` numerically; never certified.

    L_g and ||B|| by power iteration (autograd second derivatives); L_B, L_A and
    L_gtheta by finite differences of the operators along a few random
    directions at a step comparable to the accuracies MAID uses.  Power
    iteration and sampled differences approach their targets from below, so
    the Lipschitz estimates are multiplied by ``safety``.  Every derivative
    evaluation is counted in ``cost``.
    """
    gen = torch.Generator().manual_seed(seed)
    theta = theta.detach()
    x = x.detach()
    cost = 0

    L_g = _power(lambda v: _upper_hvp(problem, x, theta, v), _unit(x, gen), iterations)
    cost += iterations
    B_norm = math.sqrt(_power(
        lambda u: problem.mixed_vjp(x, theta, _mixed_jvp(problem, x, theta, u)),
        _unit(theta, gen), iterations))
    cost += 2 * iterations

    mu = problem.check_mu(theta)
    step = 1e-3 * max(1.0, float(x.norm()) / math.sqrt(x.numel()))
    L_B = L_A = L_gt = 0.0
    reads_theta = problem.upper_depends_on_theta()
    for _ in range(probes):
        d = _unit(x, gen) * step
        w, v = _unit(x, gen), _unit(x, gen)
        L_B = max(L_B, float((problem.mixed_vjp(x + d, theta, w)
                              - problem.mixed_vjp(x - d, theta, w)).norm()) / (2 * step))
        L_A = max(L_A, float((problem.lower_hvp(x + d, theta, v)
                              - problem.lower_hvp(x - d, theta, v)).norm()) / (2 * step))
        cost += 4
        if reads_theta:
            L_gt = max(L_gt, float((problem.upper_grads(x + d, theta)[2]
                                    - problem.upper_grads(x - d, theta)[2]).norm()) / (2 * step))
            cost += 2
    return BoundConstants(L_g=safety * L_g, B_norm=safety * B_norm, L_B=safety * L_B,
                          L_Ainv=safety * L_A / mu ** 2, L_gtheta=safety * L_gt,
                          certified=False, cost=cost)
