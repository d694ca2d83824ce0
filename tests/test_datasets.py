"""Image sets: determinism, shapes, aspect-preserving resize, noise, metrics."""
from pathlib import Path

import numpy as np
import pytest
import torch
from bilevel_problems import datasets

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "bsd"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="no shared BSD data here")


def test_skimage_images_bundled_gray():
    images = datasets.skimage_images()
    assert len(images) == len(datasets.SKIMAGE_NAMES) == 10
    assert list(datasets.SKIMAGE_NAMES) == sorted(datasets.SKIMAGE_NAMES)
    for image in images:
        assert image.ndim == 2 and image.dtype == torch.float64
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert len(datasets.skimage_images(datasets.SKIMAGE_EXTRA)) == len(datasets.SKIMAGE_EXTRA)
    with pytest.raises(ValueError, match="no image"):
        datasets.skimage_images(["not_an_image"])


def test_load_images_shapes_and_determinism():
    a = datasets.load_images(n=3, size=24)
    b = datasets.load_images("skimage", n=3, size=24)
    assert a.shape == (3, 24, 24) and a.dtype == torch.float64
    assert torch.equal(a, b)
    c = datasets.load_images(n=2, size=(16, 20), mode="crop", seed=1)
    assert c.shape == (2, 16, 20)
    assert torch.equal(c, datasets.load_images(n=2, size=(16, 20), mode="crop", seed=1))
    assert not torch.equal(c, datasets.load_images(n=2, size=(16, 20), mode="crop", seed=2))
    with pytest.raises(ValueError, match="asked for"):
        datasets.load_images(n=11)
    with pytest.raises(ValueError, match="mode"):
        datasets.load_images(n=1, mode="stretch")


def test_resize_keeps_aspect_ratio():
    # A horizontal ramp 30 x 60: the shorter side goes to 20 (20 x 40), then a
    # centre crop keeps the middle half of the columns, values ~0.25 .. 0.75.
    ramp = torch.linspace(0, 1, 60, dtype=torch.float64).expand(30, 60)
    out = datasets.resize(ramp, 20)
    assert out.shape == (1, 20, 20)
    row = out[0, 10]
    assert abs(float(row[0]) - 0.25) < 0.03 and abs(float(row[-1]) - 0.75) < 0.03
    assert torch.all(row[1:] > row[:-1])
    # a wide target on a square image: scale 1, crop rows
    square = torch.rand(30, 30, dtype=torch.float64)
    assert datasets.resize(square, (10, 30)).shape == (1, 10, 30)


def test_crop_center_and_random():
    image = torch.arange(100, dtype=torch.float64).reshape(10, 10)
    centre = datasets.crop(image, 4)
    assert torch.equal(centre[0], image[3:7, 3:7])
    r1, r2 = datasets.crop([image, image], 4, seed=5), datasets.crop([image, image], 4, seed=5)
    assert torch.equal(r1, r2) and r1.shape == (2, 4, 4)
    with pytest.raises(ValueError, match="cannot crop"):
        datasets.crop(image, 11)


def test_add_noise_and_split():
    clean = torch.full((4, 32, 32), 0.5, dtype=torch.float64)
    n1, n2 = datasets.add_noise(clean, 0.1, seed=0), datasets.add_noise(clean, 0.1, seed=0)
    assert torch.equal(n1, n2)
    assert not torch.equal(n1, datasets.add_noise(clean, 0.1, seed=1))
    assert abs(float((n1 - clean).std()) - 0.1) < 0.01
    assert datasets.add_noise(clean.float(), 0.1, 0).dtype == torch.float32
    stack = torch.arange(10, dtype=torch.float64)[:, None, None].expand(10, 2, 2)
    train, test = datasets.train_test_split(stack, 6, 3, seed=0)
    ids_train, ids_test = set(train[:, 0, 0].tolist()), set(test[:, 0, 0].tolist())
    assert len(ids_train) == 6 and len(ids_test) == 3 and not ids_train & ids_test
    again = datasets.train_test_split(stack, 6, 3, seed=0)
    assert torch.equal(train, again[0]) and torch.equal(test, again[1])
    with pytest.raises(ValueError):
        datasets.train_test_split(stack, 8, 3, seed=0)


def test_metrics():
    clean = datasets.load_images(n=2, size=32)
    noisy = datasets.add_noise(clean, 0.1, seed=0)
    p = datasets.psnr(noisy, clean)
    assert p.shape == (2,) and np.all(np.abs(p - 20.0) < 0.5)  # 20 log10(1 / 0.1)
    assert np.allclose(datasets.ssim(clean, clean), 1.0)
    q = datasets.quality(noisy, clean)
    assert q["psnr"] == pytest.approx(p.mean()) and len(q["ssim_per_image"]) == 2


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        datasets.folder_images(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no PNG"):
        datasets.folder_images(tmp_path)


def test_folder_roundtrip(tmp_path):
    from skimage.io import imsave

    for i in (2, 0, 1):
        imsave(tmp_path / f"im{i}.png", np.full((8, 12), 50 * i, dtype=np.uint8),
               check_contrast=False)
    images = datasets.folder_images(tmp_path)
    assert [float(im[0, 0]) * 255 for im in images] == pytest.approx([0, 50, 100])
    assert len(datasets.folder_images(tmp_path, limit=2)) == 2
    assert datasets.load_images(tmp_path, n=3, size=8).shape == (3, 8, 8)


@needs_shared
def test_shared_bsd_sets():
    train = datasets.load_images(SHARED / "train", n=4, size=64, mode="crop", seed=0)
    assert train.shape == (4, 64, 64)
    test = datasets.load_images(SHARED / "Set68", n=2, size=96)
    assert test.shape == (2, 96, 96) and 0 <= float(test.min()) and float(test.max()) <= 1
