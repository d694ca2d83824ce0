"""The lower-level solver of the small problems with a dense Hessian: damped Newton.

For a lower level of a few dozen unknowns whose condition number is large
(spline_regression, lipschitz_regression), FISTA needs sqrt(L / mu) steps per
digit where Newton's method on the dense Hessian converges quadratically.  The
steps are those of :func:`bilevel.numerics.damped_newton`, the certificate is
FISTA's, ||grad_x h|| / mu.
"""
from __future__ import annotations

import math

import torch

from bilevel.contract import check_mu, check_x
from bilevel.lower import LowerSolution
from bilevel.numerics import damped_newton


class DenseNewtonSolve:
    """Mixin of a :class:`~bilevel.BilevelProblem` with ``hessian(x, theta)``, dense (n, n).

    ``solve_lower`` takes damped Newton steps to the certified accuracy
    ||grad_x h|| / mu <= tol.  ``iterations`` counts Newton steps, ``evaluations``
    the gradients and objective values (the Hessian is one closed form per step).
    It stops short, with ``converged`` False and the bound reached, at
    ``max_iter`` or when rounding keeps it from getting closer.
    """

    def solve_lower(self, theta, tol, x0=None, max_iter=10_000, **options):
        # options (an estimate of L for FISTA) mean nothing to Newton's method.
        if not (tol > 0 and math.isfinite(tol)):
            raise ValueError(f"{self.name}: lower-level tolerance must be > 0, got {tol}")
        mu = check_mu(self, theta)
        x = self.initial_x(theta) if x0 is None else check_x(self, x0, theta, "x0").clone()

        def direction(point, grad, _grad_norm):
            return torch.linalg.solve(self.hessian(point, theta), grad), 0

        run = damped_newton(x, lambda point: self.lower_grad(point, theta),
                            lambda point: float(self.lower_objective(point, theta)),
                            direction, converged=lambda _point, norm: norm / mu <= tol,
                            max_steps=max_iter)
        bound = run.grad_norm / mu
        return LowerSolution(run.x, bound, run.steps, bound <= tol, run.evaluations)
