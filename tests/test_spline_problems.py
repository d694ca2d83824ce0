"""The spline problems: ridge_regularizer and spline_regression."""
import math
import warnings

import numpy as np
import pytest
import torch
from bilevel_problems.ridge_regularizer import RidgeRegularizer
from bilevel_problems.spline_regression import SplineRegression, make_data, tv2_fit
from bilevel_problems.weakly_convex_ridge import WeaklyConvexRidge

import bilevel
from bilevel import BilevelProblem
from bilevel.nn.splines import LinearSpline, interpolation_matrix, knots
from bilevel.testing import check_problem


def small_images(n=2, size=12, seed=0):
    """Piecewise-constant test images with some texture (no file I/O)."""
    gen = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    imgs = []
    for i in range(n):
        img = 0.3 + 0.4 * ((x + i) > size // 2).double() + 0.2 * (y > size // 3).double()
        imgs.append(img + 0.05 * torch.rand(size, size, generator=gen, dtype=torch.float64))
    return torch.stack(imgs)


@pytest.fixture(scope="module")
def ridge():
    return RidgeRegularizer(images=small_images(), num_filters=2, filter_size=3, num_knots=5,
                            x_range=0.2, log_scale=0.5)


@pytest.fixture(scope="module")
def regression():
    return SplineRegression(n_train=30, n_val=30, num_knots=11, smoothing=0.05)


# ----------------------------------------------------------------- both problems
@pytest.mark.parametrize("which", ["ridge", "regression"])
def test_check_problem_passes(which, request):
    problem = request.getfixturevalue(which)
    report = check_problem(problem)
    assert report, str(report)


@pytest.mark.parametrize("which", ["ridge", "regression"])
def test_closed_forms_match_autograd_defaults(which, request):
    problem = request.getfixturevalue(which)
    gen = torch.Generator().manual_seed(1)
    theta = problem.initial_theta()
    theta = theta + 0.1 * torch.randn(theta.shape, generator=gen, dtype=theta.dtype)
    x = problem.initial_x(theta)
    x = x + 0.1 * torch.randn(x.shape, generator=gen, dtype=x.dtype)
    v = torch.randn(x.shape, generator=gen, dtype=x.dtype)
    for name, args in (("lower_grad", (x, theta)), ("lower_hvp", (x, theta, v)),
                       ("mixed_vjp", (x, theta, v)), ("upper_grads", (x, theta))):
        mine = getattr(problem, name)(*args)
        ref = getattr(BilevelProblem, name)(problem, *args)
        for a, b in zip(mine if isinstance(mine, tuple) else (mine,),
                        ref if isinstance(ref, tuple) else (ref,), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=name)


@pytest.mark.parametrize("spec", ["ridge_regularizer", "spline_regression"])
def test_registered(spec):
    assert spec in bilevel.list_problems()
    entry = bilevel.registry.get_entry(spec)
    assert entry.test_params and entry.description


# ------------------------------------------------------------------ ridge regularizer
def test_ridge_potentials_are_convex_and_pass_through_zero(ridge):
    theta = ridge.initial_theta() + 0.5 * torch.randn(ridge.dim_theta, dtype=torch.float64)
    t = torch.linspace(-1, 1, 401, dtype=torch.float64)
    psi, dpsi, d2psi = ridge.potentials(theta, t, orders=(0, 1, 2))
    zero = t.abs().argmin()
    assert float(psi[:, zero].abs().max()) < 1e-14 and float(dpsi[:, zero].abs().max()) < 1e-14
    assert bool((d2psi >= 0).all()) and bool((d2psi <= ridge.s_max).all())
    assert bool((psi >= -1e-15).all())  # convex with minimum 0 at 0
    assert bool((torch.diff(dpsi, dim=1) >= -1e-15).all())  # sigma_k monotone


def test_ridge_smoothness_bounds_the_hessian(ridge):
    theta = ridge.initial_theta()
    x = ridge.initial_x(theta)
    v = torch.randn(x.shape, dtype=x.dtype)
    for _ in range(50):  # power iteration on the Hessian
        v = ridge.lower_hvp(x, theta, v / v.norm())
    assert 1.0 <= float(v.norm()) <= ridge.smoothness(theta) * (1 + 1e-10)
    # the cruder formula 1 + alpha s_max sum_k ||c_k||_1^2 is never tighter
    alpha = math.exp(float(theta[0]))
    crude = 1 + alpha * ridge.s_max * float(ridge.filters(theta).abs().sum(dim=(1, 2)).pow(2).sum())
    assert ridge.smoothness(theta) <= crude


def test_ridge_bound_constants_dominate_sampled_values(ridge):
    """||B(x)|| and the Lipschitz constants are upper bounds of sampled quantities."""
    gen = torch.Generator().manual_seed(2)
    theta = ridge.initial_theta()
    x = ridge.solve_lower(theta, 1e-3).x
    bc = ridge.bound_constants(theta, x)
    assert bc.certified
    w = torch.randn(x.shape, generator=gen, dtype=x.dtype)
    w = w / w.norm()
    assert float(ridge.mixed_vjp(x, theta, w).norm()) <= bc.B_norm
    d = torch.randn(x.shape, generator=gen, dtype=x.dtype)
    d = 1e-3 * d / d.norm()
    v = torch.randn(x.shape, generator=gen, dtype=x.dtype)
    v = v / v.norm()
    dA = (ridge.lower_hvp(x + d, theta, v) - ridge.lower_hvp(x, theta, v)).norm() / 1e-3
    dB = (ridge.mixed_vjp(x + d, theta, w) - ridge.mixed_vjp(x, theta, w)).norm() / 1e-3
    assert float(dA) <= bc.L_Ainv * 1.0 ** 2 and float(dB) <= bc.L_B


def test_ridge_tv_start_is_anisotropic_tv():
    """start='tv': filters 0, 1 are the two differences with potentials whose alpha psi'
    is TV's weight beyond the window, the others are off; on a piecewise-constant image with
    jumps far beyond the window the regulariser is the weight times anisotropic TV, up to
    the Huber offsets (one window of psi per jump)."""
    x = torch.zeros(1, 24, 24, dtype=torch.float64)
    x[:, 8:16, 5:20] = 0.5
    x[:, 3:6, 2:22] += 1.0
    ridge = RidgeRegularizer(images=x, noisy=x, num_filters=4, num_knots=21, start="tv",
                             tv_weight=0.07)
    theta = ridge.initial_theta()
    alpha, C, slopes, _ = ridge.params(theta)
    f = ridge.filters(theta)
    assert f[0, 2, 2] == -1 and f[0, 2, 3] == 1 and f[1, 2, 2] == -1 and f[1, 3, 2] == 1
    assert float(f[:2].abs().sum()) == 4
    t = torch.linspace(0.1, 0.3, 9, dtype=torch.float64)
    (d1,) = ridge.potentials(theta, t, orders=(1,))
    assert torch.all(alpha * d1[:2] <= 0.07 * (1 + 1e-12))
    assert torch.all(alpha * d1[:2] >= 0.07 * 0.99)
    assert float(slopes[2:].max()) <= 1e-3 * ridge.s_max * 1.001
    v = x[0]
    dh = (v[:, 1:] - v[:, :-1])[2:22, 2:22]
    dv = (v[1:, :] - v[:-1, :])[2:22, 2:22]
    jumps = dh.abs().sum() + dv.abs().sum()
    tv = 0.07 * float(jumps)
    value = float(ridge.lower_objective(x, theta))  # the data term is 0 at x = y
    assert 0.9 * tv <= value <= tv
    # the weakly convex ridge's TV start is the same lower level, slopes mapped through its floor
    weak = WeaklyConvexRidge(images=x, noisy=x, num_filters=4, num_knots=21, start="tv", rho=0.5)
    weak_theta = weak.initial_theta()
    torch.testing.assert_close(weak.slopes(weak_theta), slopes, rtol=1e-12, atol=0)
    assert float(weak.lower_objective(x, weak_theta)) == pytest.approx(value, rel=1e-12)
    assert float(weak.slopes(weak_theta).min()) > 0  # not at the concave floor


@pytest.mark.parametrize("name", ["ridge_regularizer", "weakly_convex_ridge",
                                  "fields_of_experts"])
def test_ridge_trains_with_a_mirrored_border(name):
    """border=2: x lives on the mirrored noisy images, g on the crop; every derivative and
    certificate of check_problem holds, and a batch view keeps the shapes."""
    ridge = "" if name == "fields_of_experts" else "num_knots=5, x_range=0.2, "
    spec = f"{name}[n_images=2, size=12, num_filters=2, filter_size=3, {ridge}border=2]"
    p = bilevel.make_problem(spec)
    assert p.noisy.shape == (2, 16, 16) and p.clean.shape == (2, 12, 12)
    plain = bilevel.make_problem(spec.replace(", border=2", ""))
    torch.testing.assert_close(p.noisy[:, 2:-2, 2:-2], plain.noisy, rtol=0, atol=0)
    theta = p.initial_theta()
    x = p.initial_x(theta) + 0.1
    assert float(p.upper_objective(x, theta)) == pytest.approx(
        0.5 * float(((x[:, 2:-2, 2:-2] - p.clean) ** 2).sum()) / 2, rel=1e-14)
    report = check_problem(p)
    assert report, report
    assert p.subset([1]).noisy.shape == (1, 16, 16)
    assert p.quality(theta)["psnr"] > 0


def test_ridge_maid_decreases_the_loss(ridge):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bilevel.ConvergenceWarning)
        result = bilevel.solve(ridge, "maid", max_iter=8, alpha0=0.1)
    values = [row["upper_value"] for row in result.history]
    assert values[-1] < values[0]
    assert all(row["certified"] for row in result.history)


