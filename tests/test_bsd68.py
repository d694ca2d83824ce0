"""benchmarks/bsd68.py on two small images bundled with scikit-image (no data folder)."""
import json

import numpy as np
import pytest
from bilevel_problems import datasets
from test_scripts import module

from bilevel.results import RunFolder

SIGMA = 25 / 255


@pytest.fixture(scope="module")
def bench():
    return module("benchmarks", "bsd68")


@pytest.fixture(scope="module")
def images():
    stack = datasets.resize(datasets.skimage_images(["camera", "coins"]), (40, 48))
    return [image.numpy() for image in stack], ["camera", "coins"]


def set12_and_a_model(images, tmp_path):
    """(a data folder whose Set12/ holds ``images`` as PNGs, a learned TV's run folder)."""
    from skimage.io import imsave

    data = tmp_path / "bsd"
    (data / "Set12").mkdir(parents=True)
    for image, name in zip(*images, strict=True):
        imsave(data / "Set12" / f"{name}.png", (image * 255).round().astype(np.uint8))
    model = RunFolder(tmp_path / "tv", portable=False).open()
    model.write_text("theta.json", "[-2.6, -5.0]")
    model.write_meta({"problem": "tv_denoising[source='not/here']"})
    return data, model


def test_tv_oracle_and_fixed_noise(bench, images):
    weights = (0.02, 0.05, 0.1, 0.2)
    summary, rows, grid = bench.evaluate(*images, SIGMA, {}, weights=weights,
                                         progress=lambda line: None)
    assert summary["n_images"] == 2 and summary["sigma_255"] == 25
    assert set(summary["psnr"]) == {"noisy", bench.TV} and set(summary["ssim"]) == {bench.TV}
    # the oracle: the grid weight of the best mean PSNR, reported at that weight
    best = max(grid, key=lambda row: row["psnr"])
    assert summary["tv_weight"] == best["weight"] in weights
    assert summary["psnr"][bench.TV] == pytest.approx(best["psnr"])
    assert summary["psnr"][bench.TV] > summary["psnr"]["noisy"] + 3
    assert len(rows) == 4 and {r["model"] for r in rows} == {"noisy", bench.TV}
    # noise: seed i for image i, the same draw at every sigma, unclipped
    clean = images[0][1]
    noisy = bench.noisy_image(clean, SIGMA, seed=1)
    np.testing.assert_array_equal(noisy, bench.noisy_image(clean, SIGMA, seed=1))
    np.testing.assert_allclose((noisy - clean) / SIGMA,
                               (bench.noisy_image(clean, 0.5, seed=1) - clean) / 0.5)
    assert noisy.min() < 0 or noisy.max() > 1
    again, _, _ = bench.evaluate(*images, SIGMA, {}, weights=weights, progress=lambda _: None)
    assert again["psnr"] == summary["psnr"]


def test_workers_give_the_same_numbers(bench, images, tmp_path):
    """Images denoised in forked workers: the rows of the one-process evaluation, in the
    images' order, a learned model's included; the partial file holds every image."""
    _, model = set12_and_a_model(images, tmp_path)
    four = images[0] * 2, images[1] * 2
    models = {"TV learned": bench.learned_denoiser(model.path, tol=1e-4)}
    written = []
    runs = [bench.evaluate(*four, SIGMA, models, weights=(0.05, 0.1),
                           progress=lambda _: None, partial=written.append, workers=workers)
            for workers in (1, 3)]
    (one, rows_one, grid_one), (many, rows_many, grid_many) = runs
    assert one["psnr"] == many["psnr"] and one["ssim"] == many["ssim"]
    assert grid_one == grid_many
    key = [(r["image"], r["model"], r["psnr"], r["ssim"]) for r in rows_one]
    assert key == [(r["image"], r["model"], r["psnr"], r["ssim"]) for r in rows_many]
    assert len(written[-1]) == 8 and {r["model"] for r in written[-1]} == {"noisy",
                                                                           "TV learned"}

    def broken(y):
        raise ValueError("no such filter")

    with pytest.raises(RuntimeError, match="a worker failed:(.|\n)*no such filter"):
        bench.evaluate(*four, SIGMA, {"broken": broken}, weights=(0.05,),
                       progress=lambda _: None, workers=2)


