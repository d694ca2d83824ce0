"""Forward operators (bilevel.operators): adjoints, certified bounds, shapes and geometry."""
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bilevel import operators as ops
from bilevel.operators import checks


def _signed_kernel():
    # A sharpening kernel: signed, and its spectrum 1.4 - 0.1 (2 cos + 2 cos) >= 1 has no zero.
    kernel = torch.zeros(3, 3, dtype=torch.float64)
    kernel[1, 1] = 1.4
    kernel[0, 1] = kernel[2, 1] = kernel[1, 0] = kernel[1, 2] = -0.1
    return kernel


def _operators(size):
    """name -> (operator on (size, size) images, whether its norm bound is exact)."""
    shape = (size, size)
    return {
        "identity": (ops.Identity(), True),
        "blur_gaussian": (ops.CircularBlur(ops.gaussian_kernel(1.5, radius=3)), True),
        "blur_gaussian_spectral": (ops.CircularBlur(ops.gaussian_kernel(1.0, radius=2), shape),
                                   True),
        "blur_signed_spectral": (ops.CircularBlur(_signed_kernel(), shape), True),
        "inpainting": (ops.Inpainting(ops.random_mask(shape, 0.5, seed=3)), True),
        "inpainting_weights": (ops.Inpainting(torch.rand(shape, dtype=torch.float64)), True),
        "downsampling": (ops.Downsampling(2), True),
        "decimation": (ops.Decimation(3, shape), True),
        "mri_cartesian": (ops.SubsampledFourier(ops.cartesian_mask(shape, 4, 0.1, seed=1)),
                          True),
        "mri_random": (ops.SubsampledFourier(ops.random_mask(shape, 0.7, seed=2)), True),
        "mri_full": (ops.SubsampledFourier(torch.ones(shape)), True),
        "tomography": (ops.ParallelBeamTomography(shape, 12), False),
        "tomography_scaled": (ops.Scaled(ops.ParallelBeamTomography(shape, 12), 0.1), False),
        "blur_then_decimation": (ops.Composition(ops.Decimation(2, shape),
                                                 ops.CircularBlur(ops.gaussian_kernel(1.0))),
                                 False),
    }


NAMES = list(_operators(8))


@pytest.mark.parametrize("name", NAMES)
def test_adjoint_float64(name):
    op, _ = _operators(12)[name]
    result = ops.adjoint_test(op, (2, 12, 12))
    assert result.relative_error <= 1e-10, result


@pytest.mark.parametrize("name", NAMES)
def test_norm_check(name):
    op, _ = _operators(12)[name]
    result = ops.norm_check(op, (1, 12, 12))
    assert result.passed, result
    assert result.certified


@pytest.mark.parametrize("name", NAMES)
def test_bounds_against_dense_matrix(name):
    """norm_squared >= sigma_max^2 and gram_lower_bound <= lambda_min(A^T A), exactly computed."""
    op, exact = _operators(8)[name]
    matrix = ops.dense_matrix(op, (8, 8))
    gram_eigenvalues = torch.linalg.eigvalsh(matrix.T @ matrix)
    largest = float(torch.linalg.matrix_norm(matrix, ord=2)) ** 2
    smallest = max(float(gram_eigenvalues[0]), 0.0)
    rounding = 1e-12 * largest  # of the dense eigensolver
    assert op.norm_squared() >= largest - rounding
    assert op.gram_lower_bound() <= smallest + rounding
    if exact:
        assert op.norm_squared() == pytest.approx(largest, rel=1e-12)
    if name in ("identity", "mri_full", "blur_signed_spectral", "blur_gaussian_spectral"):
        assert op.gram_lower_bound() == pytest.approx(smallest, rel=1e-9, abs=1e-12)
    if name == "blur_signed_spectral":
        assert op.gram_lower_bound() > 0.9


def test_tomography_bound_is_tight():
    op = ops.ParallelBeamTomography((10, 10), 15)
    largest = float(torch.linalg.matrix_norm(ops.dense_matrix(op, (10, 10)), ord=2)) ** 2
    assert largest <= op.norm_squared() <= largest * (1 + 1e-5)


