"""Bad input, as a careless or hostile user gives it (issue 15): spec strings, values, data.

Every case asserts the type of the error and that its one-line message names
the parameter at fault (and, where there is one, the accepted range), with no
traceback from inside torch, numpy or the solver.
"""
import numpy as np
import pytest
import torch
from bilevel_problems.classification_data import ClassificationSplit
from bilevel_problems.logistic_regression import LogisticRegression
from bilevel_problems.tv_denoising import TVDenoising, denoise

import bilevel
from bilevel import registry

# --- spec strings --------------------------------------------------------------
# (spec, error type, regex the message must match)
BAD_SPECS = [
    ("quadratic[n=abc]", ValueError, r"quadratic: n must be an integer >= 1, got 'abc'"),
    ("quadratic[m=0]", ValueError, r"quadratic: m must be an integer >= 1, got 0"),
    ("quadratic[m=-1]", ValueError, r"quadratic: m must be an integer >= 1, got -1"),
    ("quadratic[m=2.5]", ValueError, r"quadratic: m must be an integer"),
    ("quadratic[n=5,m=10]", ValueError, r"quadratic: n must be >= m"),
    ("quadratic[noise=nan]", ValueError, r"quadratic: noise must be a finite number >= 0"),
    ("quadratic[noise=-1]", ValueError, r"quadratic: noise must be a finite number >= 0"),
    ("quadratic[distribution=cauchy]", ValueError, r"quadratic: distribution must be one of"),
    ("quadratic[n=20,theta0=(-3,-3)]", ValueError,
     r"quadratic: theta0 must be a number or 10 numbers, got 2 entries"),
    ("quadratic[theta0=abc]", ValueError, r"quadratic: theta0 must be a number"),
    ("quadratic[foo=1]", ValueError, r"quadratic: unknown parameter 'foo'; accepted: n, m"),
    ("quadratic[dtype=float8]", ValueError, r"quadratic: dtype must be one of"),
    ("quadratic[device=cpux]", ValueError, r"quadratic: device must be a torch device"),
    ("quadratic[n=1,n=2]", ValueError, r"parameter 'n' given twice"),
    ("quadratic[n=]", ValueError, r"bad parameter 'n'.*no value"),
    ("quadratic[n=(1,2]", ValueError, r"unclosed '\('"),
    ("quadratic[n=1)]", ValueError, r"unbalanced '\)'"),
    ("quadratic[theta0=(1,,2)]", ValueError, r"bad value '\(1,,2\)' for parameter 'theta0'"),
    ("quadratic[=3]", ValueError, r"bad parameter '=3'.*expected k=v"),
    ("quadratic[n=3", ValueError, r"expected 'name\[k=v,...\]'"),
    ("[n=3]", ValueError, r"no problem name"),
    ("nosuchproblem", ValueError, r"unknown problem 'nosuchproblem'; known problems:.*quadratic"),
    ("tv_denoising[size=0]", ValueError, r"tv_denoising: size must be an integer >= 1, got 0"),
    ("tv_denoising[size=(8,0)]", ValueError, r"tv_denoising: size must be an integer >= 1"),
    ("tv_denoising[size=(8,8,8)]", ValueError, r"tv_denoising: size must be an integer or a pair"),
    ("tv_denoising[n_images=0]", ValueError, r"tv_denoising: n_images must be an integer >= 1"),
    ("tv_denoising[sigma=-0.1]", ValueError, r"tv_denoising: sigma must be a finite number >= 0"),
    ("tv_denoising[variant=iso]", ValueError, r"tv_denoising: variant must be one of"),
    ("tv_denoising[theta0=(1,2,3)]", ValueError,
     r"tv_denoising: theta0 must be a number or 2 numbers \(log weight, log smoothing\)"),
    ("logistic_regression[n_train=0]", ValueError,
     r"logistic_regression: n_train must be an integer >= 1, got 0"),
    ("logistic_regression[n_val=abc]", ValueError,
     r"logistic_regression: n_val must be an integer"),
    ("logistic_regression[n_train=2000]", ValueError,
     r"logistic_regression: cannot split 1797 samples into n_train=2000"),
    ("logistic_regression[layout=per_weight]", ValueError,
     r"logistic_regression: layout must be one of"),
    ("logistic_regression[fit_bias=True,bias_ridge=0]", ValueError,
     r"logistic_regression: bias_ridge \(with fit_bias\) must be a finite number > 0"),
    ("logistic_regression[layout=feature,theta0=(1,2)]", ValueError,
     r"logistic_regression: theta0 must be a number or 64 numbers \(layout 'feature'\)"),
]


