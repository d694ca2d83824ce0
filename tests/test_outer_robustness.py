"""Outer methods under careless and hostile input (issue 15: D7, D8, D9, D11, D16, D21-D23).

Each test failed before its fix: the run raised and lost its history, burnt its
budget, or accepted a setting that cannot work.
"""
import math
import warnings

import pytest
import torch
from bilevel_problems.tv_denoising import TVDenoising
from test_custom_problem import make_ridge

import bilevel
from bilevel.outer import (
    HISTORY_COLUMNS,
    HOAG,
    MAID,
    FixedAccuracy,
    TorchOptimizer,
    make_method,
    run,
)


def quiet_solve(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bilevel.ConvergenceWarning)
        return bilevel.solve(*args, **kwargs)


# --- D7: Ctrl-C keeps what was computed -------------------------------------------------
def test_d7_keyboard_interrupt_returns_history_and_resumes_exactly():
    # Fresh problems: estimated constants are cached on the problem object.
    full = quiet_solve(make_ridge(), "maid", max_iter=6, tol=0.0)
    problem = make_ridge()

    def interrupt(state, row):
        if row["iteration"] == 3:
            raise KeyboardInterrupt
        return False

    with pytest.warns(bilevel.ConvergenceWarning, match="interrupted"):
        cut = bilevel.solve(problem, "maid", max_iter=6, tol=0.0, callback=interrupt)
    assert cut.status == "interrupted" and len(cut.history) == 3
    # The state is the one of the last completed iteration: continuing ends where the
    # uninterrupted run did.
    rest = run(MAID(tol=0.0), problem, max_iter=6, state=cut.state, history=cut.history)
    assert len(rest.history) == 6
    torch.testing.assert_close(rest.theta, full.theta, rtol=0, atol=0)


# --- D8: degenerate trial points are rejected, not fatal ------------------------------------
@pytest.mark.parametrize("alpha0", [1e6, 1e300])
def test_d8_zero_mu_at_a_trial_point_rejects_the_trial(alpha0):
    # exp(theta) underflows to 0 (mu = 0) at the first trials of so long a step.
    result = quiet_solve(make_ridge(), "maid", alpha0=alpha0, max_iter=3)
    assert result.history and result.history[0]["nonfinite_trials"] >= 1
    assert math.isfinite(result.history[-1]["upper_value"])


def test_d8_overflowing_constants_reject_the_trial():
    # TV's constants overflow (OverflowError) a few steps out; the run goes on.  (At
    # alpha0 = 1e4 the trials are finite but far stiffer: backtracked as stiff_trials.)
    problem = bilevel.make_problem("tv_denoising[size=8,n_images=1]")
    result = quiet_solve(problem, "maid", alpha0=1e6, max_iter=2)
    assert result.history[0]["nonfinite_trials"] >= 1
    assert result.status in ("max_iter", "converged")


def test_d8_hoag_backs_off_from_degenerate_points():
    result = quiet_solve(make_ridge(), HOAG(), max_iter=4)
    assert len(result.history) == 4
    assert all(math.isfinite(r["upper_value"]) for r in result.history)


# --- D9: NaN adjoints end the run as 'diverged' ----------------------------------------------
class NaNAdjoint(type(make_ridge())):
    calls = 0

    def lower_hvp(self, x, theta, v):
        type(self).calls += 1
        return torch.full_like(v, math.nan)


def test_d9_nan_cg_solution_stops_as_diverged_without_burning_refinements():
    ridge = make_ridge()
    problem = NaNAdjoint(ridge.A, ridge.b, ridge.A_val, ridge.b_val)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = bilevel.solve(problem, "maid", max_iter=5)
    assert result.status == "diverged"
    assert len(result.history) == 1
    # Two hypergradients at most (the second from fresh warm starts), not 30 refinements.
    assert result.history[0]["cg_iterations"] <= 2 * 3
    for start in (result.state.x, result.state.q):  # NaN is never kept as a warm start
        assert start is None or torch.isfinite(start).all()


# --- D11: settings given with a method object are applied --------------------------------
def test_d11_settings_override_a_method_object():
    method = make_method(MAID(eps0=1e-2), tol=0.5, alpha0=0.1)
    assert (method.eps0, method.tol, method.alpha0) == (1e-2, 0.5, 0.1)
    with pytest.raises(TypeError, match="no setting.*schedule"):
        make_method(MAID(), schedule="cubic")
    result = quiet_solve(make_ridge(), MAID(), tol=1e9, max_iter=5)
    assert result.status == "converged" and len(result.history) == 1


