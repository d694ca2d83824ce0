"""Minibatch MAID (``method="maid_sgd"``) and the sample-separable hook it needs (``subset``)."""
import math
import warnings

import pytest
import torch
from bilevel_problems.fields_of_experts import FieldsOfExperts
from bilevel_problems.ridge_regularizer import RidgeRegularizer
from bilevel_problems.tv_denoising import TVDenoising

import bilevel
from bilevel.hypergradient import bracket_accuracy, upper_bounds
from bilevel.outer import batch_accuracy, minibatch
from bilevel.reference import reference_solution

MEMBERS = {
    "tv": lambda: TVDenoising(n_images=4, size=8, seed=1),
    "foe": lambda: FieldsOfExperts(n_images=4, size=8, num_filters=2, filter_size=3),
    "ridge": lambda: RidgeRegularizer(n_images=4, size=8, num_filters=2, filter_size=3,
                                      num_knots=5, x_range=0.2),
}


def tv(n=6, size=8):
    return TVDenoising(n_images=n, size=size, seed=1)


def quiet_solve(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bilevel.ConvergenceWarning)
        return bilevel.solve(*args, **kwargs)


def loss(problem, theta):
    """F(theta) from a tight solve (error below 1e-10)."""
    sol = problem.solve_lower(theta, 1e-11, max_iter=100_000)
    return float(problem.upper_objective(sol.x, theta))


# ------------------------------------------------------------------ the hook
def test_a_problem_that_is_not_sample_separable_is_refused():
    q = bilevel.make_problem("quadratic", n=20, m=3)
    for attempt in (lambda: q.n_samples, lambda: q.subset([0]),
                    lambda: bilevel.solve(q, "maid_sgd", max_iter=1)):
        with pytest.raises(NotImplementedError, match="not sample-separable"):
            attempt()


@pytest.mark.parametrize("member", sorted(MEMBERS))
def test_subset_is_the_batch_problem(member):
    p = MEMBERS[member]()
    theta, idx = p.initial_theta(), [3, 0]
    gen = torch.Generator().manual_seed(0)
    x = p.initial_x(theta) + 0.05 * torch.randn(p.noisy.shape, generator=gen,
                                                 dtype=torch.float64)
    v, w = (torch.randn(x.shape, generator=gen, dtype=torch.float64) for _ in range(2))
    s = p.subset(idx)
    assert (s.n_samples, p.n_samples) == (2, 4) and torch.equal(s.clean, p.clean[idx])
    assert torch.equal(s.initial_x(theta), p.initial_x(theta)[idx])
    # h is a sum over the images: the batch's derivatives are the full ones' rows.
    torch.testing.assert_close(s.lower_grad(x[idx], theta), p.lower_grad(x, theta)[idx])
    torch.testing.assert_close(s.lower_hvp(x[idx], theta, v[idx]),
                               p.lower_hvp(x, theta, v)[idx])
    w_full = torch.zeros_like(w)
    w_full[idx] = w[idx]
    torch.testing.assert_close(s.mixed_vjp(x[idx], theta, w[idx]), p.mixed_vjp(x, theta, w_full))
    # g is the mean over the batch (or over ``total``).
    per_image = 0.5 * ((x - p.clean) ** 2).sum(dim=(1, 2))
    assert float(s.upper_objective(x[idx], theta)) == pytest.approx(float(per_image[idx].mean()))
    assert float(p.subset(idx, total=5).upper_objective(x[idx], theta)) == pytest.approx(
        float(per_image[idx].sum() / 5))
    assert s.strong_convexity(theta) == 1.0 and s.bound_constants(theta, x[idx]).certified


def test_subset_refuses_bad_indices_and_unknown_per_image_data():
    p = tv(4)
    for bad in ([], [4], [-1]):
        with pytest.raises(ValueError, match="indices"):
            p.subset(bad)

    class WithStart(TVDenoising):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.start = self.noisy * 0.5  # per-image data subset() is not told of

    with pytest.raises(TypeError, match="'start'"):
        WithStart(n_images=3, size=8).subset([0])
    WithStart.sample_fields = ("clean", "noisy", "start")
    assert WithStart(n_images=3, size=8).subset([2]).start.shape == (1, 8, 8)


