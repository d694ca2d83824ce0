"""The dense float64 reference (bilevel.reference) against closed forms and finite differences."""
import pytest
import torch

import bilevel
from bilevel.reference import dense_hessian, reference_solution


def _rel(a, b):
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def test_quadratic_matches_closed_form():
    problem = bilevel.make_problem("quadratic", n=40, m=6, distribution="normal")
    theta = torch.randn(6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ref = reference_solution(problem, theta)
    assert ref.converged
    assert _rel(ref.x, problem.exact_solution(theta)) <= 1e-9
    assert _rel(ref.grad, problem.gradient(theta)) <= 1e-9
    assert ref.value == pytest.approx(problem.value(theta), rel=1e-12)


def test_dense_hessian_is_the_hvp():
    problem = bilevel.make_problem("tv_denoising", n_images=1, size=6)
    theta = problem.initial_theta()
    x = problem.noisy.clone()
    H = dense_hessian(problem, x, theta)
    assert torch.equal(H, H.T)
    v = torch.randn(x.shape, dtype=x.dtype)
    assert _rel(H @ v.reshape(-1), problem.lower_hvp(x, theta, v).reshape(-1)) <= 1e-12


def test_tv_gradient_matches_finite_differences_of_F():
    problem = bilevel.make_problem("tv_denoising", n_images=1, size=8)
    theta = torch.tensor([-3.0, -4.0], dtype=torch.float64)
    ref = reference_solution(problem, theta)
    assert ref.converged and ref.error_bound < 1e-11
    step = 1e-5
    fd = torch.empty(2, dtype=torch.float64)
    for i in range(2):
        e = torch.zeros(2, dtype=torch.float64)
        e[i] = step
        fd[i] = (reference_solution(problem, theta + e).value
                 - reference_solution(problem, theta - e).value) / (2 * step)
    assert _rel(ref.grad, fd) <= 1e-6


def test_large_instances_are_refused():
    problem = bilevel.make_problem("tv_denoising", n_images=1, size=80)  # 6400 entries
    with pytest.raises(ValueError, match="small instances"):
        reference_solution(problem, problem.initial_theta())
