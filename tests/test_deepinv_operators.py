"""The deepinv adapter (bilevel.operators.DeepinvOperator) with deepinv's Blur, Inpainting, MRI.

Skipped when deepinv is not installed (it is an optional extra: pip install -e ".[deepinv]").
"""
import pytest
import torch

from bilevel import operators as ops

deepinv = pytest.importorskip("deepinv")

SIZE = (8, 8)


def _blur(padding="circular"):
    kernel = ops.gaussian_kernel(1.0, radius=2)
    return deepinv.physics.Blur(filter=kernel[None, None].clone(), padding=padding)


def _inpainting():
    mask = ops.random_mask(SIZE, 0.5, seed=1).to(torch.float64)
    return deepinv.physics.Inpainting(img_size=(1, *SIZE), mask=mask[None])


def _mri():
    mask = ops.cartesian_mask(SIZE, acceleration=2, center_fraction=0.25, seed=0)
    return deepinv.physics.MRI(mask=mask.to(torch.float64), img_size=(2, *SIZE))


PHYSICS = {"blur_circular": _blur, "blur_valid": lambda: _blur("valid"),
           "inpainting": _inpainting, "mri": _mri}


def _adapter(name):
    return ops.DeepinvOperator(PHYSICS[name]().double(), SIZE)


@pytest.mark.parametrize("name", PHYSICS)
def test_adapter_applies_deepinv_operators(name):
    physics = PHYSICS[name]().double()
    op = ops.DeepinvOperator(physics, SIZE)
    x = torch.randn(3, *SIZE, dtype=torch.float64)
    embedded = torch.stack([x, torch.zeros_like(x)], 1) if name == "mri" else x[:, None]
    y = physics.A(embedded)
    torch.testing.assert_close(op.A(x), y, rtol=0, atol=0)
    torch.testing.assert_close(op.A_adjoint(y), physics.A_adjoint(y)[:, 0], rtol=0, atol=0)


@pytest.mark.parametrize("name", PHYSICS)
def test_adapter_passes_the_adjoint_test_and_the_norm_check(name):
    op = _adapter(name)
    assert ops.adjoint_test(op, (2, *SIZE)).relative_error <= 1e-10
    check = ops.norm_check(op, (1, *SIZE))
    assert check.passed and check.certified, check


@pytest.mark.parametrize("name", PHYSICS)
def test_adapter_bound_against_the_dense_matrix(name):
    op = _adapter(name)
    largest = float(torch.linalg.matrix_norm(ops.dense_matrix(op, SIZE), ord=2)) ** 2
    assert op.norm_squared() >= largest * (1 - 1e-12)
    if name != "blur_valid":  # Young's bound is tight up to the boundary: 1 vs 0.57 at 8 x 8
        assert op.norm_squared() <= largest * (1 + 1e-12)
    assert op.gram_lower_bound() == 0.0


def test_same_operators_as_the_built_ins():
    """deepinv's circular Blur and Inpainting are ours; its MRI is ours after ifftshift."""
    x = torch.randn(2, *SIZE, dtype=torch.float64)
    blur = ops.CircularBlur(ops.gaussian_kernel(1.0, radius=2))
    torch.testing.assert_close(_adapter("blur_circular").A(x)[:, 0], blur.A(x))
    mask = ops.random_mask(SIZE, 0.5, seed=1)
    torch.testing.assert_close(_adapter("inpainting").A(x)[:, 0], ops.Inpainting(mask).A(x))
    # deepinv's centred DFT is fftshift(fft2(ifftshift(x))): ours of the shifted image.
    fourier = ops.SubsampledFourier(ops.cartesian_mask(SIZE, 2, 0.25, seed=0))
    y = _adapter("mri").A(x)
    expected = fourier.A(torch.fft.ifftshift(x, dim=(-2, -1)))
    torch.testing.assert_close(torch.complex(y[:, 0], y[:, 1]), expected)


def test_other_physics_get_deepinvs_estimate():
    """Reflecting padding copies pixels: no certificate here, deepinv's power method."""
    op = ops.DeepinvOperator(_blur("reflect").double(), SIZE)
    assert not op.norm_certified
    state = torch.random.get_rng_state()
    estimate = op.norm_squared()
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is untouched
    largest = float(torch.linalg.matrix_norm(ops.dense_matrix(op, SIZE), ord=2)) ** 2
    assert estimate == pytest.approx(largest, rel=1e-3)
    assert not ops.norm_check(op, (1, *SIZE)).certified


def test_given_bound_and_refused_objects():
    op = ops.DeepinvOperator(_blur("reflect").double(), SIZE, norm_bound=4.0)
    assert op.norm_certified and op.norm_squared() == 4.0
    with pytest.raises(TypeError, match="LinearPhysics"):
        ops.DeepinvOperator(ops.Identity(), SIZE)
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        _adapter("inpainting").A(torch.zeros(*SIZE, dtype=torch.float64))