def test_the_batch_of_everything_is_the_full_problem():
    p = tv(4)
    theta = p.initial_theta() + torch.tensor([2.0, 1.0], dtype=torch.float64)
    full = bilevel.hypergradient(p, theta, 1e-6, 1e-6)
    whole = bilevel.hypergradient(p.subset(torch.randperm(4)), theta, 1e-6, 1e-6)
    torch.testing.assert_close(whole.grad, full.grad, rtol=1e-7, atol=1e-9)
    assert whole.upper_value == pytest.approx(full.upper_value, rel=1e-12)


def test_batch_hypergradients_average_to_the_full_one():
    # g is a mean: over a partition into equal batches, the mean of the batch
    # hypergradients is the full one; with total = N (data-parallel scaling) their sum.
    p, theta = tv(6), torch.tensor([-2.0, -3.0], dtype=torch.float64)
    full = bilevel.hypergradient(p, theta, 1e-10, 1e-10).grad
    parts = ([0, 4, 5], [1, 2, 3])
    mean = sum(bilevel.hypergradient(p.subset(b), theta, 1e-10, 1e-10).grad for b in parts) / 2
    total = sum(bilevel.hypergradient(p.subset(b, 6), theta, 1e-10, 1e-10).grad for b in parts)
    for other in (mean, total):
        torch.testing.assert_close(other, full, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("theta", [(-5.0, -5.0), (-2.0, -3.0)])
def test_the_batch_bound_holds_against_the_dense_reference(theta):
    batch = tv(4, size=6).subset([1, 3])
    theta = torch.tensor(theta, dtype=torch.float64)
    reference = reference_solution(batch, theta).grad
    for eps in (1e-1, 1e-3):
        hg = bilevel.hypergradient(batch, theta, eps, eps)
        assert hg.certified
        assert float((hg.grad - reference).norm()) <= hg.error_bound


# ------------------------------------------------------------------ the method
def test_every_sample_once_per_epoch_and_the_costs_add_up(monkeypatch):
    p = tv(7)
    drawn, costs = [], []
    subset = p.subset
    p.subset = lambda index, total=None: drawn.append(index.tolist()) or subset(index, total)
    for module, name in ((batch_accuracy, "hypergradient"),
                         (minibatch, "certified_line_search")):
        solver = getattr(module, name)

        def counted(*args, _solver=solver, **kwargs):
            out = _solver(*args, **kwargs)
            costs.append(out.cost)
            return out

        monkeypatch.setattr(module, name, counted)
    result = quiet_solve(p, "maid_sgd", batch_size=3, max_iter=9, final_check=False)
    # 3 + 3 + 1 samples per epoch, each sample once, a new order every epoch.
    assert [len(b) for b in drawn] == [3, 3, 1] * 3
    epochs = [sum(drawn[3 * e:3 * e + 3], []) for e in range(3)]
    assert all(sorted(order) == list(range(7)) for order in epochs)
    assert len({tuple(order) for order in epochs}) == 3
    rows = result.history
    assert [r["epoch"] for r in rows] == pytest.approx(
        [e + k for e in range(3) for k in (3 / 7, 6 / 7, 1.0)])
    last = rows[-1]
    assert last["lower_iterations"] == sum(c.lower_iterations for c in costs)
    assert last["cg_iterations"] == sum(c.cg_iterations for c in costs)
    assert last["cost"] == sum(c.total for c in costs)
    spent = [b["cost"] - a["cost"] for a, b in zip([dict(cost=0)] + rows[:-1], rows, strict=True)]
    assert last["work"] == pytest.approx(sum(c * len(b) / 7 for c, b in zip(spent, drawn,
                                                                            strict=True)))


def test_a_batch_of_everything_starts_like_the_full_hypergradient():
    p = tv(4)
    result = quiet_solve(p, "maid_sgd", batch_size=4, max_iter=1, final_check=False)
    row = result.history[0]
    # The row is the full problem's certified hypergradient: within its own bounds of
    # the exact F and grad F at theta0.
    exact = bilevel.hypergradient(p, p.initial_theta(), 1e-11, 1e-11)
    assert row["batch_size"] == 4 and row["epoch"] == 1.0
    slack = exact.upper_grad_norm * row["eps"] + row["eps"] ** 2
    assert abs(row["upper_value"] - exact.upper_value) <= slack
    assert abs(row["grad_norm"] - float(exact.grad.norm())) <= row["error_bound"]


def test_same_seed_same_run_other_seed_other_batches():
    runs = [quiet_solve(tv(6), "maid_sgd", batch_size=2, max_iter=6, seed=seed, final_check=False)
            for seed in (0, 0, 1)]
    keep = ("upper_value", "grad_norm", "error_bound", "step", "cost", "work")
    same, again, other = ([{k: r[k] for k in keep} for r in run.history] for run in runs)
    assert same == again and torch.equal(runs[0].theta, runs[1].theta)
    assert same != other


def test_resume_from_a_checkpoint_reproduces_the_run(tmp_path):
    path = tmp_path / "ck.pt"
    full = quiet_solve(tv(5), "maid_sgd", batch_size=2, max_iter=8)
    quiet_solve(tv(5), "maid_sgd", batch_size=2, max_iter=5, checkpoint_path=path,
                checkpoint_every=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bilevel.ConvergenceWarning)
        resumed = bilevel.resume(tv(5), path, max_iter=8)
    assert torch.equal(resumed.theta, full.theta)
    assert [r["cost"] for r in resumed.history] == [r["cost"] for r in full.history]
    assert resumed.state.final_check == full.state.final_check


def test_a_run_decreases_the_full_loss_and_the_final_check_brackets_it():
    p = tv(8, size=12)
    result = quiet_solve(p, "maid_sgd", batch_size=2, max_iter=12)
    F0, F1 = loss(p, p.initial_theta()), loss(p, result.theta)
    assert F1 < 0.6 * F0
    check = result.state.final_check
    assert check["certified"] and check["samples"] == 8
    assert check["lower_bound"] <= F1 <= check["upper_bound"]
    true = float(bilevel.hypergradient(p, result.theta, 1e-10, 1e-10).grad.norm())
    assert abs(true - check["grad_norm"]) <= check["error_bound"]
    assert "final check on all 8 samples (certified)" in result.message


def test_a_loss_check_brackets_f_at_the_batches_accuracy_without_refining(tmp_path):
    p, path = tv(8, size=12), tmp_path / "ck.pt"
    refined = quiet_solve(p, "maid_sgd", batch_size=2, max_iter=12, checkpoint_path=path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bilevel.ConvergenceWarning)
        cheap = bilevel.resume(p, path, max_iter=12, final_check="loss")
    assert torch.equal(cheap.theta, refined.theta)  # the check changes how the run ends only
    full, check = refined.state.final_check, cheap.state.final_check
    # The refined check is kept: a resumed checked run stands as it was.
    assert check == full and full["refined"]
    unchecked = tmp_path / "unchecked.pt"
    quiet_solve(p, "maid_sgd", batch_size=2, max_iter=12, checkpoint_path=unchecked,
                final_check=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bilevel.ConvergenceWarning)
        cheap = bilevel.resume(p, unchecked, max_iter=12, final_check="loss")
    check, F = cheap.state.final_check, loss(p, cheap.theta)
    assert not check["refined"] and check["certified"]
    assert check["lower_bound"] <= F <= check["upper_bound"]
    true = float(bilevel.hypergradient(p, cheap.theta, 1e-10, 1e-10).grad.norm())
    assert abs(true - check["grad_norm"]) <= check["error_bound"]
    half = 0.5 * (check["upper_bound"] - check["lower_bound"])
    assert half <= 1e-5 * abs(check["upper_value"])  # final_loss_rtol
    assert "the gradient's direction not refined" in cheap.message
    # The iterates' settings must still be the checkpoint's; only the check may change.
    with pytest.raises(bilevel.CheckpointMismatchError, match="batch_size"):
        bilevel.resume(p, unchecked, max_iter=12, final_check="loss",
                       method=bilevel.outer.make_method("maid_sgd", batch_size=3,
                                                        final_check="loss"))


@pytest.mark.parametrize(("grad_norm", "L_g", "slack"),
                         [(0.06, 1.0, 1.5e-5), (0.0, 2.0, 1e-3), (3.0, 0.0, 1e-2),
                          (1e-8, 1e4, 1.0)])
def test_bracket_accuracy_inverts_the_bracket(grad_norm, L_g, slack):
    """At eps = bracket_accuracy(...), upper_bounds' upper end lies exactly slack above g."""
    eps = bracket_accuracy(grad_norm, L_g, slack)
    _, high = upper_bounds(0.0, grad_norm, eps, L_g)
    assert high == pytest.approx(slack, rel=1e-12)
    assert bracket_accuracy(grad_norm, L_g, 0.0) == 0.0


def test_the_final_check_reports_its_progress(capsys):
    result = quiet_solve(tv(4), "maid_sgd", batch_size=2, max_iter=3, average=0.5,
                         progress=True, final_check="loss")
    err = capsys.readouterr().err
    for name, bounds in result.state.final_check["candidates"].items():
        assert f"final check at the {name}: F in [{bounds['lower_bound']:.6g}, " in err


def test_the_second_candidate_starts_at_the_accuracy_the_first_ended_at(monkeypatch):
    """The 'loss' check's candidates lie close: the average's first solve asks for the
    last iterate's final accuracy, and its bracket still holds F within the budget."""
    from bilevel.outer import final_check

    asked = []

    def recorded(problem, theta, eps, delta, **kwargs):
        asked.append((theta.clone(), eps))
        return bilevel.hypergradient(problem, theta, eps, delta, **kwargs)

    monkeypatch.setattr(final_check, "hypergradient", recorded)
    p = tv(6, size=10)
    result = quiet_solve(p, "maid_sgd", batch_size=2, max_iter=6, average=0.5,
                         final_check="loss")
    candidates = result.state.final_check["candidates"]
    assert list(candidates) == ["last iterate", "average"]
    last, average = result.state.theta, result.state.theta_average
    first = [eps for theta, eps in asked if torch.equal(theta, last)]
    second = [eps for theta, eps in asked if torch.equal(theta, average)]
    assert len(first) + len(second) == len(asked) and first and second
    assert second[0] == candidates["last iterate"]["eps"] < first[0]
    assert len(second) <= len(first)
    for theta, bounds in ((last, candidates["last iterate"]), (average, candidates["average"])):
        assert bounds["lower_bound"] <= loss(p, theta) <= bounds["upper_bound"]
        assert bounds["upper_bound"] - bounds["lower_bound"] <= 2e-5 * bounds["upper_value"]


def test_resume_refuses_a_final_check_for_a_method_without_one(tmp_path):
    path = tmp_path / "ck.pt"
    quiet_solve(tv(3), "maid", max_iter=2, checkpoint_path=path)
    with pytest.raises(ValueError, match="final_check: not a setting that a resumed MAID"):
        bilevel.resume(tv(3), path, max_iter=2, final_check="loss")


def test_resume_refuses_a_change_of_what_the_iterates_depend_on(tmp_path):
    path = tmp_path / "ck.pt"
    quiet_solve(tv(3), "maid_sgd", batch_size=1, max_iter=2, checkpoint_path=path,
                final_check=False)
    with pytest.raises(ValueError, match=r"batch_size: .* \(those it may: batch_bounds, "
                                         r"final_check\)"):
        bilevel.resume(tv(3), path, max_iter=2, batch_size=2)


def test_schedules_set_the_step_and_the_accuracy():
    p = tv(6)
    result = quiet_solve(p, "maid_sgd", batch_size=2, max_iter=7, step="schedule",
                         accuracy="schedule", alpha0=0.5, eps0=1e-2, final_check=False)
    t = 0.0
    for row in result.history:
        assert row["step"] == pytest.approx(0.5 / math.sqrt(1 + t))
        assert row["eps"] == pytest.approx(1e-2 / (1 + t))
        t = row["epoch"]


@pytest.mark.parametrize("member", ["tv", "ridge"])
def test_scheduled_steps_without_batch_bounds_are_the_same_steps(member):
    """batch_bounds=False changes what a row says (no omega), never a step: the same
    thetas, batches and solves, fewer oracle calls; the final check still certifies F."""
    p = MEMBERS[member]()
    common = dict(batch_size=2, max_iter=6, step="schedule", accuracy="schedule",
                  alpha0=0.05, eps0=1e-3, delta0=1e-4, precondition="rmsprop",
                  final_check="loss", seed=3)
    with_bounds = quiet_solve(p, "maid_sgd", **common)
    without = quiet_solve(p, "maid_sgd", batch_bounds=False, **common)
    assert torch.equal(with_bounds.theta, without.theta)
    for a, b in zip(with_bounds.history, without.history, strict=True):
        assert math.isfinite(a["error_bound"]) and a["certified"]
        assert b["error_bound"] == math.inf and not b["certified"]
        assert (a["upper_value"], a["step"], a["lower_iterations"], a["cg_iterations"]) == \
            (b["upper_value"], b["step"], b["lower_iterations"], b["cg_iterations"])
        assert b["oracle_calls"] < a["oracle_calls"]
    check = without.state.final_check
    assert check["certified"] and check["lower_bound"] <= loss(p, without.theta) \
        <= check["upper_bound"]


@pytest.mark.parametrize("first", [True, False])
def test_a_resumed_run_may_switch_its_batch_bounds(tmp_path, first):
    """Switching batch_bounds midway leaves the steps of an unbroken run."""
    p, path = MEMBERS["tv"](), tmp_path / "ck.pt"
    common = dict(batch_size=2, step="schedule", accuracy="schedule", alpha0=0.05,
                  eps0=1e-3, delta0=1e-4, final_check=False, seed=3)
    unbroken = quiet_solve(p, "maid_sgd", max_iter=6, batch_bounds=first, **common)
    quiet_solve(p, "maid_sgd", max_iter=3, batch_bounds=first, checkpoint_path=path, **common)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bilevel.ConvergenceWarning)
        switched = bilevel.resume(p, path, max_iter=6, batch_bounds=not first)
    assert torch.equal(switched.theta, unbroken.theta)
    for a, b in zip(switched.history, unbroken.history, strict=True):
        assert (a["upper_value"], a["step"], a["cost"]) == (b["upper_value"], b["step"], b["cost"])
    assert [math.isfinite(row["error_bound"]) for row in switched.history[3:]] == \
        [not first] * 3
    quiet_solve(p, "maid_sgd", max_iter=3, checkpoint_path=tmp_path / "search.pt",
                batch_size=2, alpha0=0.05, final_check=False)
    with pytest.raises(ValueError, match="batch_bounds=False needs"):  # still validated
        bilevel.resume(p, tmp_path / "search.pt", max_iter=6, batch_bounds=False)


