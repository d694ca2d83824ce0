"""Runs survive SIGKILL: checkpoint, resume, same theta as an uninterrupted run."""
import os
import signal
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from bilevel_problems.quadratic import Quadratic

import bilevel
from bilevel.checkpoint import load_checkpoint, save_checkpoint

SPEC = dict(n=200, m=5, distribution="normal", seed=1)


@pytest.mark.parametrize("method,settings", [("maid", {}), ("hoag_geometric", {}),
                                             ("adam", {"lr": 0.3})])
def test_resume_continues_exactly(tmp_path, method, settings):
    problem = Quadratic(**SPEC)
    path = tmp_path / "ck.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bilevel.ConvergenceWarning)
        full = bilevel.solve(problem, method, max_iter=50, tol=0, **settings)
        bilevel.solve(problem, method, max_iter=20, tol=0, checkpoint_path=path,
                      checkpoint_every=7, **settings)
        resumed = bilevel.resume(problem, path, max_iter=50)
    assert torch.equal(resumed.theta, full.theta)
    assert [r["cost"] for r in resumed.history] == [r["cost"] for r in full.history]
    payload = torch.load(path, weights_only=True)  # no arbitrary pickles
    assert len(payload["history"]) == 50


def test_checkpoint_write_is_atomic(tmp_path):
    problem = Quadratic(**SPEC)
    method = bilevel.outer.make_method("maid")
    state = method.init_state(problem, problem.initial_theta())
    path = save_checkpoint(tmp_path / "ck.pt", method, state, [])
    assert not (tmp_path / "ck.pt.tmp").exists()
    _, loaded, history, _ = load_checkpoint(path)
    assert torch.equal(loaded.theta, state.theta) and history == []


DRIVER = textwrap.dedent("""
    import os, signal, sys
    import bilevel
    from bilevel_problems.quadratic import Quadratic

    def kill_after_17(state, row):  # SIGKILL two iterations past the 3rd checkpoint
        if row["iteration"] == 17:
            os.kill(os.getpid(), signal.SIGKILL)
        return False

    bilevel.solve(Quadratic(**{spec}), "maid", max_iter=120, tol=0, callback=kill_after_17,
                  checkpoint_path=sys.argv[1], checkpoint_every=5)
""")


def test_sigkill_then_resume_gives_the_uninterrupted_theta(tmp_path):
    # The run kills itself at a fixed iteration (no race with a wall-clock poller).
    path = tmp_path / "ck.pt"
    proc = subprocess.run([sys.executable, "-c", DRIVER.format(spec=SPEC), str(path)],
                          cwd=os.path.dirname(os.path.dirname(__file__)), timeout=300)
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "ck.pt.tmp").exists()
    problem = Quadratic(**SPEC)
    assert len(torch.load(path, weights_only=True)["history"]) == 15
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bilevel.ConvergenceWarning)
        resumed = bilevel.resume(problem, path, max_iter=120)
        full = bilevel.solve(problem, "maid", max_iter=120, tol=0)
    assert torch.equal(resumed.theta, full.theta)


def test_nan_in_a_trial_solve_is_rejected_and_the_run_converges():
    class Flaky(Quadratic):
        """Returns NaN from the 5th lower-level solve (a line-search trial), once."""

        calls = 0

        def solve_lower(self, theta, tol, x0=None, max_iter=10_000):
            Flaky.calls += 1
            sol = super().solve_lower(theta, tol, x0=x0, max_iter=max_iter)
            if Flaky.calls == 5:
                return bilevel.LowerSolution(torch.full_like(sol.x, float("nan")),
                                             float("nan"), sol.iterations, False)
            return sol

    problem = Flaky(**SPEC)
    result = bilevel.solve(problem, "maid", max_iter=3000, tol=1e-4)
    assert result.status == "converged", result.message
    assert sum(row["nonfinite_trials"] for row in result.history) == 1
    assert torch.isfinite(result.theta).all()
    assert float(problem.gradient(result.theta).norm()) <= 1e-4


def test_maid_stops_when_certificates_stall_instead_of_burning_budget():
    class Floor(Quadratic):
        """Gradients with a noise floor, like rounding: ||grad h|| stays near >= 1e-3."""

        noise = torch.Generator().manual_seed(0)

        def lower_grad(self, x, theta):
            grad = super().lower_grad(x, theta)
            e = torch.randn(grad.shape, generator=self.noise, dtype=grad.dtype)
            return grad + 1e-3 * e / e.norm()

    problem = Floor(**SPEC)
    with pytest.warns(bilevel.ConvergenceWarning, match="stalled"):
        result = bilevel.solve(problem, "maid", max_iter=2000, tol=0, lower_max_iter=300)
    assert result.status == "accuracy_floor"
    last = result.history[-1]
    previous = result.history[-2]["lower_iterations"] if len(result.history) > 1 else 0
    # at most a few refinements ran out of budget in the last iteration, not dozens
    assert last["lower_iterations"] - previous <= 4 * 300
