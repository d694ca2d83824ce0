"""Estimated bound constants (no ``bound_constants`` given): bounds, reuse, dtypes."""
import math

import pytest
import torch
import torch.nn.functional as F
from test_custom_problem import make_ridge  # the README example, a sibling test module

import bilevel
import bilevel.constants as constants_module
from bilevel import estimate_bound_constants


class Quadratic(bilevel.BilevelProblem):
    """h = x^T H x / 2 - (M theta)^T x,  g = (x - c)^T G (x - c) / 2 + s theta^T x.

    Known constants: L_g = lambda_max(G), ||B|| = ||M||, L_gtheta = |s|, L_B = L_A = 0.
    """

    name = "quadratic_custom"

    def __init__(self, n=5, s=0.7, seed=0, dtype=torch.float64):
        gen = torch.Generator().manual_seed(seed)

        def spd(shift):
            R = torch.randn(n, n, generator=gen, dtype=torch.float64)
            return (R @ R.T / n + shift * torch.eye(n, dtype=torch.float64)).to(dtype)

        self.H, self.G = spd(1.0), spd(0.1)
        self.M = torch.randn(n, n, generator=gen, dtype=torch.float64).to(dtype)
        self.c = torch.randn(n, generator=gen, dtype=torch.float64).to(dtype)
        self.s, self.n, self.dt = s, n, dtype
        super().__init__()

    def lower_objective(self, x, theta):
        return 0.5 * x @ self.H @ x - (self.M @ theta) @ x

    def upper_objective(self, x, theta):
        r = x - self.c
        return 0.5 * r @ self.G @ r + self.s * theta @ x

    def strong_convexity(self, theta):
        return float(torch.linalg.eigvalsh(self.H.double())[0])

    def initial_theta(self):
        return torch.linspace(-1, 1, self.n, dtype=self.dt)

    def initial_x(self, theta):
        return torch.zeros(self.n, dtype=self.dt)


class Quartic1D(bilevel.BilevelProblem):
    """h = x^2 / 2 + e^theta x^4 / 12 (scalar x), g = (x - 1)^2 / 2.

    Local constants at x: L_A = 2 e^theta |x|, ||B|| = e^theta |x|^3 / 3,
    L_B = e^theta x^2, L_g = 1, mu = 1.  In one dimension every random
    direction is +-1, so the finite differences see the true rates.
    """

    name = "quartic_1d"

    def lower_objective(self, x, theta):
        return 0.5 * x.square().sum() + theta.exp().sum() * x.pow(4).sum() / 12

    def upper_objective(self, x, theta):
        return 0.5 * (x - 1).square().sum()

    def strong_convexity(self, theta):
        return 1.0

    def initial_theta(self):
        return torch.zeros(1, dtype=torch.float64)

    def initial_x(self, theta):
        return torch.zeros(1, dtype=torch.float64)


def _within(estimate, true, factor=4.0):
    return true <= estimate <= factor * true


def test_quadratic_estimates_bound_the_known_constants():
    p = Quadratic()
    theta = p.initial_theta()
    x = torch.linspace(-2, 2, p.n, dtype=torch.float64)
    c = estimate_bound_constants(p, theta, x, reuse=False)
    assert not c.certified and c.cost > 0
    assert _within(c.L_g, float(torch.linalg.eigvalsh(p.G)[-1]))
    assert _within(c.B_norm, float(torch.linalg.matrix_norm(p.M, ord=2)))
    assert _within(c.L_gtheta, p.s)
    assert c.L_B <= 1e-8 and c.L_Ainv <= 1e-8  # B and A do not move with x


def test_local_rates_of_a_nonlinear_problem():
    p = Quartic1D()
    theta = torch.tensor([0.3], dtype=torch.float64)
    x = torch.tensor([1.5], dtype=torch.float64)
    a = math.exp(0.3)
    c = estimate_bound_constants(p, theta, x, reuse=False)
    assert _within(c.L_g, 1.0)
    assert _within(c.B_norm, a * 1.5 ** 3 / 3)
    assert _within(c.L_B, a * 1.5 ** 2)
    assert _within(c.L_Ainv, 2 * a * 1.5)  # mu = 1
    assert c.L_gtheta == 0.0  # g does not read theta


class Linear(Quadratic):
    """The same lower level under an upper loss linear in x (or x-free): L_g = 0."""

    name = "linear_upper"

    def __init__(self, kind, **kw):
        self.kind = kind
        super().__init__(**kw)

    def upper_objective(self, x, theta):
        if self.kind == "linear":
            return self.c @ x
        if self.kind == "theta_only":
            return theta.square().sum()
        return self.c @ x + 0.5 * 3.0 * x.square().sum()  # constant Hessian 3 I


@pytest.mark.parametrize("kind,L_g", [("linear", 0.0), ("theta_only", 0.0), ("quadratic", 3.0)])
def test_linear_and_constant_curvature_upper_losses(kind, L_g):
    p = Linear(kind)
    theta, x = p.initial_theta(), torch.ones(p.n, dtype=torch.float64)
    c = estimate_bound_constants(p, theta, x, reuse=False)
    assert c.L_g == pytest.approx(2 * L_g)  # safety 2 x the exact constant; 0 stays 0
    hg = bilevel.hypergradient(p, theta, 1e-6, 1e-6)
    assert math.isfinite(hg.error_bound)