def test_a_hypergradient_without_its_bound_is_the_same_hypergradient():
    p = MEMBERS["ridge"]()
    theta = p.initial_theta()
    full = bilevel.hypergradient(p, theta, 1e-6, 1e-8)
    bare = bilevel.hypergradient(p, theta, 1e-6, 1e-8, bound=False)
    assert torch.equal(full.grad, bare.grad) and full.upper_value == bare.upper_value
    assert math.isfinite(full.error_bound) and full.certified
    assert bare.error_bound == math.inf and not bare.certified and bare.constants is None
    assert bare.cost.total == full.cost.total and bare.cost.oracle_calls < full.cost.oracle_calls


def test_adaptive_accuracy_certifies_each_batch_direction():
    result = quiet_solve(tv(6), "maid_sgd", batch_size=2, max_iter=6, accuracy="adaptive",
                         rel_error=0.3, final_check=False)
    assert all(r["error_bound"] <= 0.3 * r["grad_norm"] for r in result.history)


def test_the_average_is_the_moving_average_and_the_final_check_picks_the_lower_bound():
    p, beta, iterates = tv(8, size=12), 0.7, []
    result = quiet_solve(p, "maid_sgd", batch_size=2, max_iter=10, average=beta,
                         callback=lambda state, row: iterates.append(state.theta.clone()))
    k = len(iterates)
    weights = torch.tensor([beta ** (k - 1 - j) for j in range(k)], dtype=torch.float64)
    average = (weights[:, None] * torch.stack(iterates)).sum(0) / weights.sum()
    state = result.state
    assert torch.allclose(state.theta_average, average, rtol=0, atol=1e-13)
    check = state.final_check
    assert set(check["candidates"]) == {"last iterate", "average"}
    for name, theta in (("last iterate", state.theta), ("average", state.theta_average)):
        bounds = check["candidates"][name]
        assert bounds["certified"] and bounds["lower_bound"] <= loss(p, theta) \
            <= bounds["upper_bound"]
    best = min(check["candidates"], key=lambda n: check["candidates"][n]["upper_bound"])
    assert check["theta"] == best
    assert torch.equal(result.theta, state.theta_average if best == "average" else state.theta)
    assert check["cost"] == sum(c["cost"] for c in check["candidates"].values())
    assert f"theta is the {best}" in result.message


