"""The denoising family (bilevel_problems.denoising) and its shared filter bank."""
import pytest
import torch
from bilevel_problems import fft_correlation, filter_bank
from bilevel_problems.denoising import DenoisingProblem
from bilevel_problems.fields_of_experts import FieldsOfExperts
from bilevel_problems.ridge_regularizer import RidgeRegularizer
from bilevel_problems.tv_denoising import TVDenoising

from bilevel.numerics import power_iteration, random_unit

MEMBERS = {
    "tv": lambda: TVDenoising(n_images=2, size=12),
    "foe": lambda: FieldsOfExperts(n_images=2, size=12, num_filters=3, filter_size=3),
    "ridge": lambda: RidgeRegularizer(n_images=2, size=12, num_filters=2, filter_size=3,
                                      num_knots=5, x_range=0.2),
}


@pytest.mark.parametrize("member", sorted(MEMBERS))
def test_members_share_the_upper_level_and_the_start(member):
    p = MEMBERS[member]()
    assert isinstance(p, DenoisingProblem) and p.upper_convex_in_x
    theta = p.initial_theta()
    x = p.initial_x(theta)
    assert torch.equal(x, p.noisy) and p.strong_convexity(theta) == 1.0
    value, gx, gt = p.upper_grads(x, theta)
    r = p.noisy - p.clean
    torch.testing.assert_close(value, 0.5 * torch.sum(r * r) / 2, rtol=1e-15, atol=0)
    torch.testing.assert_close(gx, r / 2, rtol=1e-15, atol=0)
    assert torch.equal(gt, torch.zeros_like(theta))
    assert float(p.upper_objective(x, theta)) == float(value)


@pytest.mark.parametrize("member", sorted(MEMBERS))
def test_denoise_keeps_the_shape_of_its_input(member):
    p = MEMBERS[member]()
    one = p.denoise(p.noisy[0], tol=1e-3)
    many = p.denoise(p.noisy.unsqueeze(0), tol=1e-3)  # (1, N, H, W)
    assert one.shape == p.noisy[0].shape and many.shape == (1, *p.noisy.shape)
    on = p.on_images(p.noisy, p.initial_theta())
    assert type(on) is type(p) and torch.equal(on.clean, on.noisy)


def test_a_member_without_on_images_cannot_denoise():
    class Bare(TVDenoising):
        on_images = DenoisingProblem.on_images

    p = Bare(n_images=1, size=8)
    with pytest.raises(NotImplementedError, match="on_images"):
        p.denoise(p.noisy)


def test_tv_sharded_g_is_the_mean_over_all_images():
    whole = TVDenoising(n_images=3, size=8)
    part = TVDenoising(n_images=3, size=8, shard=(1, 2))
    assert (part.n_total, whole.n_total) == (3, 3) and part.n_images < 3
    theta = whole.initial_theta()
    _, gx, _ = part.upper_grads(part.noisy, theta)
    torch.testing.assert_close(gx, (part.noisy - part.clean) / 3)


# ------------------------------------------------------------------ filter bank
def _bank(K=3, s=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return filter_bank.zero_mean(torch.randn(K, s * s, generator=gen, dtype=torch.float64)), s


def test_filters_are_zero_mean_and_the_adjoint_is_exact():
    C, s = _bank()
    assert float(C.sum(dim=1).abs().max()) < 1e-15
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 9, 11, generator=gen, dtype=torch.float64)
    z = torch.randn(filter_bank.correlate(x, C, s).shape, generator=gen, dtype=torch.float64)
    lhs = float(torch.sum(filter_bank.correlate(x, C, s) * z))
    rhs = float(torch.sum(x * filter_bank.correlate_adjoint(z, C, s)))
    assert lhs == pytest.approx(rhs, rel=1e-13)
    cols = filter_bank.patches(x, s)
    assert torch.equal(cols, torch.nn.functional.unfold(x.unsqueeze(1), s))


