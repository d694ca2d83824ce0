"""The weakly convex ridge regularizer (bilevel_problems.weakly_convex_ridge): its certified
mu = 1 - rho against dense Hessians, at the slope floor where the potentials are most
concave, its L, closed forms and hypergradient bound against exact references."""
import math
import warnings

import pytest
import torch
from bilevel_problems import filter_bank
from bilevel_problems.ridge_regularizer import RidgeRegularizer
from bilevel_problems.weakly_convex_ridge import WeaklyConvexRidge

import bilevel
from bilevel import BilevelProblem
from bilevel.reference import reference_solution
from bilevel.testing import check_problem

SMALL = dict(n_images=2, size=12, num_filters=2, filter_size=3, num_knots=5, x_range=0.2)
RHO = 0.9


@pytest.fixture(scope="module", params=["l1", "symbol"])
def problem(request):
    """Both bounds Lambda behind the floor: every certificate must hold with either."""
    return WeaklyConvexRidge(rho=RHO, floor_bound=request.param, **SMALL)


def _theta(problem, log_scale=None, q=None, seed=None):
    """theta0, with theta_0 and every q_kj set, or drawn at random (filters too) from seed."""
    theta = problem.initial_theta()
    n_filters = problem.K * problem.s ** 2
    if seed is not None:
        gen = torch.Generator().manual_seed(seed)
        theta = torch.randn(theta.shape, generator=gen, dtype=theta.dtype)
        theta[0] = 5 * float(torch.rand((), generator=gen, dtype=theta.dtype)) - 3
        theta[1:1 + n_filters] *= 0.4  # filters of about unit norm, as at the start
        theta[1 + n_filters:] *= 4  # slopes from near the floor to near s_max
    if log_scale is not None:
        theta[0] = log_scale
    if q is not None:
        theta[1 + n_filters:] = q
    return theta


#: Where the potentials are most concave (q -> -inf: every slope at the floor -beta), with
#: small, middling and large alpha; then random thetas.
FLOOR = [dict(log_scale=a, q=-40.0) for a in (-4.0, -1.0, 3.0)]
POINTS = FLOOR + [dict(seed=s) for s in range(3)]


def _dense_hessian(problem, x, theta):
    """By autograd on lower_objective alone (no closed form), symmetrised."""
    H = torch.autograd.functional.hessian(
        lambda v: problem.lower_objective(v.view_as(x), theta), x.flatten(), vectorize=True)
    return (H + H.T) / 2


def _spread_x(problem, seed):
    """The noisy images plus noise: filter responses across every piece of the splines."""
    gen = torch.Generator().manual_seed(seed)
    return problem.noisy + 0.3 * torch.randn(problem.noisy.shape, generator=gen,
                                             dtype=problem.noisy.dtype)


@pytest.mark.parametrize("point", POINTS, ids=str)
def test_hessian_spectrum_lies_in_mu_L(problem, point):
    theta = _theta(problem, **point)
    H = _dense_hessian(problem, _spread_x(problem, 0), theta)
    eig = torch.linalg.eigvalsh(H)
    mu, L = problem.strong_convexity(theta), problem.smoothness(theta)
    assert 1 - RHO <= mu <= float(eig[0]) * (1 + 1e-10)
    assert float(eig[0]) < 1  # h is not convex + 1/2 ||x - y||^2
    assert float(eig[-1]) <= L * (1 + 1e-10)


