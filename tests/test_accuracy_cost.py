"""benchmarks/accuracy_cost.py: batch hypergradients of a run's state, per accuracy."""
import argparse

import pytest
from test_scripts import module


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A quick weakly convex ridge run (8 crops of 16 x 16, rmsprop) with a checkpoint."""
    folder = tmp_path_factory.mktemp("wcrr")
    module("scripts", "train_denoiser").main(
        ["--quick", "--model", "wcrr", "--no-plot", "--filters", "2", "--filter-size", "3",
         "--knots", "11", "--alpha0", "0.01", "--set", "precondition=rmsprop",
         "--set", "final_check=False", "--out", str(folder)])
    return folder


def test_each_accuracy_starts_from_the_run_and_its_error_is_certified(run, tmp_path):
    bench = module("benchmarks", "accuracy_cost")
    tight, loose = (1e-10, 1e-12), (1e-2, 1e-3)
    out = tmp_path / "table.md"
    rows = bench.main([str(run), "--batches", "2", "--accuracies", "1e-10:1e-12,1e-2:1e-3",
                       "--reference", "1e-10:1e-12", "--out", str(out)])
    # The reference asked again from the same warm starts gives the same z: nothing the
    # first ask did leaked into the second's start.
    assert all(r[2] == 0.0 and r[3] == 0.0 for r in rows[tight])
    for _, _, z_error, d_error, omega, omega_ref, share in rows[loose]:
        # ||z - z_ref|| <= omega + omega_ref: both certificates hold (relative to ||z_ref||)
        assert 0 < z_error <= omega + omega_ref
        assert d_error > 0 and share < 1
    # a looser accuracy costs no more, from the same start
    assert all(a[0] + a[1] <= b[0] + b[1] for a, b in zip(rows[loose], rows[tight], strict=True))
    text = out.read_text()
    assert "| 0.01:0.001 |" in text and "Sampling noise" in text


def test_accuracies_are_checked():
    bench = module("benchmarks", "accuracy_cost")
    assert bench.accuracies("1e-4:1e-7,1e-3:1e-6") == [(1e-4, 1e-7), (1e-3, 1e-6)]
    for bad in ("1e-4", "1e-4:0", "a:b", "1e-4:1e-7:1", "1e-4:inf", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="eps:delta"):
            bench.accuracies(bad)
