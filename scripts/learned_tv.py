"""Learned TV denoising: MAID-learned (weight, smoothing) against grid-tuned baselines.

    python scripts/learned_tv.py [--quick] [--train-dir DIR --test-dir DIR] [--variant ...]

Learns theta = (log weight, log smoothing) of smoothed TV denoising with MAID on
``--n-train`` noisy training images, then denoises held-out images (other
images, other noise) and reports mean PSNR / SSIM for:

- ``noisy``: the held-out observations themselves;
- ``learned``: the MAID parameters;
- ``grid_weight``: a grid over the weight at the learned smoothing (61 points
  over [1e-3, 1], then 22 more between the best point's neighbours: 1% steps),
  scored on the held-out images themselves (an oracle: the best any weight
  could do there);
- ``chambolle``: ``skimage.restoration.denoise_tv_chambolle`` (exact TV) on the
  same kind of grid, best weight again chosen on the held-out images.

Without ``--train-dir`` / ``--test-dir``: BSD400 / Set68 where
:func:`bilevel.experiment.image_folder` finds them, else the images bundled with
scikit-image (8 for training, 8 others held out).  Writes results/learned_tv/
{data.csv (one row per denoiser and weight: psnr, ssim), history.csv (one row per
MAID iteration), runs.csv (MAID's status, message, warnings), meta.json,
summary.md, learned_tv.png}.
"""
from __future__ import annotations

import math

import _figure
import numpy as np
import torch
from bilevel_problems import datasets
from bilevel_problems.tv_denoising import TVDenoising, denoise

from bilevel import experiment

FILES = {"data.csv": "one row per denoiser (noisy, learned, grid_weight, chambolle) and "
                     "weight: psnr, ssim over the held-out images",
         "history.csv": "one row per MAID iteration",
         "runs.csv": "MAID's status, message and warnings"}
TOL = 1e-4  # certified ||x - x*|| over the whole stack: far below PSNR resolution


def add_arguments(p):
    p.add_argument("--train-dir", help="folder of training PNGs (default: BSD400, else "
                                       "scikit-image)")
    p.add_argument("--test-dir", help="folder of held-out PNGs (default: Set68, else "
                                      "scikit-image)")
    p.add_argument("--n-train", type=int, default=8)
    p.add_argument("--n-test", type=int, default=None, help="default 16 (8 for scikit-image)")
    p.add_argument("--size", type=int, default=None,
                   help="image side (default 180: whole BSD400 training images; quick 32)")
    p.add_argument("--sigma", type=float, default=0.1)
    p.add_argument("--variant", default="isotropic", choices=("isotropic", "anisotropic"))
    p.add_argument("--max-iter", type=int, default=None, help="MAID iterations (150; quick 25)")


def load_sets(args):
    """(train clean, test clean, description) at one size; folders crop, skimage resizes."""
    size = args.size
    train_dir = experiment.image_folder("train", args.train_dir)
    test_dir = experiment.image_folder("Set68", args.test_dir)
    if train_dir:
        train = datasets.load_images(train_dir, n=args.n_train, size=size, mode="crop",
                                     seed=args.seed)
    else:
        names = datasets.SKIMAGE_NAMES[:args.n_train]
        train = datasets.resize(datasets.skimage_images(names), size)
    n_test = args.n_test or (4 if args.quick else 16 if test_dir else 8)
    if test_dir:
        test = datasets.load_images(test_dir, n=n_test, size=size, mode="crop")
    else:
        names = (datasets.SKIMAGE_NAMES[args.n_train:] + datasets.SKIMAGE_EXTRA)[:n_test]
        test = datasets.resize(datasets.skimage_images(names), size)
    return train, test, dict(train=train_dir or "skimage", test=test_dir or "skimage")


def chambolle(noisy, weight):
    from skimage.restoration import denoise_tv_chambolle

    # one call per image: on a stack without channel_axis skimage would apply 3-D TV
    out = [denoise_tv_chambolle(im, weight=weight, eps=1e-6, max_num_iter=1000)
           for im in noisy.cpu().numpy()]
    return torch.from_numpy(np.stack(out))


def plot(folder) -> None:
    """Held-out PSNR against the weight: both grids, the learned weight marked."""
    from matplotlib import ticker

    rows, meta = folder.read_rows("data.csv"), folder.read_meta()
    plt = _figure.pyplot()
    fig, (wide, zoom) = plt.subplots(1, 2, figsize=(10, 4.2))
    learned = next(r for r in rows if r["method"] == "learned")
    lw, lp = float(learned["weight"]), float(learned["psnr"])
    best = max(float(r["psnr"]) for r in rows if r["method"] == "grid_weight")
    for ax, within in [(wide, 4.0), (zoom, 0.3)]:
        for method, label in [("grid_weight", f"smoothed TV, smoothing {meta['smoothing']:.2g}"),
                              ("chambolle", "denoise_tv_chambolle (exact TV)")]:
            pts = sorted((float(r["weight"]), float(r["psnr"])) for r in rows
                         if r["method"] == method)
            ax.semilogx(*zip(*pts, strict=True), ".-", label=label)
        ax.plot(lw, lp, "o", color="C3", ms=8,
                label=f"learned by MAID: {lp:.3f} dB ({best - lp:.3f} dB below the grid's best)")
        near = [float(r["weight"]) for r in rows
                if r["method"] == "grid_weight" and float(r["psnr"]) >= best - within]
        ax.set_xlim(min(near + [lw]) / 1.2, max(near + [lw]) * 1.2)
        ax.set_ylim(best - within, best + within / 8)
        ax.set_xlabel("TV weight")
        ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1, 2, 5)))
        ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.grid(alpha=0.3, which="both")
    wide.set_ylabel(f"mean PSNR on {meta['n_test']} held-out images (dB)")
    zoom.set_title("near the best weight", fontsize=10)
    wide.set_title(f"TV denoising, sigma = {meta['sigma']}: trained on {meta['n_train']} "
                   f"images {meta['size']}x{meta['size']}", fontsize=10)
    zoom.legend(fontsize=8, loc="lower center")
    _figure.save(fig, folder / "learned_tv.png", dpi=130)