@pytest.mark.parametrize("point", POINTS, ids=str)
def test_mu_reads_how_concave_the_learned_slopes_are(problem, point):
    """mu = max(1 - rho, 1 - alpha ||sum_k n_k K_k^T K_k||), n_k the deepest concave slope of
    psi_k: at the floor (n_k = beta) it is 1 - rho sup(symbol of sum_k c_k * c_k) / Lambda,
    the infinite image's lambda_min, below this small image's; with the slopes off the floor
    the true lambda_min still lies above it, and mu has moved up from 1 - rho; with no
    concave slope it is 1."""
    theta = _theta(problem, **point)
    if "q" not in point:  # every slope at -beta / 2: concave, halfway to the floor
        alpha, C, slopes, _ = problem.params(theta)
        half = torch.full_like(slopes, -float(problem.slope_floor(alpha, C)) / 2)
        theta[1 + problem.K * problem.s ** 2:] = torch.logit(
            problem.slope_fractions(alpha, C, half)).flatten()
    x = _spread_x(problem, 3)
    lam_min = float(torch.linalg.eigvalsh(_dense_hessian(problem, x, theta))[0])
    mu = problem.strong_convexity(theta)
    assert mu <= lam_min * (1 + 1e-10)
    C = problem.params(theta)[1]
    symbol = filter_bank.weighted_kernel_norm(filter_bank.autocorrelations(C, problem.s),
                                              torch.ones(problem.K, dtype=torch.float64))
    depth = 1.0 if "q" in point else 0.5  # n_k / beta
    # max: with floor_bound='symbol' Lambda may lie below the (first-order) symbol_bound
    expected = max(1 - RHO, 1 - depth * RHO * symbol / float(problem.kernel_bound(C)))
    assert mu == pytest.approx(expected, rel=1e-9)
    assert float(problem.params(theta)[2].min()) < 0 and mu < 1
    convex = _theta(problem, **point)
    convex[1 + problem.K * problem.s ** 2:] = 40.0  # every slope near s_max
    assert problem.strong_convexity(convex) == 1.0


@pytest.mark.parametrize("point", FLOOR, ids=str)
def test_at_the_floor_the_regularizer_is_concave_as_far_as_certified(problem, point):
    """At the floor alpha psi_k'' = -rho / Lambda: H = I - (rho / Lambda) sum_k K_k^T K_k.

    So lambda_min = 1 - rho ||sum_k K_k^T K_k|| / Lambda whatever alpha: well below 1 (the
    potentials really are concave), and above 1 - rho by Lambda's slack only.
    """
    theta = _theta(problem, **point)
    alpha, C, slopes, _ = problem.params(theta)
    beta = problem.slope_floor(alpha, C)
    torch.testing.assert_close(slopes, torch.full_like(slopes, -float(beta)), rtol=1e-12,
                               atol=1e-12)
    eig = torch.linalg.eigvalsh(_dense_hessian(problem, _spread_x(problem, 1), theta))
    x = torch.zeros_like(problem.noisy[:1])
    gram = torch.autograd.functional.jacobian(
        lambda v: filter_bank.correlate_adjoint(filter_bank.correlate(v.view_as(x), C, 3), C, 3)
        .flatten(), x.flatten(), vectorize=True)
    expected = 1 - RHO * float(torch.linalg.eigvalsh(gram)[-1]) / float(problem.kernel_bound(C))
    assert float(eig[0]) == pytest.approx(expected, rel=1e-9)
    assert 1 - RHO < float(eig[0]) < 1 - RHO / 2


def test_kernel_bound_is_smooth_and_certified(problem):
    theta = _theta(problem, seed=4)
    C = problem.params(theta)[1]
    A = filter_bank.autocorrelations(C, problem.s).sum(dim=0)
    l1 = float(A.abs().sum())
    if problem.floor_bound == "l1":
        assert l1 <= float(problem.kernel_bound(C)) <= (1 + problem.kernel_smoothing) * l1
    else:  # the symbol's sup on a fine grid, a lower estimate of it
        fine = float(torch.fft.rfft2(A, s=(4096, 4096)).abs().amax())
        assert fine <= float(problem.kernel_bound(C)) <= min(1.05 * fine, l1)
    # the DCT start has zero lags in A, where ||A||_1 has a kink and Lambda none
    C0 = problem.params(problem.initial_theta())[1]
    assert bool((filter_bank.autocorrelations(C0, problem.s).sum(0).abs() < 1e-14).any())


