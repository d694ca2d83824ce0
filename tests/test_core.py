"""Lower-level solver, conjugate gradients, registry and command line."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import scipy.linalg
import torch
from bilevel_problems.quadratic import Quadratic

import bilevel
from bilevel.testing import check_problem


def spd(n, cond, seed=0):
    g = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(g.standard_normal((n, n)))
    return torch.tensor(Q @ np.diag(np.geomspace(1, cond, n)) @ Q.T)


@pytest.mark.parametrize("tol", [1e-2, 1e-6, 1e-10])
def test_cg_reports_the_true_residual(tol):
    A = spd(50, 1e4)
    b = torch.ones(50, dtype=torch.float64)
    res = bilevel.conjugate_gradient(lambda v: A @ v, b, tol=tol)
    assert res.converged
    true = float((A @ res.q - b).norm())
    assert abs(true - res.residual_norm) <= 1e-12 * float(b.norm())
    assert true <= tol
    exact = torch.tensor(scipy.linalg.solve(A.numpy(), b.numpy()))
    # ||q - q*|| <= ||A^{-1}|| residual, with ||A^{-1}|| = 1 here
    assert float((res.q - exact).norm()) <= tol * (1 + 1e-8)


def test_cg_warm_start_and_budget():
    A = spd(50, 1e3)
    b = torch.ones(50, dtype=torch.float64)
    cold = bilevel.conjugate_gradient(lambda v: A @ v, b, tol=1e-8)
    warm = bilevel.conjugate_gradient(lambda v: A @ v, b, cold.q + 1e-6, tol=1e-8)
    assert warm.iterations < cold.iterations
    short = bilevel.conjugate_gradient(lambda v: A @ v, b, tol=1e-12, max_iter=3)
    assert not short.converged
    assert abs(short.residual_norm - float((A @ short.q - b).norm())) < 1e-12


def test_lower_certificate_is_honest():
    problem = Quadratic()
    theta = problem.initial_theta() + 1.0
    x_star = problem.exact_solution(theta)
    for tol in (1e-1, 1e-4, 1e-8):
        sol = problem.solve_lower(theta, tol)
        assert sol.converged and sol.error_bound <= tol
        assert float((sol.x - x_star).norm()) <= sol.error_bound
    short = problem.solve_lower(theta, 1e-12, max_iter=3)
    assert not short.converged and short.iterations == 3
    assert float((short.x - x_star).norm()) <= short.error_bound
    assert short.error_bound > 1e-12


def test_fista_estimates_L_when_none_is_given():
    class NoL(Quadratic):
        def smoothness(self, theta):
            return None

    problem = NoL(n=100, m=4)
    theta = problem.initial_theta()
    sol = problem.solve_lower(theta, 1e-8)
    assert sol.converged
    assert float((sol.x - problem.exact_solution(theta)).norm()) <= sol.error_bound
    assert sol.evaluations > sol.iterations  # the estimate was paid for and counted


def test_nan_in_lower_solve_gives_infinite_bound():
    class Poisoned(Quadratic):
        def lower_grad(self, x, theta):
            if theta[0] > 5:
                return torch.full_like(x, float("nan"))
            return super().lower_grad(x, theta)

    problem = Poisoned(n=50, m=3)
    sol = problem.solve_lower(problem.initial_theta() + 10, 1e-3)
    assert not sol.converged and math.isinf(sol.error_bound)


def test_registry_spec_and_errors():
    assert "quadratic" in bilevel.list_problems()
    p = bilevel.make_problem("quadratic[n=50, m=3, distribution=normal]")
    assert p.A1.shape == (50, 3)
    assert bilevel.make_problem("quadratic[n=50,m=3]", m=4).A1.shape == (50, 4)
    with pytest.raises(ValueError, match="unknown problem 'nope'; known problems:.*quadratic"):
        bilevel.make_problem("nope")
    with pytest.raises(ValueError, match="expected k=v"):
        bilevel.make_problem("quadratic[50]")


def test_register_problem_for_users():
    from bilevel import registry

    entry = bilevel.register_problem("tiny_quadratic", Quadratic, description="tiny",
                                     test_params=dict(n=20, m=2))
    try:
        assert "tiny_quadratic" in bilevel.list_problems()
        assert bilevel.make_problem("tiny_quadratic", n=20, m=2).A1.shape == (20, 2)
        with pytest.raises(ValueError, match="already registered"):
            bilevel.register_problem("tiny_quadratic", Quadratic)
    finally:
        registry._registered.pop(entry.name)


@pytest.mark.parametrize("name", bilevel.list_problems())
def test_conformance_of_every_registered_problem(name):
    entry = bilevel.registry.get_entry(name)
    problem = entry.factory(**entry.test_params)
    report = check_problem(problem)
    assert report, str(report)


def test_command_line(tmp_path):
    out = tmp_path / "run"
    listing = subprocess.run([sys.executable, "-m", "bilevel", "list"], capture_output=True,
                             text=True, check=True).stdout
    assert "quadratic" in listing
    done = subprocess.run([sys.executable, "-m", "bilevel", "run", "quadratic[n=100,m=3]",
                           "--max-iter", "30", "--quiet", "--out", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "lower-level" in done.stdout and "theta" in done.stdout
    rows, meta, theta = bilevel.results.load_run(out)
    assert len(rows) == 30 and meta["method"] == "maid" and theta.shape == (3,)
    assert json.loads((out / "meta.json").read_text())["environment"]["torch"]
    plotted = subprocess.run([sys.executable, "-m", "bilevel", "plot", str(out)],
                             capture_output=True, text=True)
    assert plotted.returncode == 0 and (out / "curves.png").stat().st_size > 1000
    bad = subprocess.run([sys.executable, "-m", "bilevel", "run", "quadratic", "--method", "x"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown method 'x'" in bad.stderr


def test_oracle_calls_count_every_derivative_evaluation():
    import collections
    import warnings

    calls = collections.Counter()

    class Counted(Quadratic):
        def lower_grad(self, x, theta):
            calls["grad"] += 1
            return super().lower_grad(x, theta)

        def lower_hvp(self, x, theta, v):
            calls["hvp"] += 1
            return super().lower_hvp(x, theta, v)

        def mixed_vjp(self, x, theta, w):
            calls["mixed"] += 1
            return super().mixed_vjp(x, theta, w)

        def upper_grads(self, x, theta):
            calls["upper"] += 1
            return super().upper_grads(x, theta)

    problem = Counted(n=200, m=5, distribution="normal", seed=1)
    for method in ("maid", "hoag_cubic"):
        calls.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", bilevel.ConvergenceWarning)
            last = bilevel.solve(problem, method, max_iter=40, tol=0).history[-1]
        assert last["oracle_calls"] == sum(calls.values())
        assert last["cg_iterations"] == calls["hvp"]
        assert last["lower_iterations"] <= calls["grad"]


def test_command_line_checkpoint_and_resume(tmp_path):
    spec = "quadratic[n=100,m=3,distribution=normal]"
    base = [sys.executable, "-m", "bilevel", "run"]
    first = subprocess.run(base + [spec, "--max-iter", "20", "--quiet", "--checkpoint-every",
                                   "5", "--out", str(tmp_path / "a")], capture_output=True,
                           text=True)
    assert first.returncode == 0, first.stderr
    meta = json.loads((tmp_path / "a" / "meta.json").read_text())
    meta["max_iter"] = 40  # ask the resumed run to go further
    (tmp_path / "a" / "meta.json").write_text(json.dumps(meta))
    again = subprocess.run(base + ["--resume", str(tmp_path / "a"), "--quiet"],
                           capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    whole = subprocess.run(base + [spec, "--max-iter", "40", "--quiet", "--out",
                                   str(tmp_path / "b")], capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr
    thetas = [json.loads((tmp_path / d / "theta.json").read_text()) for d in ("a", "b")]
    assert thetas[0] == thetas[1]
    assert len(bilevel.results.load_run(tmp_path / "a")[0]) == 40
