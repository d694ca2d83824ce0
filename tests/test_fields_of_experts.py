"""Fields of experts: closed forms against autograd, adjoints, certificates."""
import math

import pytest
import torch
from bilevel_problems.fields_of_experts import ENTRY, FieldsOfExperts, dct_filters

import bilevel
from bilevel import BilevelProblem, estimate_bound_constants
from bilevel.testing import check_problem

SMALL = dict(n_images=2, size=16, num_filters=3, filter_size=3)


def _random_images(n=2, h=13, w=11, seed=1):
    # Rectangular and odd-sized, so rows and columns cannot be swapped unnoticed.
    return torch.rand((n, h, w), generator=torch.Generator().manual_seed(seed),
                      dtype=torch.float64)


def _problem(**kw):
    params = dict(images=_random_images(), num_filters=4, filter_size=3, log_scale=-1.0,
                  log_smoothing=-2.0)
    params.update(kw)
    return FieldsOfExperts(**params)


def _point(p, seed=2):
    """A theta away from the start (filters not DCT, weights unequal) and an x."""
    gen = torch.Generator().manual_seed(seed)
    theta = p.initial_theta() + 0.3 * torch.randn(p.dim_theta, generator=gen,
                                                  dtype=torch.float64)
    x = p.noisy + 0.1 * torch.randn(p.noisy.shape, generator=gen, dtype=torch.float64)
    return theta, x


def _rel(a, b):
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def test_check_problem_passes_on_the_registered_test_configuration():
    problem = bilevel.make_problem("fields_of_experts", **ENTRY["test_params"])
    report = check_problem(problem)
    assert report, str(report)


@pytest.mark.parametrize("backend,chunk", [("gemm", 4096), ("gemm", 40), ("conv", 4096)])
def test_closed_forms_equal_autograd(backend, chunk):
    # chunk=40 splits each image into strips of four output rows: overlapping folds.
    p = _problem(backend=backend, chunk_columns=chunk)
    theta, x = _point(p)
    gen = torch.Generator().manual_seed(3)
    v = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    w = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    assert _rel(p.lower_grad(x, theta), BilevelProblem.lower_grad(p, x, theta)) < 1e-10
    assert _rel(p.lower_hvp(x, theta, v), BilevelProblem.lower_hvp(p, x, theta, v)) < 1e-10
    assert _rel(p.mixed_vjp(x, theta, w), BilevelProblem.mixed_vjp(p, x, theta, w)) < 1e-10
    closed, auto = p.upper_grads(x, theta), BilevelProblem.upper_grads(p, x, theta)
    assert abs(float(closed[0] - auto[0])) <= 1e-12 * float(auto[0])
    assert _rel(closed[1], auto[1]) < 1e-10
    assert float(closed[2].abs().max()) == 0.0 and float(auto[2].abs().max()) == 0.0


def test_convolution_adjoint_is_exact():
    p = _problem()
    theta, x = _point(p)
    z = torch.randn(p.convolve(x, theta).shape, dtype=torch.float64)
    lhs = float(torch.sum(p.convolve(x, theta) * z))
    rhs = float(torch.sum(x * p.convolve_adjoint(z, theta)))
    assert abs(lhs - rhs) <= 1e-12 * abs(lhs)


def test_filters_are_zero_mean_and_theta_layout():
    p = _problem()
    theta, _ = _point(p)
    assert p.dim_theta == theta.numel() == 1 + 2 * 4 + 4 * 9
    assert float(p.filters(theta).sum(dim=(1, 2)).abs().max()) < 1e-14
    # Adding a constant to a raw filter changes nothing, so its derivative vanishes.
    bw = p.mixed_vjp(p.noisy, theta, torch.randn_like(p.noisy))
    raw = bw[1 + 2 * 4:].view(4, 9)
    assert float(raw.sum(dim=1).abs().max()) < 1e-12 * float(raw.abs().max())
    # The paper's configuration: 48 filters of 7x7 give 2449 hyperparameters.
    big = FieldsOfExperts(images=_random_images(1, 9, 9), num_filters=48, filter_size=7)
    assert big.dim_theta == 2449


