"""Lipschitz estimates and bounds, Lipschitz-regularised regression, and its bilevel problem."""
import copy
import math
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
from bilevel_problems.lipschitz_regression import ENTRY, LipschitzRegression
from torch import nn

import bilevel
from bilevel.nn import lipschitz as lip
from bilevel.nn.lipschitz_training import (
    batch_lipschitz,
    fit_lipschitz_1d,
    mlp,
    train_lipschitz_regression,
)
from bilevel.problem import BilevelProblem
from bilevel.testing import check_problem

# Rounding in u(a) - u(b) at the smallest pair separation: the lower bound is a
# float64 number, so "upper >= lower" is checked to this relative slack.
ROUND = 1e-9



def brute_force(X, values):
    n = X.shape[0]
    Xf, Vf = X.reshape(n, -1), values.reshape(n, -1)
    exact = "donot_use_mm_for_euclid_dist"  # the matmul shortcut loses digits
    d = torch.cdist(Xf, Xf, compute_mode=exact)
    r = torch.cdist(Vf, Vf, compute_mode=exact) / d.fill_diagonal_(math.inf)
    return float(r.max())


# ------------------------------------------------------------------ (a), (b): data
def test_empirical_is_exact_over_all_pairs_in_1d():
    gen = torch.Generator().manual_seed(1)
    X = torch.rand(300, 1, generator=gen, dtype=torch.float64)
    values = torch.randn(300, 2, generator=gen, dtype=torch.float64)  # any function
    assert lip.empirical_lipschitz(values, X) == pytest.approx(brute_force(X, values),
                                                                rel=1e-12)


def test_empirical_in_higher_dimension():
    gen = torch.Generator().manual_seed(2)
    X = torch.randn(60, 3, generator=gen, dtype=torch.float64)
    values = torch.randn(60, generator=gen, dtype=torch.float64)
    exact = brute_force(X, values)
    assert lip.empirical_lipschitz(values, X, k=4, num_pairs=100) <= exact
    assert lip.empirical_lipschitz(values, X, k=59, num_pairs=0) == pytest.approx(exact, 1e-12)


def test_input_gradient_norms_of_linear_maps():
    torch.manual_seed(0)
    X = torch.randn(10, 4, dtype=torch.float64)
    scalar, vector = nn.Linear(4, 1).double(), nn.Linear(4, 3).double()
    norms = lip.input_gradient_norms(scalar, X)
    assert torch.allclose(norms, scalar.weight.norm().expand(10), rtol=1e-12)
    sigma = float(torch.linalg.matrix_norm(vector.weight.detach(), ord=2))
    assert lip.gradient_lipschitz(vector, X) == pytest.approx(sigma, rel=1e-12)
    assert lip.gradient_lipschitz(vector, X, "mean") == pytest.approx(sigma, rel=1e-12)


def test_lower_bound_of_a_smooth_function():
    X = torch.linspace(-3, 3, 50, dtype=torch.float64)[:, None]
    low = lip.lipschitz_lower_bound(torch.sin, X, steps=100)
    assert 0.9999 <= low.value <= 1 + ROUND


# ------------------------------------------------------------------- (c): bounds
@pytest.mark.parametrize("shape", [(7, 5), (3, 12), (1, 6), (20, 20)])
def test_linear_layer_bound_is_its_largest_singular_value(shape):
    torch.manual_seed(0)
    layer = nn.Linear(shape[1], shape[0])
    sigma = float(scipy.linalg.svdvals(layer.weight.detach().double().numpy())[0])
    assert lip.network_lipschitz_bound(layer).upper == pytest.approx(sigma, abs=1e-6)
    norm = lip.operator_norm(layer)
    assert norm.upper >= sigma >= norm.estimate and norm.estimate == pytest.approx(sigma, 1e-6)
    assert norm.method == "svd" and norm.converged