# --- D16 / D13: settings outside their range are refused in one line -----------------------
@pytest.mark.parametrize("cls, name, value", [
    (MAID, "alpha0", math.inf), (MAID, "eps0", math.nan), (MAID, "eps0", "abc"),
    (MAID, "max_refinements", -1), (MAID, "lower_max_iter", -5), (MAID, "lower_max_iter", 2.5),
    (MAID, "rho", 1.0), (MAID, "refinement", "double"), (FixedAccuracy, "eps0", 0.0),
    (HOAG, "eps0", math.inf), (HOAG, "cg_max_iter", 0), (HOAG, "schedule", "linear"),
    (TorchOptimizer, "lr", -1.0), (TorchOptimizer, "eps", math.nan),
])
def test_d16_invalid_setting_names_itself_and_its_range(cls, name, value):
    with pytest.raises(ValueError, match=f"invalid {name}=.*accepted: ") as err:
        cls(**{name: value})
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("budget", [dict(max_cost=math.nan), dict(max_cost=-1),
                                    dict(max_time=0), dict(max_time="1")])
def test_d16_invalid_budget_is_refused_before_computing(budget):
    name = next(iter(budget))
    with pytest.raises(ValueError, match=f"{name} must be a positive number"):
        bilevel.solve(make_ridge(), "maid", **budget)


# --- D21: budgets hold inside an iteration ------------------------------------------------
def test_d21_max_cost_is_enforced_inside_an_iteration():
    problem = bilevel.make_problem("tv_denoising[size=16,n_images=1]")
    # FixedAccuracy at a tight accuracy: the first iteration alone costs thousands.
    with pytest.warns(bilevel.ConvergenceWarning, match="inside an iteration"):
        result = bilevel.solve(problem, FixedAccuracy(eps0=1e-9, delta0=1e-9), max_cost=50)
    assert result.status == "max_cost" and result.history == []
    assert torch.equal(result.theta, problem.initial_theta())


def test_d21_max_time_is_enforced_inside_an_iteration():
    problem = bilevel.make_problem("tv_denoising[size=16,n_images=1]")
    with pytest.warns(bilevel.ConvergenceWarning, match="time budget"):
        result = bilevel.solve(problem, FixedAccuracy(eps0=1e-11, delta0=1e-11),
                               max_time=0.05, max_iter=1000)
    assert result.status == "max_time"
    assert result.history == [] or result.history[-1]["time"] < 5.0


# --- D22: an accuracy below what the dtype certifies is said ------------------------------
def test_d22_accuracy_below_dtype_floor_warns():
    problem = TVDenoising(n_images=1, size=8, dtype=torch.float32)
    with pytest.warns(bilevel.AccuracyWarning, match="float32 can certify"):
        bilevel.hypergradient(problem, problem.initial_theta(), eps=1e-12, delta=1e-3,
                              lower_max_iter=300)


# --- D23: the callback's row is documented --------------------------------------------------
def test_d23_every_history_column_is_documented_for_callbacks():
    doc = run.__doc__
    for column in HISTORY_COLUMNS:
        assert f"``{column}``" in doc, column
    assert "callback" in bilevel.solve.__doc__ and "row" in bilevel.solve.__doc__


def test_d21_time_budget_is_collective_in_data_parallel_runs():
    # Ranks read different clocks: the decision to stop must be the same on all of them
    # (a rank stopping alone would leave the others in a collective), so a data-parallel
    # run asks every rank, and never stops inside an iteration on time.
    from bilevel.outer.base import _past

    class OtherRankIsLate:
        active = True

        def max(self, value):
            return torch.ones_like(value)  # another rank is past the deadline

    problem = make_ridge()
    problem.parallel = OtherRankIsLate()
    assert _past(float("1e300"), problem)  # this rank is not late, another one is
    assert not _past(math.inf, problem)