def test_dct_filters_are_orthonormal_zero_mean():
    f = dct_filters(7, 48).view(48, 49)
    assert float(f.sum(dim=1).abs().max()) < 1e-12
    assert float((f @ f.T - torch.eye(48, dtype=f.dtype)).abs().max()) < 1e-12
    extra = dct_filters(3, 10, seed=0).view(10, 9)  # 8 DCT + 2 random
    assert float(extra.sum(dim=1).abs().max()) < 1e-12
    assert torch.allclose(extra.norm(dim=1), torch.ones(10, dtype=extra.dtype))
    assert torch.equal(dct_filters(3, 10, seed=0), extra.view(10, 3, 3))


def test_smoothness_bounds_the_curvature():
    p = _problem(log_scale=0.0, log_smoothing=-1.0)
    theta, x = _point(p)
    L = p.smoothness(theta)
    v = torch.randn(x.shape, dtype=torch.float64)
    for _ in range(200):  # power iteration: from below
        v = p.lower_hvp(x, theta, v)
        v = v / v.norm()
    estimate = float(torch.sum(v * p.lower_hvp(x, theta, v)))
    prm = p.params(theta)
    simple = 1 + float(torch.sum(prm.alpha * prm.filters.abs().sum(dim=1) ** 2 / prm.nu))
    assert estimate <= L <= simple * (1 + 1e-12)
    assert p.strong_convexity(theta) == 1.0


def test_bound_constants_dominate_estimates():
    p = _problem(log_scale=0.0, log_smoothing=-1.0)
    theta, x = _point(p)
    c = p.bound_constants(theta, x)
    assert c.certified and c.L_g == 1 / p.n_images and c.L_gtheta == 0.0
    # ||B(x)|| exactly, from the dense B: column j is grad_x of dh/dtheta_j.
    with torch.enable_grad():
        xg, tg = x.clone().requires_grad_(True), theta.clone().requires_grad_(True)
        (gt,) = torch.autograd.grad(p.lower_objective(xg, tg), tg, create_graph=True)
        B = torch.stack([torch.autograd.grad(gt[j], xg, retain_graph=True)[0].flatten()
                         for j in range(theta.numel())], dim=1)
    B_true = float(torch.linalg.matrix_norm(B, ord=2))
    assert B_true <= p.mixed_norm_bound(theta, x) <= c.B_norm
    est = estimate_bound_constants(p, theta, x, iterations=20, probes=3, safety=1.0)
    assert est.L_B <= c.L_B and est.L_Ainv <= c.L_Ainv


def test_hessian_lipschitz_along_bounds_worst_perturbations():
    p = _problem(log_scale=0.0, log_smoothing=-1.0)
    theta, x = _point(p)
    gen = torch.Generator().manual_seed(5)
    q = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    radius = 0.05
    M = p.hessian_lipschitz_along(theta, x, q, radius)
    prm = p.params(theta)
    q_far = q + radius * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    q_far = q + radius * (q_far - q) / (q_far - q).norm()
    ratios = []
    z = p.convolve(x, theta)
    for qq in (q, q_far):
        # The worst case: one pixel under the largest response of q, moved so that its
        # filter response crosses the steepest part of phi'' (t = nu / 2).
        resp = p.convolve(qq, theta).abs()
        k = int(torch.argmax(resp.amax(dim=(0, 2, 3))))
        n, i, j = torch.unravel_index(torch.argmax(resp[:, k]), resp[:, k].shape)
        for di in range(p.s):
            for dj in range(p.s):
                for size in (0.3, 1.0, 3.0):
                    c = float(prm.filters[k].view(p.s, p.s)[di, dj])
                    if c == 0:
                        continue
                    e = torch.zeros_like(x)
                    t = (float(prm.nu[k]) / 2 - float(z[n, k, i, j])) / c
                    e[n, i + di, j + dj] = size * t
                    diff = p.lower_hvp(x + e, theta, qq) - p.lower_hvp(x, theta, qq)
                    ratios.append(float(diff.norm() / e.norm()))
        for _ in range(5):  # and random directions
            e = 1e-2 * torch.randn(x.shape, generator=gen, dtype=torch.float64)
            diff = p.lower_hvp(x + e, theta, qq) - p.lower_hvp(x, theta, qq)
            ratios.append(float(diff.norm() / e.norm()))
    assert max(ratios) <= M
    assert max(ratios) >= 0.01 * M  # a proof, loose by kappa^2 / ||c||^2 and the sum over k
    # Sharper than the global L_A ||q'|| it replaces.
    c = p.bound_constants(theta, x)
    assert M < c.L_Ainv * (q.norm() + radius)


