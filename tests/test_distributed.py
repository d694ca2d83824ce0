"""Data-parallel solves: 2 gloo processes follow the 1-process theta trajectory."""
import json
import os
import subprocess
import sys
import textwrap
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


def test_data_parallel_needs_a_process_group():
    import torch.distributed as dist

    if dist.is_initialized():
        pytest.skip("a process group is already active")
    with pytest.raises(RuntimeError, match="initialised"):
        bilevel.distributed.data_parallel("quadratic")