def test_models_and_bm3d(bench, images):
    pytest.importorskip("bm3d")
    lines = []
    summary, rows, _ = bench.evaluate(*images, SIGMA, {"BM3D": bench.bm3d_denoiser(SIGMA),
                                                       "skipped": None},
                                      weights=(0.05, 0.1), progress=lines.append)
    assert len(lines) == 2 and "BM3D" in lines[0]
    assert "skipped" not in summary["psnr"]
    assert summary["psnr"]["BM3D"] > summary["psnr"][bench.TV]
    assert summary["seconds_per_image"]["BM3D"] > 0


def test_main_writes_the_folder(bench, images, tmp_path, capsys):
    data, model = set12_and_a_model(images, tmp_path)
    out = tmp_path / "out"
    bench.main(["--data", str(data), "--set", "Set12", "--sigma", "25", "--no-bm3d",
                "--model", f"learned TV={model.path}", "--out", str(out)])
    assert "2/2 coins.png" in capsys.readouterr().out
    (entry,) = json.loads((out / "summary.json").read_text())
    assert (entry["set"], entry["n_images"], entry["sigma_255"]) == ("Set12", 2, 25)
    assert entry["psnr"]["learned TV"] > entry["psnr"]["noisy"] + 3
    summary = (out / "summary.md").read_text()
    assert "BM3D 29.97" in summary  # published (Set12), listed though BM3D was not run
    meta = (out / "meta.json").read_text()
    assert "oracle" in summary and f'"{tmp_path}' not in meta and f" {tmp_path}" not in meta
    assert len((out / "per_image.csv").read_text().splitlines()) == 1 + 2 * 3  # 3 models
    with pytest.raises(SystemExit, match="no image set Set68"):
        bench.main(["--data", str(data), "--set", "Set68", "--out", str(out)])
    # One given TV weight: the row is TV at that weight, and the summary does not call it
    # an oracle.
    one = tmp_path / "one"
    bench.main(["--data", str(data), "--set", "Set12", "--sigma", "25", "--no-bm3d",
                "--tv-weights", "0.08", "--model", f"learned TV={model.path}", "--device",
                "cpu", "--out", str(one)])
    (single,) = json.loads((one / "summary.json").read_text())
    assert single["tv_weight"] == 0.08
    assert single["psnr"]["learned TV"] == pytest.approx(entry["psnr"]["learned TV"], abs=1e-6)
    assert "not the 41-weight oracle" in (one / "summary.md").read_text()
    assert json.loads((one / "meta.json").read_text())["device"] == "cpu"
    for bad in ("0.1,x", "-0.1", "inf"):
        with pytest.raises(SystemExit):
            bench.main(["--data", str(data), "--tv-weights", bad, "--out", str(one)])


def test_merge_copies_learned_models_into_the_baseline_folder(bench, tmp_path):
    base = RunFolder(tmp_path / "base", portable=False).open()
    entry = dict(set="Set68", sigma_255=25.0, n_images=68, tv_weight=0.07,
                 tv_weight_at_grid_edge=False, psnr={"noisy": 20.0, bench.TV: 27.5},
                 ssim={bench.TV: 0.75}, seconds_per_image={bench.TV: 0.1})
    base.write_json("summary.json", [entry])
    base.write_meta({"command": "python benchmarks/bsd68.py", "wall_time_s": 1.0,
                     "tv_weights": [0.01, 0.32, 41], "versions": {}})
    learned = RunFolder(tmp_path / "learned", portable=False).open()
    learned.write_json("summary.json", [dict(
        entry, psnr={"noisy": 20.0, bench.TV: 27.4, "ridge": 27.9},
        ssim={bench.TV: 0.74, "ridge": 0.78}, seconds_per_image={bench.TV: 0.1, "ridge": 50.0})])
    bench.main(["--merge", str(learned.path), "--out", str(base.path)])
    (merged,) = json.loads((base.path / "summary.json").read_text())
    # the learned model joins; the baseline's own TV (its images, its oracle) is kept
    assert merged["psnr"] == {"noisy": 20.0, bench.TV: 27.5, "ridge": 27.9}
    assert merged["ssim"]["ridge"] == 0.78 and merged["seconds_per_image"]["ridge"] == 50.0
    assert list(merged["learned_from"]) == ["ridge"]
    assert merged["learned_from"]["ridge"].endswith("/learned")
    assert "| ridge | 27.900 | 0.7800 |" in (base.path / "summary.md").read_text()
    other = RunFolder(tmp_path / "other", portable=False).open()
    other.write_json("summary.json", [dict(entry, n_images=2)])
    with pytest.raises(SystemExit, match="no such entry"):
        bench.main(["--merge", str(other.path), "--out", str(base.path)])


