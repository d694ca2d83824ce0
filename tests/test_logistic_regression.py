"""The logistic-regression problem: closed forms, certificates, scikit-learn, data."""
import gzip
import math
import struct
import warnings

import numpy as np
import pytest
import torch
from bilevel_problems.classification_data import (
    ClassificationSplit,
    load_digits_split,
    load_mnist_split,
    read_idx,
)
from bilevel_problems.logistic_regression import (
    ENTRY,
    L_SOFTMAX_HESSIAN,
    LAYOUTS,
    LogisticRegression,
)

import bilevel
from bilevel import BilevelProblem, hypergradient
from bilevel.testing import check_problem

SMALL = {"n_train": 120, "n_val": 100, "n_test": 100}



_problems = {}


def small(layout="weight", fit_bias=False, **kw):
    key = (layout, fit_bias, tuple(sorted(kw.items())))
    if key not in _problems:
        _problems[key] = LogisticRegression(layout=layout, fit_bias=fit_bias, **{**SMALL, **kw})
    return _problems[key]


def random_point(problem, seed=0, spread=0.5):
    gen = torch.Generator().manual_seed(seed)
    theta = problem.initial_theta() + spread * torch.randn(problem.n_hyper, generator=gen,
                                                           dtype=torch.float64)
    x = 0.3 * torch.randn(problem.x_shape, generator=gen, dtype=torch.float64)
    v = torch.randn(problem.x_shape, generator=gen, dtype=torch.float64)
    return theta, x, v


# ------------------------------------------------------------ the contract
def test_check_problem_passes_on_the_registry_entry():
    report = check_problem(ENTRY["factory"](**ENTRY["test_params"]))
    assert report, str(report)


@pytest.mark.parametrize("layout,fit_bias", [("weight", False), ("scalar", True)])
def test_check_problem_passes(layout, fit_bias):
    report = check_problem(small(layout, fit_bias))
    assert report, str(report)


def test_registry_builds_it():
    problem = bilevel.make_problem("logistic_regression[layout='scalar',n_train=60,n_val=60,"
                                   "n_test=60]")
    assert isinstance(problem, LogisticRegression) and problem.n_hyper == 1


@pytest.mark.parametrize("fit_bias", [False, True])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_closed_forms_equal_autograd(layout, fit_bias):
    problem = small(layout, fit_bias)
    theta, x, v = random_point(problem)
    pairs = [(problem.lower_grad(x, theta), BilevelProblem.lower_grad(problem, x, theta)),
             (problem.lower_hvp(x, theta, v), BilevelProblem.lower_hvp(problem, x, theta, v)),
             (problem.mixed_vjp(x, theta, v), BilevelProblem.mixed_vjp(problem, x, theta, v))]
    pairs += list(zip(problem.upper_grads(x, theta),
                      BilevelProblem.upper_grads(problem, x, theta), strict=True))
    for closed, auto in pairs:
        assert closed.shape == auto.shape
        torch.testing.assert_close(closed, auto, rtol=0, atol=1e-10)


def test_shapes_and_layouts():
    for layout, size in (("weight", 640), ("feature", 64), ("scalar", 1)):
        problem = small(layout)
        assert problem.n_hyper == size and problem.x_shape == (64, 10)
    assert small("feature", True).x_shape == (65, 10)
    with pytest.raises(ValueError, match="layout"):
        LogisticRegression(layout="row", **SMALL)
    with pytest.raises(ValueError, match="bias_ridge"):
        LogisticRegression(fit_bias=True, bias_ridge=0.0, **SMALL)
    with pytest.raises(ValueError, match="theta0"):
        LogisticRegression(layout="feature", theta0=[1.0, 2.0], **SMALL)


