"""Certified interval of a learned model's mean PSNR over an evaluation of benchmarks/bsd68.py.

The evaluation certifies ||x - x*(theta)|| <= tol per image, so ||x* - clean|| lies within
tol of ||x - clean||, and each exact minimizer's PSNR (peak 1) in
[10 log10(n / (e + tol)^2), 10 log10(n / (e - tol)^2)] with e = sqrt(n 10^(-PSNR/10)).

    python benchmarks/psnr_interval.py results/bsd68_learned/NAME --tol 2e-3
"""
import argparse
import csv
import math

BSD68_PIXELS = 481 * 321  # every BSD68 image, portrait or landscape


def psnr_interval(psnr, tol, pixels):
    """Bounds of the PSNR of any image within ``tol`` (l2) of one whose PSNR is ``psnr``."""
    error = math.sqrt(pixels * 10 ** (-psnr / 10))
    upper = math.inf if error <= tol else 10 * math.log10(pixels / (error - tol) ** 2)
    return 10 * math.log10(pixels / (error + tol) ** 2), upper


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder")
    p.add_argument("--tol", type=float, required=True, help="the evaluation's --tol")
    p.add_argument("--pixels", type=int, default=BSD68_PIXELS)
    args = p.parse_args()
    with open(f"{args.folder}/per_image.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["model"] not in ("noisy", "TV (oracle weight)")]
    for model in sorted({r["model"] for r in rows}):
        values = [float(r["psnr"]) for r in rows if r["model"] == model]
        bounds = [psnr_interval(v, args.tol, args.pixels) for v in values]
        lo = sum(b[0] for b in bounds) / len(bounds)
        hi = sum(b[1] for b in bounds) / len(bounds)
        print(f"{model}: {len(values)} images, mean {sum(values) / len(values):.4f} dB; "
              f"exact minimizers' mean in [{lo:.4f}, {hi:.4f}]")


if __name__ == "__main__":
    main()
