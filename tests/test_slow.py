"""Long runs, deselected by default (``python -m pytest -m slow`` runs them)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_full_certificate_tightness_benchmark_has_no_violation(tmp_path):
    """The whole tightness grid (312 cases, about a minute): no bound below its true error."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "certificate_tightness.py"),
                           "--out", str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "certificate_tightness.json").read_text())
    assert result["quick"] is False and len(result["rows"]) >= 300
    assert result["violations"] == 0, [r for r in result["rows"] if r["violation"]]