def test_an_averaged_run_resumed_ends_with_the_same_choice(tmp_path):
    path = tmp_path / "ck.pt"
    kwargs = dict(batch_size=2, average=0.5)
    full = quiet_solve(tv(5), "maid_sgd", max_iter=8, checkpoint_path=path, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bilevel.ConvergenceWarning)
        again = bilevel.resume(tv(5), path, max_iter=8)  # finished: its check stands
    part = tmp_path / "part.pt"
    quiet_solve(tv(5), "maid_sgd", max_iter=5, checkpoint_path=part, checkpoint_every=2,
                **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bilevel.ConvergenceWarning)
        resumed = bilevel.resume(tv(5), part, max_iter=8)
    for other in (again, resumed):
        assert torch.equal(other.theta, full.theta)
        assert torch.equal(other.state.theta_average, full.state.theta_average)
        assert other.state.final_check["theta"] == full.state.final_check["theta"]


def _recorded_directions(monkeypatch, problem, **settings):
    """A preconditioned run with, per iteration, its theta after the step, its second
    moment and its z (the last batch hypergradient computed before the callback)."""
    grads, rows = [], []
    solver = batch_accuracy.hypergradient

    def recorded(*args, **kwargs):
        out = solver(*args, **kwargs)
        grads.append(out.grad.clone())
        return out

    monkeypatch.setattr(batch_accuracy, "hypergradient", recorded)
    result = quiet_solve(problem, "maid_sgd", precondition="rmsprop", final_check=False,
                         callback=lambda state, row: rows.append(
                             (state.theta.clone(), state.second_moment.clone(), grads[-1], row)),
                         **settings)
    return result, rows