# ------------------------------------------------------------------ spline regression
def relu_lasso_fit(x, y, alpha, num_knots, x_range):
    """Lasso on ReLU features at the interior knots, affine part unpenalised.

    f(x) = a + b x + sum_k d_k relu(x - t_k); (a, b) are projected out, so the
    Lasso sees P Phi and P y with P the projection onto the complement of
    span{1, x}; then (a, b) by least squares on the residual.
    """
    from sklearn.linear_model import Lasso

    t = knots(num_knots, x_range).numpy()
    Phi = np.maximum(x[:, None] - t[None, 1:-1], 0.0)
    X1 = np.stack([np.ones_like(x), x], axis=1)
    P = np.eye(len(x)) - X1 @ np.linalg.pinv(X1)
    lasso = Lasso(alpha=alpha, fit_intercept=False, tol=1e-14, max_iter=1_000_000)
    d = lasso.fit(P @ Phi, P @ y).coef_
    ab = np.linalg.lstsq(X1, y - Phi @ d, rcond=None)[0]
    coeffs = ab[0] + ab[1] * t + np.maximum(t[:, None] - t[None, 1:-1], 0.0) @ d
    return coeffs, d, ab


@pytest.mark.parametrize("alpha", [1e-3, 1e-2])
def test_tv2_fit_equals_lasso_on_relu_features(alpha):
    """min 1/(2n)||y - f(x)||^2 + alpha TV(2)(f) over linear splines on the grid equals
    Lasso on ReLU features (sklearn's 1/(2n) scaling) since TV(2) = sum |d_k|."""
    n, N, R = 200, 11, 1.0
    x, y = make_data(n, "sine", noise=0.1, x_range=R, seed=3)
    x, y = x.numpy(), y.numpy()
    coeffs_lasso, d, (a, b) = relu_lasso_fit(x, y, alpha, N, R)
    # Our objective is 1/2 ||S c - y||^2 + lam TV(2): n times sklearn's with lam = alpha n.
    fit = tv2_fit(x, y, alpha * n, N, R)
    assert fit["polished"], fit
    np.testing.assert_allclose(fit["c"], coeffs_lasso, atol=1e-4, rtol=0)
    # TV(2) of the spline is the l1 norm of the ReLU coefficients.
    sp = LinearSpline(1, N, R, init="zero", dtype=torch.float64)
    with torch.no_grad():
        sp.coefficients.copy_(torch.from_numpy(coeffs_lasso).view(1, -1))
    assert float(sp.tv2().detach()) == pytest.approx(np.abs(d).sum(), rel=1e-10, abs=1e-12)
    # ... and the spline on the grid (with its linear extension) is that function.
    S = interpolation_matrix(torch.from_numpy(x), N, R).numpy()
    t = knots(N, R).numpy()
    np.testing.assert_allclose(S @ coeffs_lasso,
                               a + b * x + np.maximum(x[:, None] - t[None, 1:-1], 0) @ d,
                               atol=1e-12)
    if alpha == 1e-2:
        assert int((np.abs(d) > 1e-8).sum()) < N - 2  # the penalty removed knots


