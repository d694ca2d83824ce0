"""One BSD68 (or Set12) image denoised by every model, side by side, with a zoomed crop.

    python benchmarks/bsd68_example.py [--set Set68] [--sigma 25] [--image test051.png]
                                       [--model NAME=RUN_DIR ...] [--tol T] [--no-bm3d]
                                       [--crop ROW,COL,SIZE] [--out results/bsd68]

The image and its noise are those of ``benchmarks/bsd68.py`` (image i of the set in sorted
file order, noise ``default_rng(i)``), so each PSNR / SSIM shown is the one of that image's
row in the evaluation's per_image.csv.  TV runs at the oracle weight of ``--out``'s
summary.json for the set and sigma (the weight picked on the whole set); without one, at the
best weight of bsd68's grid on this image alone, and the figure says so.

Writes, in ``--out``: example_SET_sigmaS.png (clean, noisy, TV, each model, BM3D; the crop
below, magnified) and example_SET_sigmaS.json (the image, its index and seed, the TV weight
and where it came from, PSNR / SSIM per model, the command).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "scripts")]
import _figure  # noqa: E402
import bsd68  # noqa: E402  (the evaluation's protocol: images, noise, metrics, denoisers)

from bilevel.results import RunFolder, command_line  # noqa: E402


def denoise_all(clean, index, sigma, denoisers, tv_weight=None):
    """{name: (image, psnr, ssim, seconds)} for 'clean', 'noisy', TV and ``denoisers`` on
    image ``index`` of a set (its noise seed), and the TV weight used (``tv_weight``, or
    the best of bsd68's grid on this image when None)."""
    from skimage.restoration import denoise_tv_chambolle

    y = bsd68.noisy_image(clean, sigma, seed=index)
    if tv_weight is None:
        tv_weight = max(bsd68.TV_WEIGHTS, key=lambda w: bsd68._metrics(
            denoise_tv_chambolle(y, weight=w), clean)[0])
    out = {"clean": (clean, np.inf, 1.0, 0.0), "noisy": (y, *bsd68._metrics(y, clean), 0.0)}
    models = {bsd68.TV: lambda v: denoise_tv_chambolle(v, weight=tv_weight), **denoisers}
    out.update({name: bsd68.denoised(denoise, y, clean)
                for name, denoise in models.items() if denoise is not None})
    return out, tv_weight


def draw(path, outputs, crop, title):
    """A row of full images (crop outlined) and a row of the crop, magnified."""
    from matplotlib.patches import Rectangle

    plt = _figure.pyplot()
    row, col, size = crop
    n = len(outputs)
    h, w = outputs["clean"][0].shape
    fig, axes = plt.subplots(2, n, figsize=(2.6 * n, 2.6 * (1 + h / w) + 0.8), squeeze=False,
                             height_ratios=[h / w, 1.0])
    for k, (name, (x, psnr, ssim, _)) in enumerate(outputs.items()):
        label = name if name == "clean" else f"{name}\n{psnr:.2f} dB / {ssim:.3f}"
        axes[0, k].imshow(np.clip(x, 0, 1), cmap="gray", vmin=0, vmax=1)
        axes[0, k].add_patch(Rectangle((col - 0.5, row - 0.5), size, size, fill=False,
                                       edgecolor="yellow", linewidth=1))
        axes[0, k].set_title(label, fontsize=8)
        axes[1, k].imshow(np.clip(x[row:row + size, col:col + size], 0, 1), cmap="gray",
                          vmin=0, vmax=1, interpolation="nearest")
        for ax in axes[:, k]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    _figure.save(fig, path, dpi=110)


def _oracle_weight(folder, set_name, sigma_255):
    """The TV oracle weight of ``folder``'s summary.json for the set and sigma, or None."""
    path = Path(folder) / "summary.json"
    if not path.is_file():
        return None
    for entry in json.loads(path.read_text()):
        if entry.get("set") == set_name and entry.get("sigma_255") == sigma_255 \
                and entry.get("tv_weight"):
            return float(entry["tv_weight"])
    return None


def _arguments(argv):
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--out", default="results/bsd68",
                   help="where the figure goes (and the evaluation whose TV weight is used)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--set", default="Set68")
    p.add_argument("--sigma", type=float, default=25.0, help="noise level x 255")
    p.add_argument("--image", default="test051.png", help="a file name of the set, or its index")
    p.add_argument("--data", default=None, help="the folder holding Set68/ and Set12/")
    p.add_argument("--model", action="append", default=[], metavar="NAME=RUN_DIR",
                   help="a learned run folder (bilevel.load); repeatable")
    p.add_argument("--tol", type=float, default=None, help="certified ||x - x*|| of the models")
    p.add_argument("--no-bm3d", action="store_true", help="leave BM3D out")
    p.add_argument("--crop", default=None, metavar="ROW,COL,SIZE",
                   help="the magnified window (default: 96 pixels at the centre)")
    args = p.parse_args(argv)
    if any("=" not in item for item in args.model):
        p.error("--model takes NAME=RUN_DIR")
    args.models = dict(item.split("=", 1) for item in args.model)
    return args