def test_the_bank_image_by_image_equals_one_batched_call():
    """On the CPU the bank runs one image at a time (speed); the responses, the adjoint and
    their derivatives in the filters are those of one batched conv2d / conv_transpose2d."""
    C, s = _bank(K=4, s=5)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, 12, 10, generator=gen, dtype=torch.float64)
    z = torch.randn(3, 4, 8, 6, generator=gen, dtype=torch.float64)
    conv = torch.nn.functional
    for ours, batched, data in [
            (filter_bank.correlate, lambda d, c: conv.conv2d(d[:, None], c.view(-1, 1, s, s)), x),
            (filter_bank.correlate_adjoint,
             lambda d, c: conv.conv_transpose2d(d, c.view(-1, 1, s, s))[:, 0], z)]:
        weights = C.clone().requires_grad_(True)
        out, ref = ours(data, weights, s), batched(data, weights)
        assert torch.equal(out, ref)
        probe = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
        (g_ours,) = torch.autograd.grad(torch.sum(out * probe), weights)
        (g_ref,) = torch.autograd.grad(torch.sum(ref * probe), weights)
        torch.testing.assert_close(g_ours, g_ref, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("s, shape", [(2, (3, 9, 7)), (5, (2, 12, 17)), (11, (2, 37, 23)),
                                      (13, (1, 64, 64))])
def test_the_fft_adjoint_is_conv_transpose2d(s, shape):
    """K^T z through FFTs on a periodic grid with nothing wrapping around (odd, non 5-smooth,
    non-square sizes included) is conv_transpose2d's to rounding, with its derivatives in the
    filters, and the adjoint of conv2d's K x."""
    C, _ = _bank(K=4, s=s, seed=s)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    z = torch.randn(shape[0], 4, shape[1] - s + 1, shape[2] - s + 1, generator=gen,
                    dtype=torch.float64)
    weights = C.clone().requires_grad_(True)
    out = fft_correlation.correlate_adjoint(z, weights, s)
    ref = torch.nn.functional.conv_transpose2d(z, weights.view(-1, 1, s, s))[:, 0]
    assert out.shape == ref.shape == x.shape
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-13 * float(ref.detach().abs().max()))
    probe = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    (g_ours,) = torch.autograd.grad(torch.sum(out * probe), weights)
    (g_ref,) = torch.autograd.grad(torch.sum(ref * probe), weights)
    torch.testing.assert_close(g_ours, g_ref, rtol=0, atol=1e-13 * float(g_ref.abs().max()))
    lhs = float(torch.sum(filter_bank.correlate(x, C, s) * z))
    rhs = float(torch.sum(x * fft_correlation.correlate_adjoint(z, C, s)))
    assert lhs == pytest.approx(rhs, rel=1e-12)


def test_fft_grid_sizes_are_the_smallest_5_smooth():
    smooth = [m for m in range(1, 400) if _largest_prime_factor(m) <= 5]
    for n in range(1, 300):
        assert fft_correlation.fast_size(n) == min(m for m in smooth if m >= n)


def _largest_prime_factor(m):
    largest, p = 1, 2
    while m > 1:
        while m % p == 0:
            largest, m = p, m // p
        p += 1
    return largest


def test_the_fft_adjoint_gives_each_image_its_values_alone(monkeypatch):
    """From FFT_ADJOINT_FROM the bank's adjoint goes through FFTs image by image: an image's
    values do not depend on the batch around it (samples grouped any way give the same terms),
    and the ridge's closed forms agree with the conv_transpose2d ones to rounding."""
    s = filter_bank.FFT_ADJOINT_FROM
    C, _ = _bank(K=3, s=s)
    gen = torch.Generator().manual_seed(4)
    z = torch.randn(5, 3, 7, 9, generator=gen, dtype=torch.float64)
    whole = filter_bank.correlate_adjoint(z, C, s)
    assert torch.equal(whole, torch.cat([filter_bank.correlate_adjoint(part, C, s)
                                         for part in z.split(2)]))
    problem = RidgeRegularizer(n_images=3, size=16, num_filters=3, filter_size=3, num_knots=9,
                               x_range=0.3)
    theta = problem.theta0 + 0.05 * torch.randn(problem.theta0.shape, generator=gen,
                                                dtype=torch.float64)
    x = problem.noisy + 0.02 * torch.randn(problem.noisy.shape, generator=gen,
                                           dtype=torch.float64)
    v = torch.randn(x.shape, generator=gen, dtype=torch.float64)

    def closed_forms():
        return (problem.lower_grad(x, theta), problem.lower_hvp(x, theta, v),
                problem.mixed_vjp(x, theta, v))
    direct = closed_forms()
    monkeypatch.setattr(filter_bank, "FFT_ADJOINT_FROM", 2)
    for ours, ref in zip(closed_forms(), direct, strict=True):
        assert not torch.equal(ours, ref)  # the other way was taken
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-13 * float(ref.detach().abs().max()))


