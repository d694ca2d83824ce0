"""Data-parallel solves: 2 gloo processes follow the 1-process theta trajectory."""
import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

import bilevel

ROOT = Path(__file__).resolve().parents[1]
PARAMS = dict(n_images=4, size=16, seed=3)

DRIVER = textwrap.dedent("""
    import json, sys, torch
    import bilevel, bilevel.distributed as bd
    rank, world = bd.init("gloo")
    problem = bd.data_parallel("tv_denoising", **{params})
    thetas = []
    result = bilevel.solve(problem, "maid", max_iter=25, tol=0,
                           callback=lambda s, r: thetas.append(s.theta.tolist()) and False)
    json.dump(dict(thetas=thetas, cost=[r["cost"] for r in result.history]),
              open(sys.argv[1] + f".{{rank}}", "w"))
    bd.finish()
""")


def _torchrun(args, **kw):
    # --standalone: the rendezvous store binds port 0 and the workers join it, so no
    # port is chosen here and released for another process to take first.
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", None)  # the workers reuse that store
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node", "2"] + args, capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=300, **kw)


def test_two_gloo_processes_follow_the_one_process_trajectory(tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER.format(params=PARAMS))
    done = _torchrun([str(script), str(tmp_path / "out")])
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"out.{r}").read_text()) for r in (0, 1)]
    assert ranks[0]["thetas"] == ranks[1]["thetas"]  # every rank took the same decisions

    problem = bilevel.make_problem("tv_denoising", **PARAMS)
    thetas = []
    with pytest.warns(bilevel.ConvergenceWarning, match="max_iter"):
        bilevel.solve(problem, "maid", max_iter=25, tol=0,
                      callback=lambda s, r: thetas.append(s.theta.tolist()) and False)
    reference = torch.tensor(thetas, dtype=torch.float64)
    parallel = torch.tensor(ranks[0]["thetas"], dtype=torch.float64)
    assert parallel.shape == reference.shape
    assert float((parallel - reference).abs().max()) <= 1e-10
    assert float(reference[-1].sub(reference[0]).abs().max()) > 1e-3  # theta did move


def test_distributed_command_line(tmp_path):
    spec = "tv_denoising[n_images=4,size=16,seed=3]"
    done = _torchrun(["-m", "bilevel", "run", spec, "--distributed", "--max-iter", "10",
                      "--quiet", "--out", str(tmp_path / "dp")])
    assert done.returncode == 0, done.stderr[-3000:]
    one = subprocess.run([sys.executable, "-m", "bilevel", "run", spec, "--max-iter", "10",
                          "--quiet", "--out", str(tmp_path / "one")], capture_output=True,
                         text=True, cwd=ROOT)
    assert one.returncode == 0, one.stderr
    thetas = [json.loads((tmp_path / d / "theta.json").read_text()) for d in ("dp", "one")]
    assert thetas[0] == pytest.approx(thetas[1], abs=1e-10)


def test_distributed_command_line_checkpoints_and_resumes(tmp_path):
    """--checkpoint-every under --distributed: one file per rank; --resume (in place, and
    into a new folder) ends where an unbroken data-parallel run does."""
    spec = "tv_denoising[n_images=4,size=16,seed=3]"
    common = ["-m", "bilevel", "run", "--distributed", "--quiet"]
    for args in ([spec, "--max-iter", "10", "--out", str(tmp_path / "whole")],
                 [spec, "--max-iter", "4", "--checkpoint-every", "2", "--out",
                  str(tmp_path / "part")],
                 ["--resume", str(tmp_path / "part"), "--max-iter", "7", "--out",
                  str(tmp_path / "copy")],
                 ["--resume", str(tmp_path / "copy"), "--max-iter", "10"]):
        done = _torchrun(common + args)
        assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "part").glob("checkpoint*")) == \
        ["checkpoint.rank0of2.pt", "checkpoint.rank1of2.pt"]
    thetas = [json.loads((tmp_path / d / "theta.json").read_text()) for d in ("whole", "copy")]
    assert thetas[0] == thetas[1]
    assert json.loads((tmp_path / "copy" / "meta.json").read_text())["iterations"] == 10
    one = subprocess.run([sys.executable, "-m", "bilevel", "run", "--resume",
                          str(tmp_path / "part"), "--quiet", "--max-iter", "6"],
                         capture_output=True, text=True, cwd=ROOT)
    assert one.returncode != 0
    assert "the run was written by data-parallel ranks (checkpoint.rank0of2.pt" in one.stderr