def test_mri_norm_is_one_half_when_no_frequency_pair_is_kept():
    """A mask keeping k but never -k: ||A||^2 = 1/2 on real images (Re F^* M F)."""
    mask = torch.zeros(6, 6)
    mask[:, 4:] = 1  # centred columns 4, 5 (frequencies 1, 2); their mirrors are 2, 1
    op = ops.SubsampledFourier(mask)
    assert op.norm_squared() == 0.5 and op.gram_lower_bound() == 0.0
    largest = float(torch.linalg.matrix_norm(ops.dense_matrix(op, (6, 6)), ord=2)) ** 2
    assert largest == pytest.approx(0.5, rel=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_dtype_and_batch_shape_follow_the_input(name):
    op, _ = _operators(8)[name]
    x = torch.randn(2, 3, 8, 8, dtype=torch.float32)
    y = op.A(x)
    assert y.dtype in (torch.float32, torch.complex64)
    back = op.A_adjoint(y)
    assert back.dtype == torch.float32 and back.shape == x.shape
    # Leading dimensions are a batch: the same as applying to each image.
    x64 = x.double()
    torch.testing.assert_close(op.A(x64)[1, 2], op.A(x64[1, 2][None])[0])


@pytest.mark.parametrize("name", NAMES)
def test_autograd_through_A_gives_the_adjoint(name):
    """grad of 1/2 ||A x||^2 by autograd is A^T A x: problems may differentiate through A."""
    op, _ = _operators(8)[name]
    x = torch.randn(2, 8, 8, dtype=torch.float64, requires_grad=True)
    (gradient,) = torch.autograd.grad(0.5 * op.A(x).abs().square().sum(), x)
    torch.testing.assert_close(gradient, op.A_adjoint_A(x.detach()))


@pytest.mark.parametrize("make", [
    lambda shape: ops.CircularBlur(_signed_kernel(), shape),
    lambda shape: ops.Inpainting(ops.random_mask(shape, 0.3, seed=0)),
    lambda shape: ops.Decimation(2, shape),
    lambda shape: ops.SubsampledFourier(ops.random_mask(shape, 0.5, seed=0)),
    lambda shape: ops.ParallelBeamTomography(shape, 7),
], ids=["blur", "inpainting", "decimation", "mri", "tomography"])
def test_odd_and_non_square_images(make):
    op = make((7, 5))
    assert ops.adjoint_test(op, (2, 7, 5)).relative_error <= 1e-10
    matrix = ops.dense_matrix(op, (7, 5))
    gram = torch.linalg.eigvalsh(matrix.T @ matrix)
    assert op.norm_squared() >= float(gram[-1]) * (1 - 1e-12)
    assert op.gram_lower_bound() <= max(float(gram[0]), 0.0) + 1e-12


def test_blur_is_a_centred_circular_convolution():
    kernel = torch.rand(3, 5, dtype=torch.float64)
    x = torch.randn(2, 7, 9, dtype=torch.float64)
    expected = torch.zeros_like(x)
    for a in range(3):
        for b in range(5):
            expected += kernel[a, b] * torch.roll(x, shifts=(a - 1, b - 2), dims=(-2, -1))
    torch.testing.assert_close(ops.CircularBlur(kernel).A(x), expected)


def test_gaussian_kernel():
    kernel = ops.gaussian_kernel(1.5)
    assert kernel.shape == (11, 11)
    assert float(kernel.sum()) == pytest.approx(1.0, abs=1e-15)
    torch.testing.assert_close(kernel, kernel.T)
    torch.testing.assert_close(kernel, kernel.flip(0))


def test_random_mask_is_seeded_and_exact():
    mask = ops.random_mask((10, 10), 0.35, seed=4)
    assert mask.dtype == torch.bool and int((~mask).sum()) == 35
    assert torch.equal(mask, ops.random_mask((10, 10), 0.35, seed=4))
    assert not torch.equal(mask, ops.random_mask((10, 10), 0.35, seed=5))


def test_cartesian_mask():
    mask = ops.cartesian_mask((16, 32), acceleration=4, center_fraction=0.1, seed=0)
    assert torch.equal(mask, mask[:1].expand(16, 32))  # whole columns
    assert int(mask[0].sum()) == 8 and bool(mask[0, 16])  # W / 4 lines, zero frequency kept


def _blob(shape, centre, sigma):
    H, W = shape
    u = torch.arange(W, dtype=torch.float64) - (W - 1) / 2
    v = (H - 1) / 2 - torch.arange(H, dtype=torch.float64)
    r2 = (u[None, :] - centre[0]) ** 2 + (v[:, None] - centre[1]) ** 2
    return torch.exp(-r2 / (2 * sigma**2))


def test_tomography_matches_the_radon_transform_of_a_gaussian():
    """An off-centre Gaussian: its line integrals sqrt(2 pi) s exp(-(t - t0)^2 / (2 s^2))."""
    shape, centre, sigma = (40, 36), (5.0, -3.0), 2.5
    op = ops.ParallelBeamTomography(shape, 24)
    sinogram = op.A(_blob(shape, centre, sigma)[None])[0]
    t = torch.arange(op.n_detectors, dtype=torch.float64) - (op.n_detectors - 1) / 2
    t0 = centre[0] * torch.cos(op.angles)[:, None] + centre[1] * torch.sin(op.angles)[:, None]
    exact = math.sqrt(2 * math.pi) * sigma * torch.exp(-(t[None, :] - t0) ** 2 / (2 * sigma**2))
    assert float((sinogram - exact).abs().max()) < 0.02 * float(exact.max())


def test_tomography_axis_angles_are_column_and_row_sums():
    x = torch.rand(1, 6, 6, dtype=torch.float64)
    op = ops.ParallelBeamTomography((6, 6), torch.tensor([0.0, math.pi / 2]), n_detectors=7,
                                    detector_spacing=1.0)
    sinogram = op.A(x)[0]
    # 7 detectors at t = -3..3, pixel centres at -2.5..2.5: each column (row) sum is split
    # equally between the two detectors beside it.
    columns, rows = x[0].sum(dim=0), x[0].sum(dim=1).flip(0)  # v grows upwards
    for projection, sums in ((sinogram[0], columns), (sinogram[1], rows)):
        expected = torch.zeros(7, dtype=torch.float64)
        expected[:-1] += sums / 2
        expected[1:] += sums / 2
        torch.testing.assert_close(projection, expected)


class _WrongAdjoint(ops.LinearOperator):
    def A(self, x):
        return torch.roll(x, 1, dims=-1)

    def A_adjoint(self, y):
        return torch.roll(y, 1, dims=-1)  # should roll back

    def norm_squared(self):
        return 0.5  # too small: ||A|| = 1


def test_checks_catch_a_wrong_adjoint_and_a_wrong_bound():
    assert not ops.adjoint_test(_WrongAdjoint(), (1, 8, 8)).passed
    assert ops.norm_check(ops.Identity(), (1, 4, 4)).passed
    check = ops.norm_check(_WrongAdjoint(), (1, 8, 8))
    assert not check.passed
    inpainting = ops.Inpainting(torch.ones(4, 4))
    inpainting.gram_lower_bound = lambda: 1.5  # claims more than lambda_min = 1
    assert not ops.norm_check(inpainting, (1, 4, 4)).passed


def test_inpainting_with_one_mask_per_image():
    masks = torch.stack([ops.random_mask((6, 6), 0.5, seed=s) for s in range(3)])
    op = ops.Inpainting(masks)
    assert ops.adjoint_test(op, (3, 6, 6)).passed
    x = torch.randn(3, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(op.A(x)[1], x[1] * masks[1])
    with pytest.raises(ValueError, match="do not match"):
        op.A(x[:1])


def test_composition_bounds_are_products():
    blur = ops.CircularBlur(_signed_kernel(), (6, 6))
    composed = ops.Composition(ops.Inpainting(torch.ones(6, 6) * 0.5), blur)
    assert composed.norm_squared() >= 0.25 * blur.norm_squared()
    assert composed.gram_lower_bound() == pytest.approx(0.25 * blur.gram_lower_bound())
    assert ops.norm_check(composed, (1, 6, 6)).passed


def test_scaled_bounds_scale_exactly():
    blur = ops.CircularBlur(_signed_kernel(), (6, 6))
    scaled = ops.Scaled(blur, 3.0)
    assert scaled.norm_squared() == pytest.approx(9 * blur.norm_squared(), rel=1e-14)
    assert scaled.norm_squared() >= 9 * blur.norm_squared()
    assert scaled.gram_lower_bound() <= 9 * blur.gram_lower_bound()
    assert scaled.norm_certified and ops.norm_check(scaled, (1, 6, 6)).passed
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="factor"):
            ops.Scaled(blur, bad)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="larger than the images"):
        ops.CircularBlur(torch.ones(5, 5), (4, 4))
    with pytest.raises(ValueError, match="built for images"):
        ops.SubsampledFourier(torch.ones(8, 8)).A(torch.zeros(1, 8, 6))
    with pytest.raises(ValueError, match="divisible"):
        ops.Downsampling(3).A(torch.zeros(1, 8, 8))
    with pytest.raises(ValueError, match="real images"):
        ops.Inpainting(torch.ones(4, 4)).A(torch.zeros(1, 4, 4, dtype=torch.complex64))


def test_collatz_wielandt_bound_refuses_negative_entries():
    with pytest.raises(ValueError, match=">= 0"):
        ops.bounds.collatz_wielandt_bound(lambda w: -w, 3, row_terms=1, column_terms=1)


def test_core_does_not_import_deepinv():
    code = "import sys, bilevel, bilevel.operators; assert 'deepinv' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_dense_matrix_of_complex_measurements_stacks_real_and_imaginary_parts():
    op = ops.SubsampledFourier(torch.ones(2, 2))
    matrix = checks.dense_matrix(op, (2, 2))
    assert matrix.shape == (8, 4)
    x = torch.randn(1, 2, 2, dtype=torch.float64)
    y = op.A(x).reshape(-1)
    torch.testing.assert_close(matrix @ x.reshape(-1), torch.cat([y.real, y.imag]))


def test_docs_own_operator_example_runs():
    """docs/operators.md's "Your own operator" runs as written."""
    page = Path(__file__).resolve().parents[1] / "docs" / "operators.md"
    (block,) = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    namespace = {}
    exec(block, namespace)
    assert namespace["check"].passed
