"""The PSNR interval holds for images at distance tol from the computed one (numpy, float64)."""
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from psnr_interval import psnr_interval  # noqa: E402


def psnr(x, clean):
    return 10 * math.log10(x.size / np.sum((x - clean) ** 2))


def test_interval_contains_every_image_within_tol_and_is_attained():
    rng = np.random.default_rng(0)
    clean = rng.random(2000)
    x = clean + 0.03 * rng.standard_normal(2000)
    tol = 0.05
    lo, hi = psnr_interval(psnr(x, clean), tol, x.size)
    error = x - clean
    for _ in range(200):
        step = rng.standard_normal(2000)
        other = x + tol * rng.random() * step / np.linalg.norm(step)
        assert lo - 1e-12 <= psnr(other, clean) <= hi + 1e-12
    # the ends are reached by moving straight away from / towards the clean image
    direction = error / np.linalg.norm(error)
    assert math.isclose(psnr(x + tol * direction, clean), lo, rel_tol=1e-12)
    assert math.isclose(psnr(x - tol * direction, clean), hi, rel_tol=1e-12)