def test_norm_bounds_dominate_the_operators():
    C, s = _bank(K=2, s=4)
    auto = filter_bank.autocorrelations(C, s)
    kappa = filter_bank.operator_norm_bounds(auto)
    x = torch.empty(1, 10, 10, dtype=torch.float64)
    weights = torch.tensor([0.7, 2.0], dtype=torch.float64)
    gen = torch.Generator().manual_seed(2)
    for k in range(2):
        ck = C[k:k + 1]
        run = power_iteration(lambda v, ck=ck: filter_bank.correlate_adjoint(
            filter_bank.correlate(v, ck, s), ck, s), random_unit(x, gen), 300, rtol=1e-12)
        assert run.value <= float(kappa[k]) ** 2 * (1 + 1e-12)

    def weighted(v):
        return sum(w * filter_bank.correlate_adjoint(filter_bank.correlate(v, C[k:k + 1], s),
                                                     C[k:k + 1], s)
                   for k, w in enumerate(weights))

    run = power_iteration(weighted, random_unit(x, gen), 300, rtol=1e-12)
    assert run.value <= filter_bank.weighted_kernel_norm(auto, weights) * (1 + 1e-12)
    assert filter_bank.weighted_kernel_norm(auto, weights) <= float(
        torch.sum(weights * C.abs().sum(dim=1) ** 2))  # Young's inequality


def test_symbol_bound_is_certified_and_sharp():
    """sup of |c^|^2 on a 4096 x 4096 grid (8 to 32 times finer than the bound's; a lower
    estimate of the sup) stays below the certified bound, which exceeds it by at most the
    grid factor 1 / (1 - 1/128); Young's l1 bound is never beaten by the returned one."""
    for K, s in ((3, 5), (2, 3), (1, 7)):
        C, _ = _bank(K=K, s=s)
        auto = filter_bank.autocorrelations(C, s)
        bound = filter_bank.symbol_bound(auto)
        fine = torch.stack([torch.fft.rfft2(a, s=(4096, 4096)).abs().amax() for a in auto])
        assert torch.all(fine <= bound)
        assert torch.all(bound <= fine / (1 - 1 / 128) * (1 + 1e-9))
        assert torch.all(bound <= auto.abs().sum(dim=(1, 2)))
        assert filter_bank.operator_norm_bounds(auto).square() == pytest.approx(bound)


def test_smooth_symbol_bound_is_certified_sharp_and_differentiable():
    """The smoothed sup of the symbol of a sum of autocorrelations: above its sup on a
    4096 x 4096 grid and above ||sum_k K_k^T K_k|| on an image (dense), within 5% of the
    fine sup (grid factor <= 1.02, log-sum-exp <= 2% of k_0 <= sup) and below ||A||_1; its
    gradient matches central differences in float64."""
    for K, s in ((3, 5), (2, 3), (1, 7), (4, 7)):
        C, _ = _bank(K=K, s=s)
        A = filter_bank.autocorrelations(C, s).sum(dim=0)
        bound = float(filter_bank.smooth_symbol_bound(A))
        fine = float(torch.fft.rfft2(A, s=(4096, 4096)).abs().amax())
        assert fine <= bound <= 1.05 * fine
        assert bound <= float(A.abs().sum())
    C, s = _bank(K=2, s=3)
    x = torch.zeros(9, 10, dtype=torch.float64)
    gram = torch.autograd.functional.jacobian(
        lambda v: filter_bank.correlate_adjoint(filter_bank.correlate(v.view(1, 9, 10), C, s),
                                                C, s).flatten(), x.flatten(), vectorize=True)
    A = filter_bank.autocorrelations(C, s).sum(dim=0)
    assert float(torch.linalg.eigvalsh(gram)[-1]) <= float(filter_bank.smooth_symbol_bound(A))
    # float32 filters: both bounds, computed in float32, above the float64 sup of their symbol
    C32, _ = _bank(K=4, s=7)
    C32 = C32.float()
    fine = float(torch.fft.rfft2(filter_bank.autocorrelations(C32.double(), 7).sum(0),
                                 s=(4096, 4096)).abs().amax())
    A32 = filter_bank.autocorrelations(C32, 7).sum(0)
    assert fine <= float(filter_bank.symbol_bound(A32.unsqueeze(0))[0]) <= 1.01 * fine
    assert fine <= float(filter_bank.smooth_symbol_bound(A32)) <= 1.05 * fine
    C = C.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda c: filter_bank.smooth_symbol_bound(filter_bank.autocorrelations(c, s).sum(0)),
        (C,))


def test_patch_map_norm_is_exact():
    C, s = _bank(K=1, s=3)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 7, 8, generator=gen, dtype=torch.float64)
    cols, gram = filter_bank.centred_patch_gram(filter_bank.patches(x, s))
    X = cols.transpose(1, 2).reshape(-1, s * s)  # c -> K_c x on zero-mean c
    P = torch.eye(s * s, dtype=torch.float64) - 1.0 / s ** 2
    exact = float(torch.linalg.matrix_norm(X @ P, ord=2))
    assert exact <= filter_bank.top_singular_value(gram) <= exact * (1 + 1e-9)