@pytest.mark.parametrize("spec,error,message", BAD_SPECS, ids=[s for s, _, _ in BAD_SPECS])
def test_d13_bad_spec_is_named(spec, error, message):
    with pytest.raises(error, match=message) as info:
        bilevel.make_problem(spec)
    assert "\n" not in str(info.value)


# --- D12: the parser splits on top-level commas only ---------------------------
@pytest.mark.parametrize("spec,expected", [
    ("quadratic[n=20,theta0=(-3,-3)]", {"n": 20, "theta0": (-3, -3)}),
    ("tv_denoising[size=(8,12), n_images=1]", {"size": (8, 12), "n_images": 1}),
    ("x[a=[1,2],b={'k':(1,2)},c='p,q']", {"a": [1, 2], "b": {"k": (1, 2)}, "c": "p,q"}),
    ("x[source=/data/bsd/train,variant=anisotropic]",
     {"source": "/data/bsd/train", "variant": "anisotropic"}),
    ("x[a=1e-3,b=-inf,c=True,d=None]", {"a": 1e-3, "b": -float("inf"), "c": True, "d": None}),
    ("x", {}),
])
def test_d12_spec_parser_accepts_tuples(spec, expected):
    assert registry.parse_spec(spec)[1] == expected


def test_d12_tuples_reach_the_problem():
    problem = bilevel.make_problem("quadratic[n=20,m=2,theta0=(-3,-2)]")
    assert problem.initial_theta().tolist() == [-3.0, -2.0]
    tv = bilevel.make_problem("tv_denoising[n_images=1,size=(8,12),theta0=(-4,-5)]")
    assert tuple(tv.clean.shape) == (1, 8, 12) and tv.initial_theta().tolist() == [-4.0, -5.0]


# --- values through the Python API ---------------------------------------------
def test_d13_wrong_length_theta_is_named():
    problem = bilevel.make_problem("quadratic[n=20,m=3]")
    theta = torch.zeros(2, dtype=torch.float64)
    expected = r"quadratic: theta has shape \(2,\), expected \(3,\)"
    with pytest.raises(ValueError, match=expected):
        bilevel.hypergradient(problem, theta, 1e-3, 1e-3)
    with pytest.raises(ValueError, match=expected):
        bilevel.solve(problem, theta0=theta, max_iter=1)
    with pytest.raises(ValueError, match=expected):
        problem.solve_lower(theta, 1e-3)


def test_d17_builtin_name_is_not_replaced_silently():
    def factory(**params):
        return bilevel.make_problem("quadratic[n=20,m=2]")

    registry._registered.pop("quadratic", None)  # not loaded yet: still built in
    with pytest.raises(ValueError, match=r"problem 'quadratic' is built in; pass replace=True"):
        bilevel.register_problem("quadratic", factory)
    assert registry.get_entry("quadratic").factory is not factory
    original = registry.get_entry("quadratic")
    with pytest.raises(ValueError, match="built in"):
        bilevel.register_problem("quadratic", factory)  # loaded: refused as well
    try:
        assert bilevel.register_problem("quadratic", factory, replace=True).factory is factory
        assert bilevel.register_problem("quadratic", factory, overwrite=True).factory is factory
    finally:
        registry._registered["quadratic"] = original


@pytest.mark.parametrize("name,factory,error,message", [
    ("my problem", lambda: None, ValueError, r"problem names must be identifiers"),
    ("mine", 3, TypeError, r"register_problem\('mine'\): factory must be callable"),
])
def test_d17_bad_registration_is_named(name, factory, error, message):
    with pytest.raises(error, match=message):
        bilevel.register_problem(name, factory)


