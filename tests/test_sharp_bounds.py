"""The local (sharp) terms of the hypergradient bound against the exact x*, q* of a dense reference.

Every hook of the contract that sharpens omega -- hessian_lipschitz_along,
mixed_lipschitz_along, BoundConstants.sensitivity -- is checked against the
quantity it bounds, evaluated at the true minimiser x* (bilevel.reference), at
cold and warm lower-level solutions and small smoothing / small mu, where the
worst-case constants are the loosest.
"""
import dataclasses
import math
import warnings

import pytest
import torch

import bilevel
from bilevel.reference import dense_hessian, reference_solution


def _unit(like, gen):
    v = torch.randn(like.shape, generator=gen, dtype=like.dtype)
    return v / v.norm()


def _cases():
    tv = [("tv_denoising", dict(n_images=2, size=10, variant=v), torch.tensor(t))
          for v in ("isotropic", "anisotropic") for t in ((-2.0, -6.0), (-3.0, -3.0))]
    gen = torch.Generator().manual_seed(1)
    lr = []
    for layout, size in (("feature", 64), ("weight", 640), ("scalar", 1)):
        theta = -3 + torch.randn(size, generator=gen, dtype=torch.float64)
        lr.append(("logistic_regression",
                   dict(layout=layout, n_train=80, n_val=80, n_test=40), theta))
    foe = [("fields_of_experts", dict(n_images=2, size=12, num_filters=3, filter_size=3),
            None)]
    ridge = dict(n_images=2, size=12, num_filters=2, filter_size=3, num_knots=9, x_range=0.2)
    ridges = [("ridge_regularizer", ridge, "perturbed"),
              ("weakly_convex_ridge", dict(ridge, rho=0.9), "perturbed")]
    return tv + lr + foe + ridges


CASES = _cases()


def _perturbed_start(problem, seed):
    """The problem's start moved at random: uneven slopes, kinks."""
    gen = torch.Generator().manual_seed(seed)
    start = problem.theta0.to(torch.float64)
    return start + 0.5 * torch.randn(start.shape, generator=gen, dtype=torch.float64)


@pytest.fixture(scope="module")
def references():
    out = {}
    for i, (name, params, theta) in enumerate(CASES):
        problem = bilevel.make_problem(name, **params)
        if theta == "perturbed":
            theta = _perturbed_start(problem, i)
        if theta is None:  # a learned theta: sharper filters, smaller smoothings
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", bilevel.ConvergenceWarning)  # max_iter, meant
                theta = bilevel.solve(problem, "maid", max_iter=15).theta
        theta = theta.to(torch.float64)
        out[i] = problem, theta, reference_solution(problem, theta)
    return out


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("eps", [1e-2, 1e-5])
def test_local_rates_bound_the_moves_at_the_true_minimiser(references, case, eps):
    problem, theta, ref = references[case]
    gen = torch.Generator().manual_seed(case)
    hg = bilevel.hypergradient(problem, theta, eps, eps, lower_max_iter=200_000)
    x, q = hg.lower.x, hg.linear.q
    x_radius = hg.lower.error_bound
    assert float((x - ref.x).norm()) <= x_radius
    mu = problem.strong_convexity(theta)
    rho = hg.linear.residual_norm / mu
    M = problem.hessian_lipschitz_along(theta, x, q, rho, x_radius=x_radius)
    radius = hg.constants.adjoint_radius(x_radius, hg.linear.residual_norm, mu,
                                         hg.upper_grad_norm, M)
    N = problem.mixed_lipschitz_along(theta, x, q, radius, x_radius=x_radius)
    assert float((q - ref.q).norm()) <= radius
    for q_probe, r in ((q, rho), (q + rho * _unit(q, gen), rho), (ref.q, radius)):
        rate = problem.hessian_lipschitz_along(theta, x, q, r, x_radius=x_radius)
        moved = problem.lower_hvp(ref.x, theta, q_probe) - problem.lower_hvp(x, theta, q_probe)
        assert float(moved.norm()) <= rate * x_radius * (1 + 1e-9) + 1e-14
    for q_probe in (q, ref.q, q + radius * _unit(q, gen)) if N is not None else ():
        moved = problem.mixed_vjp(ref.x, theta, q_probe) - problem.mixed_vjp(x, theta, q_probe)
        assert float(moved.norm()) <= N * x_radius * (1 + 1e-9) + 1e-14


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("eps", [1e-2, 1e-4, 1e-7])
def test_sharp_omega_bounds_the_true_error_and_never_exceeds_the_plain_bound(references, case,
                                                                             eps):
    problem, theta, ref = references[case]
    for x0 in (None, ref.x + 3 * eps * _unit(ref.x, torch.Generator().manual_seed(0))):
        hg = bilevel.hypergradient(problem, theta, eps, eps, x0=x0, lower_max_iter=200_000)
        true = float((hg.grad - ref.grad).norm())
        assert hg.certified and hg.error_bound >= true
        mu = problem.strong_convexity(theta)
        plain = dataclasses.replace(hg.constants, sensitivity=None).omega(
            hg.lower.error_bound, hg.linear.residual_norm, mu, hg.upper_grad_norm)
        assert hg.error_bound <= plain * (1 + 1e-12)


