"""Reconstruction problems: every preset conforms; derivatives, mu, L and the hypergradient bound
against finite differences and the dense reference (bilevel.reference)."""
import math
import warnings

import pytest
import torch
from bilevel_problems.reconstruction import (
    ENTRY,
    PRESET_TEST_PARAMS,
    PRESETS,
    ReconstructionProblem,
)
from bilevel_problems.tv_denoising import VARIANTS

import bilevel
from bilevel.operators import CircularBlur, Identity, Inpainting, LinearOperator, random_mask
from bilevel.reference import dense_hessian, reference_solution
from bilevel.testing import check_problem

#: gamma = 1e-2 instead of the default 1e-3: check_problem's 1e-9 solves are 3x faster
#: (the conformance test in test_core runs the blur preset at the default).
FAST = dict(gamma=1e-2)


def small(preset, **kw):
    return ReconstructionProblem(**{**PRESET_TEST_PARAMS[preset], **kw})


def randn(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def unit(like, seed):
    v = randn(like.shape, seed)
    return v / v.norm()


@pytest.mark.parametrize("preset", PRESETS)
def test_check_problem_every_preset(preset):
    report = check_problem(small(preset, **FAST))
    assert report, str(report)


def test_registered_by_name_with_presets():
    p = bilevel.make_problem("reconstruction[operator=mri,size=8,n_images=1]")
    assert p.preset == "mri" and p.measurements.is_complex()
    assert p.initial_theta().tolist() == [-5.0, -5.0] and p.gamma == 1e-3
    blur = bilevel.make_problem("reconstruction", **ENTRY["test_params"])
    assert blur.preset == "blur" and blur.clean.shape == (2, 12, 12)
    sr = small("superresolution")
    assert sr.measurements.shape == (2, 4, 4) and sr.initial_x(None).shape == (2, 8, 8)
    assert small("tomography").measurements.shape[:2] == (2, 6)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("preset", PRESETS)
def test_closed_forms_against_finite_differences(preset, variant):
    p = small(preset, variant=variant)
    theta = torch.tensor([-3.0, -3.5], dtype=torch.float64)
    x = p.initial_x(theta) + 0.1 * randn(p.clean.shape, 1)
    v, w = unit(x, 2), randn(x.shape, 3)
    t = 1e-6

    def close(exact, fd):
        exact, fd = torch.as_tensor(exact), torch.as_tensor(fd)
        return float((exact - fd).abs().max()) <= 1e-6 * max(1.0, float(exact.abs().max()))

    h = [float(p.lower_objective(x + s * t * v, theta)) for s in (1, -1)]
    assert close((p.lower_grad(x, theta) * v).sum(), (h[0] - h[1]) / (2 * t))
    fd_hvp = (p.lower_grad(x + t * v, theta) - p.lower_grad(x - t * v, theta)) / (2 * t)
    assert close(p.lower_hvp(x, theta, v), fd_hvp)
    fd_mixed = []
    for j in range(2):
        e = torch.zeros(2, dtype=torch.float64)
        e[j] = t
        diff = p.lower_grad(x, theta + e) - p.lower_grad(x, theta - e)
        fd_mixed.append(float((diff * w).sum()) / (2 * t))
    assert close(p.mixed_vjp(x, theta, w), torch.tensor(fd_mixed))
    b0, b1 = p.mixed_columns(x, theta)
    assert close(p.mixed_vjp(x, theta, w), torch.stack(((b0 * w).sum(), (b1 * w).sum())))
    value, gx, gt = p.upper_grads(x, theta)
    g = [float(p.upper_objective(x + s * t * v, theta)) for s in (1, -1)]
    assert close(value, p.upper_objective(x, theta)) and torch.all(gt == 0)
    assert close((gx * v).sum(), (g[0] - g[1]) / (2 * t))


@pytest.mark.parametrize("preset", PRESETS)
def test_mu_and_L_against_the_dense_hessian(preset):
    """Extreme eigenvalues of the dense Hessian lie in [mu, L], and both ends are nearly met."""
    p = small(preset, n_images=1)
    theta = torch.tensor([-2.0, -5.0], dtype=torch.float64)  # lam / nu = e^3: TV dominates L
    mu, L = p.strong_convexity(theta), p.smoothness(theta)
    x0 = p.initial_x(theta)
    points = {"flat": torch.zeros_like(x0), "start": x0,
              "steep": 1e6 * randn(x0.shape, 4)}  # |Dx| huge: Hphi ~ 0, only A^T A + gamma
    eig = {k: torch.linalg.eigvalsh(dense_hessian(p, x, theta)) for k, x in points.items()}
    for values in eig.values():
        assert float(values[0]) >= mu * (1 - 1e-9) and float(values[-1]) <= L * (1 + 1e-9)
    # At x = 0, Hphi = I / nu everywhere: the Hessian is at least either part of L, each
    # attained (||A||^2 within the operator's tolerance), so L is within a factor 2.
    lam_over_nu = math.exp(float(theta[0] - theta[1]))
    assert float(eig["flat"][-1]) >= 0.99 * max(p.A_norm_squared, lam_over_nu * p.D2)
    assert float(eig["flat"][-1]) >= 0.5 * L
    if preset != "tomography":  # 6 angles on 8 x 8: A^T A may be invertible (mu = gamma)
        # A^T A singular: nothing but gamma is left in the steep directions.
        assert float(eig["steep"][0]) <= 1.01 * mu


def test_gram_bound_enters_mu_only_when_certified():
    images = torch.rand(1, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    p = ReconstructionProblem(Identity(), images=images, gamma=1e-3)
    theta = p.initial_theta()
    assert p.strong_convexity(theta) == 1.0 + 1e-3
    steep = torch.linalg.eigvalsh(dense_hessian(p, 1e6 * randn(images.shape, 1), theta))
    assert (1.0 + 1e-3) * (1 - 1e-12) <= float(steep[0]) <= 1.0 + 2e-3

    class Estimated(LinearOperator):  # bounds claimed without proof: neither is trusted
        def A(self, x):
            return x

        def A_adjoint(self, y):
            return y

        def norm_squared(self):
            return 0.5

        def gram_lower_bound(self):
            return 1.0

    q = ReconstructionProblem(Estimated(), images=images, gamma=1e-3)
    assert q.strong_convexity(theta) == 1e-3 and q.smoothness(theta) is None
    assert q.solve_lower(theta, 1e-8).converged


#: Tiny instances for the dense reference: (preset, options, theta).
REFERENCE_CASES = [
    ("blur", dict(size=12), (-5.0, -5.0)),
    ("inpainting", dict(variant="anisotropic"), (-4.0, -5.0)),
    ("mri", dict(), (-4.0, -4.0)),
    ("tomography", dict(gamma=1e-2), (-3.0, -4.0)),
]


@pytest.mark.parametrize("case", range(len(REFERENCE_CASES)))
def test_hypergradient_bound_and_local_rates_against_the_reference(case):
    preset, options, theta = REFERENCE_CASES[case]
    p = small(preset, n_images=1, **options)
    theta = torch.tensor(theta, dtype=torch.float64)
    ref = reference_solution(p, theta)
    assert ref.converged
    for eps in (1e-2, 1e-5):
        for x0 in (None, ref.x + 3 * eps * unit(ref.x, 5)):
            hg = bilevel.hypergradient(p, theta, eps, eps, x0=x0, lower_max_iter=200_000)
            assert hg.certified
            assert hg.error_bound >= float((hg.grad - ref.grad).norm())
    # The local rates at the true minimiser (as in test_sharp_bounds).
    hg = bilevel.hypergradient(p, theta, 1e-3, 1e-3)
    x, q, x_radius = hg.lower.x, hg.linear.q, hg.lower.error_bound
    mu = p.strong_convexity(theta)
    rho = hg.linear.residual_norm / mu
    M = p.hessian_lipschitz_along(theta, x, q, rho, x_radius=x_radius)
    radius = hg.constants.adjoint_radius(x_radius, hg.linear.residual_norm, mu,
                                         hg.upper_grad_norm, M)
    assert float((q - ref.q).norm()) <= radius
    N = p.mixed_lipschitz_along(theta, x, q, radius, x_radius=x_radius)
    for q_probe, r in ((q, rho), (ref.q, radius)):
        rate = p.hessian_lipschitz_along(theta, x, q, r, x_radius=x_radius)
        moved = p.lower_hvp(ref.x, theta, q_probe) - p.lower_hvp(x, theta, q_probe)
        assert float(moved.norm()) <= rate * x_radius * (1 + 1e-9) + 1e-14
        moved = p.mixed_vjp(ref.x, theta, q_probe) - p.mixed_vjp(x, theta, q_probe)
        assert float(moved.norm()) <= N * x_radius * (1 + 1e-9) + 1e-14


def test_maid_on_blur_decreases_the_upper_loss():
    p = ReconstructionProblem("blur", n_images=2, size=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bilevel.ConvergenceWarning)  # max_iter, meant
        result = bilevel.solve(p, "maid", max_iter=6)
    values = [row["upper_value"] for row in result.history]
    assert values[-1] < 0.8 * values[0]
    assert all(row["certified"] for row in result.history)
    before, after = (p.upper_objective(p.reconstruct(th, 1e-6), th)
                     for th in (p.initial_theta(), result.theta))
    assert after < before


def test_reconstruction_usage_and_given_measurements():
    p = small("inpainting")
    theta = torch.tensor([-4.0, -4.0], dtype=torch.float64)
    x = p.reconstruct(theta, tol=1e-7)
    assert x.shape == p.clean.shape
    assert p.quality(theta)["psnr"] > bilevel_psnr(p.initial_x(theta), p.clean)
    same = ReconstructionProblem(p.operator, images=p.clean, measurements=p.measurements)
    assert torch.equal(same.measurements, p.measurements)
    held_out = p.on_images(p.clean.flip(-1), seed=3, theta=theta)
    assert held_out.operator is p.operator and torch.equal(held_out.initial_theta(), theta)
    float32 = small("mri", dtype=torch.float32)
    assert float32.lower_grad(float32.initial_x(None), float32.initial_theta()).dtype == \
        torch.float32


def bilevel_psnr(x, clean):
    from bilevel_problems.datasets import quality

    return quality(x, clean)["psnr"]


@pytest.mark.parametrize("spec, match", [
    ("reconstruction[operator=deblur]", "operator must be one of"),
    ("reconstruction[gamma=0]", "gamma must be"),
    ("reconstruction[gamma=-1]", "gamma must be"),
    ("reconstruction[operator=superresolution,size=9]", "factor must divide"),
    ("reconstruction[operator=inpainting,fraction_missing=1.5]", "fraction_missing"),
    ("reconstruction[operator=mri,acceleration=0.5]", "acceleration"),
    ("reconstruction[operator=tomography,angles=0]", "angles"),
    ("reconstruction[operator=blur,blur_sigma=-1]", "blur_sigma"),
    ("reconstruction[sigma=-0.1]", "sigma"),
    ("reconstruction[variant=tv]", "variant"),
    ("reconstruction[theta0=(1,2,3)]", "theta0"),
])
def test_parameter_errors_name_the_parameter(spec, match):
    with pytest.raises(ValueError, match=match):
        bilevel.make_problem(spec)


def test_given_measurements_must_match():
    op = Inpainting(random_mask((6, 6), 0.5, 0))
    images = torch.zeros(2, 6, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match="measurements"):
        ReconstructionProblem(op, images=images, measurements=torch.zeros(2, 6, 5))
    blur = ReconstructionProblem(CircularBlur(torch.ones(3, 3) / 9), images=images)
    assert blur.preset is None and abs(blur.A_norm_squared - 1) < 1e-6  # ||k||_1^2
    assert math.isclose(blur.smoothness(blur.initial_theta()),
                        blur.A_norm_squared + blur.D2 + 1e-3, rel_tol=1e-12)