# --- data ----------------------------------------------------------------------
def _images(n=1, h=8, w=12):
    return torch.rand(n, h, w, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.mark.parametrize("kwargs,message", [
    (dict(images=torch.zeros(0, 8, 8)), r"tv_denoising: images must hold at least 1 image"),
    (dict(images=torch.zeros(2, 3, 4, 5)), r"tv_denoising: images must have shape \(N, H, W\)"),
    (dict(images=torch.full((1, 8, 8), float("nan"))), r"tv_denoising: images contain NaN"),
    (dict(images=_images(), noisy=_images()[0].T), r"tv_denoising: noisy has shape \(1, 12, 8\), "
                                                   r"the clean images \(1, 8, 12\)"),
    (dict(images=_images(), noisy=_images().flatten()), r"tv_denoising: noisy must have shape"),
    (dict(images="abc"), r"tv_denoising: images must be a tensor or array"),
])
def test_d16_bad_images_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TVDenoising(**kwargs)


def test_d16_transposed_noisy_is_refused_not_reshaped():
    clean = _images(h=8, w=12)
    with pytest.raises(ValueError, match=r"noisy has shape .* they must match"):
        TVDenoising(images=clean, noisy=clean.transpose(-1, -2))
    square = _images(h=8, w=8)  # the same shape, transposed content: a user's choice
    assert TVDenoising(images=square, noisy=square.transpose(-1, -2)).noisy.shape == (1, 8, 8)


def _part(n, d=5, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)), np.arange(n) % classes


def _split(n_classes=3, **replace):
    parts = dict(zip(("X_train", "y_train"), _part(30), strict=True))
    parts.update(zip(("X_val", "y_val"), _part(20, seed=1), strict=True))
    parts.update(zip(("X_test", "y_test"), _part(10, seed=2), strict=True))
    parts.update(replace)
    return ClassificationSplit(**parts, n_classes=n_classes)


BAD_DATA = [
    (dict(X_train=np.zeros((0, 5)), y_train=np.zeros(0, dtype=int)), r"X_train has no samples"),
    (dict(X_val=np.zeros((0, 5)), y_val=np.zeros(0, dtype=int)), r"X_val has no samples"),
    (dict(X_train=np.zeros((30, 0)), X_val=np.zeros((20, 0)), X_test=np.zeros((10, 0))),
     r"X_train has no features"),
    (dict(X_val=np.full((20, 5), np.nan)), r"X_val contains NaN or inf"),
    (dict(X_train=np.where(np.eye(30, 5) > 0, np.inf, 0.0)), r"X_train contains NaN or inf"),
    (dict(y_train=np.zeros(30, dtype=int)), r"y_train holds one class only"),
    (dict(y_train=np.arange(30) % 3 + 0.5), r"y_train must hold integer class labels, got "
                                            r"non-integer values"),
    (dict(y_val=np.array(["a"] * 20)), r"y_val must hold integer class labels"),
    (dict(y_test=np.arange(10) % 3 + 1), r"y_test has labels outside 0..2"),
    (dict(X_val=np.zeros((20, 4))), r"X_val must have 5 columns"),
    (dict(y_val=np.zeros(19, dtype=int)), r"y_val has shape \(19,\), X_val has 20 rows"),
    (dict(X_train=np.zeros(30)), r"X_train must be 2-D"),
]


@pytest.mark.parametrize("replace,message", BAD_DATA)
def test_d13_bad_classification_data_is_named(replace, message):
    with pytest.raises(ValueError, match="ClassificationSplit: " + message):
        _split(**replace)


def test_d13_one_class_problem_is_refused():
    with pytest.raises(ValueError, match=r"n_classes must be an integer >= 2"):
        _split(n_classes=1, y_train=np.zeros(30, dtype=int), y_val=np.zeros(20, dtype=int),
               y_test=np.zeros(10, dtype=int))


def test_d16_integral_float_labels_are_converted_not_truncated():
    split = _split(y_train=(np.arange(30) % 3).astype(float))
    assert split.y_train.dtype == np.int64
    problem = LogisticRegression(layout="scalar", data=split)
    assert problem.n_classes == 3


# --- D18: denoise in float32 ---------------------------------------------------
def test_d18_float32_denoise_default_tolerance_is_reachable():
    noisy = _images(h=8, w=8).float()
    for theta in ([-5.0, -5.0], [-2.0, -5.0], [0.0, -8.0]):
        x = denoise(noisy, torch.tensor(theta))  # tol=None: a tolerance float32 reaches
        assert x.shape == noisy.shape and x.dtype == torch.float32