def test_mixed_derivative_free_of_x_or_theta():
    class NoTheta(Quadratic):
        def lower_objective(self, x, theta):
            return 0.5 * x @ self.H @ x  # B = 0: theta is unused

        def upper_objective(self, x, theta):
            return 0.5 * (x - self.c).square().sum() + theta.square().sum()

    c = estimate_bound_constants(NoTheta(), torch.zeros(5, dtype=torch.float64),
                                 torch.ones(5, dtype=torch.float64), reuse=False)
    assert c.B_norm == 0.0 and c.L_B == 0.0


def test_reuse_rule_and_cost():
    p = Quadratic()
    theta, x = p.initial_theta(), torch.linspace(-2, 2, p.n, dtype=torch.float64)
    first = p.bound_constants(theta, x)
    assert first.cost > 0
    near = p.bound_constants(theta + 0.09, x * 1.05)
    assert near.cost == 0 and near.L_g == first.L_g and not near.certified
    assert p.bound_constants(theta + 0.2, x).cost > 0            # theta left the radius
    assert p.bound_constants(theta + 0.2, 2 * x).cost > 0        # x moved by 50%
    assert estimate_bound_constants(p, theta + 0.2, 2 * x, reuse=False).cost > 0
    assert estimate_bound_constants(p, theta + 0.2, 2 * x, probes=1).cost > 0  # new settings


def test_reuse_rereads_mu():
    class Scaled(Quartic1D):
        def strong_convexity(self, theta):
            return float(1 + theta.abs().sum())  # a (valid) mu that changes with theta

    p = Scaled()
    x = torch.tensor([1.5], dtype=torch.float64)
    a = p.bound_constants(torch.tensor([0.0], dtype=torch.float64), x)
    b = p.bound_constants(torch.tensor([0.1], dtype=torch.float64), x)
    assert b.cost == 0 and b.L_Ainv == pytest.approx(a.L_Ainv / 1.1 ** 2)


def test_a_maid_run_reuses_its_estimates(monkeypatch):
    p = make_ridge()  # the README's example (tests/test_custom_problem.py)
    calls = []
    original = constants_module._estimate

    def counted(*args, **kw):
        calls.append(1)
        return original(*args, **kw)

    monkeypatch.setattr(constants_module, "_estimate", counted)
    costs = []
    original_bound = p.bound_constants

    def recorded(theta, x):
        c = original_bound(theta, x)
        costs.append(c.cost)
        return c

    p.bound_constants = recorded
    result = bilevel.solve(p, "maid", max_iter=500, tol=1e-3)
    assert result.status == "converged", result.message
    # Early steps move theta by more than the reuse radius; later ones share estimates.
    assert 1 <= len(calls) <= len(costs) // 3, (len(calls), len(costs))
    assert sum(c > 0 for c in costs) == len(calls)  # a reused result costs nothing


class Charbonnier(bilevel.BilevelProblem):
    """A small plug-in denoiser: h = ||x - y||^2 / 2 + e^t0 sum sqrt((k * x)^2 + e^2t1)."""

    name = "charbonnier"
    upper_convex_in_x = True

    def __init__(self, dtype, size=16, theta=(-2.0, -2.0)):
        gen = torch.Generator().manual_seed(0)
        clean = torch.rand(2, size, size, generator=gen, dtype=torch.float64)
        noisy = clean + 0.1 * torch.randn(2, size, size, generator=gen, dtype=torch.float64)
        kernels = torch.randn(3, 1, 3, 3, generator=gen, dtype=torch.float64)
        self.kernels = (kernels - kernels.mean(dim=(2, 3), keepdim=True)).to(dtype)
        self.clean, self.noisy, self.theta0 = clean.to(dtype), noisy.to(dtype), theta
        super().__init__()

    def lower_objective(self, x, theta):
        z = F.conv2d(x.unsqueeze(1), self.kernels)
        reg = torch.sqrt(z * z + torch.exp(2 * theta[1])).sum()
        return 0.5 * (x - self.noisy).square().sum() + torch.exp(theta[0]) * reg

    def upper_objective(self, x, theta):
        return (x - self.clean).square().mean()

    def strong_convexity(self, theta):
        return 1.0

    def initial_theta(self):
        return torch.tensor(self.theta0, dtype=self.noisy.dtype)

    def initial_x(self, theta):
        return self.noisy.clone()


# Nearly quadratic (large smoothing): L_A is tiny, and a fixed step of 1e-3 turned
# float32 rounding into an L_A estimate 10x too large here.
@pytest.mark.parametrize("size,theta,most", [(16, (-2.0, -2.0), 10.0), (64, (2.0, 5.0), 3.0)])
def test_float32_estimates_are_not_inflated_by_rounding(size, theta, most):
    p64 = Charbonnier(torch.float64, size, theta)
    p32 = Charbonnier(torch.float32, size, theta)
    theta = p64.initial_theta()
    x = p64.solve_lower(theta, 1e-8).x
    c64 = estimate_bound_constants(p64, theta, x, reuse=False)
    c32 = estimate_bound_constants(p32, theta.float(), x.float(), reuse=False)
    for name in ("L_g", "B_norm", "L_B", "L_Ainv"):
        a, b = getattr(c64, name), getattr(c32, name)
        assert math.isfinite(b) and a > 0, name
        assert 1 / most <= b / a <= most, (name, a, b)
