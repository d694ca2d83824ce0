"""bilevel.experiment: the runner's columns, the shared command line, the image folder."""
import json
import warnings
from pathlib import Path

import pytest
from bilevel_problems.quadratic import Quadratic

from bilevel import experiment
from bilevel.results import RunFolder, command_line


@pytest.fixture(scope="module")
def problem():
    return Quadratic(n=30, m=3, seed=0)


# -------------------------------------------------------------------- the runner
def test_runs_are_labelled_and_their_warnings_recorded_not_shown(problem):
    runs = [experiment.Run("MAID", "maid", dict(eps0=1e-2)), experiment.Run("HOAG", "hoag_cubic")]
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        outcomes = experiment.run_methods(problem, runs, report=False, max_iter=3)
    assert not shown  # the ConvergenceWarning of max_iter went to the records
    rows = experiment.history_rows(outcomes, keep=("iteration", "cost"))
    assert [set(r) for r in rows] == [{"run", "method", "iteration", "cost"}] * 6
    assert [r["run"] for r in rows] == ["MAID"] * 3 + ["HOAG"] * 3
    summary = experiment.summary_rows(outcomes)
    assert [s["status"] for s in summary] == ["max_iter", "max_iter"]
    assert all(s["warnings"].startswith("ConvergenceWarning: ") for s in summary)
    assert json.loads(summary[0]["settings"]) == {"eps0": 1e-2}


def test_record_adds_columns_and_callback_stops(problem):
    outcome = experiment.run_method(
        problem, experiment.Run("MAID"), max_iter=10,
        record=lambda state, row: {"theta0": float(state.theta[0])},
        callback=lambda state, row: row["iteration"] == 2)
    assert outcome.result.status == "callback" and len(outcome.history) == 2
    assert all("theta0" in row for row in outcome.rows())
    assert outcome.rows()[-1]["theta0"] == float(outcome.result.theta[0])


def test_run_settings_override_the_common_ones(problem):
    outcome = experiment.run_method(problem, experiment.Run("few", settings=dict(max_iter=1)),
                                    max_iter=5)
    assert len(outcome.history) == 1


# -------------------------------------------------------------- the command line
def toy(calls):
    """A script whose compute writes data.csv and whose plot writes a figure stand-in."""
    def compute(args, folder):
        calls.append(("compute", args.out))
        folder.write_rows("data.csv", [dict(x=1.0, y=2.0)])
        return dict(answer=42)

    def plot(folder):
        calls.append(("plot", folder.read_rows()[0]["y"]))
        folder.write_text("figure.png", "drawn")

    return compute, plot


def test_quick_writes_a_temporary_folder_never_results(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    calls = []
    compute, plot = toy(calls)
    out = experiment.main("Toy.", "toy", compute, plot=plot, argv=["--quick"])
    assert not (tmp_path / "results").exists() and not out.is_relative_to(tmp_path)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["quick"] is True and meta["answer"] == 42
    assert meta["command"] == "python scripts/toy.py --quick"
    assert meta["environment"]["command"] == meta["command"]


def test_replot_draws_from_the_files_and_computes_nothing(tmp_path):
    calls = []
    compute, plot = toy(calls)
    experiment.main("Toy.", "toy", compute, plot=plot, argv=["--out", str(tmp_path)])
    before = (tmp_path / "meta.json").read_bytes()
    calls.clear()
    experiment.main("Toy.", "toy", compute, plot=plot, argv=["--replot", "--out", str(tmp_path)])
    assert calls == [("plot", 2.0)]
    assert (tmp_path / "meta.json").read_bytes() == before


def test_replot_refuses_a_folder_without_a_finished_run(tmp_path):
    compute, plot = toy([])
    with pytest.raises(SystemExit, match="no finished run"):
        experiment.main("Toy.", "toy", compute, plot=plot,
                        argv=["--replot", "--out", str(tmp_path)])


def test_a_failed_compute_leaves_no_meta_file(tmp_path):
    """The meta file marks a finished run: the previous one is gone once a new run starts."""
    compute, plot = toy([])
    experiment.main("Toy.", "toy", compute, argv=["--out", str(tmp_path)])

    def fails(args, folder):
        raise RuntimeError("stopped")

    with pytest.raises(RuntimeError):
        experiment.main("Toy.", "toy", fails, argv=["--out", str(tmp_path)])
    assert not (tmp_path / "meta.json").exists()


def test_no_absolute_path_in_a_run_folder(tmp_path):
    RunFolder(tmp_path).write_json("meta.json", dict(out=str(tmp_path / "x"), path=tmp_path,
                                                     note="see /proc/self/status there"))
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert not Path(meta["out"]).is_absolute() and not Path(meta["path"]).is_absolute()
    assert meta["note"] == "see /proc/self/status there"  # prose is left alone
    assert command_line(["--out", str(tmp_path)], "scripts/x.py").split()[-1] \
        == meta["path"]


# ------------------------------------------------------------------ image folders
def test_image_folder_given_then_environment_then_shared_then_none(tmp_path, monkeypatch):
    """The order of bilevel.experiment.image_folder; every path it returns is relative."""
    monkeypatch.setattr(experiment, "REPOSITORY", tmp_path / "repository")
    monkeypatch.delenv("BILEVEL_DATA", raising=False)
    assert experiment.image_folder("Set12") is None  # a user's machine: scikit-image
    (tmp_path / "shared" / "data" / "bsd" / "Set12").mkdir(parents=True)
    shared = experiment.image_folder("Set12")
    assert Path(shared).resolve() == tmp_path / "shared" / "data" / "bsd" / "Set12"
    (tmp_path / "mine" / "bsd" / "Set12").mkdir(parents=True)
    monkeypatch.setenv("BILEVEL_DATA", str(tmp_path / "mine"))
    found = experiment.image_folder("Set12")
    assert not Path(found).is_absolute()
    assert Path(found).resolve() == tmp_path / "mine" / "bsd" / "Set12"
    assert experiment.image_folder("Set12", str(tmp_path)) == str(tmp_path)
    with pytest.raises(ValueError, match="no such folder"):
        experiment.image_folder("Set12", str(tmp_path / "missing"))
