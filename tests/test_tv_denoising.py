"""TV denoising: closed forms against autograd, the solution against cvxpy, the certificates."""
import math

import numpy as np
import pytest
import torch
from bilevel_problems.tv_denoising import (
    C3_ANISOTROPIC,
    C3_ISOTROPIC,
    ENTRY,
    TVDenoising,
    diff_norm_squared,
    grad_adjoint,
    grad_op,
)

import bilevel
from bilevel import BilevelProblem, hypergradient
from bilevel.testing import check_problem

VARIANTS = ("isotropic", "anisotropic")


def small(variant="isotropic", **kw):
    return TVDenoising(**{**ENTRY["test_params"], "variant": variant, **kw})


def randn(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def op_norm_2cols(b0, b1):
    """Operator norm of the n x 2 matrix [b0, b1]."""
    gram = torch.tensor([[float((b0 * b0).sum()), float((b0 * b1).sum())],
                         [float((b0 * b1).sum()), float((b1 * b1).sum())]])
    return math.sqrt(float(torch.linalg.eigvalsh(gram)[-1]))


def test_registered_and_built_by_name():
    p = bilevel.make_problem("tv_denoising", **ENTRY["test_params"])
    assert p.name == "tv_denoising" and p.noisy.shape == (2, 16, 16)
    assert p.initial_theta().tolist() == [-5.0, -5.0]


@pytest.mark.parametrize("shape", [(3, 7, 5), (1, 1, 6), (2, 4, 1)])
def test_adjoint(shape):
    x, p = randn(shape, 0), randn((2, *shape), 1)
    lhs, rhs = float((grad_op(x) * p).sum()), float((x * grad_adjoint(p)).sum())
    assert abs(lhs - rhs) <= 1e-12 * max(1.0, abs(lhs))
    # Neumann boundary: the last difference in each direction is zero.
    assert torch.all(grad_op(x)[0][..., -1, :] == 0) and torch.all(grad_op(x)[1][..., -1] == 0)


def test_diff_norm_is_exact():
    H, W = 5, 7
    basis = torch.eye(H * W, dtype=torch.float64).reshape(H * W, H, W)
    D = grad_op(basis).reshape(2, H * W, H * W).permute(0, 2, 1).reshape(2 * H * W, H * W)
    assert abs(float(torch.linalg.matrix_norm(D, ord=2)) ** 2 - diff_norm_squared(H, W)) < 1e-12
    assert diff_norm_squared(64, 64) < 8


@pytest.mark.parametrize("variant", VARIANTS)
def test_closed_forms_equal_autograd(variant):
    p = small(variant)
    theta = torch.tensor([-2.0, -3.5], dtype=torch.float64)
    x = p.noisy + 0.05 * randn(p.noisy.shape, 2)
    v, w = randn(x.shape, 3), randn(x.shape, 4)
    pairs = [(p.lower_grad(x, theta), BilevelProblem.lower_grad(p, x, theta)),
             (p.lower_hvp(x, theta, v), BilevelProblem.lower_hvp(p, x, theta, v)),
             (p.mixed_vjp(x, theta, w), BilevelProblem.mixed_vjp(p, x, theta, w))]
    pairs += list(zip(p.upper_grads(x, theta), BilevelProblem.upper_grads(p, x, theta),
                          strict=True))
    for mine, auto in pairs:
        assert mine.shape == auto.shape
        assert float((mine - auto).abs().max()) <= 1e-10
    # the columns of B agree with B^T w
    b0, b1 = p.mixed_columns(x, theta)
    bw = p.mixed_vjp(x, theta, w)
    assert abs(float((b0 * w).sum()) - float(bw[0])) < 1e-10
    assert abs(float((b1 * w).sum()) - float(bw[1])) < 1e-10


@pytest.mark.parametrize("variant", VARIANTS)
def test_check_problem(variant):
    report = check_problem(small(variant))
    assert bool(report), str(report)


def _cvxpy_solution(noisy, lam, nu, variant):
    cp = pytest.importorskip("cvxpy")
    sp = pytest.importorskip("scipy.sparse")
    H, W = noisy.shape

    def d1(n):  # forward differences, last row zero (Neumann)
        return sp.diags([-np.ones(n), np.ones(n - 1)], [0, 1], format="lil").tocsr() \
            .multiply(np.r_[np.ones(n - 1), 0][:, None]).tocsr()

    Dv = sp.kron(d1(H), sp.eye(W)).tocsr()
    Dh = sp.kron(sp.eye(H), d1(W)).tocsr()
    y = noisy.numpy().ravel()
    x = cp.Variable(H * W)
    ones = nu * np.ones(H * W)
    if variant == "isotropic":
        reg = cp.sum(cp.norm(cp.vstack([Dv @ x, Dh @ x, ones]), 2, axis=0))
    else:
        reg = (cp.sum(cp.norm(cp.vstack([Dv @ x, ones]), 2, axis=0))
               + cp.sum(cp.norm(cp.vstack([Dh @ x, ones]), 2, axis=0)))
    problem = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(x - y) + lam * reg))
    problem.solve(solver=cp.CLARABEL, tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10,
                  max_iter=500)
    assert problem.status == "optimal", problem.status
    return torch.from_numpy(x.value.reshape(H, W))