def test_potentials_are_concave_somewhere_and_bounded_below(problem):
    theta = _theta(problem, seed=0)
    alpha, C, slopes, _ = problem.params(theta)
    t = torch.linspace(-1, 1, 801, dtype=torch.float64)
    psi, dpsi, d2psi = problem.potentials(theta, t, orders=(0, 1, 2))
    assert float(d2psi.min()) < 0 < float(d2psi.max()) <= problem.s_max
    assert float(alpha * d2psi.min()) >= -RHO / float(problem.kernel_bound(C))
    zero = t.abs().argmin()
    assert float(psi[:, zero].abs().max()) < 1e-14 and float(dpsi[:, zero].abs().max()) < 1e-14


def test_rho_zero_is_the_convex_ridge_regularizer():
    convex, zero = RidgeRegularizer(**SMALL), WeaklyConvexRidge(rho=0.0, **SMALL)
    theta = _theta(convex, seed=2)
    x = _spread_x(convex, 2)
    assert torch.equal(convex.lower_objective(x, theta), zero.lower_objective(x, theta))
    assert zero.smoothness(theta) == convex.smoothness(theta)
    assert zero.bound_constants(theta, x) == convex.bound_constants(theta, x)
    assert zero.strong_convexity(theta) == 1.0


@pytest.mark.parametrize("point", [dict(), dict(seed=0), FLOOR[1]], ids=str)
def test_closed_forms_match_autograd(problem, point):
    theta = _theta(problem, **point)
    x = _spread_x(problem, 3)
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=x.dtype)
    for name, args in (("lower_grad", (x, theta)), ("lower_hvp", (x, theta, v)),
                       ("mixed_vjp", (x, theta, v))):
        torch.testing.assert_close(getattr(problem, name)(*args),
                                   getattr(BilevelProblem, name)(problem, *args),
                                   rtol=1e-9, atol=1e-11, msg=name)


def test_the_kept_spline_model_follows_theta_and_x():
    """The closed forms keep theta's spline model (RidgeRegularizer._model) and the curvatures
    psi''(K x) of the Hessian products (``_curvatures``) between calls: one problem asked at
    theta and x, then at the same tensors changed in place (theta scaled, another theta
    copied in, x moved, another v) gives what a fresh problem gives at each, to the last
    bit; curvatures larger than KEPT_CURVATURES are not kept."""
    kept = WeaklyConvexRidge(rho=RHO, **SMALL)
    x = _spread_x(kept, 4)
    gen = torch.Generator().manual_seed(4)
    v = torch.randn(x.shape, generator=gen, dtype=x.dtype)
    theta, other = _theta(kept, seed=5), _theta(kept, seed=6)
    for change in (None, lambda: theta.mul_(1.5), lambda: theta.copy_(other), None,
                   lambda: x.add_(0.01 * torch.randn(x.shape, generator=gen, dtype=x.dtype)),
                   lambda: v.copy_(torch.randn(x.shape, generator=gen, dtype=x.dtype))):
        if change is not None:
            change()
        fresh = WeaklyConvexRidge(rho=RHO, **SMALL)
        for name, args in (("lower_grad", (x, theta)), ("lower_hvp", (x, theta, v))):
            assert torch.equal(getattr(kept, name)(*args), getattr(fresh, name)(*args)), name
    assert kept._kept_curvatures[2].numel() > 0
    small = WeaklyConvexRidge(rho=RHO, **SMALL)
    small.KEPT_CURVATURES = 0
    assert torch.equal(small.lower_hvp(x, theta, v), kept.lower_hvp(x, theta, v))
    assert getattr(small, "_kept_curvatures", None) is None


@pytest.mark.parametrize("point", [dict(), dict(seed=1)], ids=str)
def test_check_problem_passes(problem, point):
    report = check_problem(problem, theta=_theta(problem, **point))
    assert report, str(report)


def _B(problem, x, theta):
    """The exact B = d grad_x h / d theta, dense (n, dim_theta), beta's chain included."""
    J = torch.autograd.functional.jacobian(lambda th: problem._grad(x, th), theta,
                                           vectorize=True)
    return J.reshape(x.numel(), -1)


