"""Every figure script's --quick run produces its three files."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script,png", [("quadratic", "quadratic.png"),
                                        ("logreg_vs_hoag", "logreg_vs_hoag.png"),
                                        ("tv_robustness", "tv_robustness.png"),
                                        ("learned_foe", "filters.png"),
                                        ("foe_vs_hoag", "foe_vs_hoag.png")])
def test_quick_figure(tmp_path, script, png):
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / f"{script}.py"), "--quick",
                           "--out", str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    with open(tmp_path / "data.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["quick"] is True and "environment" in meta
    assert (tmp_path / png).stat().st_size > 10_000
    if script == "learned_foe":  # not one of the paper's figures: no separate plot step
        return
    (tmp_path / png).unlink()
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / f"{script}.py"), "--replot",
                           "--out", str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / png).stat().st_size > 10_000


def test_quick_learned_tv(tmp_path):
    """learned_tv --quick: its files, a learned weight that denoises, and --replot."""
    script = str(ROOT / "scripts" / "learned_tv.py")
    done = subprocess.run([sys.executable, script, "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    with open(tmp_path / "data.csv") as f:
        rows = {r["method"]: r for r in csv.DictReader(f)}  # last grid row per method
    assert float(rows["learned"]["psnr"]) > float(rows["noisy"]["psnr"]) + 3
    assert json.loads((tmp_path / "meta.json").read_text())["quick"] is True
    (tmp_path / "learned_tv.png").unlink()
    done = subprocess.run([sys.executable, script, "--replot", "--out", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "learned_tv.png").stat().st_size > 10_000


def test_quick_certificate_tightness(tmp_path):
    """benchmarks/certificate_tightness.py --quick: both files, no bound below its true error."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "certificate_tightness.py"),
                           "--quick", "--out", str(tmp_path)], capture_output=True, text=True,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "certificate_tightness.json").read_text())
    assert result["quick"] is True and result["rows"]
    assert result["violations"] == 0, [r for r in result["rows"] if r["violation"]]
    assert all(s["cases"] > 0 for s in result["problems"].values())
    assert str(tmp_path) not in json.dumps(result)  # no absolute paths
    table = (tmp_path / "certificate_tightness.md").read_text()
    assert "| quadratic |" in table and str(tmp_path) not in table


def test_quick_plugin_regularizer(tmp_path):
    """plugin_regularizer --quick: MAID in both dtypes against a grid, its files, --replot."""
    script = str(ROOT / "scripts" / "plugin_regularizer.py")
    done = subprocess.run([sys.executable, script, "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["quick"] is True
    assert set(summary["maid"]) == {"float64", "float32", "float64 L-BFGS", "float32 L-BFGS"}
    for run in summary["maid"].values():
        assert run["iterations"] >= 1 and not run["certified"]  # estimated constants
        assert run["final_psnr"] > summary["start"]["psnr"]
        assert 1 <= run["constant_estimates"] <= run["iterations"]
    assert summary["grid"]["points"] >= 9 and summary["grid"]["lower_iterations"] > 0
    assert "| MAID float32 |" in (tmp_path / "summary.md").read_text()
    assert json.loads((tmp_path / "meta.json").read_text())["quick"] is True
    png = tmp_path / "plugin_regularizer.png"
    png.unlink()
    done = subprocess.run([sys.executable, script, "--replot", "--out", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert png.stat().st_size > 10_000