def _dense(conv, shape):
    n = math.prod(shape)
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *shape)
    layer = copy.deepcopy(conv).double()
    with torch.no_grad():
        return layer._conv_forward(basis, layer.weight, None).reshape(n, -1).T


@pytest.mark.parametrize("settings", [
    dict(padding=1), dict(padding=0), dict(padding=1, stride=2), dict(padding=2, dilation=2),
    dict(padding="same"), dict(padding=1, groups=2), dict(padding=1, padding_mode="reflect"),
    dict(padding=1, padding_mode="circular"),
])
def test_conv_bound_against_the_dense_matrix(settings):
    torch.manual_seed(3)
    conv, shape = nn.Conv2d(2, 4, 3, **settings), (2, 7, 6)
    exact = float(torch.linalg.matrix_norm(_dense(conv, shape), ord=2))
    norm = lip.operator_norm(conv, shape)
    assert norm.upper >= exact >= norm.estimate * (1 - 1e-12)
    assert norm.estimate == pytest.approx(exact, rel=1e-3)
    assert norm.method == "fft"
    if settings.get("padding_mode", "zeros") == "zeros":
        assert norm.upper <= 1.6 * exact  # the circulant embedding is not loose here
    schur = lip._conv_norm(conv, shape, max_iter=10, tol=1e-6, seed=0, fft_limit=0)
    assert schur.method == "schur" and schur.upper >= exact


def _random_nets():
    torch.manual_seed(0)
    for act in (nn.ReLU(), nn.Tanh(), nn.LeakyReLU(0.1), nn.Sigmoid(), nn.ELU(1.5)):
        yield f"mlp-{type(act).__name__}", nn.Sequential(
            nn.Linear(3, 16), act, nn.Linear(16, 16), copy.deepcopy(act), nn.Linear(16, 2)
        ).double(), torch.randn(80, 3, dtype=torch.float64)
    yield "conv", nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2),
        nn.Flatten(), nn.Linear(36, 8), nn.Tanh(), nn.Linear(8, 1),
    ).double(), torch.randn(40, 1, 8, 8, dtype=torch.float64)


@pytest.mark.parametrize("name,net,X", list(_random_nets()), ids=lambda v: v
                         if isinstance(v, str) else "")
def test_certified_bound_dominates_lower_and_empirical(name, net, X):
    report = lip.lipschitz_report(net, X, steps=100, num_starts=16)
    assert report.upper * (1 + ROUND) >= report.lower
    assert report.upper >= report.empirical and report.upper >= report.gradient_max
    assert report.lower >= report.empirical * (1 - ROUND)  # it starts from the best pair
    assert report.gap == pytest.approx(report.upper - report.lower)
    assert report.ratio >= 1 - ROUND


def test_one_hidden_unit_relu_bound_is_exact():
    torch.manual_seed(5)
    net = nn.Sequential(nn.Linear(4, 1), nn.ReLU(), nn.Linear(1, 1)).double()
    X = torch.randn(50, 4, dtype=torch.float64)
    analytic = float(net[2].weight.detach().abs() * net[0].weight.detach().norm())
    upper = lip.network_lipschitz_bound(net).upper
    lower = lip.lipschitz_lower_bound(net, X, steps=50).value
    assert upper == pytest.approx(analytic, rel=1e-12)
    assert lower == pytest.approx(analytic, rel=1e-6) and lower <= upper * (1 + ROUND)


