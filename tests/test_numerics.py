"""bilevel.numerics: power iteration and damped Newton, against closed forms."""
import math

import pytest
import torch

from bilevel.numerics import damped_newton, power_iteration, random_unit


def _diagonal(values):
    d = torch.tensor(values, dtype=torch.float64)
    return lambda v: d * v


def _start(n, seed=0):
    return random_unit(torch.empty(n, dtype=torch.float64), torch.Generator().manual_seed(seed))


def test_random_unit_is_the_same_direction_in_every_dtype():
    a = random_unit(torch.empty(5, dtype=torch.float64), torch.Generator().manual_seed(3))
    b = random_unit(torch.empty(5, dtype=torch.float32), torch.Generator().manual_seed(3))
    assert float(a.norm()) == pytest.approx(1.0, abs=1e-15)
    torch.testing.assert_close(b.double(), a, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("rule", [dict(), dict(rtol=1e-12), dict(residual_tol=1e-10)])
def test_power_iteration_finds_the_largest_eigenvalue_from_below(rule):
    run = power_iteration(_diagonal([3.0, 2.0, 1.0, 0.5]), _start(4), 500, **rule)
    assert run.value <= 3.0 * (1 + 1e-15) and run.value == pytest.approx(3.0, rel=1e-9)
    assert run.converged == bool(rule)
    if "residual_tol" in rule:
        assert run.rayleigh == pytest.approx(3.0, rel=1e-12) and run.residual <= 1e-10
    else:
        assert math.isnan(run.rayleigh) and math.isnan(run.residual)


def test_power_iteration_without_a_rule_takes_every_step():
    run = power_iteration(_diagonal([2.0, 1.0]), _start(2), 7)
    assert run.iterations == 7 and not run.converged


def test_power_iteration_stops_at_once_on_a_multiple_of_the_identity():
    run = power_iteration(_diagonal([2.0, 2.0, 2.0]), _start(3), 50, rtol=1e-3)
    assert run.iterations == 2 and run.value == pytest.approx(2.0, rel=1e-15)


def test_power_iteration_on_zero_and_nan_operators():
    zero = power_iteration(lambda v: 0 * v, _start(3), 50, rtol=1e-3)
    assert (zero.value, zero.iterations, zero.converged) == (0.0, 1, True)
    broken = power_iteration(lambda v: v * math.nan, _start(3), 50, residual_tol=1e-6)
    assert math.isnan(broken.value) and broken.iterations == 1 and not broken.converged


def _smooth_convex(n=6, seed=0):
    """h(x) = logsumexp(Cx) + |x|^2 / 2 (strongly convex, mu = 1), with its derivatives."""
    gen = torch.Generator().manual_seed(seed)
    C = 3 * torch.randn(n + 2, n, generator=gen, dtype=torch.float64)

    def objective(x):
        return float(torch.logsumexp(C @ x, 0) + 0.5 * x @ x)

    def gradient(x):
        return C.T @ torch.softmax(C @ x, 0) + x

    def hessian(x):
        p = torch.softmax(C @ x, 0)
        return C.T @ (torch.diag(p) - torch.outer(p, p)) @ C + torch.eye(n, dtype=x.dtype)

    return objective, gradient, hessian


def test_damped_newton_reaches_its_certificate():
    objective, gradient, hessian = _smooth_convex()
    x0 = torch.full((6,), 2.0, dtype=torch.float64)
    run = damped_newton(x0, gradient, objective,
                        lambda x, g, _: (torch.linalg.solve(hessian(x), g), 0),
                        converged=lambda x, norm: norm <= 1e-12, max_steps=100)
    assert run.converged and run.grad_norm <= 1e-12 and run.steps < 30
    assert float(gradient(run.x).norm()) == run.grad_norm
    # 1 + steps gradients, at least one value per step and the one at x0
    assert run.evaluations >= 2 * run.steps + 2


def test_damped_newton_stops_honestly_below_rounding():
    objective, gradient, hessian = _smooth_convex(seed=1)
    x0 = torch.zeros(6, dtype=torch.float64)
    run = damped_newton(x0, gradient, objective,
                        lambda x, g, _: (torch.linalg.solve(hessian(x), g), 0),
                        converged=lambda x, norm: norm <= 0.0, max_steps=1000)
    assert not run.converged and run.steps < 100  # stalled or no step helped, far from 1000
    assert run.grad_norm <= 1e-13


def test_damped_newton_reports_a_non_finite_gradient():
    run = damped_newton(torch.zeros(2, dtype=torch.float64), lambda x: x + math.nan,
                        lambda x: 0.0, lambda x, g, _: (g, 0),
                        converged=lambda x, norm: norm <= 1e-8, max_steps=10)
    assert run.grad_norm == math.inf and not run.converged and run.steps == 0


def test_damped_newton_counts_its_work_and_stops_on_a_budget():
    objective, gradient, hessian = _smooth_convex()
    x0 = torch.full((6,), 2.0, dtype=torch.float64)
    run = damped_newton(x0, gradient, objective,
                        lambda x, g, _: (torch.linalg.solve(hessian(x), g), 5),
                        converged=lambda x, norm: norm <= 1e-12, max_steps=100, max_work=12)
    assert not run.converged and run.gradients + run.direction_cost >= 12
    assert run.direction_cost == 5 * run.steps
    assert run.evaluations == run.gradients + run.values + run.direction_cost
