"""Run lifecycle: the command line, run folders, checkpoints, resume, interrupts, plot.

One test per defect of issue 15 (D3-D7, D13-D15), named after it.  Most call the
command line in-process (``bilevel.__main__.main``); the interrupt tests run it in
a subprocess that signals itself at a fixed lower-level call (deterministic).
"""
import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from bilevel_problems.quadratic import Quadratic

import bilevel
from bilevel.__main__ import main
from bilevel.checkpoint import (
    CheckpointMismatchError,
    CorruptCheckpointError,
    load_checkpoint,
    problem_fingerprint,
    save_checkpoint,
)
from bilevel.results import CorruptRunError, RunFolder, load_run, plot_run, write_csv

ROOT = Path(__file__).resolve().parents[1]
SPEC = "quadratic[n=60,m=3,distribution=normal]"
PARAMS = dict(n=60, m=3, distribution="normal")


@pytest.fixture(autouse=True)
def _quiet_convergence():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bilevel.ConvergenceWarning)
        yield


def cli(*argv):
    return main(["run", *map(str, argv), "--quiet"])


def theta_of(run_dir):
    return json.loads((Path(run_dir) / "theta.json").read_text())


def one_error_line(capsys, *needles):
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if "error" in line]
    assert len(errors) == 1 and "Traceback" not in "\n".join(err), err
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def straight(tmp_path, iters, name="straight"):
    assert cli(SPEC, "--max-iter", iters, "--out", tmp_path / name) == 0
    return theta_of(tmp_path / name)


# ------------------------------------------------------------------ D3 fingerprint
def test_d3_resume_refuses_other_problem(tmp_path):
    path = tmp_path / "ck.pt"
    bilevel.solve(Quadratic(**PARAMS), "maid", max_iter=4, checkpoint_path=path)
    with pytest.raises(CheckpointMismatchError, match="data differ in"):
        bilevel.resume(Quadratic(**PARAMS, seed=7), path, max_iter=8)
    with pytest.raises(CheckpointMismatchError, match="theta_shape"):
        bilevel.resume(Quadratic(n=60, m=4, distribution="normal"), path, max_iter=8)
    with pytest.raises(CheckpointMismatchError, match="tol=1e-06 vs 0.001"):
        load_checkpoint(path, Quadratic(**PARAMS), method=bilevel.outer.MAID(tol=1e-3))
    assert len(bilevel.resume(Quadratic(**PARAMS), path, max_iter=8).history) == 8


def test_d3_a_setting_newer_than_the_checkpoint_reads_as_its_default(tmp_path):
    """A checkpoint written before MAID had max_conditioning_growth (and its state
    restart_step) resumes; asking for another value of the new setting is refused."""
    path = tmp_path / "ck.pt"
    bilevel.solve(Quadratic(**PARAMS), "maid", max_iter=4, checkpoint_path=path)
    payload = torch.load(path, weights_only=True)
    del payload["settings"]["max_conditioning_growth"], payload["state"]["restart_step"]
    torch.save(payload, path)
    load_checkpoint(path, Quadratic(**PARAMS), method=bilevel.outer.MAID())
    with pytest.raises(CheckpointMismatchError, match="max_conditioning_growth=100.0 vs 10"):
        load_checkpoint(path, Quadratic(**PARAMS),
                        method=bilevel.outer.MAID(max_conditioning_growth=10))
    assert len(bilevel.resume(Quadratic(**PARAMS), path, max_iter=6).history) == 6


