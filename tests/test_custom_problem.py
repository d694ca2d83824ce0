"""A user's problem in about 20 lines runs through the autograd defaults."""
import warnings

import pytest
import torch

import bilevel
from bilevel.problem import DerivativeWarning
from bilevel.testing import check_problem


# --- the README example ------------------------------------------------------
class Ridge(bilevel.BilevelProblem):
    """Ridge regression with one learned log-penalty per feature."""

    name = "ridge"

    def __init__(self, A, b, A_val, b_val):
        self.A, self.b, self.A_val, self.b_val = A, b, A_val, b_val
        super().__init__()

    def lower_objective(self, x, theta):
        return 0.5 * (self.A @ x - self.b).square().sum() + 0.5 * (theta.exp() * x**2).sum()

    def upper_objective(self, x, theta):
        return 0.5 * (self.A_val @ x - self.b_val).square().sum()

    def strong_convexity(self, theta):
        return float(theta.exp().min())  # A^T A only adds curvature

    def initial_theta(self):
        return torch.zeros(self.A.shape[1], dtype=torch.float64)

    def initial_x(self, theta):
        return torch.zeros(self.A.shape[1], dtype=torch.float64)
# ------------------------------------------------------------------------------


def make_ridge(n=40, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, generator=g, dtype=torch.float64)
    A, A_val = (torch.randn(n, d, generator=g, dtype=torch.float64) for _ in range(2))
    b = A @ w + 0.5 * torch.randn(n, generator=g, dtype=torch.float64)
    b_val = A_val @ w + 0.5 * torch.randn(n, generator=g, dtype=torch.float64)
    return Ridge(A, b, A_val, b_val)


def exact_F(problem, theta):
    """F(theta) through a differentiable dense solve: an independent reference."""
    H = problem.A.T @ problem.A + torch.diag(theta.exp())
    x = torch.linalg.solve(H, problem.A.T @ problem.b)
    return problem.upper_objective(x, theta)


def test_check_problem_passes():
    report = check_problem(make_ridge())
    assert report, str(report)


def test_hypergradient_matches_dense_autograd():
    problem = make_ridge()
    theta = torch.linspace(-1, 1, 6, dtype=torch.float64)
    t = theta.clone().requires_grad_(True)
    (reference,) = torch.autograd.grad(exact_F(problem, t), t)
    hg = bilevel.hypergradient(problem, theta, 1e-10, 1e-10)
    assert float((hg.grad - reference).norm()) <= 1e-8 * float(reference.norm())
    assert not hg.certified  # the bound constants were estimated, and say so
    loose = bilevel.hypergradient(problem, theta, 1e-3, 1e-3)
    assert loose.error_bound >= float((loose.grad - reference).norm())


def test_maid_learns_the_penalties():
    problem = make_ridge()
    result = bilevel.solve(problem, "maid", max_iter=500, tol=1e-3)
    assert result.status == "converged", result.message
    start, end = (float(exact_F(problem, t)) for t in (problem.initial_theta(), result.theta))
    assert end < start
    t = result.theta.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(exact_F(problem, t), t)
    assert float(grad.norm()) <= 1e-3  # the (estimated) stopping certificate held
    assert result.history[-1]["certified"] is False


def test_missing_method_is_named():
    class Incomplete(bilevel.BilevelProblem):
        def lower_objective(self, x, theta):
            return (x**2).sum()

    with pytest.raises(TypeError, match="upper_objective"):
        Incomplete()


class Broken(Ridge):
    name = "broken"

    def __init__(self, *args, mu=1.0, **kw):
        self.mu = mu
        super().__init__(*args, **kw)

    def strong_convexity(self, theta):
        return self.mu


