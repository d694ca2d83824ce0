"""bilevel.load: a run folder read back as a denoiser, without its training data."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from bilevel_problems import datasets

import bilevel
from bilevel.__main__ import main as cli
from bilevel.results import RunFolder, save_run

SPEC = "tv_denoising[n_images=2,size=16,theta0=(-3,-4)]"


@pytest.fixture(scope="module")
def tv_run(tmp_path_factory):
    """A tiny TV model trained by bilevel.solve and written by save_run: (folder, theta)."""
    with pytest.warns(bilevel.ConvergenceWarning, match="max_iter"):
        result = bilevel.solve(bilevel.make_problem(SPEC), "maid", max_iter=4, progress=False)
    out = save_run(tmp_path_factory.mktemp("tv") / "run", result, {"problem": SPEC})
    return out, result.theta


def _test_images():
    """Two held-out noisy images (not the training ones) and their clean versions."""
    clean = datasets.resize(datasets.skimage_images(["camera", "coins"]), (20, 24))
    return clean, datasets.add_noise(clean, 0.1, seed=3)


def test_load_denoises_as_the_problem_does(tv_run):
    out, theta = tv_run
    model = bilevel.load(out)
    assert isinstance(model, bilevel.LearnedModel)
    assert (model.spec, model.name) == (SPEC, "tv_denoising")
    torch.testing.assert_close(model.theta, theta.double(), rtol=0, atol=1e-15)
    clean, noisy = _test_images()
    tol = 1e-8
    ours = model.denoise(noisy, tol=tol)
    reference = bilevel.make_problem(SPEC).denoise(noisy, theta, tol=tol)
    assert ours.shape == noisy.shape
    # both are certified within tol of the same minimiser
    assert float(torch.linalg.vector_norm(ours - reference)) <= 2 * tol
    assert np.abs(datasets.psnr(ours, clean) - datasets.psnr(reference, clean)).max() < 1e-6
    assert datasets.psnr(ours, clean).mean() > datasets.psnr(noisy, clean).mean() + 1


def test_denoise_takes_one_image_and_arrays(tv_run):
    model = bilevel.load(tv_run[0])
    _, noisy = _test_images()
    one = model.denoise(noisy[1])
    assert isinstance(one, torch.Tensor) and one.shape == noisy[1].shape
    array = model.denoise(noisy.numpy())
    assert isinstance(array, np.ndarray) and array.shape == tuple(noisy.shape)
    np.testing.assert_allclose(array[1], one.numpy(), atol=4e-6)  # default tol 1e-6 each
    with pytest.raises(TypeError, match="floating-point"):
        model.denoise((noisy * 255).to(torch.uint8))
    with pytest.raises(ValueError, match=r"\(H, W\) or \(N, H, W\)"):
        model.denoise(noisy[None])


def test_cli_run_folder_loads_without_the_training_data(tmp_path, monkeypatch, capsys):
    out = tmp_path / "cli"
    assert cli(["run", SPEC, "--max-iter", "2", "--quiet", "--out", str(out)]) == 0
    capsys.readouterr()
    theta = torch.tensor(json.loads((out / "theta.json").read_text()), dtype=torch.float64)

    def no_data(*args, **kwargs):
        raise AssertionError("load read training images")

    monkeypatch.setattr(datasets, "load_images", no_data)
    model = bilevel.load(out)
    torch.testing.assert_close(model.theta, theta)
    # A spec naming a folder this machine does not have loads all the same.
    meta = json.loads((out / "meta.json").read_text())
    meta["problem"] = "tv_denoising[source='no/such/folder',n_images=400,size=(48,40)]"
    (out / "meta.json").write_text(json.dumps(meta))
    assert bilevel.load(out).problem.clean.shape == (1, 48, 40)


def test_load_fields_of_experts(tmp_path):
    spec = "fields_of_experts[n_images=1,size=12,num_filters=2,filter_size=3]"
    problem = bilevel.make_problem(spec)
    theta = problem.initial_theta() + 0.01
    folder = RunFolder(tmp_path, portable=False)
    folder.write_text("theta.json", json.dumps(theta.tolist()))
    folder.write_meta({"problem": spec})
    y = datasets.add_noise(datasets.resize(datasets.skimage_images(["camera"]), 16), 0.1, 0)
    torch.testing.assert_close(bilevel.load(tmp_path).denoise(y, tol=1e-8),
                               problem.denoise(y, theta, tol=1e-8), rtol=0, atol=2e-8)


def _folder(path, meta=None, theta=None):
    path.mkdir()
    if meta is not None:
        (path / "meta.json").write_text(meta if isinstance(meta, str) else json.dumps(meta))
    if theta is not None:
        (path / "theta.json").write_text(theta)
    return path


@pytest.mark.parametrize("meta, theta, error, match", [
    (None, "[-3, -4]", bilevel.CorruptRunError, "no meta.json"),
    ("{not json", "[-3, -4]", bilevel.CorruptRunError, "not valid JSON"),
    ({"method": "maid"}, "[-3, -4]", bilevel.CorruptRunError, "'problem' is None"),
    ({"problem": SPEC}, None, bilevel.CorruptRunError, "no theta.json"),
    ({"problem": SPEC, "status": "running"}, None, bilevel.CorruptRunError, "status 'running'"),
    ({"problem": SPEC}, "[-3, ", bilevel.CorruptRunError, "theta.json.*not valid JSON"),
    ({"problem": SPEC}, '{"a": 1}', bilevel.CorruptRunError, "not a JSON list of numbers"),
    ({"problem": SPEC}, "[-3, NaN]", bilevel.CorruptRunError, "NaN or Inf"),
    ({"problem": SPEC}, "[-3, -4, 1]", bilevel.CorruptRunError, "holds 3 values.* 2 hyper"),
    ({"problem": "nonexistent"}, "[1]", ValueError, "unknown problem 'nonexistent'"),
    ({"problem": "quadratic[n=20,m=3]"}, "[0, 0, 0]", TypeError, "quadratic is not a denoiser"),
    ({"problem": "reconstruction[operator=blur,n_images=1,size=8]"}, "[-3, -4]", TypeError,
     "reconstruction is not a denoiser"),
])
def test_bad_folders(tmp_path, meta, theta, error, match):
    with pytest.raises(error, match=match):
        bilevel.load(_folder(tmp_path / "run", meta, theta))


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no run folder"):
        bilevel.load(tmp_path / "absent")


def test_import_stays_light():
    code = ("import sys, bilevel; bilevel.load; "
            "assert 'bilevel_problems' not in sys.modules and 'skimage' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_load_on_a_device_denoises_there_and_answers_on_the_input_device(tv_run):
    model = bilevel.load(tv_run[0], device="cpu")
    assert model.theta.device.type == "cpu" and model.problem.device == torch.device("cpu")
    _, noisy = _test_images()
    torch.testing.assert_close(model.denoise(noisy, tol=1e-8),
                               bilevel.load(tv_run[0]).denoise(noisy, tol=1e-8),
                               rtol=0, atol=4e-8)
    with pytest.raises(RuntimeError, match="Expected one of"):
        bilevel.load(tv_run[0], device="gpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present: tests/test_cuda.py")
def test_load_on_cuda_without_cuda_says_so(tv_run):
    with pytest.raises(RuntimeError, match="sees no CUDA device"):
        bilevel.load(tv_run[0], device="cuda")


def test_a_spec_that_ran_on_a_gpu_loads_where_asked(tv_run, tmp_path):
    """The spec's device= says where the run solved, not what the model is."""
    out, theta = tv_run
    shutil.copytree(out, tmp_path / "gpu")
    meta = json.loads((tmp_path / "gpu" / "meta.json").read_text())
    meta["problem"] = SPEC[:-1] + ",device='cuda']"
    (tmp_path / "gpu" / "meta.json").write_text(json.dumps(meta))
    model = bilevel.load(tmp_path / "gpu")
    assert model.problem.device == torch.device("cpu")
    torch.testing.assert_close(model.theta, theta.double(), rtol=0, atol=1e-15)
