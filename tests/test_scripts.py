"""Every script and benchmark: ``--quick`` writes its files in seconds, and ``--replot``
redraws from those files alone, on a quick run and on a copy of each committed run.

Run in this process (no interpreter start-up per run).  ``--replot`` runs with the
script's ``compute``, the runner and the image loaders replaced by functions that
raise, and must leave every data file as it was.
"""
import importlib.util
import json
import math
import os
import shutil
import sys
import tempfile
from functools import cache
from pathlib import Path

import pytest
import torch
from bilevel_problems import datasets

import bilevel
from bilevel import experiment
from bilevel.results import RunFolder

ROOT = Path(__file__).resolve().parents[1]

#: script -> the figures its plot draws from a quick run.
SCRIPTS = {
    "quadratic": ["quadratic.png"],
    "tv_robustness": ["tv_robustness.png"],
    "quadratic_table": [],
    "learned_foe": ["filters.png", "example.png"],
    "learned_tv": ["learned_tv.png"],
    "lipschitz_1d": ["lipschitz_1d.png"],
    "lipschitz_noisy": ["lipschitz_noisy.png"],
    "spline_digits": ["activations.png"],
    "foe_vs_hoag": ["foe_vs_hoag.png"],
    "logreg_vs_hoag": ["logreg_vs_hoag.png"],
    "plugin_regularizer": ["plugin_regularizer.png"],
    "reconstruction": ["reconstruction.png"],
    "reconstruction_priors": ["priors.png"],
    "train_denoiser": ["training.png"],
}
#: benchmark -> (its extra arguments, the meta file of a quick run).
BENCHMARKS = {
    "certificate_tightness": ([], "certificate_tightness.json"),
    "denoiser_speed": ([], "denoiser_speed_cpu.json"),
    "hvp_closed_form": (["--threads", "1"], "hvp_closed_form_threads1.json"),
    "ridge_vs_foe": ([], "ridge_vs_foe.json"),
    "ridge_borders": ([], "ridge_borders.json"),
    "scale": ([], "scale.json"),
    "sleeping_filters": (["--run", str(ROOT / "results/denoisers/ridge_tv_sigma25")],
                         "sleeping_filters.json"),
    "spline_activation": ([], "spline_activation.json"),
}
#: Committed benchmark results: (benchmark, extra arguments, their meta file).
COMMITTED_BENCHMARKS = [("certificate_tightness", [], "certificate_tightness.json"),
                        ("denoiser_speed", [], "denoiser_speed_cpu.json"),
                        ("denoiser_speed", ["--device", "cuda"], "denoiser_speed_cuda.json"),
                        ("hvp_closed_form", [], "hvp_closed_form.json"),
                        ("hvp_closed_form", ["--threads", "1"], "hvp_closed_form_threads1.json"),
                        ("ridge_vs_foe", [], "ridge_vs_foe.json"),
                        ("scale", [], "scale.json"),
                        ("sleeping_filters", [], "sleeping_filters.json"),
                        ("spline_activation", [], "spline_activation.json")]
#: Files --replot writes: figures and summaries (everything else is data).
DRAWN = (".png", ".md")
#: Benchmarks whose quick run starts several interpreters (torchrun, memory probes).
SLOW_QUICK = {"scale"}


@cache
def module(kind, name):
    """scripts/NAME.py or benchmarks/NAME.py, imported (scripts/ on the path for _figure)."""
    if str(ROOT / "scripts") not in sys.path:
        sys.path.insert(0, str(ROOT / "scripts"))
    spec = importlib.util.spec_from_file_location(f"{kind}_{name}", ROOT / kind / f"{name}.py")
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