@pytest.mark.parametrize("variant", VARIANTS)
def test_lower_solution_matches_cvxpy(variant):
    p = TVDenoising(n_images=1, size=12, sigma=0.1, seed=3, variant=variant)
    lam, nu = 0.1, 0.05
    theta = torch.tensor([math.log(lam), math.log(nu)], dtype=torch.float64)
    sol = p.solve_lower(theta, 1e-9, max_iter=100_000)
    assert sol.converged
    reference = _cvxpy_solution(p.noisy[0], lam, nu, variant)
    assert float((sol.x[0] - reference).norm()) <= 1e-5
    # and the smoothing is real: the solution is far from the data
    assert float((sol.x - p.noisy).norm()) > 0.1


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("theta", [(-5.0, -5.0), (-2.5, -4.0)])
def test_hypergradient_bound_holds(variant, theta):
    p = small(variant)
    theta = torch.tensor(theta, dtype=torch.float64)
    tight = hypergradient(p, theta, 1e-10, 1e-10, lower_max_iter=100_000)
    loose = hypergradient(p, theta, 1e-2, 1e-3)
    assert loose.certified
    assert loose.error_bound >= float((loose.grad - tight.grad).norm())
    # MAID reuses the constants of its first x~ at the tighter x~' of its refinements.
    refined = hypergradient(p, theta, 1e-4, 1e-4, x0=loose.lower.x, constants=loose.constants)
    assert refined.error_bound >= float((refined.grad - tight.grad).norm())
    b_star = op_norm_2cols(*p.mixed_columns(tight.lower.x, theta))
    assert loose.constants.B_norm >= b_star
    # What L_Ainv stands for: ||(A(x~)^{-1} - A(x*)^{-1}) grad_x g|| <= L_Ainv ||grad_x g|| eps.
    x_loose, x_star = loose.lower.x, tight.lower.x
    _, gx, _ = p.upper_grads(x_loose, theta)
    q1, q2 = (bilevel.conjugate_gradient(lambda v, x=x: p.lower_hvp(x, theta, v), gx, None,
                                         tol=1e-12, max_iter=10_000).q
              for x in (x_loose, x_star))
    dist = float((x_loose - x_star).norm())
    assert float((q1 - q2).norm()) <= loose.constants.L_Ainv * float(gx.norm()) * dist


