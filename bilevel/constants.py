"""Constants of the hypergradient error bound, and their numerical estimates.

ALGORITHMS.md section 3: with x~ certified ||x~ - x*|| <= eps and CG stopped at
residual delta,

    ||z - grad F|| <= omega = c eps + (||B|| / mu) delta + (L_B L_g / mu) eps^2
    c = L_g ||B|| / mu + L_Ainv ||grad_x g(x~)|| ||B|| + L_B ||grad_x g(x~)|| / mu
        + L_gtheta,

where the last term of c covers an upper loss that reads theta directly
(grad_theta g moves with x at rate L_gtheta; it is 0 when g ignores theta).
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
    certified: bool = True
    cost: int = 0

    def omega(self, eps: float, delta: float, mu: float, grad_x_norm: float,
              hessian_along: float | None = None) -> float:
        """The a-posteriori bound on ||z - grad F(theta)||.

        ``hessian_along`` is the problem's M of
        :meth:`~bilevel.BilevelProblem.hessian_lipschitz_along`, if any: the
        Hessian term is then the smaller of its two valid bounds.
        """
        hessian = self.L_Ainv * grad_x_norm * self.B_norm
        if hessian_along is not None:
            hessian = min(hessian, self.B_norm * hessian_along / mu)
        c = (self.L_g * self.B_norm / mu
             + hessian
             + self.L_B * grad_x_norm / mu
             + self.L_gtheta)
        return c * eps + self.B_norm / mu * delta + self.L_B * self.L_g / mu * eps ** 2


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