def test_example_figure_shows_the_evaluations_numbers(bench, images, tmp_path):
    """bsd68_example denoises image i with noise seed i, as the evaluation does: its PSNR /
    SSIM are the evaluation's rows for that image; TV at the evaluation's oracle weight."""
    example = module("benchmarks", "bsd68_example")
    data, model = set12_and_a_model(images, tmp_path)
    out = tmp_path / "out"
    common = ["--data", str(data), "--set", "Set12", "--sigma", "25", "--no-bm3d",
              "--out", str(out)]
    bench.main([*common, "--model", f"learned TV={model.path}"])
    rows = {r["model"]: r for r in RunFolder(out).read_rows("per_image.csv")
            if r["image"] == "coins.png"}
    png = example.main([*common, "--model", f"learned TV={model.path}", "--image", "coins.png",
                        "--crop", "4,8,20"])
    shown = json.loads(png.with_suffix(".json").read_text())
    assert png.is_file() and shown["index"] == shown["noise_seed"] == 1
    assert shown["tv_weight"] == json.loads((out / "summary.json").read_text())[0]["tv_weight"]
    for name in ("noisy", bench.TV, "learned TV"):
        assert shown["results"][name]["psnr"] == pytest.approx(rows[name]["psnr"], abs=1e-9)
    assert shown["results"]["learned TV"]["ssim"] == pytest.approx(rows["learned TV"]["ssim"],
                                                                   abs=1e-9)
    for bad in (["--image", "lena.png"], ["--image", "7"], ["--crop", "30,40,20"]):
        with pytest.raises(SystemExit, match="--image|--crop"):
            example.main([*common, *bad])


def test_resume_reuses_the_measured_images(bench, images, tmp_path, capsys):
    """--resume: the models are not run again on the images of per_image_partial.csv (their
    rows are taken as recorded), the others are evaluated; a partial file of another sigma,
    of another model, or none at all is refused, and so are two sets or sigmas."""
    data, model = set12_and_a_model(images, tmp_path)
    out = tmp_path / "out"
    args = ["--data", str(data), "--set", "Set12", "--sigma", "25", "--no-bm3d",
            "--tv-weights", "0.08", "--model", f"learned TV={model.path}", "--out", str(out)]
    with pytest.raises(SystemExit, match="no per_image_partial.csv"):
        bench.main(args + ["--resume"])
    bench.main(args)
    full = RunFolder(out).read_rows("per_image.csv")
    first = [dict(r, psnr=99.0) if r["model"] == "learned TV" else r
             for r in full if r["image"] == "camera.png" and r["model"] != bench.TV]
    RunFolder(out).write_rows("per_image_partial.csv", [
        {k: r[k] for k in ("image", "model", "psnr", "ssim", "seconds")} for r in first])
    capsys.readouterr()
    bench.main(args + ["--resume"])
    assert "learned TV 99.00 (resumed)" in capsys.readouterr().out
    again = {(r["image"], r["model"]): r["psnr"] for r in RunFolder(out).read_rows("per_image.csv")}
    assert again["camera.png", "learned TV"] == 99.0
    expected = {(r["image"], r["model"]): r["psnr"] for r in full}
    assert again["coins.png", "learned TV"] == pytest.approx(expected["coins.png", "learned TV"])
    assert json.loads((out / "meta.json").read_text())["resumed_images"] == 1
    assert not (out / "per_image_partial.csv").exists()
    RunFolder(out).write_rows("per_image_partial.csv", first)
    with pytest.raises(SystemExit, match="noisy PSNR"):
        bench.main([a if a != "25" else "15" for a in args] + ["--resume"])
    with pytest.raises(SystemExit, match="not among the models"):
        bench.main(args[:-4] + ["--model", f"other={model.path}", "--out", str(out),
                                "--resume"])
    with pytest.raises(SystemExit):
        bench.main(args + ["--resume", "--sigma", "15,25"])