@pytest.mark.parametrize("point", [dict(), dict(seed=1), FLOOR[0]], ids=str)
def test_bound_constants_dominate_exact_values_on_the_ball(problem, point):
    """||B||, L_B and L_A = L_Ainv mu^2 against dense B and Hessians within 2e of x."""
    theta = _theta(problem, **point)
    x = problem.solve_lower(theta, 1e-2).x
    bc = problem.bound_constants(theta, x)
    mu = problem.strong_convexity(theta)
    e = float(problem.lower_grad(x, theta).norm()) / mu
    gen = torch.Generator().manual_seed(5)
    B0 = _B(problem, x, theta)
    H0 = _dense_hessian(problem, x, theta)
    assert bc.certified and float(torch.linalg.matrix_norm(B0, 2)) <= bc.B_norm
    for _ in range(2):
        d = torch.randn(x.shape, generator=gen, dtype=x.dtype)
        d = 2 * e * d / d.norm()
        B1 = _B(problem, x + d, theta)
        assert float(torch.linalg.matrix_norm(B1, 2)) <= bc.B_norm
        assert float(torch.linalg.matrix_norm(B1 - B0, 2)) <= bc.L_B * 2 * e
        H1 = _dense_hessian(problem, x + d, theta)
        assert float(torch.linalg.matrix_norm(H1 - H0, 2)) <= bc.L_Ainv * mu ** 2 * 2 * e


@pytest.fixture(scope="module")
def references(problem):
    thetas = (_theta(problem), _theta(problem, seed=1))
    return [(theta, reference_solution(problem, theta)) for theta in thetas]


@pytest.mark.parametrize("case", [0, 1])
@pytest.mark.parametrize("eps", [1e-2, 1e-5])
def test_hypergradient_bound_covers_the_true_error(problem, references, case, eps):
    theta, ref = references[case]
    assert ref.converged
    warm = ref.x + 3 * eps * ref.x / ref.x.norm()
    for x0 in (None, warm):
        hg = bilevel.hypergradient(problem, theta, eps, eps, x0=x0, lower_max_iter=200_000)
        true = float((hg.grad - ref.grad).norm())
        assert hg.certified and hg.error_bound >= true


def test_registered_and_checked_parameters(problem):
    assert "weakly_convex_ridge" in bilevel.list_problems()
    entry = bilevel.registry.get_entry("weakly_convex_ridge")
    assert entry.description and entry.test_params == SMALL
    for bad in (1.0, -0.1, math.nan):
        with pytest.raises(ValueError, match="weakly_convex_ridge: rho must be a finite number"):
            bilevel.make_problem("weakly_convex_ridge", rho=bad, **SMALL)
    other = problem.on_images(problem.noisy[:1], problem.initial_theta())
    assert type(other) is WeaklyConvexRidge and other.rho == RHO
    assert other.floor_bound == problem.floor_bound
    with pytest.raises(ValueError, match="floor_bound"):
        bilevel.make_problem("weakly_convex_ridge", floor_bound="linf", **SMALL)


def test_maid_decreases_the_upper_loss(problem):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bilevel.ConvergenceWarning)  # max_iter, meant
        history = bilevel.solve(problem, "maid", max_iter=8, alpha0=0.1).history
    assert history[-1]["upper_value"] < history[0]["upper_value"]
    assert all(row["certified"] for row in history)