# ------------------------------------------------------------ scikit-learn
@pytest.mark.parametrize("log_ridge", [-3.0, 0.0])
def test_scalar_solution_equals_sklearn(log_ridge):
    from sklearn.linear_model import LogisticRegression as SkLogReg

    problem = small("scalar")
    theta = torch.tensor([log_ridge], dtype=torch.float64)
    sol = problem.solve_lower(theta, 1e-10, max_iter=100_000)
    assert sol.converged
    # sklearn minimises 1/2 ||W||^2 + C sum_n CE_n = (n e^theta / ... ) h / e^theta.
    C = problem.sklearn_C(theta)
    assert C == pytest.approx(1 / (len(problem.data.y_train) * math.exp(log_ridge)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lbfgs may warn that it hit machine precision
        model = SkLogReg(C=C, fit_intercept=False, tol=1e-12, max_iter=100_000)
        model.fit(problem.data.X_train, problem.data.y_train)
    np.testing.assert_allclose(model.coef_.T, sol.x.numpy(), rtol=0, atol=1e-6)
    # ... and the reported metrics are sklearn's on that model.
    from sklearn.metrics import log_loss

    metrics = problem.metrics(sol.x)
    for part in ("val", "test"):
        X, y = getattr(problem.data, f"X_{part}"), getattr(problem.data, f"y_{part}")
        assert metrics[f"{part}_loss"] == pytest.approx(
            log_loss(y, model.predict_proba(X), labels=np.arange(10)), abs=1e-6)
        assert metrics[f"{part}_accuracy"] == pytest.approx(model.score(X, y))


# ------------------------------------------------------------ certificates
@pytest.mark.parametrize("layout", LAYOUTS)
def test_lower_certificate_bounds_true_error(layout):
    problem = small(layout)
    theta = random_point(problem, seed=1)[0]
    ref = problem.solve_lower(theta, 1e-11, max_iter=100_000)
    for tol in (1e-1, 1e-2, 1e-4):
        sol = problem.solve_lower(theta, tol)
        assert sol.converged
        true = float(torch.linalg.vector_norm(sol.x - ref.x))
        assert sol.error_bound + ref.error_bound >= true


@pytest.mark.parametrize("fit_bias", [False, True])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_hypergradient_bound_bounds_true_error(layout, fit_bias):
    problem = small(layout, fit_bias)
    theta = random_point(problem, seed=2, spread=0.3)[0]
    tight = hypergradient(problem, theta, 1e-10, 1e-10, lower_max_iter=100_000,
                          cg_max_iter=100_000)
    for acc in (1e-2, 1e-3):
        loose = hypergradient(problem, theta, acc, acc)
        assert loose.certified
        true = float(torch.linalg.vector_norm(loose.grad - tight.grad)) - tight.error_bound
        assert 0 < true <= loose.error_bound, (acc, true, loose.error_bound)


def test_B_norm_is_the_operator_norm_of_the_mixed_derivative():
    for layout in LAYOUTS:
        problem = small(layout, True)
        theta, x, _ = random_point(problem, seed=3)
        # Dense B (x-size by theta-size) from B^T applied to the unit vectors of x.
        eye = torch.eye(x.numel(), dtype=torch.float64)
        B_T = torch.stack([problem.mixed_vjp(x, theta, e.reshape(x.shape)) for e in eye], 1)
        exact = float(torch.linalg.matrix_norm(B_T, ord=2))
        assert problem.bound_constants(theta, x).B_norm == pytest.approx(exact, rel=1e-10)


def test_lipschitz_constants_hold_along_random_pairs():
    problem = small("weight", True)
    theta, x, v = random_point(problem, seed=4)
    const = problem.bound_constants(theta, x)
    mu = problem.strong_convexity(theta)
    gen = torch.Generator().manual_seed(5)
    for scale in (1e-2, 1.0, 10.0):
        d = scale * torch.randn(x.shape, generator=gen, dtype=torch.float64)
        y = x + d
        dist = float(torch.linalg.vector_norm(d))
        w = v / torch.linalg.vector_norm(v)
        hess_change = float(torch.linalg.vector_norm(problem.lower_hvp(y, theta, w)
                                                     - problem.lower_hvp(x, theta, w)))
        assert hess_change <= const.L_Ainv * mu ** 2 * dist * (1 + 1e-12)
        B_change = float(torch.linalg.vector_norm(problem.mixed_vjp(y, theta, w)
                                                  - problem.mixed_vjp(x, theta, w)))
        assert B_change <= const.L_B * dist * (1 + 1e-12)
        g_change = float(torch.linalg.vector_norm(problem.upper_grads(y, theta)[1]
                                                  - problem.upper_grads(x, theta)[1]))
        assert g_change <= const.L_g * dist * (1 + 1e-12)


def test_softmax_hessian_lipschitz_constant():
    # sqrt(6)/9 bounds the derivative of S(z) = diag(p) - p p^T, and is nearly attained
    # by two classes with p = (3 +- sqrt 3)/6 and u = (1, -1)/sqrt 2.
    def S(z):
        p = torch.softmax(z, 0)
        return torch.diag(p) - torch.outer(p, p)

    gen = torch.Generator().manual_seed(6)
    for C in (2, 3, 10):
        for _ in range(200):
            z = 3 * torch.randn(C, generator=gen, dtype=torch.float64)
            u = torch.randn(C, generator=gen, dtype=torch.float64)
            u *= 1e-5 / torch.linalg.vector_norm(u)
            change = float(torch.linalg.matrix_norm(S(z + u) - S(z), ord=2))
            assert change <= L_SOFTMAX_HESSIAN * 1e-5 * (1 + 1e-4)
    p1 = (3 - math.sqrt(3)) / 6
    z = torch.tensor([math.log(p1), math.log(1 - p1)], dtype=torch.float64)
    u = torch.tensor([1.0, -1.0], dtype=torch.float64) / math.sqrt(2) * 1e-6
    sharp = float(torch.linalg.matrix_norm(S(z + u) - S(z), ord=2)) / 1e-6
    assert sharp == pytest.approx(L_SOFTMAX_HESSIAN, rel=1e-4)


def test_mu_and_L_bracket_the_curvature():
    problem = small("weight", True)
    theta, x, _ = random_point(problem, seed=7, spread=1.0)
    mu, L = problem.strong_convexity(theta), problem.smoothness(theta)
    assert mu == pytest.approx(min(float(torch.exp(theta).min()), problem.bias_ridge))
    gen = torch.Generator().manual_seed(8)
    for _ in range(5):
        d = torch.randn(x.shape, generator=gen, dtype=torch.float64)
        d /= torch.linalg.vector_norm(d)
        curv = float(torch.sum(d * problem.lower_hvp(x, theta, d)))
        assert mu * (1 - 1e-12) <= curv <= L * (1 + 1e-12)


# ------------------------------------------------------------ reporting, outer solve
def test_evaluate_reports_all_splits():
    problem = small("feature")
    out = problem.evaluate(problem.initial_theta(), tol=1e-6)
    assert out["error_bound"] <= 1e-6
    for part in ("train", "val", "test"):
        assert 0 < out[f"{part}_loss"] < math.log(10)
        assert 0.5 < out[f"{part}_accuracy"] <= 1
    sol = problem.solve_lower(problem.initial_theta(), 1e-6)
    assert out["val_loss"] == pytest.approx(float(problem.upper_objective(sol.x, None)),
                                            abs=1e-5)


def test_maid_decreases_validation_loss():
    problem = small("feature")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bilevel.ConvergenceWarning)
        result = bilevel.solve(problem, "maid", max_iter=25, alpha0=1.0)
    values = [r["upper_value"] for r in result.history if r["accepted"]]
    assert values and values[-1] < result.history[0]["upper_value"]
    before = problem.evaluate(problem.initial_theta())["val_loss"]
    assert problem.evaluate(result.theta)["val_loss"] < before


# ------------------------------------------------------------ data
def test_digits_split_is_stratified_seeded_and_standardised_on_train():
    a = load_digits_split(n_train=300, n_val=200, n_test=100, seed=3)
    b = load_digits_split(n_train=300, n_val=200, n_test=100, seed=3)
    c = load_digits_split(n_train=300, n_val=200, n_test=100, seed=4)
    assert (len(a.y_train), len(a.y_val), len(a.y_test)) == (300, 200, 100)
    np.testing.assert_array_equal(a.X_train, b.X_train)
    assert not np.array_equal(a.X_train, c.X_train)
    assert np.bincount(a.y_train, minlength=10).min() >= 28  # stratified: ~30 per class
    np.testing.assert_allclose(a.X_train.mean(0), 0, atol=1e-12)
    std = a.X_train.std(0)
    assert np.all((np.abs(std - 1) < 1e-12) | (std == 0))  # constant pixels keep scale 1
    assert np.abs(a.X_val.mean(0)).max() > 1e-3  # validation statistics were not used
    full = load_digits_split(n_train=600, n_val=600)
    assert len(full.y_test) == 1797 - 1200
    with pytest.raises(ValueError, match="cannot split"):
        load_digits_split(n_train=1000, n_val=1000)


def _write_idx(path, array, code=0x08):
    dtype = {0x08: ">u1", 0x0D: ">f4"}[code]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    data = header + np.asarray(array, dtype=dtype).tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(data)


def test_read_idx_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 4, 3), dtype=np.uint8)
    _write_idx(tmp_path / "a-idx3-ubyte", images)
    _write_idx(tmp_path / "a-idx3-ubyte.gz", images)
    floats = rng.standard_normal((2, 3)).astype(np.float32)
    _write_idx(tmp_path / "f-idx2", floats, code=0x0D)
    np.testing.assert_array_equal(read_idx(tmp_path / "a-idx3-ubyte"), images)
    np.testing.assert_array_equal(read_idx(tmp_path / "a-idx3-ubyte.gz"), images)
    np.testing.assert_array_equal(read_idx(tmp_path / "f-idx2"), floats)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x01\x05")
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">i", 9) + b"\x00")
    with pytest.raises(ValueError, match="bytes"):
        read_idx(tmp_path / "short")


