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

Without ``--train-dir`` / ``--test-dir`` the images bundled with scikit-image
are used (8 for training, 8 others held out).  Writes
results/learned_tv/{data.csv, history.csv, meta.json, summary.md, learned_tv.png}.
"""
from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from bilevel_problems import datasets
from bilevel_problems.tv_denoising import TVDenoising, denoise

import bilevel
from bilevel.results import environment, write_csv


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, seconds")
    p.add_argument("--train-dir", help="folder of training PNGs (default: scikit-image set)")
    p.add_argument("--test-dir", help="folder of held-out PNGs (default: scikit-image set)")
    p.add_argument("--n-train", type=int, default=8)
    p.add_argument("--n-test", type=int, default=None, help="default 16 (8 for scikit-image)")
    p.add_argument("--size", type=int, default=None,
                   help="image side (default 180: whole BSD400 training images; quick 32)")
    p.add_argument("--sigma", type=float, default=0.1)
    p.add_argument("--variant", default="isotropic", choices=("isotropic", "anisotropic"))
    p.add_argument("--max-iter", type=int, default=None, help="MAID iterations (150; quick 25)")
    p.add_argument("--seed", type=int, default=0, help="training noise seed; test uses seed+1")
    p.add_argument("--out", default="results/learned_tv")
    p.add_argument("--replot", action="store_true",
                   help="only redraw learned_tv.png from an existing --out folder")
    return p.parse_args()


def load_sets(args):
    """(train clean, test clean, description) at one size; folders crop, skimage resizes."""
    size = args.size
    if args.train_dir:
        train = datasets.load_images(args.train_dir, n=args.n_train, size=size, mode="crop",
                                     seed=args.seed)
    else:
        names = datasets.SKIMAGE_NAMES[:args.n_train]
        train = datasets.resize(datasets.skimage_images(names), size)
    if args.test_dir:
        test = datasets.load_images(args.test_dir, n=args.n_test, size=size, mode="crop")
    else:
        names = (datasets.SKIMAGE_NAMES[args.n_train:] + datasets.SKIMAGE_EXTRA)[:args.n_test]
        test = datasets.resize(datasets.skimage_images(names), size)
    source = dict(train=args.train_dir or "skimage", test=args.test_dir or "skimage")
    return train, test, source


def chambolle(noisy, weight):
    from skimage.restoration import denoise_tv_chambolle

    # one call per image: on a stack without channel_axis skimage would apply 3-D TV
    out = [denoise_tv_chambolle(im, weight=weight, eps=1e-6, max_num_iter=1000)
           for im in noisy.cpu().numpy()]
    return torch.from_numpy(np.stack(out))


def plot(out: Path) -> None:
    """Held-out PSNR against the weight: both grids, the learned weight marked."""
    import csv

    import _figure
    from matplotlib import ticker

    with open(out / "data.csv") as f:
        rows = list(csv.DictReader(f))
    meta = json.loads((out / "meta.json").read_text())
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
    fig.tight_layout()
    fig.savefig(out / "learned_tv.png", dpi=130)
    plt.close(fig)


def main():
    args = parse_args()
    if args.replot:
        plot(Path(args.out))
        print(f"redrew {args.out}")
        return
    args.size = args.size or (32 if args.quick else 180)
    args.max_iter = args.max_iter or (25 if args.quick else 150)
    args.n_train = min(args.n_train, 4) if args.quick else args.n_train
    default_test = 16 if args.test_dir else 8
    args.n_test = args.n_test or (4 if args.quick else default_test)
    n_grid, n_fine = (13, 5) if args.quick else (61, 25)
    started = time.perf_counter()

    train, test, source = load_sets(args)
    problem = TVDenoising(images=train, sigma=args.sigma, seed=args.seed, variant=args.variant)
    test_noisy = datasets.add_noise(test, args.sigma, args.seed + 1)
    print(f"train {tuple(train.shape)} from {source['train']}, test {tuple(test.shape)} "
          f"from {source['test']}, sigma={args.sigma}, {args.variant}", flush=True)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bilevel.ConvergenceWarning)
        result = bilevel.solve(problem, "maid", max_iter=args.max_iter, progress=True)
    theta = result.theta
    lam, nu = math.exp(float(theta[0])), math.exp(float(theta[1]))
    learn_time = result.history[-1]["time"]
    print(f"MAID: {result.status} after {len(result.history)} iterations, "
          f"{learn_time:.1f} s, cost {result.history[-1]['cost']}: weight={lam:.4g}, "
          f"smoothing={nu:.4g}", flush=True)

    rows = []

    def record(method, weight, smoothing, x):
        q = datasets.quality(x, test)
        rows.append(dict(method=method, weight=weight, smoothing=smoothing, psnr=q["psnr"],
                         ssim=q["ssim"], n_test=len(test)))
        return q

    tol = 1e-4  # certified ||x - x*|| over the whole stack: far below PSNR resolution
    record("noisy", 0.0, float("nan"), test_noisy)
    record("learned", lam, nu, denoise(test_noisy, theta, variant=args.variant, tol=tol))
    def best(method):
        return max((r for r in rows if r["method"] == method), key=lambda r: r["psnr"])

    def smoothed(w):
        th = torch.tensor([math.log(w), math.log(nu)], dtype=torch.float64)
        return denoise(test_noisy, th, variant=args.variant, tol=tol)

    # A coarse grid over three decades, then a fine one between the best point's
    # neighbours, so that the oracle's best weight is resolved to 1%.
    coarse = np.logspace(-3, 0, n_grid)
    ratio = coarse[1] / coarse[0]
    for method, smoothing, denoiser in [("grid_weight", nu, smoothed),
                                        ("chambolle", 0.0, lambda w: chambolle(test_noisy, w))]:
        for w in coarse:
            record(method, float(w), smoothing, denoiser(float(w)))
        top = best(method)["weight"]
        for w in np.geomspace(top / ratio, top * ratio, n_fine)[1:-1]:
            if not np.isclose(w, top):
                record(method, float(w), smoothing, denoiser(float(w)))
    train_q = problem.quality(theta, tol=tol)

    table = [rows[0], rows[1], best("grid_weight"), best("chambolle")]
    labels = ["noisy", "learned (MAID)", "best weight on test (learned smoothing)",
              "denoise_tv_chambolle, best weight on test"]
    lines = ["| method | weight | smoothing | PSNR (dB) | SSIM |", "|---|---|---|---|---|"]
    for label, r in zip(labels, table, strict=True):
        lines.append(f"| {label} | {r['weight']:.4g} | {r['smoothing']:.3g} | "
                     f"{r['psnr']:.3f} | {r['ssim']:.4f} |")
    print("\n".join(lines))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "data.csv", rows)
    write_csv(out / "history.csv", result.history)
    meta = dict(script="scripts/learned_tv.py", quick=args.quick, source=source,
                n_train=len(train), n_test=len(test), size=args.size, sigma=args.sigma,
                variant=args.variant, seed=args.seed, test_noise_seed=args.seed + 1,
                max_iter=args.max_iter, status=result.status, message=result.message,
                theta=theta.tolist(), weight=lam, smoothing=nu, learn_time_s=learn_time,
                cost=result.history[-1]["cost"], train_psnr=train_q["psnr"],
                wall_time_s=round(time.perf_counter() - started, 2), environment=environment())
    (out / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
    summary = [
        "# Learned TV denoising",
        "",
        f"MAID ({args.variant}) on {len(train)} training images ({source['train']}), "
        f"{args.size}x{args.size}, sigma={args.sigma}: status `{result.status}` after "
        f"{len(result.history)} iterations ({learn_time:.0f} s, {meta['cost']} lower-level + "
        f"CG iterations); training PSNR {train_q['psnr']:.3f} dB.",
        "",
        f"Held out: {len(test)} other images ({source['test']}), other noise "
        f"(seed {args.seed + 1}); mean PSNR / SSIM over images.  The grids pick their best "
        "weight on the held-out images themselves (an oracle for the baselines).",
        "",
        *lines,
        "",
    ]
    (out / "summary.md").write_text("\n".join(summary))
    plot(out)
    print(f"wrote {out}/", flush=True)


if __name__ == "__main__":
    main()