def data_files(folder):
    """{relative path: bytes} of every file --replot must not touch."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.suffix not in DRAWN}


def boom(*args, **kwargs):
    raise AssertionError("--replot computed something")


def replot(monkeypatch, kind, name, folder, extra=()):
    """--replot with everything that computes replaced by ``boom``: data files unchanged."""
    script = module(kind, name)
    before = data_files(folder)
    with monkeypatch.context() as m:
        m.setattr(script, "compute", boom)
        m.setattr(experiment, "run_method", boom)
        for loader in ("train_test_images", "load_images", "skimage_images", "add_noise"):
            m.setattr(datasets, loader, boom)
        script.main(["--replot", "--out", str(folder), *extra])
    assert data_files(folder) == before


#: Where this machine's paths start (a meta file may name /proc files, not these).
MACHINE = (str(ROOT.parent), tempfile.gettempdir(), str(Path.home()))


def no_absolute_paths(value):
    """No string in a meta file names an absolute path of this machine, nor holds one."""
    if isinstance(value, dict):
        return all(no_absolute_paths(v) for v in value.values())
    if isinstance(value, list):
        return all(no_absolute_paths(v) for v in value)
    return not isinstance(value, str) or not any(os.path.isabs(w) and w.startswith(MACHINE)
                                                 for w in value.split())


# ------------------------------------------------- what some quick runs must show
def learned_tv_denoises(folder):
    """The weight MAID learns in the quick run denoises the held-out images."""
    rows = {r["method"]: r for r in RunFolder(folder).read_rows()}
    assert rows["learned"]["psnr"] > rows["noisy"]["psnr"] + 3


def plugin_regularizer_summary(folder):
    """MAID in both dtypes and both directions against a grid, in summary.json."""
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["quick"] is True
    assert set(summary["maid"]) == {"float64", "float32", "float64 L-BFGS", "float32 L-BFGS"}
    for run in summary["maid"].values():
        assert run["iterations"] >= 1 and not run["certified"]  # estimated constants
        assert run["final_psnr"] > summary["start"]["psnr"]
        assert 1 <= run["constant_estimates"] <= run["iterations"]
    assert summary["grid"]["points"] >= 9 and summary["grid"]["lower_iterations"] > 0
    assert "| MAID float32 |" in (folder / "summary.md").read_text()


def reconstruction_improves(folder):
    """Learned TV (both MAID variants) and the grid reconstruct better than the measurements."""
    psnr = {r["method"]: r["psnr"] for r in RunFolder(folder).read_rows("heldout.csv")}
    assert set(psnr) == {"measured", "grid", "grid oracle", "MAID", "MAID L-BFGS"}
    assert min(psnr["grid"], psnr["MAID"], psnr["MAID L-BFGS"]) > psnr["measured"] + 2
    runs_recorded(folder)
    assert "| MAID L-BFGS |" in (folder / "summary.md").read_text()


def priors_improve(folder):
    """Every learned model (TV, the transferred prior, its grid, the learned FoE) reconstructs
    better than the measurements; the prior as trained on denoising is reported too."""
    psnr = {r["method"]: r["psnr"] for r in RunFolder(folder).read_rows("heldout.csv")}
    assert set(psnr) == {"measured", "TV (learned)", "FoE prior (as trained)", "FoE transfer",
                         "FoE transfer grid", "FoE (learned)"}
    learned = ("TV (learned)", "FoE transfer", "FoE transfer grid", "FoE (learned)")
    assert min(psnr[k] for k in learned) > psnr["measured"] + 1
    runs_recorded(folder)


def trained_model_loads(folder):
    """The run folder is a model: bilevel.load rebuilds it without its training data and it
    denoises (a smoke test; tests/test_load.py checks the numbers)."""
    import torch

    import bilevel

    model = bilevel.load(folder)
    assert model.name == "fields_of_experts" and model.theta.numel() == 1 + 2 * 8 + 8 * 25
    y = torch.rand(12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert model.denoise(y).shape == (12, 12)
    # The final check's bracket holds F at the saved theta, solved tightly on the same patches.
    meta = json.loads((Path(folder) / "meta.json").read_text())
    clean, noisy, _ = module("scripts", "train_denoiser").training_pairs(
        meta["patches"], meta["patch_size"], meta["sigma"])
    problem = bilevel.registry.make_problem(meta["problem"], images=clean, noisy=noisy,
                                            sigma=meta["sigma"] / 255)
    x = problem.solve_lower(model.theta, 1e-11, max_iter=100_000).x
    F, check = float(problem.upper_objective(x, model.theta)), meta["final_check"]
    assert check["certified"] and check["lower_bound"] <= F <= check["upper_bound"]


def runs_recorded(folder):
    """One row per run, its status and warnings as columns."""
    runs = RunFolder(folder).read_rows("runs.csv")
    assert runs and all(r["status"] and "warnings" in r for r in runs)


def no_violation(folder):
    result = json.loads((folder / "certificate_tightness.json").read_text())
    assert result["rows"] and result["violations"] == 0, \
        [r for r in result["rows"] if r["violation"]]
    assert all(s["cases"] > 0 for s in result["problems"].values())
    assert "| quadratic |" in (folder / "certificate_tightness.md").read_text()


def sleeping_counted(folder):
    """The sleeping filters are those with every slope below 0.01 s_max (s_max = 1), and
    a run with sleeping filters is measured woken too."""
    for row in json.loads((folder / "sleeping_filters.json").read_text())["rows"]:
        assert row["asleep"] == [k for k, v in enumerate(row["largest_slopes"]) if v < 0.01]
        assert ("woken" in row) == bool(row["asleep"])
        assert row["learned"]["taps_asleep"] is not None and row["woken"]["F"] > 0


CHECKS = {"learned_tv": learned_tv_denoises, "plugin_regularizer": plugin_regularizer_summary,
          "quadratic": runs_recorded, "tv_robustness": runs_recorded,
          "foe_vs_hoag": runs_recorded, "certificate_tightness": no_violation,
          "reconstruction": reconstruction_improves, "reconstruction_priors": priors_improve,
          "train_denoiser": trained_model_loads, "sleeping_filters": sleeping_counted}


# ----------------------------------------------------------------------- scripts
@pytest.mark.parametrize("operator", ["superresolution", "mri", "tomography"])
def test_reconstruction_of_other_operators(tmp_path, operator):
    """The measurements shown are a real image (A^T y / ||A||^2) and TV improves on them."""
    module("scripts", "reconstruction").main(["--quick", "--operator", operator, "--no-plot",
                                              "--out", str(tmp_path)])
    psnr = {r["method"]: r["psnr"] for r in RunFolder(tmp_path).read_rows("heldout.csv")}
    assert all(math.isfinite(v) for v in psnr.values())
    assert min(psnr["grid"], psnr["MAID"], psnr["MAID L-BFGS"]) > psnr["measured"]


def test_train_denoiser_first_step(tmp_path):
    """--alpha0 reaches the method: the first search starts there and only halves it."""
    module("scripts", "train_denoiser").main(["--quick", "--model", "tv", "--alpha0", "0.3",
                                              "--no-plot", "--out", str(tmp_path)])
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["settings"]["alpha0"] == 0.3
    first = RunFolder(tmp_path).read_rows("data.csv")[0]
    halvings = math.log2(0.3 / first["step"]) if first["step"] > 0 else 0.0
    assert halvings >= 0 and halvings == pytest.approx(round(halvings), abs=1e-9)


def test_train_denoiser_tv_start_scales_with_sigma():
    """--start tv at sigma 15 starts at TV's weight 0.07 * 15 / 25: alpha psi'(R) = 0.042
    for the two differences (the Huber-like potentials' slope beyond the window)."""
    import argparse

    train = module("scripts", "train_denoiser")
    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    spec = train.spec(parser.parse_args(["--model", "ridge", "--start", "tv", "--sigma", "15",
                                         "--filters", "2", "--filter-size", "3"]))
    assert spec.endswith("start=tv, tv_weight=0.042]")
    assert "tv_weight" not in train.spec(parser.parse_args(["--model", "wcrr", "--start", "tv"]))
    ridge = bilevel.make_problem(spec)
    theta = ridge.initial_theta()
    (slope,) = ridge.potentials(theta, torch.tensor([ridge.x_range], dtype=torch.float64),
                                orders=(1,))
    alpha = float(ridge.params(theta)[0])
    assert alpha * slope[:2, 0] == pytest.approx([0.042, 0.042], rel=1e-6)
    with pytest.raises(SystemExit, match="--start tv"):
        train.spec(parser.parse_args(["--model", "ridge", "--tv-weight", "0.05"]))



def test_train_denoiser_device_and_a_budget_spent_before_the_first_iteration(tmp_path):
    """--device is recorded (and a device torch does not see is one error before any
    computing); a budget spent loading the crops still writes a folder that loads."""
    train = module("scripts", "train_denoiser")
    train.main(["--quick", "--model", "tv", "--device", "cpu", "--max-time", "1e-9",
                "--out", str(tmp_path / "run")])
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    assert (meta["device"], meta["iterations"], meta["status"]) == ("cpu", 0, "max_time")
    assert "on cpu" in (tmp_path / "run" / "summary.md").read_text()
    model = bilevel.load(tmp_path / "run")
    torch.testing.assert_close(model.theta, model.problem.initial_theta())
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="--device cuda: this torch sees no CUDA"):
            train.main(["--quick", "--model", "tv", "--device", "cuda", "--out",
                        str(tmp_path / "bad")])
        assert not (tmp_path / "bad" / "data.csv").exists()


