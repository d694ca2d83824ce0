"""SAGA variance reduction in maid_sgd: each sample's hypergradient from the batch's solve,
the direction's first epoch and its limit (the full hypergradient), resume, refusals."""
import pytest
import torch
from test_minibatch import MEMBERS, quiet_solve, tv

import bilevel
from bilevel.distributed import ONE_PROCESS
from bilevel.outer.variance_reduction import saga_direction, sample_hypergradients

SCHEDULE = dict(step="schedule", step_power=0, accuracy="schedule", final_check=False,
                seed=2)


@pytest.mark.parametrize("member", sorted(MEMBERS))
def test_sample_hypergradients_average_to_the_batch_hypergradient(member):
    """G_i, each the hypergradient of g_i alone, from the batch's x and adjoint: their mean
    is z_B, and each is the hypergradient of the one-sample problem solved on its own."""
    p = MEMBERS[member]()
    theta, index = p.initial_theta(), torch.tensor([0, 2, 3])
    batch = p.subset(index, 3)
    hg = bilevel.hypergradient(batch, theta, 1e-10, 1e-10)
    shares = sample_hypergradients(batch, theta, hg.lower.x, hg.linear.q, 3)
    assert shares.shape == (3, theta.numel())
    torch.testing.assert_close(shares.mean(dim=0), hg.grad, rtol=1e-10, atol=1e-14)
    alone = bilevel.hypergradient(p.subset(index[1:2], 1), theta, 1e-10, 1e-10).grad
    torch.testing.assert_close(shares[1], alone, rtol=1e-6, atol=1e-10)


def test_the_direction_is_saga_s():
    """v = z_B - mean_B T + mean T after the first epoch; z_B during it; the batch's rows
    of the table replaced."""
    z, shares = torch.tensor([1.0, 2.0]), torch.tensor([[3.0, 0.0], [1.0, 4.0]])
    table = torch.tensor([[1.0, 1.0], [0.0, 2.0], [2.0, 0.0], [5.0, 1.0]])
    index = torch.tensor([1, 3])
    v, new = saga_direction(z, shares, table, index, ONE_PROCESS, (4, 4, 2), epoch=1)
    torch.testing.assert_close(v, z - torch.tensor([2.5, 1.5]) + torch.tensor([2.0, 1.0]))
    torch.testing.assert_close(new, torch.tensor([[1.0, 1.0], [3.0, 0.0], [2.0, 0.0],
                                                  [1.0, 4.0]]))
    assert table[1, 0] == 0.0  # the state's table is not changed in place
    v, first = saga_direction(z, shares, None, index, ONE_PROCESS, (4, 4, 2), epoch=0)
    assert torch.equal(v, z) and torch.equal(first[index], shares)
    assert not first[[0, 2]].any()


def directions(problem, alpha, **settings):
    """The direction of each step of a scheduled run, (theta_k - theta_k+1) / alpha."""
    thetas = [problem.initial_theta()]
    quiet_solve(problem, "maid_sgd", alpha0=alpha, callback=lambda state, row:
                thetas.append(state.theta.clone()) and False, **settings)
    return [(a - b) / alpha for a, b in zip(thetas[:-1], thetas[1:], strict=True)]


def test_the_first_epoch_steps_along_z_and_then_along_the_full_hypergradient():
    """With steps too short to move theta, SAGA's direction after the first epoch is the mean
    of every sample's G_i at (nearly) that theta: the full hypergradient, not the batch's."""
    p = tv(6, size=8)
    common = dict(batch_size=2, eps0=1e-9, delta0=1e-9, max_iter=5, **SCHEDULE)
    plain = directions(p, 1e-7, **common)
    reduced = directions(p, 1e-7, variance_reduction="saga", **common)
    assert len(plain) == len(reduced) == 5
    for k in range(3):  # the first epoch (3 batches of 2): z_B
        torch.testing.assert_close(reduced[k], plain[k], rtol=0, atol=0)
    full = bilevel.hypergradient(p, p.initial_theta(), 1e-11, 1e-11).grad
    for k in (3, 4):  # the second epoch
        assert float((reduced[k] - full).norm()) <= 1e-5 * float(full.norm())
        assert float((plain[k] - full).norm()) >= 1e-2 * float(full.norm())


def test_a_resumed_saga_run_is_the_unbroken_run(tmp_path):
    p, path = tv(6, size=8), tmp_path / "ck.pt"
    common = dict(batch_size=2, alpha0=0.05, eps0=1e-3, delta0=1e-4,
                  variance_reduction="saga", precondition="rmsprop", **SCHEDULE)
    unbroken = quiet_solve(p, "maid_sgd", max_iter=8, **common)
    quiet_solve(p, "maid_sgd", max_iter=4, checkpoint_path=path, **common)
    with pytest.warns(bilevel.ConvergenceWarning, match="max_iter"):
        resumed = bilevel.resume(p, path, max_iter=8)
    assert torch.equal(resumed.theta, unbroken.theta)
    assert resumed.state.table.shape == (6, p.initial_theta().numel())


@pytest.mark.parametrize("settings", [dict(step="line_search", accuracy="schedule"),
                                      dict(step="schedule", accuracy="search"),
                                      dict(step="schedule", accuracy="schedule", alpha0=None),
                                      dict(variance_reduction="sag")])
def test_saga_needs_a_scheduled_step_and_accuracy(settings):
    options = {"alpha0": 0.1, "variance_reduction": "saga", **settings}
    with pytest.raises(ValueError, match="variance_reduction"):
        bilevel.outer.make_method("maid_sgd", **options)


DRIVER = """
import json, sys, warnings
import bilevel, bilevel.distributed as bd
rank, world = bd.init("gloo")
problem = bd.data_parallel("tv_denoising", n_images=8, size=8, seed=1)
thetas = [problem.initial_theta()]
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    bilevel.solve(problem, "maid_sgd", batch_size=4, alpha0=1e-7, eps0=1e-9, delta0=1e-9,
                  max_iter=4, step="schedule", step_power=0, accuracy="schedule",
                  final_check=False, variance_reduction="saga",
                  callback=lambda s, r: thetas.append(s.theta.clone()) and False)
json.dump([((a - b) / 1e-7).tolist() for a, b in zip(thetas[:-1], thetas[1:], strict=True)],
          open(sys.argv[1] + f".{rank}", "w"))
bd.finish()
"""


def test_data_parallel_saga_takes_its_means_over_every_rank(tmp_path):
    """Two ranks of 4 images each: after the first epoch SAGA's direction is the full
    hypergradient of all 8 images, so the tables' means run over both ranks."""
    import json

    from test_distributed import _torchrun

    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    done = _torchrun([str(script), str(tmp_path / "out")])
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"out.{r}").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]
    p = bilevel.make_problem("tv_denoising", n_images=8, size=8, seed=1)
    full = bilevel.hypergradient(p, p.initial_theta(), 1e-11, 1e-11).grad
    for k in (2, 3):  # an epoch is 2 batches of 2 images per rank
        step = torch.tensor(ranks[0][k], dtype=torch.float64)
        assert float((step - full).norm()) <= 1e-5 * float(full.norm())
