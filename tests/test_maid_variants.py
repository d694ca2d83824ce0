"""What the default MAID changes against the paper's settings, and what it keeps certified."""
import math

import pytest
import torch

import bilevel
from bilevel.lower import fista, newton_cg
from bilevel.reference import reference_solution


def test_failed_search_is_retried_with_a_certified_direction():
    problem = bilevel.make_problem("tv_denoising", n_images=2, size=16)
    with pytest.warns(bilevel.ConvergenceWarning, match="max_iter"):
        result = bilevel.solve(problem, "maid", max_iter=60, tol=0)
    rows = result.history
    assert any(not r["accepted"] for r in rows), "expected at least one failed search"
    for before, after in zip(rows[:-1], rows[1:], strict=True):
        if not before["accepted"]:
            # the retry runs the paper's descent test first
            assert after["direction_certified"]
            assert after["error_bound"] <= (1 - 1e-4) * after["grad_norm"]


def test_accepted_steps_decrease_the_certified_bounds_on_F():
    # Every accepted step: F(theta+) <= F(theta) - lam step ||z||^2, checked with
    # certified brackets from independent tight solves.
    problem = bilevel.make_problem("tv_denoising", n_images=2, size=12)
    thetas = [problem.initial_theta()]
    with pytest.warns(bilevel.ConvergenceWarning, match="max_iter"):
        result = bilevel.solve(problem, "maid", max_iter=14, tol=0,
                               callback=lambda s, r: thetas.append(s.theta) and False)
    lam = bilevel.METHODS["maid"]().sufficient_decrease

    def F(theta):
        return reference_solution(problem, theta).value

    checked = 0
    for before, after, row in zip(thetas[:-1], thetas[1:], result.history, strict=True):
        if row["accepted"]:
            promised = lam * row["step"] * row["grad_norm"] ** 2
            assert F(after) - F(before) <= -promised + 1e-12
            checked += 1
    assert checked >= 6


def test_float32_stops_at_what_the_dtype_can_certify():
    problem = bilevel.make_problem("tv_denoising", n_images=1, size=12, dtype=torch.float32)
    with pytest.warns(bilevel.ConvergenceWarning, match="float32"):
        result = bilevel.solve(problem, "maid", max_iter=2000, tol=0, lower_max_iter=1500)
    assert result.status == "accuracy_floor"
    assert "torch.float32" in result.message
    floor = 4 * torch.finfo(torch.float32).eps
    assert all(r["eps"] >= floor for r in result.history)


def test_paper_settings_are_kept_under_their_own_name():
    paper = bilevel.outer.make_method("maid_paper")
    assert (paper.alpha0, paper.refinement, paper.trial_accuracy, paper.direction_test) == \
        (1e-2, "halve", "same", "always")
    fixed = bilevel.outer.make_method("fixed")
    assert fixed.trial_accuracy == "same" and fixed.direction_test == "always"
    with pytest.raises(ValueError, match="refinement"):
        bilevel.outer.make_method("maid", refinement="guess")


@pytest.mark.parametrize("layout", ["feature", "weight"])
def test_newton_cg_certificate_and_fista_agree_with_the_reference(layout):
    problem = bilevel.make_problem("logistic_regression", layout=layout, n_train=80, n_val=80,
                                   n_test=40)
    gen = torch.Generator().manual_seed(0)
    theta = -3 + torch.randn(problem.initial_theta().shape, generator=gen, dtype=torch.float64)
    ref = reference_solution(problem, theta)
    for tol in (1e-3, 1e-8):
        newton = newton_cg(problem, theta, tol, max_iter=100_000)
        plain = fista(problem, theta, tol, max_iter=200_000)
        for sol in (newton, plain):
            assert sol.converged
            assert float((sol.x - ref.x).norm()) <= sol.error_bound <= tol
        # Newton's quadratic convergence: far fewer gradient-equivalents at high accuracy
        if tol == 1e-8:
            assert newton.iterations < plain.iterations


def test_preconditioned_cg_reports_its_true_residual():
    problem = bilevel.make_problem("logistic_regression", layout="weight", n_train=80, n_val=80,
                                   n_test=40)
    theta = torch.linspace(-8, 0, problem.initial_theta().numel(), dtype=torch.float64)
    x = newton_cg(problem, theta, 1e-6).x
    b = problem.upper_grads(x, theta)[1]
    P = problem.lower_preconditioner(theta, x)
    assert bool((P > 0).all())
    for pre in (None, P):
        out = bilevel.conjugate_gradient(lambda v: problem.lower_hvp(x, theta, v), b, tol=1e-9,
                                         max_iter=5000, preconditioner=pre)
        true = float((problem.lower_hvp(x, theta, out.q) - b).norm())
        assert out.converged and math.isclose(out.residual_norm, true, rel_tol=1e-6)
    plain = bilevel.conjugate_gradient(lambda v: problem.lower_hvp(x, theta, v), b, tol=1e-9,
                                       max_iter=5000)
    jacobi = bilevel.conjugate_gradient(lambda v: problem.lower_hvp(x, theta, v), b, tol=1e-9,
                                        max_iter=5000, preconditioner=P)
    assert jacobi.iterations < plain.iterations
