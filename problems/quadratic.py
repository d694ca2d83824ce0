"""The paper's quadratic bilevel problem, with everything in closed form.

    h(x, theta) = 1/2 ||A2 x + A3 theta - b2||^2,     g(x) = 1/2 ||A1 x - b1||^2

A_i in R^{n x m} uniform on [0, 1), b1 = A1 x1 + 0.01 noise,
b2 = A2 x2 + A3 theta_e + 0.01 noise (docs/problems.md).  x*(theta),
F(theta), grad F(theta) and theta* are exact, which makes this the problem on
which every certificate of the library is tested.
"""
from __future__ import annotations

import torch

from bilevel import BilevelProblem, BoundConstants

from . import params


class Quadratic(BilevelProblem):
    """Quadratic lower and upper levels; x and theta both in R^m.

    Parameters
    ----------
    n : int
        Rows of each A_i (default 1000, the paper's).
    m : int
        Dimension of x and theta (default 10).
    noise : float
        Standard deviation of the noise in b1 and b2.
    seed : int
        Seed of every random draw.
    theta0 : float or sequence of m floats
        The starting theta: one value for every entry, or m values.
    distribution : {'uniform', 'normal'}
        Law of the entries of A_i: 'uniform' on [0, 1) is the paper's; its
        common mean direction makes F badly conditioned in theta (condition
        number 1.6e5 for the default seed), so first-order methods converge
        slowly.  'normal' (standard) gives a well-conditioned F (about 4e2).
    dtype, device
        Of all tensors (float64 on CPU by default).
    """

    name = "quadratic"
    upper_convex_in_x = True

    def __init__(self, n=1000, m=10, noise=0.01, seed=0, theta0=0.0, distribution="uniform",
                 dtype=torch.float64, device="cpu"):
        params.choice(self.name, "distribution", distribution, ("uniform", "normal"))
        m = params.integer(self.name, "m", m, 1)
        n = params.integer(self.name, "n", n, 1)
        if n < m:
            raise ValueError(f"quadratic: n must be >= m (A2 has full column rank only then: "
                             f"strong convexity), got n={n}, m={m}")
        noise = params.number(self.name, "noise", noise, minimum=0.0)
        gen = torch.Generator().manual_seed(params.integer(self.name, "seed", seed, 0))

        def normal(*shape):
            return torch.randn(shape, generator=gen, dtype=torch.float64)

        def matrix():
            if distribution == "uniform":
                return torch.rand((n, m), generator=gen, dtype=torch.float64)
            return normal(n, m)

        A1, A2, A3 = matrix(), matrix(), matrix()
        x1, x2, theta_e = normal(m), normal(m), normal(m)
        b1 = A1 @ x1 + noise * normal(n)
        b2 = A2 @ x2 + A3 @ theta_e + noise * normal(n)
        to = dict(dtype=dtype, device=device)
        self.A1, self.A2, self.A3 = A1.to(**to), A2.to(**to), A3.to(**to)
        self.b1, self.b2 = b1.to(**to), b2.to(**to)
        self.theta0 = params.vector(self.name, "theta0", theta0, m).to(**to)

        # Spectral constants, computed once in float64.
        eig2 = torch.linalg.eigvalsh(A2.T @ A2)
        self.mu, self.L = float(eig2[0]), float(eig2[-1])
        self.L_g = float(torch.linalg.matrix_norm(A1, ord=2)) ** 2
        self.B_norm = float(torch.linalg.matrix_norm(A2.T @ A3, ord=2))
        # x*(theta) = M theta + c, so F is a least-squares problem in theta.
        M = torch.linalg.solve(A2.T @ A2, -A2.T @ A3)
        # ||A^{-1} B|| = ||dx*/dtheta||, exact: the sensitivity K of the bound.
        self.sensitivity = float(torch.linalg.matrix_norm(M, ord=2)) * (1 + 1e-12)
        self.M = M.to(**to)
        self.c = torch.linalg.solve(A2.T @ A2, A2.T @ b2).to(**to)
        super().__init__()

    # the contract
    def lower_objective(self, x, theta):
        r = self.A2 @ x + self.A3 @ theta - self.b2
        return 0.5 * torch.dot(r, r)

    def upper_objective(self, x, theta):
        r = self.A1 @ x - self.b1
        return 0.5 * torch.dot(r, r)

    def strong_convexity(self, theta):
        return self.mu

    def smoothness(self, theta):
        return self.L

    def initial_theta(self):
        return self.theta0.clone()

    def initial_x(self, theta):
        return torch.zeros_like(self.theta0)

    def bound_constants(self, theta, x):
        # A and B do not depend on x: L_A = L_B = 0, and g ignores theta.
        return BoundConstants(L_g=self.L_g, B_norm=self.B_norm, sensitivity=self.sensitivity)

    # closed forms of the derivatives
    def lower_grad(self, x, theta):
        return self.A2.T @ (self.A2 @ x + self.A3 @ theta - self.b2)

    def lower_hvp(self, x, theta, v):
        return self.A2.T @ (self.A2 @ v)

    def mixed_vjp(self, x, theta, w):
        return self.A3.T @ (self.A2 @ w)

    def upper_grads(self, x, theta):
        r = self.A1 @ x - self.b1
        return 0.5 * torch.dot(r, r), self.A1.T @ r, torch.zeros_like(theta)

    # closed forms of the solution
    def exact_solution(self, theta):
        """x*(theta)."""
        return self.M @ theta + self.c

    def value(self, theta):
        """F(theta) = g(x*(theta))."""
        return float(self.upper_objective(self.exact_solution(theta), theta))

    def gradient(self, theta):
        """grad F(theta) = M^T A1^T (A1 x*(theta) - b1)."""
        return self.M.T @ (self.A1.T @ (self.A1 @ self.exact_solution(theta) - self.b1))

    def optimal_theta(self):
        """theta* = argmin F, by least squares in float64."""
        design = self.A1 @ self.M
        return torch.linalg.lstsq(design, (self.b1 - self.A1 @ self.c).unsqueeze(1)).solution[:, 0]


ENTRY = dict(
    factory=Quadratic,
    description="The paper's quadratic problem with closed-form x*, F, grad F and theta*",
    test_params=dict(n=60, m=5),
)