def test_train_denoiser_method_settings(tmp_path):
    """--set reaches the method (its rows then certify every direction) and a setting the
    method does not have is one error before any computing."""
    train = module("scripts", "train_denoiser")
    train.main(["--quick", "--model", "tv", "--method", "maid_lbfgs", "--no-plot", "--set",
                "direction_test=always", "--set", "max_conditioning_growth=inf",
                "--out", str(tmp_path / "run")])
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    assert meta["settings"] == {"direction_test": "always", "max_conditioning_growth": math.inf}
    rows = RunFolder(tmp_path / "run").read_rows("data.csv")
    assert rows and all(r["direction_certified"] for r in rows if r["accepted"])
    with pytest.raises(SystemExit, match="no setting"):
        train.main(["--quick", "--model", "tv", "--set", "bogus=1", "--out",
                    str(tmp_path / "bad")])
    assert not (tmp_path / "bad" / "data.csv").exists()


def test_train_denoiser_resume_adds_a_final_check_and_refuses_other_settings(tmp_path):
    """A run trained without a final check is given one by --resume --set final_check=loss
    (its theta unchanged); another setting than the checkpoint's is refused, not ignored."""
    train = module("scripts", "train_denoiser")
    run = ["--quick", "--model", "tv", "--no-plot", "--out", str(tmp_path)]
    train.main(run + ["--set", "final_check=False"])
    meta = json.loads((tmp_path / "meta.json").read_text())
    theta = json.loads((tmp_path / "theta.json").read_text())
    assert meta["final_check"] is None
    train.main(run + ["--resume", "--set", "final_check=loss"])
    meta = json.loads((tmp_path / "meta.json").read_text())
    check = meta["final_check"]
    assert check["samples"] == 8 and not check["refined"]
    # the certified bracket holds F(theta) = g(x*), to the half-width asked (1e-5 relative);
    # it is second order, so it need not hold g(x~) itself
    clean, noisy, _ = train.training_pairs(8, 16, sigma=25.0)
    problem = bilevel.make_problem(meta["problem"], images=clean, noisy=noisy, sigma=25 / 255)
    F = bilevel.hypergradient(problem, torch.tensor(theta, dtype=torch.float64), 1e-11,
                              1e-11).upper_value
    assert check["lower_bound"] <= F <= check["upper_bound"]
    assert check["upper_bound"] - check["lower_bound"] <= 2e-5 * F
    assert json.loads((tmp_path / "theta.json").read_text()) == theta
    with pytest.raises(SystemExit, match="eps0=0.1 vs 0.5"):
        train.main(run + ["--resume", "--set", "eps0=0.5"])