def test_data_parallel_needs_a_process_group():
    import torch.distributed as dist

    if dist.is_initialized():
        pytest.skip("a process group is already active")
    with pytest.raises(RuntimeError, match="initialised"):
        bilevel.distributed.data_parallel("quadratic")


RIDGE = dict(n_images=4, size=12, seed=2, num_filters=3, filter_size=3, num_knots=7,
             x_range=0.2, rho=0.9, border=2)

RIDGE_DRIVER = textwrap.dedent("""
    import json, sys, torch
    import bilevel, bilevel.distributed as bd
    sys.path.insert(0, {tests!r})
    from test_distributed import ridge_numbers
    rank, world = bd.init("gloo")
    problem = bd.data_parallel("weakly_convex_ridge", **{params})
    json.dump(ridge_numbers(problem), open(sys.argv[1] + f".{{rank}}", "w"))
    bd.finish()
""")


def ridge_numbers(problem):
    """The weakly convex ridge's certified constants and local rates at a fixed (theta, x,
    q), and a short MAID trajectory: what a sharded problem must give as one process does."""
    theta = problem.initial_theta()
    x = problem.noisy + 0.05 * torch.sin(3 * problem.noisy)
    q = torch.cos(5 * problem.noisy) / problem.n_total
    constants = problem.bound_constants(theta, x)
    numbers = dict(B_norm=constants.B_norm, L_B=constants.L_B, L_g=constants.L_g,
                   L_Ainv=constants.L_Ainv, mu=problem.strong_convexity(theta),
                   hessian=problem.hessian_lipschitz_along(theta, x, q, 0.01, 0.02),
                   mixed=problem.mixed_lipschitz_along(theta, x, q, 0.01, 0.02))
    thetas = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bilevel.ConvergenceWarning)
        bilevel.solve(problem, "maid", max_iter=5, tol=0,
                      callback=lambda s, r: thetas.append(s.theta.tolist()) and False)
    return dict(numbers=numbers, thetas=thetas)


def test_a_sharded_weakly_convex_ridge_has_the_global_constants(tmp_path):
    """Every norm and patch Gram of the ridge's bound constants sums over the ranks: two
    gloo processes holding two images each give one process's constants, local rates
    and MAID steps."""
    script = tmp_path / "driver.py"
    script.write_text(RIDGE_DRIVER.format(params=RIDGE, tests=str(ROOT / "tests")))
    done = _torchrun([str(script), str(tmp_path / "out")])
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"out.{r}").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]  # every rank holds the global numbers
    one = ridge_numbers(bilevel.make_problem("weakly_convex_ridge", **RIDGE))
    for name, value in one["numbers"].items():
        assert ranks[0]["numbers"][name] == pytest.approx(value, rel=1e-10), name
    assert one["numbers"]["L_g"] == 0.25  # 1 / (all images), not this rank's 2
    reference, parallel = (torch.tensor(t["thetas"], dtype=torch.float64)
                           for t in (one, ranks[0]))
    assert parallel.shape == reference.shape == (5, reference.shape[1])
    assert float((parallel - reference).abs().max()) <= 1e-10
    assert float(reference[-1].sub(reference[0]).abs().max()) > 1e-4  # theta did move