def test_d18_unreachable_tolerance_is_refused_at_once():
    noisy = _images(h=8, w=8).float()
    with pytest.raises(ValueError, match=r"tol=1e-06 is below what torch.float32 can certify.*"
                                         r"4 eps max\(1, \|\|x\|\|\) / mu"):
        denoise(noisy, torch.tensor([-5.0, -5.0]), tol=1e-6)
    with pytest.raises(RuntimeError, match=r"stalled .* rounding floor of torch.float32"):
        denoise(noisy, torch.tensor([-2.0, -5.0]), tol=5e-6)
    with pytest.raises(ValueError, match=r"tv_denoising: tol must be a finite number > 0"):
        denoise(noisy, torch.tensor([-5.0, -5.0]), tol=0)


# --- the other registered problems ---------------------------------------------
OTHER_SPECS = [
    ("fields_of_experts[num_filters=abc]", r"fields_of_experts: num_filters must be an integer"),
    ("fields_of_experts[filter_size=1]", r"fields_of_experts: filter_size must be an integer >= 2"),
    ("fields_of_experts[size=3]", r"fields_of_experts: size must be an integer >= 5"),
    ("ridge_regularizer[num_knots=4]", r"ridge_regularizer: num_knots must be an odd integer"),
    ("ridge_regularizer[x_range=-1]", r"ridge_regularizer: x_range must be a finite number > 0"),
    ("ridge_regularizer[slope_init=(2,0.1)]", r"ridge_regularizer: slope_init must be 2 fractions"),
    ("spline_regression[n_train=0]", r"spline_regression: n_train must be an integer >= 1"),
    ("spline_regression[smoothing=0]", r"spline_regression: smoothing must be a finite number > 0"),
    ("lipschitz_regression[theta0=(1,2)]", r"lipschitz_regression: theta0 must be a finite number"),
    ("lipschitz_regression[x_range=(1,-1)]", r"x_range must be \(low, high\) with low < high"),
    ("lipschitz_regression[flip=2]", r"lipschitz_regression: flip must be a probability"),
]


@pytest.mark.parametrize("spec,message", OTHER_SPECS, ids=[s for s, _ in OTHER_SPECS])
def test_d13_bad_spec_of_other_problems_is_named(spec, message):
    with pytest.raises(ValueError, match=message):
        bilevel.make_problem(spec)


def test_d16_contract_checks_derivatives_on_one_sample_and_the_data_on_all(monkeypatch):
    """A sample-separable problem's derivatives are checked at construction on its first
    sample's view (the same code; thousands of training crops would cost minutes), its
    objectives on all the samples (a NaN in any image is still refused), and the view's x
    must be x[[0]]."""
    seen = []
    grad = TVDenoising.lower_grad

    def recording(self, x, theta):
        seen.append(x.shape[0])
        return grad(self, x, theta)

    monkeypatch.setattr(TVDenoising, "lower_grad", recording)
    TVDenoising(images=_images(n=5))
    assert seen and set(seen) == {1}
    objective = TVDenoising.lower_objective

    def not_finite_on_all_five(self, x, theta):
        value = objective(self, x, theta)
        return value * float("nan") if x.shape[0] == 5 else value

    monkeypatch.setattr(TVDenoising, "lower_objective", not_finite_on_all_five)
    with pytest.raises(ValueError, match="not finite at the initial point"):
        TVDenoising(images=_images(n=5))
    monkeypatch.setattr(TVDenoising, "lower_objective", objective)

    class BadView(TVDenoising):
        def subset(self, indices, total=None):
            view = super().subset(indices, total)
            view.initial_x = lambda theta: torch.zeros(2, 8, 12, dtype=torch.float64)
            return view

    with pytest.raises(ValueError, match=r"subset\(\[0\]\).initial_x\(theta\) has shape "
                                         r"\(2, 8, 12\), not \(1, 8, 12\)"):
        BadView(images=_images(n=3))


def test_d16_an_inherited_subset_that_refuses_leaves_the_check_on_all_the_data(monkeypatch):
    """A subclass with a per-image field its inherited subset does not know is still built
    (the contract checked on all the data); maid_sgd then gets subset's own error."""

    class WithWeights(TVDenoising):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.weights = torch.ones_like(self.clean)  # per image, not in sample_fields

    problem = WithWeights(images=_images(n=3))
    with pytest.raises(TypeError, match="'weights' looks per-image"):
        problem.subset([0])