def _fake_mnist(folder, n_train=60, n_test=30, gz=False):
    rng = np.random.default_rng(1)
    suffix = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 50, size=(n, 28, 28)).astype(np.uint8)
        for k in range(n):  # a bright block whose place depends on the class
            r, c = divmod(int(labels[k]), 5)
            images[k, 4 + 10 * r:12 + 10 * r, 2 + 5 * c:6 + 5 * c] = 250
        _write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images)
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels.astype(np.uint8))


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_reader_on_synthetic_idx_files(tmp_path, gz):
    _fake_mnist(tmp_path, gz=gz)
    split = load_mnist_split(tmp_path, n_train=20, n_val=20, n_test=20, seed=0)
    assert split.X_train.shape == (20, 144) and split.X_test.shape == (20, 144)
    assert np.bincount(split.y_train, minlength=10).tolist() == [2] * 10
    full = load_mnist_split(tmp_path, n_train=30, n_val=30, n_test=30, size=None)
    assert full.X_val.shape == (30, 784) and sorted(full.y_test.tolist()) == sorted(
        (np.arange(30) % 10).tolist())
    problem = LogisticRegression(layout="feature", mnist_path=str(tmp_path), n_train=20,
                                 n_val=20, n_test=20)
    assert problem.n_hyper == 144 and problem.x_shape == (144, 10)
    with pytest.raises(FileNotFoundError, match="not downloaded"):
        load_mnist_split(tmp_path / "missing")


def test_custom_data_is_used_as_given():
    rng = np.random.default_rng(2)

    def part(n):
        return rng.standard_normal((n, 5)), np.arange(n) % 3

    data = ClassificationSplit(*part(30), *part(20), *part(10), n_classes=3, source="toy")
    problem = LogisticRegression(layout="feature", data=data)
    assert problem.n_hyper == 5 and problem.x_shape == (5, 3)
    torch.testing.assert_close(problem._A["val"], torch.as_tensor(data.X_val))
    with pytest.raises(ValueError, match="labels outside"):
        ClassificationSplit(*part(30), *part(20), rng.standard_normal((4, 5)),
                            np.array([0, 1, 2, 3]), n_classes=3)
