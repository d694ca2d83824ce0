"""benchmarks/training_loss.py: learned models' F on the same training crops, bracketed."""
import json

import pytest
import torch
from test_scripts import module

import bilevel


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A quick FoE run (8 crops of 16 x 16) with a checkpoint, and its training crops."""
    folder = tmp_path_factory.mktemp("foe")
    train = module("scripts", "train_denoiser")
    train.main(["--quick", "--model", "foe", "--no-plot", "--filters", "2", "--filter-size", "3",
                "--alpha0", "0.1", "--set", "average=0.5", "--out", str(folder)])
    return folder, train.training_pairs(8, 16, sigma=25.0)


def test_brackets_hold_the_loss_and_checkpoints_give_both_iterates(run, tmp_path):
    folder, (clean, noisy, _) = run
    bench = module("benchmarks", "training_loss")
    common = ["--patches", "8", "--crops-per-image", "1", "--patch-size", "16", "--crops", "4",
              "--out", str(tmp_path)]
    spec = bilevel.load(folder).spec
    rows = bench.main(common + ["--model", f"foe={folder}", "--model",
                                f"ck={folder / 'checkpoint.pt'}", "--spec", spec])
    assert [(r["model"], r["theta"]) for r in rows] == [
        ("foe", "returned"), ("ck", "last iterate"), ("ck", "average")]
    index = torch.arange(0, 8, 2)
    problem = bilevel.make_problem(spec, images=clean[index], noisy=noisy[index],
                                   sigma=25 / 255)
    state = torch.load(folder / "checkpoint.pt", weights_only=False)["state"]
    for row, theta in zip(rows, (bilevel.load(folder).theta, state["theta"],
                                 state["theta_average"]), strict=True):
        sol = problem.solve_lower(theta, 1e-12, max_iter=100_000)
        F = float(problem.upper_objective(sol.x, theta))
        assert row["lower_bound"] <= F <= row["upper_bound"]
        assert row["upper_bound"] - row["lower_bound"] < 1e-6
    saved = json.loads((tmp_path / "training_loss.json").read_text())
    assert saved["crops"] == [0, 2, 4, 6]
    numbers = ("model", "theta", "lower_bound", "upper_bound")  # paths are written relative
    assert [{k: r[k] for k in numbers} for r in saved["rows"]] == \
        [{k: r[k] for k in numbers} for r in rows]
    with pytest.raises(SystemExit, match="--spec"):
        bench.main(common + ["--model", f"ck={folder / 'checkpoint.pt'}"])
    with pytest.raises(SystemExit, match="--crops"):
        bench.main(common + ["--crops", "9", "--model", f"foe={folder}"])


def test_paired_batches_reads_a_checkpoint_and_a_folder_of_the_same_run(run):
    """A run against itself (its data.csv and its checkpoint's history, the same batches):
    every difference is zero; a window of fewer than two iterations (no standard error) is
    dropped."""
    folder, _ = run
    bench = module("benchmarks", "paired_batches")
    n = len(bench.history(folder))
    assert n == 3  # the quick run's iterations
    for windows, spans in (("0", [(1, 3)]), ("0,2", [(1, 2)])):
        rows = bench.main([str(folder / "checkpoint.pt"), str(folder), "--windows", windows])
        assert [r[:2] for r in rows] == spans
        assert all(r[2] == 0 and r[3] == 0 and r[4] == r[5] for r in rows)
    bench.main([str(folder / "checkpoint.pt"), str(folder), "--plot",
                str(folder / "paired.png"), "--span", "2"])
    assert (folder / "paired.png").stat().st_size > 0
