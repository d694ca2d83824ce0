"""The quadratic problem: every certificate of the library against closed forms."""
import warnings

import pytest
from bilevel_problems.quadratic import Quadratic

import bilevel

# A well-conditioned member of the paper's family, where every method reaches the
# 1e-6 relative gap in seconds (the paper's uniform draw has cond(grad^2 F) ~ 1e5).
FAST = dict(n=200, m=5, distribution="normal", seed=1)


@pytest.fixture(scope="module")
def paper():
    return Quadratic()


def test_hypergradient_matches_closed_form(paper):
    theta = paper.initial_theta()
    hg = bilevel.hypergradient(paper, theta, 1e-10, 1e-10)
    exact = paper.gradient(theta)
    assert float((hg.grad - exact).norm() / exact.norm()) <= 1e-8
    assert abs(hg.upper_value - paper.value(theta)) <= 1e-8 * paper.value(theta)
    assert hg.certified


@pytest.mark.parametrize("eps", [10.0 ** -k for k in range(1, 7)])
@pytest.mark.parametrize("delta", [10.0 ** -k for k in range(1, 7)])
def test_error_bound_holds(paper, eps, delta):
    theta = paper.initial_theta() + 0.5
    hg = bilevel.hypergradient(paper, theta, eps, delta)
    true_error = float((hg.grad - paper.gradient(theta)).norm())
    assert hg.error_bound >= true_error
    # the certificates it was built from hold too
    assert float((hg.lower.x - paper.exact_solution(theta)).norm()) <= hg.lower.error_bound
    assert hg.lower.error_bound <= eps and hg.linear.residual_norm <= delta


def test_closed_form_solution_is_stationary(paper):
    theta = paper.optimal_theta()
    assert float(paper.lower_grad(paper.exact_solution(theta), theta).norm()) < 1e-9
    assert float(paper.gradient(theta).norm()) < 1e-8


def _gap_callback(problem, target):
    def stop(state, row):
        return problem.value(state.theta) - target <= 0
    return stop


@pytest.mark.parametrize("method,settings", [
    ("maid", {}),
    ("maid_paper", {}),
    ("fixed", dict(eps0=1e-8, delta0=1e-8)),
    ("hoag_geometric", {}),
    ("hoag_quadratic", {}),
    ("hoag_cubic", {}),
])
def test_methods_reach_relative_gap(method, settings):
    problem = Quadratic(**FAST)
    F_star = problem.value(problem.optimal_theta())
    target = F_star + 1e-6 * abs(F_star)
    values = []

    def stop(state, row):
        values.append((row["accepted"], problem.value(state.theta)))
        return values[-1][1] <= target

    result = bilevel.solve(problem, method, max_iter=10_000, callback=stop, tol=0, **settings)
    assert result.status == "callback", result.message
    assert problem.value(result.theta) - F_star <= 1e-6 * abs(F_star)
    if method in ("maid", "maid_paper", "fixed"):
        # every accepted step of the certified line search decreased the true F
        previous = problem.value(problem.initial_theta())
        for accepted, value in values:
            if accepted:
                assert value < previous
            else:
                assert value == previous
            previous = value


@pytest.mark.parametrize("method", ["maid", "maid_paper"])
def test_maid_certified_decrease_is_at_least_promised(method):
    problem = Quadratic(**FAST)
    thetas = [problem.initial_theta()]
    with pytest.warns(bilevel.ConvergenceWarning, match="max_iter"):
        result = bilevel.solve(problem, method, max_iter=300, tol=0,
                               callback=lambda state, row: thetas.append(state.theta) and False)
    lam = bilevel.METHODS[method]().sufficient_decrease
    accepted = 0
    for before, after, row in zip(thetas[:-1], thetas[1:], result.history, strict=True):
        if row["accepted"]:
            accepted += 1
            # theta+ = theta - step z, with ||z|| = grad_norm: the certified promise
            promised = lam * row["step"] * row["grad_norm"] ** 2
            assert problem.value(after) - problem.value(before) <= -promised
    assert accepted > 100


def test_maid_stops_with_certified_stationarity():
    problem = Quadratic(**FAST)
    result = bilevel.solve(problem, "maid", max_iter=5000, tol=1e-3)
    assert result.status == "converged", result.message
    assert float(problem.gradient(result.theta).norm()) <= 1e-3
    assert "certified" in result.message


def test_history_rows_are_tidy_and_cumulative():
    problem = Quadratic(**FAST)
    with pytest.warns(bilevel.ConvergenceWarning):
        result = bilevel.solve(problem, "maid", max_iter=20, tol=0)
    assert result.status == "max_iter"
    from bilevel.outer import HISTORY_COLUMNS
    for row in result.history:
        assert set(HISTORY_COLUMNS) <= set(row)
        assert all(isinstance(v, (int, float, bool)) for v in row.values())
    costs = [r["cost"] for r in result.history]
    assert costs == sorted(costs) and costs[-1] > 0
    assert all(r["cost"] == r["lower_iterations"] + r["cg_iterations"] for r in result.history)


def test_cost_budget_and_callback():
    problem = Quadratic(**FAST)
    with pytest.warns(bilevel.ConvergenceWarning, match="cost budget"):
        result = bilevel.solve(problem, "maid", max_iter=1000, max_cost=300, tol=0)
    # The budget holds inside iterations too: the iteration that would overrun it is
    # abandoned, so every recorded row stays within it.
    assert result.status == "max_cost" and 0 < result.history[-1]["cost"] <= 300
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = bilevel.solve(problem, "maid", max_iter=100,
                               callback=lambda state, row: state.iteration >= 3)
    assert result.status == "callback" and len(result.history) == 3


def test_adam_adapter_decreases_F():
    problem = Quadratic(**FAST)
    with pytest.warns(bilevel.ConvergenceWarning):
        result = bilevel.solve(problem, "adam", max_iter=300, lr=0.5, eps=1e-6, delta=1e-6,
                               tol=0)
    assert problem.value(result.theta) < 1e-2 * problem.value(problem.initial_theta())


def test_unrolled_hypergradient_approaches_implicit():
    problem = Quadratic(n=100, m=3, distribution="normal")
    theta = problem.initial_theta()
    exact = problem.gradient(theta)
    errors = [float((bilevel.unrolled_hypergradient(problem, theta, k)[0] - exact).norm())
              for k in (2, 5, 10, 100)]
    assert errors[0] > errors[1] > errors[2] > 1e-8 * float(exact.norm())
    assert errors[3] < 1e-10 * float(exact.norm())