def test_woken_filters_at_a_small_norm_keep_the_learned_floor():
    """The numbers of ridge_embedding's docstring and the README, on the committed 24x7x7
    model carried into 48 filters: woken at unit norm the new filters lift the floor -beta
    = -rho / (alpha Lambda) about 4.6-fold, above the learned concave slopes (refused); at
    norm 0.2 it rises by 7%, and every learned slope is kept."""
    from pathlib import Path

    from bilevel_problems.ridge_embedding import embed

    run = Path(__file__).resolve().parents[1] / "results/denoisers/wcrr24x7_rho095_sigma25"
    source = bilevel.load(run)
    theta = source.theta.double()
    images = torch.rand(1, 14, 14, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(0))
    big = WeaklyConvexRidge(num_filters=48, filter_size=7, num_knots=201, x_range=0.6,
                            rho=0.95, border=6, start="tv", images=images, noisy=images)
    alpha, C_source = torch.exp(theta[0]), source.problem.filters(theta).flatten(1)
    beta_source = float(source.problem.slope_floor(alpha, C_source))
    with pytest.raises(ValueError, match="at or below the floor"):
        embed(big, source.problem, theta, wake=0.05)  # unit norm
    small = embed(big, source.problem, theta, wake=0.05, wake_norm=0.2)
    C = big.filters(small).flatten(1)
    assert float(big.slope_floor(alpha, C)) / beta_source == pytest.approx(0.93, abs=0.01)
    torch.testing.assert_close(big.slopes(small)[:24], source.problem.slopes(theta),
                               rtol=1e-9, atol=1e-12)
    unit = torch.cat([C[:24], C[24:] / 0.2])  # the same new filters at unit norm
    assert beta_source / float(big.slope_floor(alpha, unit)) == pytest.approx(4.6, abs=0.1)


def test_the_symbol_floor_is_deeper_on_a_learned_bank():
    """The committed 24x7x7 model (continued) carried into floor_bound='symbol': the same
    slopes, filters and alpha, so the same h and mu; Lambda 1.5 times smaller, so the floor
    -beta 1.5 times deeper (docs: weakly_convex_ridge's module docstring)."""
    from pathlib import Path

    from bilevel_problems.ridge_embedding import embed

    run = Path(__file__).resolve().parents[1] / "results/denoisers/wcrr24x7_cont_sigma25"
    source = bilevel.load(run)
    images = torch.rand(1, 14, 14, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(0))
    deeper = WeaklyConvexRidge(num_filters=24, filter_size=7, num_knots=201, x_range=0.6,
                               rho=0.95, border=6, floor_bound="symbol", images=images,
                               noisy=images)
    theta = embed(deeper, source.problem, source.theta.double())
    alpha, C, slopes, _ = deeper.params(theta)
    torch.testing.assert_close(slopes, source.problem.slopes(source.theta), rtol=0, atol=1e-12)
    ratio = float(deeper.slope_floor(alpha, C)) / float(source.problem.slope_floor(alpha, C))
    assert ratio == pytest.approx(1.51, abs=0.01)
    assert deeper.strong_convexity(theta) == pytest.approx(
        source.problem.strong_convexity(source.theta), rel=1e-12)


def test_concavity_reports_the_budget_used(problem):
    """At the floor every potential is concave down to -beta (depth 1); with every slope near
    s_max none is (depth 0, mu 1); the symbol bound dominates the dense ||sum K^T K||."""
    floor = _theta(problem, **FLOOR[1])
    c = problem.concavity(floor)
    assert c["depth"] == pytest.approx(1.0, rel=1e-9) and c["concave_filters"] == problem.K
    assert c["mu"] == problem.strong_convexity(floor) and c["mu_floor"] == pytest.approx(1 - RHO)
    C = problem.params(floor)[1]
    x = torch.zeros_like(problem.noisy[:1])
    gram = torch.autograd.functional.jacobian(
        lambda v: filter_bank.correlate_adjoint(filter_bank.correlate(v.view_as(x), C, 3), C, 3)
        .flatten(), x.flatten(), vectorize=True)
    assert float(torch.linalg.eigvalsh(gram)[-1]) <= c["symbol"]
    assert c["floor"] == pytest.approx(RHO / (float(torch.exp(floor[0])) * c["kernel_bound"]))
    convex = floor.clone()
    convex[1 + problem.K * problem.s ** 2:] = 40.0
    c = problem.concavity(convex)
    assert c["depth"] == 0.0 and c["concave_filters"] == 0 and c["mu"] == 1.0