def test_smoothed_fit_converges_to_the_exact_tv2_fit():
    """||c_nu - c_0|| <= sqrt(2 lam (N - 2) nu / mu), and the error shrinks with nu."""
    errors = []
    for nu in (1e-1, 1e-2, 1e-3):
        p = SplineRegression(n_train=40, num_knots=11, smoothing=nu, ridge=1e-3,
                             log_weight=math.log(0.05))
        theta = p.initial_theta()
        c_nu = p.solve_lower(theta, 1e-10).x.numpy()
        exact = tv2_fit(p.x_train.numpy(), p.y_train.numpy(), 0.05, 11, 1.0, ridge=1e-3)
        assert exact["polished"]
        err = float(np.linalg.norm(c_nu - exact["c"]))
        bound = math.sqrt(2 * p.smoothing_gap(theta) / p.strong_convexity(theta))
        assert err <= bound, (nu, err, bound)
        errors.append(err)
    assert errors[2] < errors[1] < errors[0]


def test_newton_solver_agrees_with_fista(regression):
    theta = regression.initial_theta()
    newton = regression.solve_lower(theta, 1e-8)
    fista = bilevel.fista(regression, theta, 1e-6, max_iter=200_000)
    assert newton.converged and fista.converged
    assert float((newton.x - fista.x).norm()) <= 1e-8 + 1e-6
    assert newton.iterations < 50


