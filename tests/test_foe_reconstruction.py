"""A field of experts as the regulariser of a reconstruction, and learning a few directions
of a prior (bilevel.Reparametrized): closed forms, mu and L against the dense Hessian,
certified bounds against the dense reference (bilevel.reference)."""
import pytest
import torch
from bilevel_problems.foe_reconstruction import FoEReconstruction
from bilevel_problems.reconstruction import ReconstructionProblem

import bilevel
from bilevel.reference import dense_hessian, reference_solution
from bilevel.testing import check_problem

OPERATORS = ("blur", "inpainting", "mri")


def small(operator, **options):
    base = dict(operator=operator, n_images=1, size=12 if operator == "blur" else 8,
                num_filters=3, filter_size=3, log_scale=-3.0)
    return FoEReconstruction(**{**base, **options})


def perturbed(theta, seed, scale=0.3):
    g = torch.Generator().manual_seed(seed)
    return theta + scale * torch.randn(theta.shape, generator=g, dtype=theta.dtype)


@pytest.mark.parametrize("operator", OPERATORS)
def test_check_problem(operator):
    assert check_problem(small(operator), raise_on_fail=False)


def test_registered_with_the_regularizer_option():
    p = bilevel.make_problem("reconstruction[regularizer=foe, operator=inpainting, n_images=1,"
                             " size=8, num_filters=2, filter_size=3]")
    assert isinstance(p, FoEReconstruction) and p.K == 2
    assert isinstance(bilevel.make_problem("reconstruction[n_images=1, size=12]"),
                      ReconstructionProblem)
    with pytest.raises(ValueError, match="unknown parameter.*variant.*accepted"):
        bilevel.make_problem("reconstruction[regularizer=foe, variant=isotropic]")
    with pytest.raises(ValueError, match="regularizer"):
        bilevel.make_problem("reconstruction[regularizer=bm3d]")


@pytest.mark.parametrize("operator", OPERATORS)
def test_mu_and_L_against_the_dense_hessian(operator):
    p = small(operator)
    for seed in range(2):
        theta = perturbed(p.initial_theta(), seed)
        mu, L = p.strong_convexity(theta), p.smoothness(theta)
        x0 = p.initial_x(theta)
        for x in (x0, torch.zeros_like(x0), x0 + torch.randn_like(x0)):
            eig = torch.linalg.eigvalsh(dense_hessian(p, x, theta))
            assert float(eig[0]) >= mu * (1 - 1e-9) and float(eig[-1]) <= L * (1 + 1e-9)
    # The data term's curvature is A^T A + gamma: mu = gamma (A^T A singular) is nearly met
    # where the experts are flat (huge responses: phi'' ~ 0).
    steep = torch.linalg.eigvalsh(dense_hessian(p, 1e4 * torch.randn_like(x0), theta))
    assert float(steep[0]) <= 1.5 * p.strong_convexity(theta)


@pytest.mark.parametrize("operator", OPERATORS)
def test_hypergradient_bound_against_the_reference(operator):
    p = small(operator, gamma=1e-2)
    theta = perturbed(p.initial_theta(), 3, 0.2)
    ref = reference_solution(p, theta)
    assert ref.converged
    for eps in (1e-2, 1e-5):
        for x0 in (None, ref.x + 3 * eps * torch.nn.functional.normalize(
                torch.randn_like(ref.x).flatten(), dim=0).view_as(ref.x)):
            hg = bilevel.hypergradient(p, theta, eps, eps, x0=x0, lower_max_iter=200_000)
            assert hg.certified
            assert hg.error_bound >= float((hg.grad - ref.grad).norm())


def test_denoising_is_the_identity_operator():
    """With A = I and gamma -> 0 the reconstruction is the field of experts' denoising."""
    from bilevel_problems.fields_of_experts import FieldsOfExperts

    from bilevel.operators import Identity

    gen = torch.Generator().manual_seed(0)
    clean = torch.rand(1, 8, 8, dtype=torch.float64, generator=gen)
    noisy = clean + 0.1 * torch.randn(clean.shape, generator=gen, dtype=torch.float64)
    d = FieldsOfExperts(images=clean, noisy=noisy, num_filters=2, filter_size=3)
    r = FoEReconstruction(Identity(), images=clean, measurements=noisy, gamma=1e-12,
                          num_filters=2, filter_size=3, log_scale=-5.0)
    theta = perturbed(d.initial_theta(), 1)
    x = torch.rand_like(clean)
    assert torch.allclose(r.lower_grad(x, theta), d.lower_grad(x, theta), atol=1e-10)
    assert torch.allclose(r.mixed_vjp(x, theta, x), d.mixed_vjp(x, theta, x), atol=1e-12)
    assert abs(r.strong_convexity(theta) - 1.0) < 1e-9  # the identity's Gram bound is 1
    with pytest.raises(TypeError, match="reconstruct"):
        r.denoise(noisy)


# ------------------------------------------------------------ Reparametrized
def scalar_directions(p):
    """Two directions of a field of experts: the global log weight, and every log smoothing."""
    M = torch.zeros(p.dim_theta, 2, dtype=torch.float64)
    M[0, 0] = 1.0
    M[1 + p.K:1 + 2 * p.K, 1] = 1.0
    return M


def test_reparametrized_derivatives_are_the_chain_rule():
    p = small("blur")
    base = perturbed(p.initial_theta(), 5, 0.2)
    M = scalar_directions(p)
    r = bilevel.Reparametrized(p, M, theta_base=base, phi0=[0.3, -0.2])
    assert check_problem(r, raise_on_fail=False)
    phi = r.initial_theta()
    hg_full = bilevel.hypergradient(p, r.theta(phi), 1e-6, 1e-6)
    hg = bilevel.hypergradient(r, phi, 1e-6, 1e-6)
    # Both within their certified bounds of M^T grad F(theta(phi)) (||M|| = sqrt 3).
    gap = float((hg.grad - M.T @ hg_full.grad).norm())
    assert gap <= hg.error_bound + 3 ** 0.5 * hg_full.error_bound
    assert r.basis_norm == pytest.approx(float(torch.linalg.matrix_norm(M, ord=2)), rel=1e-9)


def test_reparametrized_bound_against_the_reference():
    p = small("inpainting", gamma=1e-2)
    r = bilevel.Reparametrized(p, scalar_directions(p),
                               theta_base=perturbed(p.initial_theta(), 6, 0.2))
    phi = torch.tensor([0.5, 0.4], dtype=torch.float64)
    ref = reference_solution(r, phi)
    for eps in (1e-2, 1e-4):
        hg = bilevel.hypergradient(r, phi, eps, eps)
        assert hg.certified and hg.error_bound >= float((hg.grad - ref.grad).norm())


def test_reparametrized_refuses_bad_input():
    p = small("blur")
    with pytest.raises(ValueError, match="basis must be"):
        bilevel.Reparametrized(p, torch.ones(3, 2))
    with pytest.raises(ValueError, match="phi0 must have 2"):
        bilevel.Reparametrized(p, scalar_directions(p), phi0=[1.0])
    with pytest.raises(ValueError, match="finite"):
        bilevel.Reparametrized(p, scalar_directions(p) * float("nan"))
    with pytest.raises(TypeError, match="BilevelProblem"):
        bilevel.Reparametrized(object(), scalar_directions(p))