def test_rmsprop_steps_along_the_scaled_hypergradient(monkeypatch):
    p = FieldsOfExperts(n_images=4, size=8, num_filters=2, filter_size=3)
    beta, eps = 0.6, 1e-3
    result, rows = _recorded_directions(monkeypatch, p, batch_size=2, max_iter=8,
                                        precondition_beta=beta, precondition_eps=eps)
    zs = torch.stack([z for _, _, z, _ in rows])
    theta = p.initial_theta()
    for k, (after, v, z, row) in enumerate(rows):
        weights = torch.tensor([beta ** (k - j) for j in range(k + 1)], dtype=torch.float64)
        explicit = (weights[:, None] * zs[:k + 1] ** 2).sum(0) / weights.sum()
        assert torch.allclose(v, explicit, rtol=1e-12, atol=0)
        d = z / (v.sqrt() + eps * v.sqrt().max())
        step = row["step"] if row["accepted"] else 0.0
        assert torch.allclose(after, theta - step * d, rtol=0, atol=1e-13)
        theta = after
    assert sum(r["accepted"] for *_, r in rows) >= 6
    # The scaling is not the identity: filter taps and log-weights get steps of other
    # proportions than z's.
    scale = ((rows[-1][0] - rows[-2][0]) / rows[-1][2]).abs()
    assert float(scale.max() / scale.min()) > 2 or not rows[-1][3]["accepted"]


