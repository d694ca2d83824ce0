"""Two evaluations of benchmarks/bsd68.py compared image by image: the same images and noise
(fixed seeds), so the difference of two models' PSNRs on an image is a paired sample.

    python benchmarks/paired_images.py A B

A and B are evaluation folders (per_image.csv), each ``FOLDER`` (its one learned model) or
``FOLDER:MODEL``.  Prints the images both hold, the mean of PSNR(A) - PSNR(B), its range and
on how many images A is ahead: the "+0.029 dB on all 68 images" of docs/denoisers.md.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bilevel.results import RunFolder

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bsd68_report import BASELINES  # noqa: E402


def psnrs(spec):
    """{(set, sigma, image): PSNR} of ``FOLDER`` or ``FOLDER:MODEL``."""
    folder, _, model = spec.partition(":")
    rows = RunFolder(Path(folder)).read_rows("per_image.csv")
    if not model:
        learned = sorted({r["model"] for r in rows} - set(BASELINES))
        if len(learned) != 1:
            raise SystemExit(f"paired_images: {folder} holds the models {learned}: name one "
                             f"({folder}:MODEL)")
        model = learned[0]
    found = {(r["set"], r["sigma_255"], r["image"]): float(r["psnr"])
             for r in rows if r["model"] == model}
    if not found:
        raise SystemExit(f"paired_images: no model {model!r} in {folder}/per_image.csv")
    return found


def paired(a, b):
    """(images, mean, min, max of a - b, images where a > b) over the images both hold."""
    common = sorted(a.keys() & b.keys())
    if not common:
        raise SystemExit("paired_images: the two evaluations share no image")
    diff = [a[k] - b[k] for k in common]
    return len(diff), sum(diff) / len(diff), min(diff), max(diff), sum(d > 0 for d in diff)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("a")
    p.add_argument("b")
    args = p.parse_args(argv)
    n, mean, low, high, ahead = paired(psnrs(args.a), psnrs(args.b))
    print(f"{n} images: A - B = {mean:+.4f} dB (from {low:+.3f} to {high:+.3f}); "
          f"A ahead on {ahead} of {n}")
    return n, mean, low, high, ahead


if __name__ == "__main__":
    main()