def test_train_denoiser_trains_one_model_on_two_ranks_and_resumes(tmp_path):
    """--distributed under torchrun: each rank its share of every batch and its own
    checkpoint, rank 0 the folder; --resume goes on from the ranks' checkpoints, and the
    final check brackets F at the saved theta as one process solves it."""
    from test_distributed import _torchrun

    train = module("scripts", "train_denoiser")
    run = [str(ROOT / "scripts" / "train_denoiser.py"), "--quick", "--model", "wcrr",
           "--distributed", "--no-plot", "--checkpoint-every", "1", "--set",
           "final_check=loss", "--out", str(tmp_path)]
    for extra in (["--max-iter", "2"], ["--max-iter", "3", "--resume"]):
        done = _torchrun(run + extra)
        assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.glob("checkpoint*")) == \
        ["checkpoint.rank0of2.pt", "checkpoint.rank1of2.pt"]
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["ranks"] == 2 and meta["iterations"] == 3
    assert all(r["batch_size"] == 4 for r in RunFolder(tmp_path).read_rows("data.csv"))
    assert "Command: `torchrun --nproc-per-node 2 " in (tmp_path / "summary.md").read_text()
    clean, noisy, _ = train.training_pairs(8, 16, sigma=25.0)
    problem = bilevel.make_problem(meta["problem"], images=clean, noisy=noisy, sigma=25 / 255)
    theta = torch.tensor(json.loads((tmp_path / "theta.json").read_text()), dtype=torch.float64)
    F = bilevel.hypergradient(problem, theta, 1e-11, 1e-11).upper_value
    check = meta["final_check"]
    assert check["samples"] == 8 and check["lower_bound"] <= F <= check["upper_bound"]
    one = _torchrun(run[:1] + ["--quick", "--model", "foe", "--distributed", "--out",
                               str(tmp_path / "foe")])
    assert one.returncode != 0 and "does not support data-parallel solves" in one.stderr