def test_rmsprop_full_batch_steps_decrease_the_loss_as_certified(monkeypatch):
    p = FieldsOfExperts(n_images=3, size=8, num_filters=2, filter_size=3)
    result, rows = _recorded_directions(monkeypatch, p, batch_size=3, max_iter=6,
                                        accuracy="adaptive", rel_error=0.4)
    F, theta = loss(p, p.initial_theta()), p.initial_theta()
    for after, v, z, row in rows:
        d = z / (v.sqrt() + 1e-3 * v.sqrt().max())
        slope = float(z @ d)
        # adaptive: every direction certified as a descent direction of the P-scaled step
        assert row["error_bound"] <= 0.4 * slope / float(d.norm()) + 1e-15
        if row["accepted"]:  # the search's proof: F fell by lam alpha <z, d> at least
            F_after = loss(p, after)
            assert F_after <= F - 0.1 * row["step"] * slope + 1e-10
            F = F_after
        theta = after
    assert F < loss(p, p.initial_theta())
    assert torch.equal(theta, result.theta)


def test_a_preconditioned_run_resumed_reproduces_the_run(tmp_path):
    kwargs = dict(batch_size=2, precondition="rmsprop", final_check=False)
    full = quiet_solve(tv(5), "maid_sgd", max_iter=8, **kwargs)
    path = tmp_path / "ck.pt"
    quiet_solve(tv(5), "maid_sgd", max_iter=5, checkpoint_path=path, checkpoint_every=2,
                **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bilevel.ConvergenceWarning)
        resumed = bilevel.resume(tv(5), path, max_iter=8)
    assert torch.equal(resumed.theta, full.theta)
    assert torch.equal(resumed.state.second_moment, full.state.second_moment)