@pytest.mark.parametrize("mu", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_mu_is_rejected_at_construction(mu):
    p = make_ridge()
    with pytest.raises(ValueError, match="broken: strong_convexity"):
        Broken(p.A, p.b, p.A_val, p.b_val, mu=mu)


def test_nan_in_data_is_rejected():
    p = make_ridge()
    b = p.b.clone()
    b[3] = float("nan")
    with pytest.raises(ValueError, match="ridge: lower_objective.*not finite"):
        Ridge(p.A, b, p.A_val, p.b_val)


def test_bad_theta_and_x0_are_rejected():
    problem = make_ridge()
    theta = problem.initial_theta()
    with pytest.raises(ValueError, match="ridge: theta contains NaN"):
        bilevel.solve(problem, theta0=torch.full_like(theta, float("nan")))
    with pytest.raises(ValueError, match="flat 1-D"):
        bilevel.hypergradient(problem, theta[None], 1e-3, 1e-3)
    with pytest.raises(ValueError, match=r"x0 has shape \(5,\) but initial_x gives \(6,\)"):
        problem.solve_lower(theta, 1e-3, x0=torch.zeros(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="eps must be a positive"):
        bilevel.hypergradient(problem, theta, 0.0, 1e-3)
    with pytest.raises(TypeError, match="theta must be a torch.Tensor"):
        bilevel.hypergradient(problem, [0.0] * 6, 1e-3, 1e-3)


def test_unknown_method_and_setting_are_named():
    problem = make_ridge()
    with pytest.raises(ValueError, match="unknown method 'newton'.*maid.*hoag_cubic"):
        bilevel.solve(problem, "newton")
    with pytest.raises(TypeError, match="no setting.*epsilon0.*eps0"):
        bilevel.solve(problem, "maid", epsilon0=1e-2)
    with pytest.raises(ValueError, match="invalid rho"):
        bilevel.solve(problem, "maid", rho=1.5)


# --- hardening (issue 15) -----------------------------------------------------
class Variant(Ridge):
    """The README's Ridge with an upper loss or lower level of another kind."""

    def __init__(self, kind, *args):
        self.kind = kind
        super().__init__(*args)

    def upper_objective(self, x, theta):
        if self.kind == "linear":
            return x.sum()  # the README's example with g linear in x
        if self.kind == "ignores_x":
            return theta.square().sum()
        if self.kind == "constant":
            return torch.tensor(1.0, dtype=torch.float64)  # no autograd graph at all
        return super().upper_objective(x, theta)

    def lower_objective(self, x, theta):
        if self.kind == "theta_free":
            return 0.5 * (self.A @ x - self.b).square().sum() + 0.5 * x.square().sum()
        return super().lower_objective(x, theta)

    def strong_convexity(self, theta):
        return 1.0 if self.kind == "theta_free" else super().strong_convexity(theta)


def variant(kind):
    p = make_ridge()
    return Variant(kind, p.A, p.b, p.A_val, p.b_val)


@pytest.mark.parametrize("kind", ["linear", "ignores_x", "constant", "theta_free"])
def test_d1_zero_second_derivatives_are_valid_constants(kind):
    problem = variant(kind)
    theta = problem.initial_theta()
    hg = bilevel.hypergradient(problem, theta, 1e-6, 1e-6)
    assert torch.isfinite(hg.grad).all() and hg.error_bound < float("inf")
    result = bilevel.solve(problem, "maid", tol=1e-3, max_iter=3)
    assert result.status in ("converged", "max_iter"), result.message
    report = check_problem(problem)
    assert report, str(report)


class Ridge32(Ridge):
    """The README's Ridge in float32, without smoothness(): L is estimated."""

    def initial_theta(self):
        return torch.zeros(self.A.shape[1], dtype=torch.float32)

    def initial_x(self, theta):
        return torch.zeros(self.A.shape[1], dtype=torch.float32)


def test_d2_float32_problem_without_smoothness_converges():
    p64 = make_ridge()
    problem = Ridge32(*(t.float() for t in (p64.A, p64.b, p64.A_val, p64.b_val)))
    L_true = float(torch.linalg.matrix_norm(p64.A, ord=2)) ** 2 + 1.0
    sol = problem.solve_lower(problem.initial_theta(), 1e-4)
    assert sol.converged and sol.iterations < 1000
    # Rounding in h must not be read as curvature: L stays near the true constant.
    assert sol.smoothness <= 4 * L_true
    run32 = bilevel.solve(problem, "maid", tol=1e-3, max_iter=8)
    run64 = bilevel.solve(p64, "maid", tol=1e-3, max_iter=8)
    assert run32.status == "max_iter" and len(run32.history) == 8
    assert run32.history[-1]["upper_value"] == pytest.approx(run64.history[-1]["upper_value"],
                                                             rel=1e-3)
    assert run32.state.smoothness <= 4 * L_true  # the estimate the run carried


def _with(method, fn):
    """A Ridge whose ``method`` is replaced by ``fn``."""
    p = make_ridge()
    cls = type("Patched", (Ridge,), {method: fn})
    return cls(p.A, p.b, p.A_val, p.b_val)


@pytest.mark.parametrize("method,check", [
    ("mixed_vjp", "mixed_vjp vs finite differences"),
    ("lower_hvp", "lower_hvp vs finite differences"),
])
def test_d10_check_problem_fails_on_nan_derivatives(method, check):
    def nan(self, x, theta, w):
        like = theta if method == "mixed_vjp" else w
        return torch.full_like(like, float("nan"))

    report = check_problem(_with(method, nan))
    (found,) = [c for c in report.checks if c.name == check]
    assert not found.passed and "NaN" in found.detail
    assert not report and "error 0.0e+00" not in str(report)


def test_d10_nan_upper_gradient_fails():
    def upper_grads(self, x, theta):
        value, gx, gt = Ridge.upper_grads(self, x, theta)
        return value, gx * float("nan"), gt

    report = check_problem(_with("upper_grads", upper_grads))
    failed = {c.name for c in report.failures}
    assert "upper_grads vs finite differences" in failed
    assert "hypergradient vs finite differences of F" in failed


def test_d19_check_problem_near_zero_hypergradient():
    problem = bilevel.make_problem("quadratic[n=60,m=5]")
    theta = problem.optimal_theta()  # grad F(theta*) ~ 1e-14
    report = check_problem(problem, theta=theta)
    assert report, str(report)
    # The mixed criterion still catches a wrong hypergradient away from theta*.
    def doubled(self, x, theta, w):
        return 2 * Ridge.mixed_vjp(self, x, theta, w)

    wrong = check_problem(_with("mixed_vjp", doubled))
    assert "hypergradient vs finite differences of F" in {c.name for c in wrong.failures}


class LogCosh(torch.autograd.Function):
    """a sum log cosh(x), with first derivatives only (the backward is detached)."""

    @staticmethod
    def forward(ctx, x, a):
        ctx.save_for_backward(x, a)
        return a * torch.log(torch.cosh(x)).sum()

    @staticmethod
    def backward(ctx, grad):
        x, a = (t.detach() for t in ctx.saved_tensors)
        grad = grad.detach()
        return grad * a * torch.tanh(x), grad * torch.log(torch.cosh(x)).sum()


class Prior(bilevel.BilevelProblem):
    """h = ||x - y||^2 / 2 + e^theta sum log cosh(x): a prior autograd differentiates once."""

    name = "prior"

    def __init__(self, n=8):
        g = torch.Generator().manual_seed(0)
        self.y = 2 * torch.randn(n, generator=g, dtype=torch.float64)
        self.c = torch.randn(n, generator=g, dtype=torch.float64)
        super().__init__()

    def lower_objective(self, x, theta):
        return 0.5 * (x - self.y).square().sum() + LogCosh.apply(x, theta.exp()[0])

    def upper_objective(self, x, theta):
        return 0.5 * (x - self.c).square().sum()

    def strong_convexity(self, theta):
        return 1.0

    def initial_theta(self):
        return torch.zeros(1, dtype=torch.float64)

    def initial_x(self, theta):
        return torch.zeros_like(self.y)


class PriorWithHooks(Prior):
    """The same prior with its second derivatives given in closed form."""

    def lower_hvp(self, x, theta, v):
        return v + theta.exp()[0] * v / torch.cosh(x) ** 2

    def mixed_vjp(self, x, theta, w):
        return (theta.exp()[0] * torch.tanh(x) * w).sum().reshape(1)


def test_d20_estimator_uses_the_problems_own_derivatives():
    problem = PriorWithHooks()
    theta, x = problem.initial_theta(), problem.y
    c = bilevel.estimate_bound_constants(problem, theta, x, reuse=False)
    B_norm = float(torch.tanh(x).norm())  # B = e^theta tanh(x), one column
    assert B_norm <= c.B_norm <= 4 * B_norm  # not 0 from a double backward
    assert c.L_B > 0 and c.L_Ainv > 0
    report = check_problem(problem)
    assert report, str(report)


def test_d20_check_problem_flags_a_missing_double_backward():
    with pytest.warns(DerivativeWarning):
        problem = Prior()
    report = check_problem(problem)
    failed = {c.name: c.detail for c in report.failures}
    assert "not twice differentiable" in failed["mixed_vjp vs finite differences"]
    assert "twice differentiable" in failed["lower_hvp vs finite differences"]


def test_d20_default_hessian_warns_when_autograd_misses_a_term():
    # The log cosh term has no second derivative by autograd: the default Hessian is
    # I instead of I + diag(sech^2 x).  Spotted at construction, not read as curvature.
    with pytest.warns(DerivativeWarning, match=r"prior: the Hessian of h by autograd \(the "
                                               r"default lower_hvp\) differs .* twice "
                                               r"differentiable"):
        Prior()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PriorWithHooks()  # its own hooks: nothing to check
        make_ridge()  # twice differentiable: no false alarm


def test_d20_default_hessian_refuses_a_gradient_without_graph():
    class Opaque(Prior):
        def lower_objective(self, x, theta):
            # Every term through the once-differentiable Function: no graph behind grad_x h.
            return LogCosh.apply(x, theta.exp()[0]) + LogCosh.apply(x - self.y, theta[0] ** 0)

    # The autograd defaults are checked at construction: refused by name, not zero curvature.
    with pytest.raises(TypeError, match="prior: .*twice differentiable.*override lower_hvp"):
        Opaque()