# --- an over-long step into a far stiffer lower level is backtracked unsolved ---------------
def test_stiff_trials_are_backtracked_without_a_solve():
    """TV: L / mu = 1 + lam D2 / nu, so a direction raising log lam by 10 multiplies the
    conditioning by about e^10 at step 1 and e^5 = 148 at step 1/2 (both over 100: not
    solved), e^2.5 = 12 at step 1/4 (solved); with no limit step 1 is solved."""
    from bilevel.outer.line_search import certified_line_search, conditioning

    problem = TVDenoising(n_images=1, size=8)
    theta = problem.initial_theta()
    d = torch.zeros_like(theta)
    d[0] = -10.0  # theta - step d raises log lam
    kappa = conditioning(problem, theta)
    assert conditioning(problem, theta - 0.5 * d) > 100 * kappa
    assert conditioning(problem, theta - 0.25 * d) < 100 * kappa
    common = dict(first=1.0, rho=0.5, backtracks=3, lam=1e-4, lower_now=-math.inf,
                  accuracy=lambda step: 1e-6, L_g=1.0)  # lower_now = -inf: never accepted
    search = certified_line_search(problem, theta, d, 1.0, **common)
    assert search.stiff_trials == 2 and search.backtracks == 3 and not search.accepted
    solved = problem.solve_lower(theta - 0.25 * d, 1e-6).iterations
    assert search.search_iterations == solved
    unlimited = certified_line_search(problem, theta, d, 1.0, **common,
                                      max_conditioning_growth=math.inf)
    assert unlimited.stiff_trials == 0 and unlimited.search_iterations > solved

def _until_accepted(method, problem, theta0, check, limit=6):
    """Iterate ``method`` from theta0 until a step is accepted, ``check(before, after, row)``
    on every rejected row: (the restart steps they left, the last state, the last row)."""
    state, steps = method.init_state(problem, theta0), []
    for _ in range(limit):
        before = state
        state, row = method.update(problem, state)
        if row["accepted"]:
            break
        check(before, state, row)
        steps.append(state.restart_step)
    return steps, state, row

def test_a_search_of_stiff_trials_only_goes_on_backtracking():
    """TV at lam e^-6 below its start: -z raises log lam, and first steps of 1e6 and 5e5
    multiply L / mu by far over 100.  Such a search solves nothing, so MAID neither
    tightens eps nor grows the budget: the next search starts at 1e6 / 4, and so on, until
    a step is solved (here 1e6 / 16, accepted)."""
    from bilevel.outer.line_search import conditioning

    problem = TVDenoising(n_images=1, size=8)
    theta0 = problem.initial_theta().clone()
    theta0[0] -= 6
    method = bilevel.outer.MAID(alpha0=1e6, max_backtracks=2)

    def unchanged(before, state, row):
        assert row["stiff_trials"] == row["backtracks"] == 2 and row["search_iterations"] == 0
        assert (state.eps, state.delta, state.max_backtracks) == \
            (before.eps, before.delta, before.max_backtracks)

    steps, state, row = _until_accepted(method, problem, theta0, unchanged)
    assert steps == [1e6 / 4, 1e6 / 16]
    assert row["accepted"] and row["step"] == 1e6 / 16 and state.restart_step is None
    assert conditioning(problem, state.theta) <= 100 * conditioning(problem, theta0)
    # Without the limit the first search solves its over-long trials.
    loose = bilevel.outer.MAID(alpha0=1e6, max_backtracks=2, max_conditioning_growth=math.inf)
    _, row = loose.update(problem, loose.init_state(problem, theta0))
    assert row["stiff_trials"] == 0 and row["search_iterations"] > 0
    with pytest.raises(ValueError, match="max_conditioning_growth"):
        bilevel.outer.MAID(max_conditioning_growth=0.5)


def test_minibatch_search_of_stiff_trials_goes_on_backtracking():
    """maid_sgd on TV's two images, the same over-long first steps: the batches' searches
    solve nothing, so they neither tighten eps nor ask for a certified direction, and the
    next batch's search starts where the last one stopped."""
    problem = TVDenoising(n_images=2, size=8)
    theta0 = problem.initial_theta().clone()
    theta0[0] -= 6
    method = bilevel.outer.MinibatchMAID(batch_size=1, alpha0=1e6, max_backtracks=2,
                                         final_check=False)

    def not_tightened(before, state, row):
        assert not state.certify and state.eps >= before.eps

    starts, state, row = _until_accepted(method, problem, theta0, not_tightened)
    assert starts and starts == [1e6 * 0.25 ** (i + 1) for i in range(len(starts))]
    assert row["accepted"] and row["step"] <= starts[-1] and state.restart_step is None
