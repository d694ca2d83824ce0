"""Two evaluations of benchmarks/bsd68.py compared image by image: the same images and noise
(fixed seeds), so the difference of two models' PSNRs on an image is a paired sample.

    python benchmarks/paired_images.py A B [--plot FILE.png]

A and B are evaluation folders (per_image.csv), each ``FOLDER`` (its one learned model) or
``FOLDER:MODEL`` (``results/bsd68:BM3D``).  Prints the images both hold, the mean of
PSNR(A) - PSNR(B), its range and on how many images A is ahead: the "+0.029 dB on all 68
images" of docs/denoisers.md.  ``--plot`` draws the differences image by image, sorted, with
the images at either end named (where A loses and wins most).
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from bilevel.results import RunFolder

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "scripts"))
import _figure  # noqa: E402
from bsd68_report import BASELINES  # noqa: E402

NAMED = 4  # images named at each end of the plot


def psnrs(spec):
    """(the model's name, {(set, sigma, image): PSNR}) of ``FOLDER`` or ``FOLDER:MODEL``."""
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
    return model, found


def paired(a, b):
    """(images, mean, median, min, max of a - b, images where a > b) over the images both
    hold."""
    common = sorted(a.keys() & b.keys())
    if not common:
        raise SystemExit("paired_images: the two evaluations share no image")
    diff = [a[k] - b[k] for k in common]
    return (len(diff), sum(diff) / len(diff), statistics.median(diff), min(diff), max(diff),
            sum(d > 0 for d in diff))


def plot(a, b, names, mean, ahead, path):
    """The differences a - b over the images both hold, sorted, as bars (ahead / behind in
    two colours), their ``mean`` (:func:`paired`'s) as a line, the NAMED images at each end
    labelled."""
    common = sorted(a.keys() & b.keys(), key=lambda k: a[k] - b[k])
    diff = [a[k] - b[k] for k in common]
    plt = _figure.pyplot()
    fig, ax = plt.subplots(figsize=(9, 3.6))
    ax.bar(range(len(diff)), diff, color=["tab:blue" if d > 0 else "tab:red" for d in diff])
    ax.axhline(0.0, color="black", lw=0.8)
    ax.axhline(mean, color="gray", ls="--", lw=1, label=f"mean {mean:+.3f} dB")
    ends = set(range(min(NAMED, len(diff)))) | set(range(max(len(diff) - NAMED, 0), len(diff)))
    pad = 0.02 * (max(diff) - min(diff) or 1.0)
    for i in sorted(ends):  # across the zero line from the bar: inside the axes
        ax.annotate(Path(common[i][2]).stem, (i, pad if diff[i] < 0 else -pad), rotation=90,
                    fontsize=7, ha="center", va="bottom" if diff[i] < 0 else "top")
    sets = sorted({f"{k[0]}, sigma {float(k[1]):g}/255" for k in common})
    ax.set(xlabel=f"image, sorted ({'; '.join(sets)}; {names[0]} ahead on {ahead} of "
                  f"{len(diff)})", ylabel="PSNR difference (dB)", xticks=[],
           title=f"{names[0]} minus {names[1]}, image by image")
    ax.legend(loc="lower right", fontsize=8)
    _figure.save(fig, path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--plot", default=None, metavar="FILE.png",
                   help="draw the differences image by image, sorted")
    args = p.parse_args(argv)
    (name_a, a), (name_b, b) = psnrs(args.a), psnrs(args.b)
    n, mean, median, low, high, ahead = paired(a, b)
    print(f"{n} images: A - B = {mean:+.4f} dB (median {median:+.4f}, from {low:+.3f} to "
          f"{high:+.3f}); A ahead on {ahead} of {n}")
    if args.plot:
        plot(a, b, (name_a, name_b), mean, ahead, args.plot)
        print(f"wrote {args.plot}")
    return n, mean, median, low, high, ahead


if __name__ == "__main__":
    main()