def test_tv_small_smoothing_is_much_sharper_than_the_global_constants(references):
    problem, theta, ref = references[0]          # isotropic, smoothing e^-6
    hg = bilevel.hypergradient(problem, theta, 1e-6, 1e-6)
    plain = hg.constants.omega(hg.lower.error_bound, hg.linear.residual_norm, 1.0,
                               hg.upper_grad_norm)
    assert hg.error_bound < plain / 20


@pytest.mark.parametrize("case", [i for i, c in enumerate(CASES) if c[0] == "logistic_regression"
                                  and c[1]["layout"] != "weight"])
def test_logistic_sensitivity_bounds_the_solution_map(references, case):
    problem, theta, ref = references[case]
    hg = bilevel.hypergradient(problem, theta, 1e-3, 1e-3)
    x = hg.lower.x
    # B(x~) column by column: B e_j = d/dt grad_x h(x~, theta + t e_j), exact (linear in e^theta).
    cols = []
    for j in range(theta.numel()):
        e = torch.zeros_like(theta)
        e[j] = 1.0
        t = 1e-6
        cols.append(((problem.lower_grad(x, theta + t * e) - problem.lower_grad(x, theta - t * e))
                     / (2 * t)).reshape(-1))
    B = torch.stack(cols, dim=1)
    K = hg.constants.sensitivity
    for point in (x, ref.x):
        J = torch.linalg.solve(dense_hessian(problem, point, theta), B)
        assert float(torch.linalg.matrix_norm(J, ord=2)) <= K * (1 + 1e-6)
    assert K <= hg.constants.B_norm / problem.strong_convexity(theta) * (1 + 1e-12)
    assert math.isfinite(K)


@pytest.mark.parametrize(("name", "extra", "factor"),
                         [("ridge_regularizer", {}, 2), ("weakly_convex_ridge", dict(rho=0.9), 20)])
def test_ridges_hessian_rate_is_much_sharper_than_l_a(name, extra, factor):
    # M reads q's largest response where L_A reads ||q||, and K M carries 1 / mu where
    # L_Ainv ||grad g|| ||B|| carries 1 / mu^2: the weakly convex ridge (mu = 0.1) gains most.
    problem = bilevel.make_problem(name, n_images=4, size=24, num_filters=2, filter_size=3,
                                   num_knots=9, x_range=0.2, **extra)
    theta = _perturbed_start(problem, 0)
    hg = bilevel.hypergradient(problem, theta, 1e-6, 1e-6)
    plain = hg.constants.omega(hg.lower.error_bound, hg.linear.residual_norm,
                               problem.strong_convexity(theta), hg.upper_grad_norm)
    assert hg.hessian_along is not None and hg.error_bound < plain / factor


def _on_the_ball(name, extra, eps):
    problem = bilevel.make_problem(name, n_images=2, size=16, num_filters=3, filter_size=3,
                                   **extra)
    theta = _perturbed_start(problem, 5)
    hg = bilevel.hypergradient(problem, theta, eps, eps)
    return problem, theta, hg.lower.x, hg.linear.q, hg.lower.error_bound


SPLINES = dict(num_knots=41, x_range=0.2)


@pytest.mark.parametrize(("name", "extra"), [("ridge_regularizer", SPLINES),
                                              ("weakly_convex_ridge", dict(SPLINES, rho=0.9)),
                                              ("fields_of_experts", {})])