@pytest.mark.parametrize("convex", [False, True], ids=["weakly_convex", "convex"])
def test_split_filters_keep_h_and_start_active(problem, convex):
    """ridge_embedding.embed(split=F): 2K filters from K, each potential halved, the copies
    perturbed by F times their filter's norm: h unchanged at F = 0 (and mu with it), moved
    by O(F) otherwise; refused for another K or with wake."""
    from bilevel_problems.ridge_embedding import embed

    options = dict(SMALL, num_filters=2 * problem.K)
    if convex:
        source, big = RidgeRegularizer(**SMALL), RidgeRegularizer(**options)
    else:
        source = problem
        big = WeaklyConvexRidge(rho=RHO, floor_bound=problem.floor_bound, **options)
    theta = _theta(source, seed=1)
    if not convex:  # every slope at -beta / 2: concave, representable after the split
        alpha, C, slopes, _ = source.params(theta)
        half = torch.full_like(slopes, -float(source.slope_floor(alpha, C)) / 2)
        theta[1 + source.K * source.s ** 2:] = torch.logit(
            source.slope_fractions(alpha, C, half)).flatten()
    x = _spread_x(source, 4)
    exact = embed(big, source, theta, split=0.0)
    assert float(big.lower_objective(x, exact)) == pytest.approx(
        float(source.lower_objective(x, theta)), rel=1e-12)
    assert big.strong_convexity(exact) == pytest.approx(source.strong_convexity(theta), rel=1e-9)
    moved = embed(big, source, theta, split=0.1, seed=3)
    K, C0 = source.K, source.filters(theta)
    C = big.filters(moved)
    torch.testing.assert_close(C[:K], C0, rtol=0, atol=1e-12)
    gap = (C[K:] - C[:K]).flatten(1).norm(dim=1) / C0.flatten(1).norm(dim=1)
    torch.testing.assert_close(gap, torch.full_like(gap, 0.1), rtol=1e-9, atol=0)
    torch.testing.assert_close(big.slopes(moved), torch.cat([source.slopes(theta)] * 2) / 2,
                               rtol=1e-9, atol=1e-12)
    for bad, match in ((dict(split=-1.0), "split must be"), (dict(split=0.1, wake=0.05),
                                                             "without wake")):
        with pytest.raises(ValueError, match=match):
            embed(big, source, theta, **bad)
    with pytest.raises(ValueError, match="twice as many"):
        embed(source, source, theta, split=0.1)


def test_the_numbers_the_docs_quote_for_the_floor_bounds():
    """On the committed models: the 48x7x7 bank's Lambda is 30.2 (l1) against 20.4 for the
    smoothed symbol bound, whose sup on a 4096^2 grid is 20.1 (docs/problems.md); on
    wcrr_rho095_sigma25 the certified mu is 0.59 and the symbol's sup 0.65 Lambda
    (WeaklyConvexRidge.strong_convexity's docstring)."""
    from pathlib import Path

    runs = Path(__file__).resolve().parents[1] / "results/denoisers"
    big = bilevel.load(runs / "wcrr48x7_rho095_sigma25")
    C = big.problem.filters(big.theta).flatten(1)
    A = filter_bank.autocorrelations(C, 7).sum(dim=0)
    assert float(big.problem.kernel_bound(C)) == pytest.approx(30.2, abs=0.05)
    assert float(filter_bank.smooth_symbol_bound(A)) == pytest.approx(20.4, abs=0.05)
    assert float(torch.fft.rfft2(A, s=(4096, 4096)).abs().amax()) == pytest.approx(20.1,
                                                                                   abs=0.05)
    model = bilevel.load(runs / "wcrr_rho095_sigma25")
    C = model.problem.filters(model.theta).flatten(1)
    A = filter_bank.autocorrelations(C, 5).sum(dim=0)
    ratio = float(filter_bank.symbol_bound(A.unsqueeze(0))[0]) / float(
        model.problem.kernel_bound(C))
    assert model.problem.strong_convexity(model.theta) == pytest.approx(0.59, abs=0.005)
    assert ratio == pytest.approx(0.65, abs=0.005)