def test_invalid_settings_are_refused():
    for settings in (dict(), dict(step="schedule", alpha0=0.1),
                     dict(accuracy="schedule", alpha0=0.1),
                     dict(step="schedule", accuracy="schedule")):  # alpha0 None: a search
        with pytest.raises(ValueError, match="batch_bounds=False needs"):
            bilevel.outer.make_method("maid_sgd", batch_bounds=False, **settings)
    with pytest.raises(ValueError, match="batch_bounds"):
        bilevel.outer.make_method("maid_sgd", batch_bounds="no")
    with pytest.raises(ValueError, match="batch_size"):
        bilevel.outer.make_method("maid_sgd", batch_size=0)
    with pytest.raises(ValueError, match="accuracy"):
        bilevel.outer.make_method("maid_sgd", accuracy="sometimes")
    for beta in (1.0, -0.1, math.nan):
        with pytest.raises(ValueError, match="average"):
            bilevel.outer.make_method("maid_sgd", average=beta)
    with pytest.raises(ValueError, match="precondition"):
        bilevel.outer.make_method("maid_sgd", precondition="adam")
    for value in (1, "refined", None):  # 1 == True, but not a documented value
        with pytest.raises(ValueError, match="final_check"):
            bilevel.outer.make_method("maid_sgd", final_check=value)
    with pytest.raises(ValueError, match="final_loss_rtol"):
        bilevel.outer.make_method("maid_sgd", final_loss_rtol=0.0)
    for beta in (1.0, -0.1, math.nan):
        with pytest.raises(ValueError, match="precondition_beta"):
            bilevel.outer.make_method("maid_sgd", precondition_beta=beta)
    for eps in (0.0, -1.0, math.inf):
        with pytest.raises(ValueError, match="precondition_eps"):
            bilevel.outer.make_method("maid_sgd", precondition_eps=eps)


DRIVER = """
import json, sys, warnings
import bilevel, bilevel.distributed as bd
rank, world = bd.init("gloo")
problem = bd.data_parallel("tv_denoising", n_images=6, size=8, seed=1)
drawn, subset = [], problem.subset
problem.subset = lambda index, total=None: drawn.append(index.tolist()) or subset(index, total)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    result = bilevel.solve(problem, "maid_sgd", batch_size=2, max_iter=6)
rows = [{k: r[k] for k in ("cost", "batch_size", "work", "upper_value")} for r in result.history]
json.dump(dict(theta=result.theta.tolist(), drawn=drawn, rows=rows,
               check=result.state.final_check), open(sys.argv[1] + f".{rank}", "w"))
bd.finish()
"""


@pytest.mark.slow
def test_data_parallel_ranks_share_each_batch(tmp_path):
    import json

    from test_distributed import _torchrun

    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    done = _torchrun([str(script), str(tmp_path / "out")])
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"out.{r}").read_text()) for r in (0, 1)]
    assert ranks[0]["theta"] == ranks[1]["theta"] and ranks[0]["rows"] == ranks[1]["rows"]
    # Each rank draws one of its 3 images per batch, each once per epoch.
    for rank in ranks:
        assert all(sorted(sum(rank["drawn"][3 * e:3 * e + 3], [])) == [0, 1, 2] for e in (0, 1))
    assert all(r["batch_size"] == 2 for r in ranks[0]["rows"])
    p, theta = tv(6), torch.tensor(ranks[0]["theta"], dtype=torch.float64)
    check = ranks[0]["check"]
    assert check["samples"] == 6 and check["lower_bound"] <= loss(p, theta) <= check["upper_bound"]
