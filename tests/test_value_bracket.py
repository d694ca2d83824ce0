"""Second-order brackets on F from the adjoint (bilevel.value_bracket): they hold the true
F = g(x*) against a dense reference, are never wider than the first-order bracket and far
narrower where the problem gives a local Hessian rate; MAID's line search and the
minibatch final check certify with them."""
import math
import warnings

import pytest

import bilevel
from bilevel.contract import check_mu
from bilevel.hypergradient import upper_bounds
from bilevel.linalg import conjugate_gradient
from bilevel.reference import reference_solution
from bilevel.value_bracket import corrected_bounds, hypergradient_bounds, trial_bounds

PROBLEMS = ["tv_denoising", "weakly_convex_ridge", "ridge_regularizer", "fields_of_experts",
            "logistic_regression", "reconstruction", "quadratic"]


@pytest.fixture(scope="module", params=PROBLEMS)
def case(request):
    problem = bilevel.make_problem(request.param,
                                   **bilevel.registry.get_entry(request.param).test_params)
    theta = problem.initial_theta()
    return problem, theta, reference_solution(problem, theta).value


@pytest.mark.parametrize("eps", [1e-2, 1e-4, 1e-6])
@pytest.mark.parametrize("residual", [1e-1, 1e-4])
def test_bracket_holds_the_true_value_and_is_never_wider(case, eps, residual):
    problem, theta, F = case
    sol = problem.solve_lower(theta, eps, max_iter=200_000)
    value, gx, _ = problem.upper_grads(sol.x, theta)
    value, L_g = float(value), problem.bound_constants(theta, sol.x).L_g
    first = upper_bounds(value, float(gx.norm()), sol.error_bound, L_g,
                         problem.upper_convex_in_x)
    cg = conjugate_gradient(lambda v: problem.lower_hvp(sol.x, theta, v), gx,
                            tol=residual * float(gx.norm()), max_iter=10_000)
    mu = check_mu(problem, theta)
    M = problem.hessian_lipschitz_along(theta, sol.x, cg.q, cg.residual_norm / mu,
                                        x_radius=sol.error_bound)
    low, high = corrected_bounds(problem, theta, sol.x, sol.error_bound, value,
                                 float(gx.norm()), cg.q, cg.residual_norm, L_g, mu, M)
    assert low <= F <= high
    assert first[0] <= low and high <= first[1]
    if problem.name != "quadratic" and eps == 1e-4 and residual == 1e-4:
        # where the first-order slack ||grad_x g|| e dominates: far narrower
        assert (first[1] - first[0]) >= 10 * (high - low)


def test_trial_bounds_solve_the_adjoint_to_the_slack(case):
    problem, theta, F = case
    sol = problem.solve_lower(theta, 1e-4, max_iter=200_000)
    value, gx, _ = problem.upper_grads(sol.x, theta)
    mu = check_mu(problem, theta)
    L_g = problem.bound_constants(theta, sol.x).L_g
    r = problem.lower_grad(sol.x, theta)
    slack = 1e-7 * max(1.0, abs(float(value)))
    low, high, linear = trial_bounds(problem, theta, sol, float(value), gx, L_g, mu, slack)
    assert low <= F <= high
    assert linear.residual_norm * float(r.norm()) / mu <= slack * (1 + 1e-9)


def test_without_an_adjoint_or_a_local_rate_it_is_the_first_order_bracket():
    problem = bilevel.make_problem("tv_denoising",
                                   **bilevel.registry.get_entry("tv_denoising").test_params)
    theta = problem.initial_theta()
    sol = problem.solve_lower(theta, 1e-3)
    value, gx, _ = problem.upper_grads(sol.x, theta)
    args = (problem, theta, sol.x, sol.error_bound, float(value), float(gx.norm()))
    first = upper_bounds(float(value), float(gx.norm()), sol.error_bound, 1.0,
                         problem.upper_convex_in_x)
    assert corrected_bounds(*args, None, 0.0, 1.0, 1.0, 5.0) == first  # no adjoint
    assert corrected_bounds(*args, gx, math.inf, 1.0, 1.0, 5.0) == first  # no residual
    assert corrected_bounds(*args, gx, 0.0, 1.0, 1.0, None) == first  # no local rate


@pytest.mark.parametrize("eps", [1e-2, 1e-5])
def test_a_hypergradient_brackets_F_with_its_own_adjoint_and_rate(case, eps):
    """hypergradient_bounds reads hg's x~, adjoint and hessian_along (no new rate): it holds
    the reference F and matches the bracket built from a freshly computed rate."""
    problem, theta, F = case
    hg = bilevel.hypergradient(problem, theta, eps, eps)
    low, high = hypergradient_bounds(problem, theta, hg)
    assert low <= F <= high
    mu = check_mu(problem, theta)
    M = problem.hessian_lipschitz_along(theta, hg.lower.x, hg.linear.q,
                                        hg.linear.residual_norm / mu,
                                        x_radius=hg.lower.error_bound)
    fresh = corrected_bounds(problem, theta, hg.lower.x, hg.lower.error_bound, hg.upper_value,
                             hg.upper_grad_norm, hg.linear.q, hg.linear.residual_norm,
                             hg.constants.L_g, mu, M)
    assert (low, high) == pytest.approx(fresh, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("name", ["tv_denoising", "weakly_convex_ridge"])
def test_maid_with_adjoint_value_bounds_proves_true_decreases(name):
    """Every accepted step's certified upper bound on F at the new theta holds the true
    F there, and F decreases; bad settings are refused."""
    problem = bilevel.make_problem(name, **bilevel.registry.get_entry(name).test_params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bilevel.ConvergenceWarning)
        result = bilevel.solve(problem, "maid", max_iter=8, value_bounds="adjoint")
    accepted = [row for row in result.history if row["accepted"]]
    assert accepted and all(row["certified"] for row in result.history)
    F0 = reference_solution(problem, problem.initial_theta()).value
    F = reference_solution(problem, result.theta).value
    assert F < F0 and F <= accepted[-1]["next_upper_bound"]
    with pytest.raises(ValueError, match="value_bounds"):
        bilevel.outer.make_method("maid", value_bounds="second")


def test_minibatch_with_adjoint_value_bounds_and_its_final_check():
    """maid_sgd with value_bounds='adjoint': every accepted batch step certified; the final
    check's second-order bracket holds the reference F at the returned theta, within the
    relative half-width asked."""
    problem = bilevel.make_problem(
        "weakly_convex_ridge", **dict(bilevel.registry.get_entry("weakly_convex_ridge")
                                      .test_params, n_images=4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bilevel.ConvergenceWarning)
        result = bilevel.solve(problem, "maid_sgd", max_iter=6, batch_size=2, alpha0=0.05,
                               value_bounds="adjoint", final_check="loss")
    assert any(row["accepted"] for row in result.history)
    check = result.state.final_check
    F = reference_solution(problem, result.theta).value
    assert check["lower_bound"] <= F <= check["upper_bound"]
    assert check["upper_bound"] - check["lower_bound"] <= 2e-5 * abs(F)
    with pytest.raises(ValueError, match="value_bounds"):
        bilevel.outer.make_method("maid_sgd", value_bounds="exact")