@pytest.mark.parametrize("eps", [1e-2, 1e-4])
def test_filter_banks_local_rates_hold_on_their_ball(name, extra, eps):
    """M and N of the filter banks read the potentials' derivatives only near x's responses
    (within ||c_k|| x_radius): the moves of A q' and B^T q' between x and points of the
    ball (random directions at its edge and halfway, q' at the edge of its own ball) stay
    below them, and they never exceed the rates for an unbounded ball."""
    problem, theta, x, q, x_radius = _on_the_ball(name, extra, eps)
    radius = 0.1 * float(q.norm())
    M = problem.hessian_lipschitz_along(theta, x, q, radius, x_radius=x_radius)
    N = problem.mixed_lipschitz_along(theta, x, q, radius, x_radius=x_radius)
    assert M <= problem.hessian_lipschitz_along(theta, x, q, radius) * (1 + 1e-12)
    assert N <= problem.mixed_lipschitz_along(theta, x, q, radius) * (1 + 1e-12)
    gen = torch.Generator().manual_seed(7)
    worst = [0.0, 0.0]
    for scale in (1.0, 0.5) * 10:
        step = scale * x_radius * _unit(x, gen)
        q_probe = q + radius * _unit(q, gen)
        hess = problem.lower_hvp(x + step, theta, q_probe) - problem.lower_hvp(x, theta, q_probe)
        mixed = (problem.mixed_vjp(x + step, theta, q_probe)
                 - problem.mixed_vjp(x, theta, q_probe))
        worst[0] = max(worst[0], float(hess.norm() / step.norm()))
        worst[1] = max(worst[1], float(mixed.norm() / step.norm()))
    assert worst[0] <= M and worst[1] <= N


def test_ridge_local_jumps_bound_the_third_derivative_on_each_window():
    """_local_jumps: |psi''(a) - psi''(b)| <= j |a - b| for a, b in [z - w, z + w] (sampled
    finely), j below the global jmp where the window misses the steepest piece, and the
    global jmp for a window wider than MAX_LOCAL_PIECES pieces or an unbounded one."""
    from bilevel.nn.splines import evaluate_potential, potential_tables

    problem = bilevel.make_problem("weakly_convex_ridge", n_images=1, size=8, num_filters=2,
                                   filter_size=3, num_knots=21, x_range=0.2, rho=0.9)
    slopes = problem.slopes(_perturbed_start(problem, 3))
    gen = torch.Generator().manual_seed(0)
    z = 0.3 * torch.randn(1, 2, 5, 7, generator=gen, dtype=torch.float64)  # some beyond R
    width = torch.tensor([0.004, 0.03], dtype=torch.float64)  # T = 0.02
    jumps = problem._local_jumps(slopes, z, width)
    tables = potential_tables(slopes, problem.x_range)
    grid = torch.linspace(-1, 1, 801, dtype=torch.float64)
    for k in range(2):
        t = z[0, k].reshape(-1, 1) + width[k] * grid              # (35, 801) in each window
        points = t.reshape(1, 1, -1).expand(1, 2, -1).contiguous()
        (d2,) = evaluate_potential(points, tables, problem.x_range, (2,))
        d2 = d2[0, k].view(t.shape)
        rate = (d2.diff(dim=1).abs() / t.diff(dim=1)).amax(dim=1)
        assert bool((rate <= jumps[0, k].reshape(-1) * (1 + 1e-9) + 1e-9).all())
    jmp = problem._slope_jumps(slopes)
    top = jmp.view(1, 2, 1, 1)
    assert bool((jumps <= top).all()) and bool((jumps < top).any())
    wide = problem._local_jumps(slopes, z, torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert torch.equal(wide, jmp.view(1, 2, 1, 1).expand_as(z))
    unbounded = problem._local_jumps(slopes, z, torch.full((2,), math.inf, dtype=torch.float64))
    assert torch.equal(unbounded, jmp.view(1, 2, 1, 1).expand_as(z))


@pytest.mark.parametrize("name", ["fields_of_experts", "ridge_regularizer"])
def test_the_whole_bank_adjoint_is_bounded_by_the_symbol(name):
    """||sum_k K_k^T v_k|| <= sqrt(Lambda) ||v|| with Lambda the symbol bound of
    sum_k c_k * c_k (the bank's operator norm squared), which the Hessian rates use in
    place of sum_k kappa_k ||v_k|| when smaller; and Lambda <= sum_k kappa_k^2."""
    from bilevel_problems import filter_bank

    problem = bilevel.make_problem(name, n_images=2, size=16, num_filters=4, filter_size=3)
    theta = _perturbed_start(problem, 2)
    C = problem.params(theta)[1] if name != "fields_of_experts" else problem.params(theta).filters
    auto = filter_bank.autocorrelations(C, 3)
    Lambda = filter_bank.weighted_kernel_norm(auto, torch.ones(4, dtype=torch.float64))
    assert Lambda <= float(torch.sum(filter_bank.operator_norm_bounds(auto) ** 2))
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(2, 4, 14, 14, generator=gen, dtype=torch.float64)
    for _ in range(30):  # power iteration: v towards the top singular vector of K^T
        v = filter_bank.correlate(filter_bank.correlate_adjoint(v, C, 3), C, 3)
        v = v / v.norm()
    top = float(filter_bank.correlate_adjoint(v, C, 3).norm())
    assert top <= math.sqrt(Lambda) * (1 + 1e-9)
    assert top >= 0.5 * math.sqrt(Lambda)  # the symbol bound is not loose on 16 x 16