def test_hypergradient_bound_holds_and_is_sharper_with_the_adjoint():
    p = bilevel.make_problem("fields_of_experts", **dict(SMALL, size=24))
    theta = p.initial_theta() + 0.2 * torch.randn(
        p.dim_theta, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    exact = bilevel.hypergradient(p, theta, 1e-12, 1e-12)
    for eps in (1e-2, 1e-3, 1e-4):
        hg = bilevel.hypergradient(p, theta, eps, eps)
        assert hg.hessian_along is not None
        assert hg.error_bound + exact.error_bound >= float((hg.grad - exact.grad).norm())
        plain = hg.constants.omega(hg.lower.error_bound, hg.linear.residual_norm, 1.0,
                                   hg.upper_grad_norm)
        assert hg.error_bound < plain


def test_float32_matches_float64():
    p64 = _problem()
    p32 = _problem(dtype=torch.float32)
    theta, x = _point(p64)
    g32 = p32.lower_grad(x.float(), theta.float())
    assert g32.dtype == torch.float32
    assert _rel(g32.double(), p64.lower_grad(x, theta)) < 1e-5


def test_denoise_reduces_the_error():
    p = bilevel.make_problem("fields_of_experts", **SMALL)
    theta = p.initial_theta().clone()
    theta[0] = -1.0  # a visible amount of regularisation
    x = p.denoise(p.noisy, theta, tol=1e-6, pad=0)  # the problem's own lower level
    assert x.shape == p.noisy.shape
    grad = p.lower_grad(x, theta)
    assert float(grad.norm()) <= 1e-6
    assert math.isfinite(float(p.upper_objective(x, theta)))


def test_bad_arguments_name_the_problem():
    with pytest.raises(ValueError, match="fields_of_experts"):
        _problem(backend="fft")
    with pytest.raises(ValueError, match="smaller"):
        FieldsOfExperts(images=_random_images(1, 4, 4), filter_size=5)
    p = _problem()
    with pytest.raises(ValueError, match="entries"):
        p.params(torch.zeros(3, dtype=torch.float64))


def test_patches_equal_unfold():
    import torch.nn.functional as F
    from bilevel_problems.fields_of_experts import patches

    x = _random_images(3, 9, 12)
    assert torch.equal(patches(x, 4), F.unfold(x.unsqueeze(1), 4))
    assert torch.equal(patches(x[:, 2:7, 1:], 3), F.unfold(x[:, None, 2:7, 1:], 3))


@pytest.mark.parametrize("chunk", [4096, 45, 15])
def test_threaded_sweep_is_bitwise_independent_of_the_thread_count(chunk):
    # chunk 45 / 15: strips of 3 / 1 output rows of a 3 x 3 filter (2 / 3 phases),
    # 4096: three whole images per chunk.  Each chunk is computed by one thread and
    # overlapping strips add up in phase order, whatever the number of threads.
    p = _problem(images=_random_images(3, 29, 17), chunk_columns=chunk)
    theta, x = _point(p)
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append((p.lower_grad(x, theta), p.lower_hvp(x, theta, v),
                            p.mixed_vjp(x, theta, v)))
            assert torch.get_num_threads() == threads  # restored after the sweep
    finally:
        torch.set_num_threads(before)
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert torch.equal(a, b)
    conv = _problem(images=_random_images(3, 29, 17), backend="conv")
    for a, b in zip(results[0], (conv.lower_grad(x, theta), conv.lower_hvp(x, theta, v),
                                 conv.mixed_vjp(x, theta, v)), strict=True):
        assert _rel(a, b) < 1e-13
    # The same under inference mode and with autograd recording (sequential then).
    with torch.inference_mode():
        assert torch.equal(p.lower_grad(x, theta), results[0][0])
    with torch.enable_grad():
        tg = theta.clone().requires_grad_(True)
        g = p.lower_grad(x, tg)
        assert g.requires_grad
        assert _rel(g.detach(), results[0][0]) < 1e-14
        assert _rel(BilevelProblem.lower_grad(p, x, theta), results[0][0]) < 1e-10


def test_embed_carries_a_learned_field_into_a_larger_bank():
    """Every response of a carried filter is one of the learned filter's, on the valid region
    one pixel narrower each side for 3 -> 5, with its alpha and nu; the new filters are unit
    norm at ``weight`` times the learned strengths' geometric mean (scale-free form)."""
    from bilevel_problems.foe_embedding import embed

    source = _problem()
    theta, x = _point(source)
    big = _problem(num_filters=6, filter_size=5)
    out = embed(big, source, theta, weight=0.2)
    old, new = source.params(theta), big.params(out)
    responses = big.convolve(x, out)[:, :4]
    torch.testing.assert_close(responses, source.convolve(x, theta)[..., 1:-1, 1:-1],
                               rtol=0, atol=1e-13)
    torch.testing.assert_close(new.alpha[:4], old.alpha, rtol=1e-13, atol=0)
    torch.testing.assert_close(new.nu[:4], old.nu, rtol=1e-13, atol=0)
    norms = source.filters(theta).flatten(1).norm(dim=1)
    fresh = big.filters(out)[4:].flatten(1).norm(dim=1)
    torch.testing.assert_close(fresh, torch.ones(2, dtype=torch.float64))
    geomean = lambda t: t.log().mean().exp()  # noqa: E731
    torch.testing.assert_close(new.alpha[4:], 0.2 * geomean(old.alpha * norms).expand(2))
    torch.testing.assert_close(new.nu[4:], geomean(old.nu / norms).expand(2))
    same = embed(source, source, theta)  # the identity: the same h
    for a, b in zip(source.params(same), old, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)
    with pytest.raises(ValueError, match="do not fit"):
        embed(source, big, out)
    with pytest.raises(ValueError, match="do not fit"):
        embed(_problem(num_filters=6, filter_size=4), source, theta)
    with pytest.raises(ValueError, match="weight"):
        embed(big, source, theta, weight=0.0)
    with pytest.raises(TypeError, match="fields_of_experts"):
        embed(big, object(), theta)


def test_rescale_multiplies_the_regularizer():
    """foe_embedding.rescale: h(x) minus the data term becomes factor times itself at every
    x (alpha_k times factor, nu_k and the filters kept); a factor that is not a positive
    number is refused."""
    from bilevel_problems.foe_embedding import rescale

    p = _problem()
    theta, x = _point(p)
    data = 0.5 * torch.sum((x - p.noisy) ** 2)
    for factor in (0.36, 0.6, 2.0):
        scaled = rescale(p, theta, factor)
        torch.testing.assert_close(p.lower_objective(x, scaled) - data,
                                   factor * (p.lower_objective(x, theta) - data),
                                   rtol=1e-12, atol=0)
        torch.testing.assert_close(p.params(scaled).nu, p.params(theta).nu, rtol=0, atol=0)
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="positive and finite"):
            rescale(p, theta, bad)