def test_activation_constants_duck_typing_and_errors():
    class Scaled(nn.Module):
        def forward(self, x):
            return x * torch.tensor([0.5, 2.0], dtype=x.dtype)

        def lipschitz(self):
            return torch.tensor([0.5, 2.0])

    eye = nn.Linear(2, 2, bias=False).double()
    with torch.no_grad():
        eye.weight.copy_(torch.eye(2))
    bound = lip.network_lipschitz_bound(nn.Sequential(eye, Scaled(), nn.Sigmoid(), eye))
    assert bound.upper == pytest.approx(2.0 * 0.25, rel=1e-12)
    assert [layer.name for layer in bound.layers] == ["Linear", "Scaled", "Sigmoid", "Linear"]
    assert lip.activation_lipschitz(nn.LeakyReLU(-3.0)) == 3.0
    with pytest.raises(TypeError, match="Softmax"):
        lip.network_lipschitz_bound(nn.Sequential(nn.Linear(2, 2), nn.Softmax(dim=1)))
    drop = nn.Dropout(0.5)
    with pytest.raises(TypeError, match="eval"):
        lip.activation_lipschitz(drop)
    assert lip.activation_lipschitz(drop.eval()) == 1.0
    with pytest.raises(ValueError, match="input_shape"):
        lip.network_lipschitz_bound(nn.Sequential(nn.Conv2d(1, 1, 3)))


def test_linear_spline_activations_if_available():
    splines = pytest.importorskip("bilevel.nn.splines")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 8), splines.LinearSpline(8, 11, 2.0, "leaky_relu"),
                        nn.Linear(8, 1)).double()
    X = torch.randn(40, 2, dtype=torch.float64)
    report = lip.lipschitz_report(net, X, steps=50, num_starts=8)
    assert report.upper * (1 + ROUND) >= report.lower >= report.empirical * (1 - ROUND)
    # the trainer builds spline MLPs too
    model = mlp(2, (8,), activation="spline", num_knots=11, x_range=2.0, seed=0)
    y = torch.sin(X[:, :1])
    result = train_lipschitz_regression(model, X, y, 0.1, epochs=20, lr=1e-2)
    assert result.history[-1]["objective"] < result.history[0]["objective"]


# ---------------------------------------------------------------- 2: the trainer
def _noisy_1d(n, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=gen, dtype=torch.float64) * 2 - 1
    return x, torch.sign(x) + 0.3 * torch.randn(n, 1, generator=gen, dtype=torch.float64)


def test_trainer_penalty_is_seeded_and_stops_early():
    x, y = _noisy_1d(64, 0)
    xv, yv = _noisy_1d(64, 1)
    runs = [train_lipschitz_regression(mlp(1, (16,), seed=0), x, y, lam, X_val=xv, y_val=yv,
                                       epochs=150, batch_size=32, lr=1e-2, patience=1000)
            for lam in (0.0, 0.0, 0.5)]
    assert runs[0].history == runs[1].history  # same seeds, same numbers
    free, reg = (lip.empirical_lipschitz(r.model, x) for r in (runs[0], runs[2]))
    assert reg < 0.8 * free
    short = train_lipschitz_regression(mlp(1, (16,), seed=0), x, y, 0.0, X_val=xv, y_val=yv,
                                       epochs=400, lr=3e-2, patience=5)
    assert short.stopped_early and short.best_epoch == len(short.history) - 5
    with torch.no_grad():
        assert float(((short.model(xv) - yv) ** 2).mean()) == pytest.approx(
            min(r["val_loss"] for r in short.history))


def test_batch_estimates():
    net = mlp(2, (8,), seed=1)
    X = torch.randn(20, 2, dtype=torch.float64)
    soft, hard = batch_lipschitz(net, X, estimate="both", temperature=0.01)
    pairs = lip.empirical_lipschitz(net, X, k=19, num_pairs=0)
    assert hard == pytest.approx(max(pairs, lip.gradient_lipschitz(net, X)), rel=1e-12)
    assert hard <= float(soft.detach()) <= hard * (1 + 0.01 * math.log(20 * 19 / 2 + 20)) + 1e-12
    soft.backward()  # differentiable in the parameters
    assert net[0].weight.grad is not None