CHECKPOINT_DRIVER = textwrap.dedent("""
    import json, shutil, sys, warnings
    from pathlib import Path
    import bilevel, bilevel.distributed as bd
    rank, world = bd.init("gloo")
    problem = bd.data_parallel("tv_denoising", n_images=6, size=8, seed=1)
    out = Path(sys.argv[1])
    common = dict(batch_size=2, final_check=False)
    errors = {{}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        unbroken = bilevel.solve(problem, "maid_sgd", max_iter=6, **common)
        bilevel.solve(problem, "maid_sgd", max_iter=3, checkpoint_path=out / "ck.pt",
                      checkpoint_every=1, **common)
        early = out / f"ck.rank{{rank}}of{{world}}.pt"
        shutil.copy(early, out / f"early.{{rank}}.pt")
        resumed = bilevel.resume(problem, out / "ck.pt", max_iter=6)
        bd.all_reduce(__import__("torch").zeros(1), "sum", None)  # every rank has saved
        files = sorted(p.name for p in out.glob("ck*"))
        if rank == 0:  # rank 0's file goes back to iteration 3, rank 1's stays at 6
            shutil.copy(out / "early.0.pt", early)
            shutil.copy(out / "early.0.pt", out / "lonely.rank0of2.pt")
            shutil.copy(out / "early.0.pt", out / "corrupt.rank0of2.pt")
        else:  # rank 1 alone cannot read its file
            (out / "corrupt.rank1of2.pt").write_bytes(b"not a checkpoint")
        bd.all_reduce(__import__("torch").zeros(1), "sum", None)  # the copies are in place
        for name in ("ck.pt", "lonely.pt", "corrupt.pt"):
            try:
                bilevel.resume(problem, out / name, max_iter=8)
            except Exception as exc:
                errors[name] = f"{{type(exc).__name__}}: {{exc}}"
    json.dump(dict(unbroken=unbroken.theta.tolist(), resumed=resumed.theta.tolist(),
                   iterations=len(resumed.history), files=files, errors=errors),
              open(out / f"out.{{rank}}.json", "w"))
    bd.finish()
""")


def test_data_parallel_checkpoints_are_one_file_per_rank(tmp_path):
    """Each rank writes and resumes its own samples' warm starts; a run resumed midway ends
    where the unbroken one does; ranks whose files disagree, are missing or are unreadable
    on one rank all refuse."""
    script = tmp_path / "driver.py"
    script.write_text(CHECKPOINT_DRIVER.format())
    done = _torchrun([str(script), str(tmp_path)])
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"out.{r}.json").read_text()) for r in (0, 1)]
    for out in ranks:
        assert out["files"] == ["ck.rank0of2.pt", "ck.rank1of2.pt"]
        assert out["iterations"] == 6 and out["resumed"] == out["unbroken"]
        assert out["errors"]["ck.pt"].startswith("CheckpointMismatchError")
        assert "3 to 6 iterations across the ranks" in out["errors"]["ck.pt"]
        assert out["errors"]["lonely.pt"].startswith("FileNotFoundError: no checkpoint of "
                                                     "each of 2 ranks")
    # rank 1's corrupt file: it says so, and rank 0 refuses too instead of waiting for it
    assert ranks[1]["errors"]["corrupt.pt"].startswith("CorruptCheckpointError")
    assert ranks[0]["errors"]["corrupt.pt"].startswith("CheckpointMismatchError: another rank "
                                                       "could not resume")
    assert ranks[0]["unbroken"] == ranks[1]["unbroken"]


@pytest.mark.slow
def test_the_distributed_training_benchmark_times_both_runs(tmp_path):
    """benchmarks/distributed_training.py: one process and two ranks, the same number of
    iterations each, both rows in its table."""
    from test_scripts import module

    out = tmp_path / "dt.md"
    module("benchmarks", "distributed_training").main(
        ["--patches", "8", "--max-iter", "3", "--out", str(out), "--", "--quick", "--model",
         "wcrr"])
    rows = [line for line in out.read_text().splitlines() if line.startswith("| 1 process")
            or line.startswith("| 2 ranks")]
    assert len(rows) == 2 and all(float(r.split("|")[4]) > 0 for r in rows)
