"""K >= ||A(x')^{-1} B(x~)|| from CG solves (bilevel.sensitivity), against dense float64 linear
algebra: the columns of B, the bound at x~ and at x*, its sharpness, and the hypergradient
that uses it (honest, its solves counted, never handed back for reuse)."""
import math

import pytest
import torch
from bilevel_problems.reconstruction import ReconstructionProblem
from test_custom_problem import make_ridge

import bilevel
from bilevel.reference import dense_hessian, reference_solution
from bilevel.sensitivity import mixed_columns, solved_sensitivity


def dense_B(problem, x, theta):
    """B = d/dtheta grad_x h by autograd through lower_objective (no closed form used)."""
    def grad(t):
        live = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(problem.lower_objective(live, t), live, create_graph=True)
        return g.flatten()
    return torch.autograd.functional.jacobian(grad, theta)


def spectral(M):
    return float(torch.linalg.matrix_norm(M, ord=2))


@pytest.fixture(scope="module")
def blur():
    """A blurred reconstruction with mu = gamma = 1e-3 far below the curvature along B."""
    p = ReconstructionProblem("blur", n_images=1, size=12, sensitivity_by_solves=True)
    theta = torch.tensor([-5.0, -5.0], dtype=torch.float64)
    return p, theta, reference_solution(p, theta)


def test_mixed_columns_are_B_columns():
    """Columns from the problem's closed form (TV's) and from the autograd default (a user's
    problem) both match B^T w through mixed_vjp and the dense Jacobian."""
    ridge = make_ridge()
    theta = torch.linspace(-1, 1, 6, dtype=torch.float64)
    p = ReconstructionProblem("blur", n_images=1, size=11)
    for problem, th in ((ridge, theta), (p, p.initial_theta())):
        x = problem.solve_lower(th, 1e-6).x
        B = torch.stack([b.flatten() for b in mixed_columns(problem, x, th)], dim=1)
        torch.testing.assert_close(B, dense_B(problem, x, th), rtol=1e-10, atol=1e-14)
        w = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=x.dtype)
        torch.testing.assert_close(B.T @ w.flatten(), problem.mixed_vjp(x, th, w).flatten(),
                                   rtol=1e-10, atol=1e-14)
    assert not hasattr(ridge, "mixed_columns")  # the autograd path was the one tested


@pytest.mark.parametrize("eps", [1e-2, 1e-4, 1e-7])
def test_solved_sensitivity_bounds_the_solution_map_at_x_tilde_and_at_x_star(blur, eps):
    p, theta, ref = blur
    hg = bilevel.hypergradient(p, theta, eps, eps, lower_max_iter=200_000)
    x, radius = hg.lower.x, hg.lower.error_bound
    assert float((x - ref.x).norm()) <= radius
    B = dense_B(p, x, theta)
    K = hg.sensitivity
    exact = {}
    for label, point in (("x~", x), ("x*", ref.x)):
        H = dense_hessian(p, point, theta)
        exact[label] = spectral(torch.linalg.solve(H, B))
        assert K >= exact[label]
    mu = p.strong_convexity(theta)
    plain = hg.constants.B_norm / mu
    # Sharp where eps is small against mu / M: within the residual term's 0.05 sqrt(2)
    # (and the eps term's few percent at 1e-4) of the exact norm, far below ||B|| / mu (47
    # against 0.35 here).
    if eps <= 1e-4:
        assert K <= (1.2 if eps > 1e-6 else 1.08) * exact["x~"] and K <= plain / 50
    # The same call, by hand: the hypergradient passes the lower-level eps and its mu.
    again, _ = solved_sensitivity(p, theta, x, radius, mu, hg.constants)
    assert again == pytest.approx(K, rel=1e-12)


def test_hypergradient_with_solved_sensitivity_is_honest_and_counts_its_solves(blur):
    p, theta, ref = blur
    assert p.sensitivity_by_solves
    for eps in (1e-3, 1e-6):
        hg = bilevel.hypergradient(p, theta, eps, eps, lower_max_iter=200_000)
        assert hg.error_bound >= float((hg.grad - ref.grad).norm())
        # Two solves (one per entry of theta) beyond the adjoint's CG.
        assert hg.cost.cg_iterations > hg.linear.iterations + 2
        # eps-dependent: not in the constants that a caller may reuse elsewhere.
        assert hg.constants.sensitivity is None
        K = hg.constants.solution_sensitivity(p.strong_convexity(theta))
        assert hg.terms["upper_grad"] == pytest.approx(hg.sensitivity * hg.constants.L_g
                                                       * hg.lower.error_bound, rel=1e-12)
        assert hg.sensitivity < K
    # The default, without the solves, is the looser bound on the same problem.
    default = ReconstructionProblem("blur", n_images=1, size=12)
    assert not default.sensitivity_by_solves
    assert default.on_images(default.clean).sensitivity_by_solves is False
    assert p.on_images(p.clean).sensitivity_by_solves is True
    plain = bilevel.hypergradient(default, theta, 1e-6, 1e-6, lower_max_iter=200_000)
    assert plain.sensitivity is None and plain.error_bound > 10 * hg.error_bound
    with pytest.raises(ValueError, match="sensitivity_by_solves must be True or False"):
        ReconstructionProblem("blur", n_images=1, size=12, sensitivity_by_solves="yes")


def test_solved_sensitivity_of_a_quadratic_is_its_closed_form():
    """h quadratic: A^{-1} B = -dx*/dtheta exactly, A constant; K is the closed form's
    ||M|| up to the CG residual term (at most 5% per column)."""
    p = bilevel.make_problem("quadratic", n=40, m=4)
    theta = p.initial_theta()
    x = p.solve_lower(theta, 1e-10).x
    constants = p.bound_constants(theta, x)
    K, cost = solved_sensitivity(p, theta, x, 1e-6, p.strong_convexity(theta), constants)
    exact = spectral(p.M)
    assert exact <= K <= exact * (1 + 0.05 * math.sqrt(4)) + 1e-12
    assert cost.cg_iterations > 0
    assert solved_sensitivity(p, theta, x, math.inf, 1.0, constants)[0] == math.inf
