"""The committed BSD68 / Set12 numbers of learned models come back from their saved
parameters: ``bilevel.load(run_dir).denoise(y)`` on the first two images of the evaluated set,
with the committed noise and tolerance, gives the PSNR and SSIM of
results/bsd68_learned/*/per_image.csv.

Both runs are certified ||x - x*(theta)|| <= tol (meta.json's tol, 1e-2), and on a 481x321
image that moves the PSNR by at most about 0.005 dB (benchmarks/bsd68.py), so two runs agree
to 0.01 dB whatever the iteration path.  Filter-bank models take about a minute an image on
one CPU thread: those cases are marked slow.  Without the BSD68 images (docs/data.md) the
test is skipped: nothing else can reproduce these numbers.
"""
import csv
import json
from pathlib import Path

import pytest
import torch
from test_scripts import module

import bilevel
from bilevel import experiment

ROOT = Path(__file__).resolve().parents[1]
EVALUATIONS = ROOT / "results" / "bsd68_learned"
N_IMAGES = 2


def _cases():
    for meta_path in sorted(EVALUATIONS.glob("*/meta.json")):
        meta = json.loads(meta_path.read_text())
        for model, run_dir in sorted(meta["models"].items()):
            problem = json.loads((ROOT / run_dir / "meta.json").read_text())["problem"]
            slow = () if problem.startswith("tv_denoising") else (pytest.mark.slow,)
            yield pytest.param(meta_path.parent, model, ROOT / run_dir, meta["tol"],
                               id=f"{meta_path.parent.name}-{model}", marks=slow)


@pytest.fixture(scope="module")
def bench():
    return module("benchmarks", "bsd68")


def _committed(folder, model, set_name):
    with open(folder / "per_image.csv", newline="") as f:
        return {row["image"]: row for row in csv.DictReader(f)
                if row["model"] == model and row["set"] == set_name}


def test_the_default_run_checks_a_committed_evaluation():
    """At least one case (a learned TV) is not marked slow."""
    assert any(not case.marks for case in _cases())


@pytest.mark.parametrize(("folder", "model", "run_dir", "tol"), _cases())
def test_load_denoise_reproduces_the_committed_psnr(bench, folder, model, run_dir, tol):
    (entry,) = json.loads((folder / "summary.json").read_text())  # one set, one sigma
    if experiment.image_folder(entry["set"]) is None:
        pytest.skip(f"no {entry['set']} images here (docs/data.md): the numbers need them")
    names, images, _ = bench.load_set(entry["set"], n=N_IMAGES)
    committed = _committed(folder, model, entry["set"])
    sigma = entry["sigma"]
    denoiser = bilevel.load(run_dir)
    torch.set_num_threads(1)
    for i, (name, clean) in enumerate(zip(names, images, strict=True)):
        y = bench.noisy_image(clean, sigma, seed=i)
        x = denoiser.denoise(torch.from_numpy(y), tol=tol).numpy()
        psnr, ssim = bench._metrics(x, clean)
        assert psnr == pytest.approx(float(committed[name]["psnr"]), abs=0.01), name
        assert ssim == pytest.approx(float(committed[name]["ssim"]), abs=1e-3), name