def grid_search(rows, record, denoiser, method, smoothing, n_grid, n_fine):
    """A coarse grid over three decades, then a fine one between the best point's
    neighbours, so that the oracle's best weight is resolved to 1%."""
    coarse = np.logspace(-3, 0, n_grid)
    ratio = coarse[1] / coarse[0]
    for w in coarse:
        record(method, float(w), smoothing, denoiser(float(w)))
    top = best(rows, method)["weight"]
    for w in np.geomspace(top / ratio, top * ratio, n_fine)[1:-1]:
        if not np.isclose(w, top):
            record(method, float(w), smoothing, denoiser(float(w)))


def best(rows, method):
    return max((r for r in rows if r["method"] == method), key=lambda r: r["psnr"])


def compute(args, folder):
    args.size = args.size or (32 if args.quick else 180)
    args.max_iter = args.max_iter or (25 if args.quick else 150)
    args.n_train = min(args.n_train, 4) if args.quick else args.n_train
    n_grid, n_fine = (13, 5) if args.quick else (61, 25)
    train, test, source = load_sets(args)
    problem = TVDenoising(images=train, sigma=args.sigma, seed=args.seed, variant=args.variant)
    test_noisy = datasets.add_noise(test, args.sigma, args.seed + 1)
    print(f"train {tuple(train.shape)} from {source['train']}, test {tuple(test.shape)} "
          f"from {source['test']}, sigma={args.sigma}, {args.variant}", flush=True)

    outcome = experiment.run_method(problem, experiment.Run("MAID"), max_iter=args.max_iter,
                                    progress=not args.quick)
    print(outcome.line(), flush=True)
    theta = outcome.result.theta
    lam, nu = math.exp(float(theta[0])), math.exp(float(theta[1]))
    rows = []

    def record(method, weight, smoothing, x):
        q = datasets.quality(x, test)
        rows.append(dict(method=method, weight=weight, smoothing=smoothing, psnr=q["psnr"],
                         ssim=q["ssim"], n_test=len(test)))

    def smoothed(w):
        th = torch.tensor([math.log(w), math.log(nu)], dtype=torch.float64)
        return denoise(test_noisy, th, variant=args.variant, tol=TOL)

    record("noisy", 0.0, float("nan"), test_noisy)
    record("learned", lam, nu, denoise(test_noisy, theta, variant=args.variant, tol=TOL))
    grid_search(rows, record, smoothed, "grid_weight", nu, n_grid, n_fine)
    grid_search(rows, record, lambda w: chambolle(test_noisy, w), "chambolle", 0.0, n_grid,
                n_fine)
    folder.write_rows("data.csv", rows)
    folder.write_rows("history.csv", outcome.history)
    folder.write_rows("runs.csv", [outcome.summary()])
    last = outcome.last
    return dict(source=source, n_train=len(train), n_test=len(test), size=args.size,
                sigma=args.sigma, variant=args.variant, test_noise_seed=args.seed + 1,
                max_iter=args.max_iter, status=outcome.result.status,
                message=outcome.result.message, theta=theta.tolist(), weight=lam,
                smoothing=nu, learn_time_s=last["time"], cost=last["cost"],
                iterations=len(outcome.history),
                train_psnr=problem.quality(theta, tol=TOL)["psnr"])


def summarise(folder):
    rows, meta = folder.read_rows("data.csv"), folder.read_meta()
    table = [next(r for r in rows if r["method"] == "noisy"),
             next(r for r in rows if r["method"] == "learned"),
             best(rows, "grid_weight"), best(rows, "chambolle")]
    labels = ["noisy", "learned (MAID)", "best weight on test (learned smoothing)",
              "denoise_tv_chambolle, best weight on test"]
    lines = ["| method | weight | smoothing | PSNR (dB) | SSIM |", "|---|---|---|---|---|"]
    for label, r in zip(labels, table, strict=True):
        lines.append(f"| {label} | {r['weight']:.4g} | {r['smoothing']:.3g} | "
                     f"{r['psnr']:.3f} | {r['ssim']:.4f} |")
    print("\n".join(lines))
    iterations = meta.get("iterations", meta["max_iter"])
    summary = [
        "# Learned TV denoising", "",
        f"MAID ({meta['variant']}) on {meta['n_train']} training images "
        f"({meta['source']['train']}), {meta['size']}x{meta['size']}, sigma={meta['sigma']}: "
        f"status `{meta['status']}` after {iterations} iterations ({meta['learn_time_s']:.0f} s, "
        f"{meta['cost']} lower-level + CG iterations); training PSNR "
        f"{meta['train_psnr']:.3f} dB.", "",
        f"Held out: {meta['n_test']} other images ({meta['source']['test']}), other noise "
        f"(seed {meta['test_noise_seed']}); mean PSNR / SSIM over images.  The grids pick their "
        "best weight on the held-out images themselves (an oracle for the baselines).", "",
        *lines, ""]
    folder.write_text("summary.md", "\n".join(summary))


def main(argv=None):
    return experiment.main(__doc__, "learned_tv", compute, summarise=summarise, plot=plot,
                           argv=argv, add_arguments=add_arguments, files=FILES)


if __name__ == "__main__":
    main()