@pytest.mark.parametrize("group", [None, 1, 2])
def test_weighted_patch_map_norm_is_exact(monkeypatch, group):
    """patch_grams: ||X(x) P|| and ||diag(w_k) X(x) P|| from the dense matrix, in one piece
    and a group of 1 or 2 images at a time (CPU_RESPONSES forced down)."""
    s = 3
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(3, 7, 8, generator=gen, dtype=torch.float64)
    w = torch.randn(3, 3, 5, 6, generator=gen, dtype=torch.float64)
    if group is not None:
        monkeypatch.setattr(filter_bank, "CPU_RESPONSES", group * s * s * 5 * 6)
    gram, grams = filter_bank.patch_grams(x, s, w)
    norms = filter_bank.top_singular_values(grams)
    X = filter_bank.patches(x, s).transpose(1, 2).reshape(-1, s * s)
    P = torch.eye(s * s, dtype=torch.float64) - 1.0 / s ** 2
    exact = float(torch.linalg.matrix_norm(X @ P, ord=2))
    assert exact <= filter_bank.top_singular_value(gram) <= exact * (1 + 1e-9)
    assert torch.equal(gram, filter_bank.patch_grams(x, s)[0])
    for k in range(3):
        weights = w[:, k].reshape(-1, 1)  # image by image, row-major: the patches' order
        exact = float(torch.linalg.matrix_norm(weights * (X @ P), ord=2))
        assert exact <= float(norms[k]) <= exact * (1 + 1e-9)
        assert float(norms[k]) <= float(w[:, k].abs().max()) * filter_bank.top_singular_value(gram)


@pytest.mark.parametrize("spec", ["fields_of_experts[num_filters=2, filter_size=3]",
                                  "ridge_regularizer[num_filters=2, filter_size=3]"])
def test_denoise_pads_by_mirroring(spec):
    """denoise's default border is s - 1 mirrored pixels: x is the crop of x* of the
    mirrored images (certified there: its gradient on the padded problem is below tol)."""
    import bilevel

    p = bilevel.make_problem(spec)
    assert p.boundary_pad == 2
    theta = p.initial_theta()
    y = p.noisy[:1, :10, :12]
    x = p.denoise(y, theta, tol=1e-8)
    mirrored = torch.nn.functional.pad(y[:, None], (2, 2, 2, 2), mode="reflect")[:, 0]
    assert torch.equal(mirrored[:, 2:-2, 2:-2], y) and torch.equal(mirrored[:, 0, 2:-2], y[:, 2])
    padded = p.on_images(mirrored, theta)
    full = p.denoise(mirrored, theta, tol=1e-8, pad=0)
    assert float(padded.lower_grad(full, theta).norm()) <= 1e-8 * padded.strong_convexity(theta)
    torch.testing.assert_close(x, full[:, 2:-2, 2:-2], rtol=0, atol=4e-8)
    with pytest.raises(ValueError, match="pad"):
        p.denoise(y, theta, pad=10)


def test_the_ridge_in_groups_of_samples_equals_one_piece(monkeypatch):
    """On the CPU the ridge's gradient and Hessian product go through groups of samples
    (speed): the same values as in one piece, and the same mixed product to rounding."""
    gen = torch.Generator().manual_seed(3)
    problem = RidgeRegularizer(n_images=5, size=12, num_filters=3, filter_size=5, seed=1)
    theta = problem.theta0 + 0.1 * torch.randn(problem.theta0.shape, generator=gen,
                                               dtype=torch.float64)
    x = problem.noisy + 0.05 * torch.randn(problem.noisy.shape, generator=gen,
                                           dtype=torch.float64)
    v, w = (torch.randn(x.shape, generator=gen, dtype=torch.float64) for _ in range(2))
    monkeypatch.setattr(filter_bank, "CPU_RESPONSES", 10 ** 9)
    whole = problem.lower_grad(x, theta), problem.lower_hvp(x, theta, v)
    mixed = problem.mixed_vjp(x, theta, w)
    monkeypatch.setattr(filter_bank, "CPU_RESPONSES", 2 * 3 * 8 * 8)  # groups of 2 images
    assert torch.equal(problem.lower_grad(x, theta), whole[0])
    assert torch.equal(problem.lower_hvp(x, theta, v), whole[1])
    torch.testing.assert_close(problem.mixed_vjp(x, theta, w), mixed, rtol=1e-12, atol=1e-14)