def test_d3_cli_resume_refuses_other_problem_and_settings(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli(SPEC, "--max-iter", 3, "--out", run) == 0
    capsys.readouterr()
    assert cli("quadratic[n=60,m=3]", "--resume", run) == 2
    one_error_line(capsys, "solves", "quadratic[n=60,m=3,distribution=normal]")
    assert cli("--resume", run, "--method", "hoag") == 2
    one_error_line(capsys, "--method maid")
    assert cli("--resume", run, "--set", "eps0=0.01") == 2
    one_error_line(capsys, "eps0=0.1 vs 0.01")
    assert cli("--resume", run, "--tol", "1e-3") == 2
    one_error_line(capsys, "tol=1e-06 vs 0.001")
    # The fingerprint catches what meta.json does not say (here: meta.json edited).
    meta = json.loads((run / "meta.json").read_text())
    (run / "meta.json").write_text(json.dumps(dict(meta, problem="quadratic[n=60,m=3]")))
    assert cli("--resume", run, "--max-iter", 6) == 2
    one_error_line(capsys, "belongs to another problem", "data differ")
    assert len(load_run(run)[0]) == 3  # nothing was overwritten


def test_d3_checkpoint_without_fingerprint_loads_with_a_warning(tmp_path):
    problem = Quadratic(**PARAMS)
    path = tmp_path / "ck.pt"
    bilevel.solve(problem, "maid", max_iter=3, checkpoint_path=path)
    payload = torch.load(path, weights_only=True)
    payload.update(format=1)
    del payload["problem"], payload["run"]
    torch.save(payload, path)
    with pytest.warns(UserWarning, match="no fingerprint"):
        assert len(bilevel.resume(problem, path, max_iter=5).history) == 5


# ---------------------------------------------------------- D4 extend a finished run
def test_d4_resume_extends_a_finished_run_with_a_larger_budget(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli(SPEC, "--max-iter", 4, "--out", run) == 0
    assert cli("--resume", run, "--max-iter", 9) == 0
    rows, meta, _ = load_run(run)
    assert len(rows) == 9 and meta["max_iter"] == 9 and meta["status"] == "max_iter"
    assert theta_of(run) == straight(tmp_path, 9)
    cost = rows[-1]["cost"]
    assert cli("--resume", run, "--max-iter", 50, "--max-cost", 2 * cost) == 0
    rows, meta, _ = load_run(run)
    assert meta["status"] == "max_cost" and 9 < len(rows) < 50


def test_d4_resume_reopens_a_run_stopped_on_its_budget_or_an_interrupt(tmp_path):
    problem = Quadratic(**PARAMS)
    method = bilevel.outer.make_method("maid")
    path = tmp_path / "ck.pt"
    first = bilevel.solve(problem, method, max_iter=4)
    for status in ("interrupted", "max_cost"):
        stopped = dataclasses.replace(first.state, status=status)
        save_checkpoint(path, method, stopped, first.history,
                        problem=problem_fingerprint(problem))
        resumed = bilevel.resume(problem, path, max_iter=7)
        assert resumed.status == "max_iter" and len(resumed.history) == 7


# --------------------------------------------------------------- D5 --resume --out
def test_d5_resume_reads_the_run_dir_and_writes_out(tmp_path):
    run, copy = tmp_path / "run", tmp_path / "copy"
    assert cli(SPEC, "--max-iter", 4, "--out", run) == 0
    before = (run / "checkpoint.pt").read_bytes()
    assert cli("--resume", run, "--max-iter", 7, "--out", copy) == 0
    assert (run / "checkpoint.pt").read_bytes() == before  # the original is left as it was
    assert len(load_run(run)[0]) == 4 and len(load_run(copy)[0]) == 7
    assert json.loads((copy / "meta.json").read_text())["resumed_from"] == str(run)
    assert theta_of(copy) == straight(tmp_path, 7)


# ------------------------------------------------------------------ D6 --out checks
def test_d6_out_is_checked_before_computing(tmp_path, capsys, monkeypatch):
    def no_solve(*args, **kwargs):
        raise AssertionError("solved before --out was checked")

    monkeypatch.setattr(bilevel.outer, "solve", no_solve)
    (tmp_path / "file").write_text("x")
    assert cli(SPEC, "--out", tmp_path / "file") == 2
    one_error_line(capsys, "exists and is not a folder")
    assert cli(SPEC, "--out", tmp_path / "file" / "sub") == 2
    one_error_line(capsys, "is a file, not a folder")
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    assert cli(SPEC, "--out", tmp_path / "new") == 2
    one_error_line(capsys, "cannot write")
    assert not (tmp_path / "new").exists()


def test_d6_existing_run_folder_needs_overwrite(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli(SPEC, "--max-iter", 3, "--out", run, "--checkpoint-every", 1) == 0
    capsys.readouterr()
    other = "quadratic[n=60,m=4,distribution=normal]"
    assert cli(other, "--max-iter", 2, "--out", run) == 2
    one_error_line(capsys, "already holds a run", "--overwrite")
    assert len(load_run(run)[0]) == 3
    (run / "curves.png").write_bytes(b"old")
    assert cli(other, "--max-iter", 2, "--out", run, "--overwrite") == 0
    assert len(load_run(run)[0]) == 2 and not (run / "curves.png").exists()
    # The checkpoint is the new run's: it resumes on the new problem.
    problem = bilevel.make_problem(other)
    assert len(bilevel.resume(problem, run / "checkpoint.pt", max_iter=4).history) == 4


# ----------------------------------------------------------- D7 Ctrl-C and SIGTERM
SIGNALLER = textwrap.dedent("""
    import os, signal, sys
    from bilevel_problems.quadratic import Quadratic
    from bilevel.__main__ import main

    # As in an interactive shell: a background job (CI, `cmd &`) inherits SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    calls, original = [0], Quadratic.lower_grad

    def lower_grad(self, x, theta):  # the signal comes mid-iteration, at a fixed call
        calls[0] += 1
        if calls[0] == 40:
            os.kill(os.getpid(), getattr(signal, sys.argv[1]))
        return original(self, x, theta)

    Quadratic.lower_grad = lower_grad
    sys.exit(main(["run", sys.argv[2], "--max-iter", "30", "--quiet", "--out", sys.argv[3]]))
""")


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_d7_interrupted_run_writes_what_it_has_and_resumes(tmp_path, signame):
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "-c", SIGNALLER, signame, SPEC, str(run)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr
    rows, meta, _ = load_run(run)
    assert meta["status"] == "interrupted" and 0 < len(rows) < 30
    assert len(torch.load(run / "checkpoint.pt", weights_only=True)["history"]) == len(rows)
    assert cli("--resume", run) == 0
    assert json.loads((run / "meta.json").read_text())["status"] == "max_iter"
    assert theta_of(run) == straight(tmp_path, 30)


# ----------------------------------------------------------- D13 one-line errors
@pytest.mark.parametrize("argv,needle", [
    (["--set", "eps0=nan"], "eps0"),
    (["--set", "eps0"], "KEY=VALUE"),
    (["--set", "no_such=1"], "no_such"),
])
def test_d13_cli_errors_are_one_line(argv, needle, capsys):
    assert cli(SPEC, *argv) == 2
    one_error_line(capsys, needle)


def test_d13_bad_flags_and_specs_are_one_line(capsys):
    for flag in (["--max-cost", "nan"], ["--max-cost", "-1"], ["--max-iter", "-3"]):
        with pytest.raises(SystemExit) as exit_:
            cli(SPEC, *flag)
        assert exit_.value.code == 2
        one_error_line(capsys, flag[0])
    assert cli("quadratic[n=abc]") == 2
    one_error_line(capsys, "abc")
    assert cli("no_such_problem") == 2
    one_error_line(capsys, "unknown problem")


# -------------------------------------------------------- D14 corrupt checkpoints
class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("damage", ["truncated", "garbage", "pickle", "list", "no_state",
                                    "bad_settings", "no_theta", "unknown_method"])
def test_d14_corrupt_checkpoint_is_a_clear_error(tmp_path, damage):
    problem = Quadratic(**PARAMS)
    path = tmp_path / "ck.pt"
    bilevel.solve(problem, "maid", max_iter=3, checkpoint_path=path)
    payload = torch.load(path, weights_only=True)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    elif damage == "garbage":
        path.write_bytes(b"\x00not a torch file" * 10)
    elif damage == "pickle":
        torch.save({"format": 2, "evil": Evil()}, path)
    elif damage == "list":
        torch.save([1, 2], path)
    else:
        if damage == "no_state":
            del payload["state"]
        elif damage == "bad_settings":
            payload["settings"]["no_such_setting"] = 1
        elif damage == "no_theta":
            payload["state"]["theta"] = "x"
        else:
            payload["method"] = "Evil"
        torch.save(payload, path)
    with pytest.raises(CorruptCheckpointError, match=f"^corrupt checkpoint: {path}: "):
        bilevel.resume(problem, path, max_iter=5)


def test_d14_corrupt_meta_json_is_a_clear_error(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli(SPEC, "--max-iter", 2, "--out", run) == 0
    capsys.readouterr()
    meta = json.loads((run / "meta.json").read_text())
    for text in ("{not json", "[1, 2]", json.dumps({k: v for k, v in meta.items()
                                                    if k != "settings"}),
                 json.dumps(dict(meta, max_iter="many"))):
        (run / "meta.json").write_text(text)
        assert cli("--resume", run) == 2
        one_error_line(capsys, "corrupt run folder", "meta.json")
    (run / "meta.json").unlink()
    assert cli("--resume", run) == 2
    one_error_line(capsys, "no meta.json")


# ---------------------------------------------------------------------- D15 plot
@pytest.mark.parametrize("damage,needle", [
    ("no_meta", "no meta.json"), ("no_theta", "no theta.json"), ("no_data", "no data.csv"),
    ("empty", "no rows"), ("header_only", "no rows"), ("truncated", "truncated"),
    ("text", "not a number"),
])
def test_d15_plot_refuses_an_incomplete_run_folder(tmp_path, capsys, damage, needle):
    run = tmp_path / "run"
    assert cli(SPEC, "--max-iter", 3, "--out", run) == 0
    capsys.readouterr()
    data = run / "data.csv"
    lines = data.read_text().splitlines(keepends=True)
    if damage == "no_meta":
        (run / "meta.json").unlink()
    elif damage == "no_theta":
        (run / "theta.json").unlink()
    elif damage == "no_data":
        data.unlink()
    elif damage == "empty":
        data.write_text("")
    elif damage == "header_only":
        data.write_text(lines[0])
    elif damage == "truncated":
        data.write_text("".join(lines[:-1]) + lines[-1][:20])
    else:
        data.write_text("".join(lines[:-1]) + lines[-1].replace(lines[-1].split(",")[0],
                                                                "abc", 1))
    with pytest.raises((CorruptRunError, FileNotFoundError), match=needle):
        plot_run(run)
    assert main(["plot", str(run)]) in (1, 2)
    one_error_line(capsys, needle)
    assert not (run / "curves.png").exists()


def test_d15_data_csv_is_written_atomically(tmp_path, monkeypatch):
    import csv

    path = tmp_path / "data.csv"
    write_csv(path, [dict(a=1, b=2)])

    def fail(self, rows):
        raise OSError("disk full")

    monkeypatch.setattr(csv.DictWriter, "writerows", fail)
    with pytest.raises(OSError, match="disk full"):
        write_csv(path, [dict(a=3, b=4)])
    assert path.read_text().splitlines() == ["a,b", "1,2"]


def test_a_missing_table_is_named_in_the_error(tmp_path):
    """Reading a table a folder lacks names that table, whichever it is (per_image.csv of
    an evaluation once read 'no data.csv')."""
    folder = RunFolder(tmp_path)
    with pytest.raises(CorruptRunError, match="no per_image.csv"):
        folder.read_rows("per_image.csv")
