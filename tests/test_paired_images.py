"""benchmarks/paired_images.py: per-image PSNR differences of two evaluations."""
import pytest
from test_scripts import module

from bilevel.results import RunFolder


def _evaluation(path, psnrs, extra=None):
    """An evaluation folder's per_image.csv: the noisy row and one learned model per image."""
    rows = []
    for i, (model, value) in enumerate(psnrs):
        image = f"test{i:03d}.png"
        rows.append(dict(set="Set68", sigma_255=25.0, image=image, model="noisy", psnr=20.0,
                         ssim="", seconds=0.0))
        rows.append(dict(set="Set68", sigma_255=25.0, image=image, model=model, psnr=value,
                         ssim=0.8, seconds=1.0))
    rows += extra or []
    path.mkdir()
    RunFolder(path).write_rows("per_image.csv", rows)
    return str(path)


def test_differences_are_paired_by_image(tmp_path):
    bench = module("benchmarks", "paired_images")
    a = _evaluation(tmp_path / "a", [("m", 28.0), ("m", 27.5), ("m", 30.25)])
    b = _evaluation(tmp_path / "b", [("n", 27.75), ("n", 27.5), ("n", 30.5)])
    n, mean, median, low, high, ahead = bench.main([a, b])
    assert (n, median, low, high, ahead) == (3, 0.0, -0.25, 0.25, 1)  # a tie is not ahead
    assert mean == pytest.approx(0.0, abs=1e-15)
    assert bench.main([a, a]) == (3, 0.0, 0.0, 0.0, 0.0, 0)
    c = _evaluation(tmp_path / "c", [("k", 27.0), ("k", 27.5), ("k", 30.0)])
    assert bench.main([a, c])[2] == pytest.approx(0.25)  # differences 1, 0, 0.25


def test_a_folder_with_two_learned_models_needs_one_named(tmp_path):
    bench = module("benchmarks", "paired_images")
    extra = [dict(set="Set68", sigma_255=25.0, image="test000.png", model="other", psnr=29.0,
                  ssim=0.8, seconds=1.0)]
    a = _evaluation(tmp_path / "a", [("m", 28.0)], extra)
    with pytest.raises(SystemExit, match="name one"):
        bench.main([a, a])
    assert bench.main([f"{a}:other", f"{a}:m"])[1] == pytest.approx(1.0)
    with pytest.raises(SystemExit, match="no model 'absent'"):
        bench.main([f"{a}:absent", f"{a}:m"])


def test_the_plot_is_drawn_from_the_same_pairs(tmp_path):
    bench = module("benchmarks", "paired_images")
    a = _evaluation(tmp_path / "a", [("m", 28.0), ("m", 27.5), ("m", 30.25)])
    b = _evaluation(tmp_path / "b", [("n", 27.75), ("n", 27.5), ("n", 30.5)])
    out = tmp_path / "diff.png"
    assert bench.main([a, b, "--plot", str(out)]) == bench.main([a, b])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_search_cost_differences_the_cumulative_counts():
    bench = module("benchmarks", "search_cost")
    rows = [dict(lower_iterations=10, cg_iterations=5, backtracks=0, accepted="True", step=1.0),
            dict(lower_iterations=30, cg_iterations=9, backtracks=0, accepted="True", step=0.5),
            dict(lower_iterations=70, cg_iterations=12, backtracks=1, accepted="True", step=0.25),
            dict(lower_iterations=80, cg_iterations=20, backtracks=0, accepted="False", step=0.0)]
    table, steps = bench.search_cost(rows)
    assert table == {1: (1, 40, 3), 0: (1, 10, 8)}
    assert steps == [0.25]