def test_train_denoiser_stops_on_sigterm_with_its_folder_written(tmp_path):
    """``kill PID`` ends a background run as Ctrl-C does: status 'interrupted', the rows
    and theta written, a checkpoint to resume."""
    import signal
    import subprocess
    import time

    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "train_denoiser.py"), "--quick", "--model",
         "tv", "--no-plot", "--max-iter", "100000", "--max-time", "120",
         "--checkpoint-every", "1", "--out", str(out)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"))
    deadline = time.monotonic() + 90
    while not (out / "checkpoint.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "interrupted", output
    assert RunFolder(out).read_rows("data.csv") and (out / "theta.json").is_file()


def test_train_denoiser_init_carries_a_run_into_a_larger_bank(tmp_path):
    """--init RUN_DIR --wake --wake-norm: the run starts at ridge_embedding.embed of the
    learned theta (the first row's upper value is g there), and the folder says where it started;
    --init-scale F starts at ridge_embedding.rescale of it."""

    from bilevel_problems.ridge_embedding import embed, rescale

    train = module("scripts", "train_denoiser")
    small, big = tmp_path / "small", tmp_path / "big"
    common = ["--quick", "--model", "ridge", "--start", "tv", "--no-plot", "--alpha0", "0.05",
              "--method", "maid_lbfgs"]
    train.main(common + ["--filters", "2", "--filter-size", "3", "--max-iter", "1",
                         "--out", str(small)])
    train.main(common + ["--filters", "3", "--filter-size", "5", "--max-iter", "1",
                         "--init", str(small), "--wake", "0.05", "--wake-norm", "0.5",
                         "--out", str(big)])
    meta = json.loads((big / "meta.json").read_text())
    assert meta["init"].endswith("small") and meta["wake"] == 0.05 and meta["wake_norm"] == 0.5
    assert "woken at 0.05 s_max, norm 0.5" in (big / "summary.md").read_text()
    learned, new = bilevel.load(small), bilevel.load(big)
    start = embed(new.problem, learned.problem, learned.theta, wake=0.05, wake_norm=0.5)
    assert new.problem.slopes(start)[2].max() == pytest.approx(0.05)
    assert new.problem.filters(start)[2].norm() == pytest.approx(0.5)
    first = RunFolder(big).read_rows("data.csv")[0]
    clean, noisy, _ = train.training_pairs(8, 16, sigma=25.0)
    problem = bilevel.make_problem(meta["problem"], images=clean, noisy=noisy, sigma=25 / 255)
    g = {name: bilevel.hypergradient(problem, theta, 1e-8, 1e-8).upper_value
         for name, theta in (("start", start), ("theta0", problem.theta0))}
    # |g(x~) - g(x*)| <= ||grad g|| eps + eps^2 / 2, and ||grad g|| = sqrt(2 g / N) < 1 here
    assert first["upper_value"] == pytest.approx(g["start"], abs=first["eps"])
    assert abs(g["theta0"] - g["start"]) > 2 * first["eps"]
    with pytest.raises(SystemExit, match="--wake is for --init"):
        train.main(common + ["--wake", "0.05", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="--wake-norm is for --model ridge / wcrr with --wake"):
        train.main(common + ["--init", str(small), "--wake-norm", "0.5",
                             "--out", str(tmp_path / "x")])
    # --init-scale: the same bank, its regularizer halved (ridge_embedding.rescale)
    half = tmp_path / "half"
    train.main(common + ["--filters", "2", "--filter-size", "3", "--max-iter", "1", "--init",
                         str(small), "--init-scale", "0.5", "--out", str(half)])
    assert json.loads((half / "meta.json").read_text())["init_scale"] == 0.5
    halved = rescale(learned.problem, learned.theta, 0.5)
    first = RunFolder(half).read_rows("data.csv")[0]
    problem = bilevel.make_problem(learned.spec, images=clean, noisy=noisy, sigma=25 / 255)
    g_half = bilevel.hypergradient(problem, halved, 1e-8, 1e-8).upper_value
    assert first["upper_value"] == pytest.approx(g_half, abs=first["eps"])
    assert abs(g_half - bilevel.hypergradient(problem, learned.theta, 1e-8, 1e-8).upper_value) \
        > 2 * first["eps"]
    for args, message in ((common + ["--init-scale", "0.5"], "--init-scale is for --init"),
                          (["--quick", "--model", "tv", "--init", str(small), "--init-scale",
                            "0.5"], "--init-scale is for --model foe / ridge / wcrr")):
        with pytest.raises(SystemExit, match=message):
            train.main(args + ["--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="no run folder"):
        train.main(common + ["--init", str(tmp_path / "none"), "--out", str(tmp_path / "y")])
    # --split: twice the learned filters, the run starting at embed(split=F)
    split = tmp_path / "split"
    train.main(common + ["--filters", "4", "--filter-size", "3", "--max-iter", "1", "--init",
                         str(small), "--split", "0.1", "--out", str(split)])
    meta = json.loads((split / "meta.json").read_text())
    assert meta["split"] == 0.1 and "split in two" in (split / "summary.md").read_text()
    doubled = bilevel.load(split)
    start = embed(doubled.problem, learned.problem, learned.theta, split=0.1)
    problem = bilevel.make_problem(meta["problem"], images=clean, noisy=noisy, sigma=25 / 255)
    first = RunFolder(split).read_rows("data.csv")[0]
    assert first["upper_value"] == pytest.approx(
        bilevel.hypergradient(problem, start, 1e-8, 1e-8).upper_value, abs=first["eps"])
    for args, message in ((common + ["--split", "0.1"], "--split is for --init"),
                          (common + ["--init", str(small), "--split", "0.1", "--wake", "0.05"],
                           "--split is for --model ridge / wcrr, without --wake")):
        with pytest.raises(SystemExit, match=message):
            train.main(args + ["--out", str(tmp_path / "x")])


def test_train_denoiser_init_carries_a_field_of_experts_into_a_larger_bank(tmp_path):
    """--init for the FoE: the run starts at foe_embedding.embed (weight --wake)."""

    from bilevel_problems.foe_embedding import embed

    train = module("scripts", "train_denoiser")
    small, big = tmp_path / "small", tmp_path / "big"
    common = ["--quick", "--model", "foe", "--no-plot", "--alpha0", "0.1", "--max-iter", "1",
              "--method", "maid"]
    train.main(common + ["--filters", "2", "--filter-size", "3", "--out", str(small)])
    train.main(common + ["--filters", "3", "--filter-size", "5", "--init", str(small),
                         "--wake", "0.3", "--set", "eps0=1e-6", "--out", str(big)])
    learned, new = bilevel.load(small), bilevel.load(big)
    start = embed(new.problem, learned.problem, learned.theta, weight=0.3)
    first = RunFolder(big).read_rows("data.csv")[0]
    clean, noisy, _ = train.training_pairs(8, 16, sigma=25.0)
    problem = bilevel.make_problem(new.spec, images=clean, noisy=noisy, sigma=25 / 255)
    g, g0 = (bilevel.hypergradient(problem, theta, 1e-8, 1e-8).upper_value
             for theta in (start, problem.theta0))
    assert first["upper_value"] == pytest.approx(g, abs=first["eps"])
    assert abs(g0 - g) > 2 * first["eps"]


def test_train_denoiser_init_carries_a_field_of_experts_into_a_ridge(tmp_path):
    """--init FOE_RUN --model wcrr: the run starts at ridge_embedding.from_fields_of_experts
    on the grid of --knots / --x-range, with --rho; those flags belong to the ridges."""
    import argparse

    from bilevel_problems.ridge_embedding import from_fields_of_experts

    train = module("scripts", "train_denoiser")
    foe, wcrr = tmp_path / "foe", tmp_path / "wcrr"
    common = ["--quick", "--no-plot", "--max-iter", "1", "--filters", "2", "--filter-size", "3"]
    train.main(common + ["--model", "foe", "--alpha0", "0.1", "--method", "maid",
                         "--out", str(foe)])
    train.main(common + ["--model", "wcrr", "--knots", "41", "--x-range", "0.5", "--rho", "0.3",
                         "--alpha0", "0.01", "--method", "maid", "--init", str(foe),
                         "--out", str(wcrr)])
    learned, new = bilevel.load(foe), bilevel.load(wcrr)
    assert (new.problem.num_knots, new.problem.x_range, new.problem.rho) == (41, 0.5, 0.3)
    concavity = new.problem.concavity(new.theta)
    assert (f"certified mu = {concavity['mu']:.4f} (1 - rho = 0.7)"
            in (wcrr / "summary.md").read_text())
    start = from_fields_of_experts(new.problem, learned.problem, learned.theta)
    first = RunFolder(wcrr).read_rows("data.csv")[0]
    clean, noisy, _ = train.training_pairs(8, 16, sigma=25.0)
    problem = bilevel.make_problem(new.spec, images=clean, noisy=noisy, sigma=25 / 255)
    g = bilevel.hypergradient(problem, start, 1e-8, 1e-8).upper_value
    assert first["upper_value"] == pytest.approx(g, abs=first["eps"])
    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    for flags, name in ((["--rho", "0.5"], "--rho"), (["--knots", "41"], "--knots"),
                        (["--x-range", "0.5"], "--x-range"),
                        (["--floor-bound", "symbol"], "--floor-bound")):
        with pytest.raises(SystemExit, match=f"{name} is for"):
            train.spec(parser.parse_args(["--model", "foe"] + flags))
    spec = train.spec(parser.parse_args(["--model", "wcrr", "--rho", "0"]))
    assert "rho=0.0" in spec  # 0 is a value, not "unset"
    spec = train.spec(parser.parse_args(["--model", "wcrr", "--floor-bound", "symbol"]))
    assert bilevel.make_problem(spec, **bilevel.registry.get_entry(
        "weakly_convex_ridge").test_params).floor_bound == "symbol"


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_quick_then_replot(tmp_path, monkeypatch, name):
    module("scripts", name).main(["--quick", "--out", str(tmp_path)])
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["quick"] is True and meta["script"] == f"scripts/{name}.py"
    assert "environment" in meta and no_absolute_paths(meta)
    for file in meta.get("files", {}):
        assert (tmp_path / file).stat().st_size > 0, file
    CHECKS.get(name, lambda folder: None)(tmp_path)
    for png in SCRIPTS[name]:
        assert (tmp_path / png).stat().st_size > 10_000
        (tmp_path / png).unlink()
    replot(monkeypatch, "scripts", name, tmp_path)
    for png in SCRIPTS[name]:
        assert (tmp_path / png).stat().st_size > 10_000


def committed_scripts():
    """(script, committed run folder) for every results/SCRIPT folder with a meta.json."""
    return [(name, str(meta.parent.relative_to(ROOT))) for name in SCRIPTS
            for meta in sorted((ROOT / "results" / name).glob("**/meta.json"))]


@pytest.mark.parametrize("name,folder", committed_scripts())
def test_script_replots_its_committed_results(tmp_path, monkeypatch, name, folder):
    copy = tmp_path / "run"
    shutil.copytree(ROOT / folder, copy)
    drawn = {p.name for p in copy.iterdir() if p.suffix in DRAWN}
    replot(monkeypatch, "scripts", name, copy)
    assert drawn <= {p.name for p in copy.iterdir()}


# -------------------------------------------------------------------- benchmarks
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_QUICK
                                  else n for n in BENCHMARKS])
def test_benchmark_quick_then_replot(tmp_path, monkeypatch, name):
    extra, meta_name = BENCHMARKS[name]
    module("benchmarks", name).main(["--quick", "--out", str(tmp_path), *extra])
    meta = json.loads((tmp_path / meta_name).read_text())
    assert meta["quick"] is True and "environment" in meta and no_absolute_paths(meta)
    CHECKS.get(name, lambda folder: None)(tmp_path)
    table = tmp_path / meta_name.replace(".json", ".md")
    table.unlink()
    replot(monkeypatch, "benchmarks", name, tmp_path, extra)
    assert table.stat().st_size > 0


@pytest.mark.parametrize("name,extra,meta_name", COMMITTED_BENCHMARKS)
def test_benchmark_replots_its_committed_results(tmp_path, monkeypatch, name, extra,
                                                 meta_name):
    stem = meta_name.removesuffix(".json")
    for path in (ROOT / "results" / "benchmarks").glob(f"{stem}*"):
        shutil.copy(path, tmp_path)
    table = tmp_path / f"{stem}.md"
    table.unlink()
    replot(monkeypatch, "benchmarks", name, tmp_path, extra)
    assert table.stat().st_size > 0


def test_train_denoiser_crops_per_image_takes_several_crops_of_each_image(tmp_path):
    """--crops-per-image C: patch i is a crop of image i // C (a window of it found by
    search), C different crops per image; C = 1 is the one-crop-per-image default."""

    from bilevel_problems import datasets

    train = module("scripts", "train_denoiser")
    clean, _, _ = train.training_pairs(6, 16, sigma=25.0, crops_per_image=3)
    folder = bilevel.experiment.image_folder("train", None)  # BSD400 here, else bundled
    images = datasets.folder_images(folder, limit=2) if folder else datasets.skimage_images()
    for i, patch in enumerate(clean):
        windows = images[i // 3].double().unfold(0, 16, 1).unfold(1, 16, 1)
        assert float((windows - patch).abs().amax(dim=(-2, -1)).min()) < 1e-6
    assert not torch.equal(clean[0], clean[1])
    one, _, _ = train.training_pairs(2, 16, sigma=25.0)
    windows = images[1].double().unfold(0, 16, 1).unfold(1, 16, 1)
    assert float((windows - one[1]).abs().amax(dim=(-2, -1)).min()) < 1e-6
    with pytest.raises(SystemExit, match="crops-per-image"):
        train.main(["--quick", "--crops-per-image", "0", "--out", str(tmp_path / "x")])


def test_local_rate_cost_lowers_omega_and_keeps_the_steps(tmp_path):
    # The local rate only ever lowers omega; where both ways take the same decisions, the
    # local rate asks for no smaller eps and pays no more lower + CG iterations.
    module("benchmarks", "local_rate_cost").main(
        ["--quick", "--model", str(ROOT / "results/denoisers/wcrr_tv_sigma25"),
         "--out", str(tmp_path)])
    found = json.loads((tmp_path / "local_rate_cost.json").read_text())
    local, plain = found["omega"][:3], found["omega"][3:6]
    assert all(a["omega"] <= b["omega"] for a, b in zip(local, plain, strict=True))
    runs = found["training"]
    assert [run["way"] for run in runs] == ["local rates", "global constants",
                                            "local rates + newton"]
    if runs[0]["decisions"] == runs[1]["decisions"]:
        assert runs[0]["cost"] <= runs[1]["cost"]
    assert no_absolute_paths(found) and (tmp_path / "local_rate_cost.md").stat().st_size > 0


def test_sensitivity_cost_sharpens_omega_on_reconstructions(tmp_path):
    # The solved K only enters through a min: omega never grows; on the blur it is sharper
    # by far (mu = gamma = 1e-3), and each final interval contains its own ||z||.
    module("benchmarks", "sensitivity_cost").main(
        ["--quick", "--operators", "blur", "--out", str(tmp_path)])
    found = json.loads((tmp_path / "sensitivity_cost.json").read_text())
    plain, solved, newton = (found["omega"][i:i + 3] for i in (0, 3, 6))
    assert all(b["omega"] <= a["omega"] for a, b in zip(plain, solved, strict=True))
    assert solved[-1]["omega"] < plain[-1]["omega"] / 10
    assert all(row["K"] is None for row in plain) and all(row["K"] > 0 for row in solved)
    # The same x~, a smaller certified eps: never a larger omega.
    for a, b in zip(solved, newton, strict=True):
        assert b["lower_bound"] <= a["lower_bound"] and b["omega"] <= a["omega"] * (1 + 1e-9)
    assert [row["way"] for row in found["maid"]] == ["B_norm / mu", "solves", "solves + newton"]
    assert no_absolute_paths(found) and (tmp_path / "sensitivity_cost.md").stat().st_size > 0
