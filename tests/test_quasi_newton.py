"""MAID with L-BFGS directions: the model is BFGS's, and every accepted step still proves
a decrease of F."""
import warnings

import pytest
import torch

import bilevel
from bilevel.outer import quasi_newton
from bilevel.reference import reference_solution


def dense_bfgs_inverse(pairs, dim):
    """H from the BFGS inverse update, H0 = (s^T y / y^T y) I of the newest pair."""
    s, y = pairs[-1]
    H = (s @ y) / (y @ y) * torch.eye(dim, dtype=torch.float64)
    for s, y in pairs:
        rho = 1.0 / (s @ y)
        V = torch.eye(dim, dtype=torch.float64) - rho * torch.outer(y, s)
        H = V.T @ H @ V + rho * torch.outer(s, s)
    return H


def test_two_loop_recursion_is_the_bfgs_inverse_update():
    g = torch.Generator().manual_seed(0)
    dim = 7
    M = torch.randn(dim, dim, generator=g, dtype=torch.float64)
    A = M @ M.T + 0.5 * torch.eye(dim, dtype=torch.float64)  # y = A s: positive curvature
    memory = ()
    pairs = []
    for _ in range(4):
        s = torch.randn(dim, generator=g, dtype=torch.float64)
        memory = quasi_newton.add_pair(memory, s, A @ s, size=10)
        pairs.append((s, A @ s))
    z = torch.randn(dim, generator=g, dtype=torch.float64)
    torch.testing.assert_close(quasi_newton.direction(memory, z),
                               dense_bfgs_inverse(pairs, dim) @ z)
    # The secant equation of the newest pair: H y = s.
    s, y = pairs[-1]
    torch.testing.assert_close(quasi_newton.direction(memory, y), s)


def test_pairs_without_positive_curvature_are_skipped_and_memory_is_bounded():
    s = torch.tensor([1.0, 0.0], dtype=torch.float64)
    assert quasi_newton.add_pair((), s, -s, size=3) == ()
    memory = ()
    for k in range(5):
        memory = quasi_newton.add_pair(memory, (k + 1) * s, s, size=3)
    assert len(memory) == 3 and float(memory[0][0][0]) == 3.0
    z = torch.tensor([0.3, -2.0], dtype=torch.float64)
    assert torch.equal(quasi_newton.direction((), z), z)  # no memory: steepest descent


def test_lbfgs_steps_prove_decrease_of_F_against_the_reference():
    problem = bilevel.make_problem("tv_denoising", n_images=2, size=12)
    states = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bilevel.ConvergenceWarning)
        result = bilevel.solve(problem, "maid", direction="lbfgs", max_iter=12, tol=0,
                               callback=lambda s, r: states.append(s) and False)
    lam = bilevel.METHODS["maid"]().sufficient_decrease
    checked = quasi = 0
    before = problem.initial_theta()
    for state, row in zip(states, result.history, strict=True):
        if row["accepted"]:
            theta_k, z_k = state.previous  # the step's start and its hypergradient
            assert torch.equal(theta_k, before)
            promised = lam * float(z_k @ (theta_k - state.theta))  # lam alpha <z, H z>
            assert promised > 0
            value = reference_solution(problem, state.theta).value
            assert value - reference_solution(problem, theta_k).value <= -promised + 1e-12
            checked += 1
            quasi += row["memory"] > 0
        before = state.theta
    assert checked >= 5 and quasi >= 3


def test_lbfgs_converges_in_fewer_iterations_on_an_ill_conditioned_problem():
    # TV's two log-parameters: a steep weight and a flat smoothing.
    runs = {}
    for direction in ("gradient", "lbfgs"):
        problem = bilevel.make_problem("tv_denoising", n_images=2, size=12)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", bilevel.ConvergenceWarning)
            runs[direction] = bilevel.solve(problem, "maid", direction=direction,
                                            max_iter=150, tol=1e-5)
    assert runs["lbfgs"].status == "converged"
    assert len(runs["lbfgs"].history) < len(runs["gradient"].history)


def test_direction_setting_is_validated():
    with pytest.raises(ValueError, match="invalid direction='newton'"):
        bilevel.outer.MAID(direction="newton")


def test_a_failed_lbfgs_search_is_retried_along_a_certified_descent_direction():
    """After an L-BFGS search fails, the memory is dropped and -z is certified a descent
    direction (omega <= (1 - eta) ||z||) before its search: inexact pairs cannot make
    L-BFGS failures and uncertified -z successes alternate at an accuracy that never
    tightens.  Logistic regression's loose first pairs fail searches."""
    problem = bilevel.make_problem("logistic_regression")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bilevel.ConvergenceWarning)
        result = bilevel.solve(problem, "maid_lbfgs", max_iter=12, tol=1e-5)
    rows = result.history
    # The last row may be the stop itself (no search): the rows before it searched.
    searched = rows if result.status == "max_iter" else rows[:-1]
    failed = [k for k, row in enumerate(searched[:-1])
              if row["memory"] > 0 and not row["accepted"]]
    assert failed
    for k in failed:
        after = rows[k + 1]
        assert after["memory"] == 0 and after["direction_certified"]
        assert after["error_bound"] <= after["grad_norm"]