def test_maid_learns_the_weight_with_certified_convergence():
    p = SplineRegression()
    result = bilevel.solve(p, "maid", max_iter=60, alpha0=100.0)
    assert result.status == "converged", result.message
    assert result.history[-1]["certified"]
    # the learned weight is at least as good as a grid
    grid = [float(p.upper_objective(p.solve_lower(torch.tensor([g], dtype=torch.float64),
                                                  1e-9).x, None)) for g in np.arange(-6, 2, 0.5)]
    assert result.history[-1]["upper_value"] <= min(grid) + 1e-6


# ------------------------------------------------------------------ example script
def test_spline_digits_quick(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(root / "scripts" / "spline_digits.py"), "--quick",
                           "--no-plot", "--out", str(tmp_path)], capture_output=True, text=True,
                          cwd=root)
    assert done.returncode == 0, done.stderr
    rows = (tmp_path / "data.csv").read_text().splitlines()
    assert len(rows) == 4  # header + relu, spline, spline_tv2
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["quick"] is True and "environment" in meta
    assert "spline_tv2" in (tmp_path / "summary.md").read_text()


def test_embed_carries_a_learned_ridge_into_a_larger_bank():
    """Every response of an embedded filter is one of the learned filter's (same slopes,
    same alpha), on the valid region one pixel narrower each side for 5 -> 7; the extra
    filters keep the TV start's 0.001 s_max; wake switches on exactly the sleeping ones."""
    from bilevel_problems.ridge_embedding import embed

    images = small_images(1, 14)
    kw = dict(images=images, noisy=images, num_knots=11, start="tv")
    source = RidgeRegularizer(num_filters=3, filter_size=5, **kw)
    gen = torch.Generator().manual_seed(1)
    theta = source.theta0 + 0.3 * torch.randn(source.dim_theta, generator=gen,
                                              dtype=torch.float64)
    theta[1 + 3 * 25 + 2 * 10:] = -7.0  # filter 2 asleep: slopes about 0.001 s_max
    big = RidgeRegularizer(num_filters=5, filter_size=7, **kw)
    out = embed(big, source, theta)
    x = images[:1]
    old = source._conv(x, source.params(theta)[1])[..., 1:-1, 1:-1]
    new = big._conv(x, big.params(out)[1])[:, :3]
    torch.testing.assert_close(new, old, rtol=0, atol=1e-13)
    torch.testing.assert_close(big.slopes(out)[:3], source.slopes(theta), rtol=1e-12, atol=0)
    assert out[0] == theta[0]
    assert torch.allclose(big.slopes(out)[3:], torch.full((2, 10), 1e-3, dtype=torch.float64))
    woken = embed(big, source, theta, wake=0.05)
    slopes = big.slopes(woken)
    asleep = [2, 3, 4]
    assert torch.equal(woken[:1], out[:1]) and torch.equal(slopes[:2], big.slopes(out)[:2])
    assert torch.allclose(slopes[asleep].max(dim=1).values, torch.tensor(0.05).double())
    norms = big.filters(woken)[asleep].flatten(1).norm(dim=1)
    torch.testing.assert_close(norms, torch.ones(3, dtype=torch.float64))
    small = embed(big, source, theta, wake=0.05, wake_norm=0.2)
    torch.testing.assert_close(big.filters(small)[asleep], 0.2 * big.filters(woken)[asleep],
                               rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(big.slopes(small), slopes, rtol=1e-12, atol=0)
    torch.testing.assert_close(big.filters(small)[:2], big.filters(woken)[:2], rtol=0, atol=0)
    with pytest.raises(ValueError, match="wake_norm"):
        embed(big, source, theta, wake=0.05, wake_norm=0.0)
    with pytest.raises(ValueError, match="do not fit"):
        embed(source, big, out)
    with pytest.raises(TypeError, match="same class"):
        embed(WeaklyConvexRidge(num_filters=5, filter_size=7, rho=0.5, **kw), source, theta)


def test_embed_maps_weakly_convex_slopes_through_the_new_floor():
    """The weakly convex ridge's slopes survive the move to a bank with another floor
    (more filters raise Lambda): carried slopes equal, concave ones included; a concave slope
    below the new floor is refused."""
    from bilevel_problems.ridge_embedding import embed

    images = small_images(1, 14)
    kw = dict(images=images, noisy=images, num_knots=11, rho=0.5)
    source = WeaklyConvexRidge(num_filters=2, filter_size=5, **kw)
    theta = source.theta0.clone()
    q = theta[1 + 2 * 25:].view(2, 10)
    q[:, 0], q[:, -1] = -3.0, -3.0  # concave tails, above the larger bank's floor
    slopes = source.slopes(theta)
    assert slopes.min() < 0
    big = WeaklyConvexRidge(num_filters=4, filter_size=5, **kw)
    out = embed(big, source, theta)
    alpha, C = torch.exp(out[0]), big.filters(out).flatten(1)
    assert big.slope_floor(alpha, C) < source.slope_floor(torch.exp(theta[0]),
                                                          source.filters(theta).flatten(1))
    torch.testing.assert_close(big.slopes(out)[:2], slopes, rtol=1e-10, atol=1e-14)
    q[:, 0] = -30.0  # at the old floor: below the new one
    with pytest.raises(ValueError, match="floor"):
        embed(big, source, theta)


@pytest.mark.parametrize("rho", [None, 0.5])
def test_rescale_multiplies_the_regularizer(rho):
    """ridge_embedding.rescale: h(x) - 1/2 ||x - y||^2 becomes factor times itself at every x
    (the slopes kept, the weakly convex ridge's floor moved with alpha); a factor whose
    floor would cut a concave slope, and a factor that is not a positive number, are
    refused."""
    from bilevel_problems.ridge_embedding import rescale

    images = small_images(2, 12)
    noisy = images + 0.1 * torch.randn(images.shape, generator=torch.Generator().manual_seed(2),
                                       dtype=torch.float64)
    kw = dict(images=images, noisy=noisy, num_knots=11, num_filters=3, filter_size=3)
    problem = RidgeRegularizer(**kw) if rho is None else WeaklyConvexRidge(rho=rho, **kw)
    theta = problem.theta0 + 0.5 * torch.randn(problem.dim_theta, dtype=torch.float64,
                                               generator=torch.Generator().manual_seed(3))
    if rho is not None:
        assert problem.slopes(theta).min() < 0  # concave pieces, carried through the floor

    def regularizer(x, th):
        return problem.lower_objective(x, th) - 0.5 * ((x - noisy) ** 2).sum()

    x = noisy + 0.2 * torch.rand(noisy.shape, generator=torch.Generator().manual_seed(4),
                                 dtype=torch.float64)
    for factor in (0.36, 0.6, 1.0):
        scaled = rescale(problem, theta, factor)
        torch.testing.assert_close(regularizer(x, scaled), factor * regularizer(x, theta),
                                   rtol=1e-11, atol=0)
        torch.testing.assert_close(problem.slopes(scaled), problem.slopes(theta), rtol=1e-9,
                                   atol=1e-12)
    if rho is not None:
        low = -float(problem.slopes(theta).min())
        beta = float(problem.slope_floor(torch.exp(theta[0]), problem.filters(theta).flatten(1)))
        with pytest.raises(ValueError, match="rescale by .*floor"):
            rescale(problem, theta, 1.01 * beta / low)  # the floor rises above that slope
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="positive and finite"):
            rescale(problem, theta, bad)
