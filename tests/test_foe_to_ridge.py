"""A learned field of experts carried into a (weakly) convex ridge (from_fields_of_experts)."""
import pytest
import torch
from bilevel_problems.fields_of_experts import FieldsOfExperts
from bilevel_problems.ridge_embedding import from_fields_of_experts
from bilevel_problems.ridge_regularizer import RidgeRegularizer
from bilevel_problems.weakly_convex_ridge import WeaklyConvexRidge


def images(size=12):
    gen = torch.Generator().manual_seed(3)
    i, j = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    clean = 0.3 + 0.4 * (i + j > size).double()
    return clean, clean + 0.1 * torch.randn(size, size, generator=gen, dtype=torch.float64)


def learned_field():
    """A field of 2 experts 3x3 on one noisy image, kinks nu_k / ||c_k|| of 0.03 and 0.05."""
    clean, noisy = images()
    foe = FieldsOfExperts(num_filters=2, filter_size=3, images=clean[None], noisy=noisy[None])
    theta = foe.theta0.clone()
    gen = torch.Generator().manual_seed(0)
    theta[5:] += 0.3 * torch.randn(18, generator=gen, dtype=torch.float64)  # the filters
    theta[0], theta[1:3] = -2.0, torch.tensor([0.0, -0.5], dtype=torch.float64)
    norms = foe.params(theta).filters.norm(dim=1)
    theta[3:5] = torch.log(torch.tensor([0.03, 0.05]) * norms)
    return foe, theta, noisy


@pytest.mark.parametrize("cls", [RidgeRegularizer, WeaklyConvexRidge])
def test_the_carried_ridge_has_the_fields_gradient_and_minimiser(cls):
    """On a grid fine against the kinks the ridge's regulariser gradient is the field's up to
    the spline's interpolation and smoothing error, and its minimiser is the field's: by
    strong convexity ||x_ridge* - x_foe*|| <= ||grad h_ridge(x_foe*)|| / mu."""
    foe, theta, noisy = learned_field()
    extra = dict(rho=0.5) if cls is WeaklyConvexRidge else {}
    ridge = cls(num_filters=3, filter_size=3, num_knots=801, x_range=2.0, images=noisy[None],
                noisy=noisy[None], **extra)
    out = from_fields_of_experts(ridge, foe, theta, floor=1e-9)
    C = foe.params(theta).filters
    unit = C / C.norm(dim=1, keepdim=True)
    torch.testing.assert_close(ridge.params(out)[1][:2], unit, rtol=0, atol=1e-14)
    assert float(ridge.slopes(out).max()) == pytest.approx(0.9 * ridge.s_max, rel=1e-12)
    torch.testing.assert_close(ridge.slopes(out)[2], torch.full((800,), 1e-9).double(),
                               rtol=1e-6, atol=0)
    gen = torch.Generator().manual_seed(1)
    x = noisy[None] + 0.05 * torch.randn(noisy[None].shape, generator=gen, dtype=torch.float64)
    regulariser = [p.lower_grad(x, t) - (x - noisy[None]) for p, t in ((foe, theta),
                                                                       (ridge, out))]
    error = float((regulariser[1] - regulariser[0]).norm() / regulariser[0].norm())
    assert error < 5e-3
    x_foe = foe.solve_lower(theta, 1e-11, max_iter=100_000).x
    gap = float(ridge.lower_grad(x_foe, out).norm()) / ridge.strong_convexity(out)
    x_ridge = ridge.solve_lower(out, 1e-11, max_iter=100_000).x
    assert float((x_ridge - x_foe).norm()) <= gap + 1e-10
    assert gap < 1e-2 * float((x_foe - noisy[None]).norm())


def test_a_coarse_grid_smooths_the_kink_and_bad_inputs_are_refused():
    """With the knot spacing 40x the kink the carried potential is a much smoother one: the
    gradient error is large (why the grid must resolve the learned kinks)."""
    foe, theta, noisy = learned_field()
    kw = dict(images=noisy[None], noisy=noisy[None])
    coarse = RidgeRegularizer(num_filters=2, filter_size=3, num_knots=11, x_range=2.0, **kw)
    out = from_fields_of_experts(coarse, foe, theta)
    x = noisy[None]
    parts = [p.lower_grad(x, t) for p, t in ((foe, theta), (coarse, out))]
    assert float((parts[1] - parts[0]).norm() / parts[0].norm()) > 0.05
    small = RidgeRegularizer(num_filters=1, filter_size=3, num_knots=11, **kw)
    with pytest.raises(ValueError, match="do not fit"):
        from_fields_of_experts(small, foe, theta)
    even = RidgeRegularizer(num_filters=2, filter_size=4, num_knots=11, **kw)
    with pytest.raises(ValueError, match="do not fit"):
        from_fields_of_experts(even, foe, theta)
    for peak, floor in ((1.0, 1e-4), (0.5, 0.6), (0.9, 0.0)):
        with pytest.raises(ValueError, match="floor < peak"):
            from_fields_of_experts(coarse, foe, theta, peak=peak, floor=floor)