def test_exact_1d_fit_approaches_the_limit():
    pytest.importorskip("cvxpy")
    lam, a = 0.05, math.sqrt(3 * 0.05)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, 400)
    y = np.sign(x)
    fit = fit_lipschitz_1d(x, y, lam)
    limit = np.clip(x / a, -1, 1)  # a feasible competitor
    competitor = np.mean((limit - y) ** 2) + lam / a
    assert fit.objective <= competitor + 1e-7
    assert fit.lipschitz == pytest.approx(1 / a, rel=0.05)
    grid = np.linspace(-1, 1, 2001)
    assert np.sqrt(np.mean((fit(grid) - np.clip(grid / a, -1, 1)) ** 2)) < 0.05


# ------------------------------------------------------- 3: the bilevel problem
@pytest.fixture(scope="module")
def small():
    return bilevel.make_problem("lipschitz_regression", **ENTRY["test_params"])


def test_problem_passes_check_problem(small):
    report = check_problem(small)
    assert report, str(report)
    assert small.bound_constants(small.initial_theta(), small.initial_x(None)).certified


def test_closed_forms_match_autograd(small):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(small.num_knots, generator=gen, dtype=torch.float64)
    v = torch.randn(small.num_knots, generator=gen, dtype=torch.float64)
    theta = torch.tensor([-1.0], dtype=torch.float64)
    pairs = [(small.lower_grad(x, theta), BilevelProblem.lower_grad(small, x, theta)),
             (small.lower_hvp(x, theta, v), BilevelProblem.lower_hvp(small, x, theta, v)),
             (small.hessian(x, theta) @ v, small.lower_hvp(x, theta, v)),
             (small.mixed_vjp(x, theta, v), BilevelProblem.mixed_vjp(small, x, theta, v))]
    pairs += list(zip(small.upper_grads(x, theta), BilevelProblem.upper_grads(small, x, theta),
                      strict=True))
    for closed, auto in pairs:
        assert torch.allclose(closed, auto, rtol=1e-10, atol=1e-12)


def test_certified_constants_hold_numerically(small):
    gen = torch.Generator().manual_seed(1)
    theta = torch.tensor([0.5], dtype=torch.float64)
    c = small.bound_constants(theta, small.initial_x(theta))
    L, mu = small.smoothness(theta), small.strong_convexity(theta)
    for _ in range(20):
        x = 3 * torch.randn(small.num_knots, generator=gen, dtype=torch.float64)
        d = 1e-4 * torch.randn(small.num_knots, generator=gen, dtype=torch.float64)
        eig = torch.linalg.eigvalsh(small.hessian(x, theta))
        assert mu * (1 - 1e-12) <= float(eig[0]) and float(eig[-1]) <= L
        dH = small.hessian(x + d, theta) - small.hessian(x, theta)
        mu_ratio = float(torch.linalg.matrix_norm(dH, ord=2)) / float(d.norm())
        assert mu_ratio <= c.L_Ainv * mu ** 2  # = L_A
        dB = small.mixed_vjp(x + d, theta, d / d.norm()) - small.mixed_vjp(x, theta, d / d.norm())
        assert abs(float(dB)) / float(d.norm()) <= c.L_B
    assert small.surrogate(x) >= small.lipschitz(x)


def test_maid_learns_lambda_within_one_percent_of_the_grid(small):
    grid = torch.linspace(-8, 2, 101, dtype=torch.float64)
    values, x = [], None
    for t in grid:
        F, x = small.value(t.reshape(1), x0=x)
        values.append(F)
    best = min(values)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bilevel.ConvergenceWarning)
        result = bilevel.solve(small, "maid", max_iter=300, tol=1e-6)
    F, _ = small.value(result.theta)
    assert F <= 1.01 * best, (result.status, result.message)
    assert values[0] > 1.05 * best and values[-1] > 1.05 * best  # an interior optimum


def test_problem_rejects_bad_settings():
    with pytest.raises(ValueError, match="num_knots"):
        LipschitzRegression(num_knots=2)
    with pytest.raises(ValueError, match="target"):
        LipschitzRegression(target="cosine")
