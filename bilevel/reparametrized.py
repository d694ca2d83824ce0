r"""Learning a few directions of a problem's theta: theta = theta_base + M phi.

A prior learned once (a field of experts on denoising, say) has hundreds of
parameters; for a new operator or noise level one often learns only a few scalars
(its overall weight, its smoothing) and keeps the rest.  :class:`Reparametrized`
is that problem: the same lower and upper levels, hyperparameters phi in R^k and
theta(phi) = theta_base + M phi with a fixed (dim theta x k) matrix M.

Every derivative is the base problem's, composed with the linear map (chain rule):
d/dphi = M^T d/dtheta, so B_phi = B_theta M and grad_phi g = M^T grad_theta g.  The
certified constants follow from ||B_theta M|| <= ||B_theta|| ||M||
(docs/certificates.md, section 2): B_norm, L_B, L_gtheta, the sensitivity K and
``mixed_lipschitz_along`` scale by ||M|| (its largest singular value, computed
exactly); mu, L, L_g, L_Ainv and ``hessian_lipschitz_along`` read x only and are
unchanged.  The lower-level solver, its warm starts and preconditioner are the
base problem's.
"""
from __future__ import annotations

import dataclasses
import math

import torch

from .problem import BilevelProblem


class Reparametrized(BilevelProblem):
    """``problem`` with theta = theta_base + M phi and hyperparameters phi.

    Parameters
    ----------
    problem : BilevelProblem
        The base problem.
    basis : tensor (dim theta, k)
        M.  Columns of unit vectors pick entries of theta; a column of ones on
        several entries moves them together (e.g. every log smoothing at once).
    theta_base : tensor, optional
        Default ``problem.initial_theta()``.
    phi0 : tensor (k,), optional
        Starting phi (default 0: start at theta_base).
    """

    def __init__(self, problem, basis, theta_base=None, phi0=None):
        if not isinstance(problem, BilevelProblem):
            raise TypeError(f"Reparametrized: problem must be a BilevelProblem, got "
                            f"{type(problem).__name__}")
        base = problem.initial_theta() if theta_base is None else theta_base
        base = torch.as_tensor(base, dtype=problem.dtype, device=problem.device).flatten()
        M = torch.as_tensor(basis, dtype=problem.dtype, device=problem.device)
        if M.ndim == 1:
            M = M.view(-1, 1)
        if M.ndim != 2 or M.shape[0] != base.numel() or M.shape[1] < 1:
            raise ValueError(f"Reparametrized: basis must be (dim theta = {base.numel()}, k), "
                             f"got shape {tuple(M.shape)}")
        if not (torch.isfinite(M).all() and torch.isfinite(base).all()):
            raise ValueError("Reparametrized: basis and theta_base must be finite")
        phi0 = torch.zeros(M.shape[1], dtype=M.dtype, device=M.device) if phi0 is None else \
            torch.as_tensor(phi0, dtype=M.dtype, device=M.device).flatten()
        if phi0.shape != (M.shape[1],):
            raise ValueError(f"Reparametrized: phi0 must have {M.shape[1]} entries, got shape "
                             f"{tuple(phi0.shape)}")
        self.problem, self.basis, self.theta_base, self.phi0 = problem, M, base, phi0
        self.basis_norm = float(torch.linalg.matrix_norm(M.double(), ord=2)) * (1 + 1e-12)
        self.name = f"{problem.name} (k={M.shape[1]} directions)"
        self.upper_convex_in_x = problem.upper_convex_in_x
        self.parallel = problem.parallel

    def theta(self, phi):
        """theta(phi) = theta_base + M phi."""
        return self.theta_base + self.basis @ phi

    # ------------------------------------------------------------ the contract
    def lower_objective(self, x, phi):
        return self.problem.lower_objective(x, self.theta(phi))

    def upper_objective(self, x, phi):
        return self.problem.upper_objective(x, self.theta(phi))

    def strong_convexity(self, phi):
        return self.problem.strong_convexity(self.theta(phi))

    def initial_theta(self):
        return self.phi0.clone()

    def initial_x(self, phi):
        return self.problem.initial_x(self.theta(phi))

    def smoothness(self, phi):
        return self.problem.smoothness(self.theta(phi))

    def bound_constants(self, phi, x):
        c = self.problem.bound_constants(self.theta(phi), x)
        m = self.basis_norm
        return dataclasses.replace(
            c, B_norm=m * c.B_norm, L_B=m * c.L_B, L_gtheta=m * c.L_gtheta,
            sensitivity=None if c.sensitivity is None else m * c.sensitivity)

    def hessian_lipschitz_along(self, phi, x, q, radius, x_radius=math.inf):
        return self.problem.hessian_lipschitz_along(self.theta(phi), x, q, radius, x_radius)

    def mixed_lipschitz_along(self, phi, x, q, radius, x_radius=math.inf):
        rate = self.problem.mixed_lipschitz_along(self.theta(phi), x, q, radius, x_radius)
        return None if rate is None else self.basis_norm * rate

    def lower_preconditioner(self, phi, x):
        return self.problem.lower_preconditioner(self.theta(phi), x)

    # ------------------------------------------------------------ derivatives
    def lower_grad(self, x, phi):
        return self.problem.lower_grad(x, self.theta(phi))

    def lower_hvp(self, x, phi, v):
        return self.problem.lower_hvp(x, self.theta(phi), v)

    def mixed_vjp(self, x, phi, w):
        return self.basis.T @ self.problem.mixed_vjp(x, self.theta(phi), w)

    def upper_grads(self, x, phi):
        value, gx, gt = self.problem.upper_grads(x, self.theta(phi))
        return value, gx, self.basis.T @ gt

    def solve_lower(self, phi, tol, x0=None, max_iter=10_000, **options):
        return self.problem.solve_lower(self.theta(phi), tol, x0=x0, max_iter=max_iter,
                                        **options)