@pytest.mark.parametrize("variant", VARIANTS)
def test_lipschitz_constants_bound_differences(variant):
    """L_B, L_A (global) and the smoothness bound against sampled differences."""
    p = small(variant)
    theta = torch.tensor([-3.0, -4.0], dtype=torch.float64)
    nu = math.exp(-4.0)
    c = p.bound_constants(theta, p.noisy)
    lam, D2 = math.exp(-3.0), p.D2
    factor = math.sqrt(3) * C3_ISOTROPIC if variant == "isotropic" else \
        math.sqrt(2) * C3_ANISOTROPIC
    L_A = lam * D2 * factor / nu ** 2
    for seed in range(5):
        # Pixel differences of the order of nu, where the derivatives of phi vary most.
        x1 = nu * randn(p.noisy.shape, 10 + seed)
        x2 = x1 + 0.3 * nu * randn(p.noisy.shape, 20 + seed)
        dx = float((x1 - x2).norm())
        b = [u - v for u, v in zip(p.mixed_columns(x1, theta), p.mixed_columns(x2, theta),
                                       strict=True)]
        assert op_norm_2cols(*b) <= c.L_B * dx
        v = randn(x1.shape, 30 + seed)
        v = v / v.norm()
        assert float((p.lower_hvp(x1, theta, v) * v).sum()) <= p.smoothness(theta)
    # L_A: the worst case moves one pixel by a small amount near a kink of size ~nu;
    # power iteration on A(x1) - A(x2) finds its norm (the bound is within ~2.5x).
    worst = 0.0
    for base in (0.0, 0.3, 0.6):
        x1 = torch.zeros(p.noisy.shape, dtype=torch.float64)
        x1[0, 5, 6] = -base * nu
        x2 = x1.clone()
        x2[0, 5, 6] += 1e-4 * nu
        v = randn(x1.shape, 0)
        for _ in range(30):
            w = p.lower_hvp(x1, theta, v) - p.lower_hvp(x2, theta, v)
            v = w / w.norm()
        worst = max(worst, float(w.norm()) / (1e-4 * nu))
    assert 0.2 * L_A <= worst <= L_A


def _dhess_closed(s, c, sg):
    """-dHphi(t)[d] for nu = 1, t = s e_1, d = (c, sg): (s / rho^3) [[3c / rho^2, sg], [sg, c]]."""
    rho2 = 1 + s ** 2
    m = torch.stack([torch.stack([3 * c / rho2, sg], -1), torch.stack([sg, c], -1)], -2)
    return m * (s / rho2 ** 1.5)[..., None, None]


def test_third_derivative_constants():
    """C3 bounds nu^2 ||dHphi(t)[d]|| on a dense grid (nu = 1; the bound scales as 1/nu^2)."""
    s = torch.linspace(0, 6, 3001, dtype=torch.float64)
    a = torch.linspace(0, math.pi, 181, dtype=torch.float64)
    S, A = torch.meshgrid(s, a, indexing="ij")
    norms = torch.linalg.matrix_norm(_dhess_closed(S, torch.cos(A), torch.sin(A)), ord=2)
    assert float(norms.max()) <= C3_ISOTROPIC
    assert abs(float(norms.max()) - C3_ANISOTROPIC) < 1e-3
    assert float((3 * s / (s ** 2 + 1) ** 2.5).max()) <= C3_ANISOTROPIC * (1 + 1e-12)

    # the closed form against finite differences of the autograd Hessian
    def hess(t):
        return torch.autograd.functional.hessian(lambda u: torch.sqrt(u @ u + 1), t)

    t = torch.tensor([0.7, 0.0], dtype=torch.float64)
    d = torch.tensor([0.6, 0.8], dtype=torch.float64)
    fd = (hess(t + 1e-5 * d) - hess(t - 1e-5 * d)) / 2e-5
    closed = -_dhess_closed(t[0], d[0], d[1])
    assert torch.allclose(closed, fd, atol=1e-8)


def test_denoise_improves_psnr_and_quality():
    p = TVDenoising(n_images=2, size=32, sigma=0.1, seed=1)
    theta = torch.tensor([math.log(0.08), math.log(0.01)], dtype=torch.float64)
    noisy_q = p.quality(torch.tensor([-30.0, 0.0], dtype=torch.float64))  # lam ~ 0: x = y
    q = p.quality(theta)
    assert q["psnr"] > noisy_q["psnr"] + 2 and q["ssim"] > noisy_q["ssim"]
    x = p.denoise(p.noisy[0], theta)
    assert x.shape == (32, 32)


def test_float32_and_errors():
    p = small(dtype=torch.float32)
    theta = p.initial_theta()
    assert p.lower_grad(p.noisy, theta).dtype == torch.float32
    assert p.mixed_vjp(p.noisy, theta, p.noisy).shape == (2,)
    with pytest.raises(ValueError, match="variant"):
        small("tv")
    with pytest.raises(ValueError, match="theta0"):
        small(theta0=(1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match="noisy"):
        TVDenoising(images=torch.zeros(2, 8, 8), noisy=torch.zeros(2, 8, 9))