def main(argv=None):
    import torch

    args = _arguments(argv)
    torch.set_num_threads(args.threads)
    files, images, source = bsd68.load_set(args.set, args.data)
    index = int(args.image) if args.image.isdigit() else files.index(args.image) \
        if args.image in files else None
    if index is None or not 0 <= index < len(files):
        raise SystemExit(f"--image {args.image}: not a file name of {source} nor an index "
                         f"below {len(files)}")
    clean, sigma = images[index], args.sigma / 255
    h, w = clean.shape
    size = min(96, h, w)
    crop = tuple(int(v) for v in args.crop.split(",")) if args.crop else \
        ((h - size) // 2, (w - size) // 2, size)
    if len(crop) != 3 or crop[0] < 0 or crop[1] < 0 or crop[2] < 1 or \
            crop[0] + crop[2] > h or crop[1] + crop[2] > w:
        raise SystemExit(f"--crop {args.crop}: ROW,COL,SIZE inside the {h}x{w} image")
    weight = _oracle_weight(args.out, args.set, args.sigma)
    denoisers = {name: bsd68.learned_denoiser(path, args.tol)
                 for name, path in args.models.items()}
    if not args.no_bm3d:
        denoisers["BM3D"] = bsd68.bm3d_denoiser(sigma)
    outputs, used = denoise_all(clean, index, sigma, denoisers, weight)
    where = "the set's oracle" if weight is not None else "the best on this image alone"
    stem = f"example_{args.set}_sigma{args.sigma:g}"
    folder = RunFolder(args.out)
    folder.path.mkdir(parents=True, exist_ok=True)
    draw(folder.path / f"{stem}.png", outputs, crop,
         f"{args.set} {files[index]} (image {index}, noise seed {index}), sigma "
         f"{args.sigma:g}/255; PSNR / SSIM; TV at weight {used:.4g} ({where})")
    folder.write_json(f"{stem}.json", dict(
        image=files[index], index=index, noise_seed=index, sigma_255=args.sigma, crop=crop,
        tv_weight=used, tv_weight_from=where, models=args.models, tol=args.tol,
        results={k: dict(psnr=p, ssim=s, seconds=round(t, 2))
                 for k, (_, p, s, t) in outputs.items() if k != "clean"},
        command=command_line(argv, "benchmarks/bsd68_example.py")))
    for name, (_, psnr, ssim, seconds) in outputs.items():
        if name != "clean":
            print(f"{name}: {psnr:.2f} dB / {ssim:.4f} ({seconds:.1f} s)")
    print(f"wrote {folder.path / stem}.png")
    return folder.path / f"{stem}.png"


if __name__ == "__main__":
    main()
