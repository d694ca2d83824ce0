"""Two checks on the learned weakly convex ridges that docs/denoisers.md quotes.

    python benchmarks/learned_wcrr_checks.py [--crops 400] [--out results/benchmarks]

1. Does ``floor_bound=symbol`` use its deeper floor?  The slopes of
   ``wcrr24x7_symbol_sigma25`` below the floor that the l1 bound would put under the same
   filters and alpha (``wcrr24x7_cont_sigma25``'s class), and the deepest one against it.
2. Does the 48-filter model overfit its 800 training crops?  Its mean PSNR on ``--crops`` of
   them with the training noise (seed 0) and with fresh noise (seed 7), and on as many other
   crops (seed 1: other positions, other noise) against TV at the BSD68 oracle weight on the
   same crops: a drop on new crops that TV shares is the crops', not overfitting.

Writes learned_wcrr_checks.{json,md} in ``--out``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import train_denoiser  # noqa: E402  (the training crops)
from bilevel_problems import datasets  # noqa: E402

import bilevel  # noqa: E402
from bilevel.results import RunFolder  # noqa: E402

MODELS = ROOT / "results" / "denoisers"
TV_WEIGHT = 0.0733603234563737  # TV's oracle weight on BSD68 at sigma 25 (results/bsd68)


def floor_use():
    """Slopes of the symbol-floor model below the l1 floor of its own filters and alpha."""
    deeper = bilevel.load(MODELS / "wcrr24x7_symbol_sigma25")
    l1 = bilevel.load(MODELS / "wcrr24x7_cont_sigma25").problem
    alpha, C, slopes, _ = deeper.problem.params(deeper.theta)
    beta_l1 = float(l1.slope_floor(alpha, C))
    below = slopes < -beta_l1
    c = deeper.problem.concavity(deeper.theta)
    return dict(slopes=slopes.numel(), below_l1_floor=int(below.sum()),
                potentials_below=int(below.any(dim=1).sum()),
                deepest_over_l1_floor=c["depth"] * c["floor"] / beta_l1,
                floor_ratio=c["floor"] / beta_l1, mu=c["mu"])


def crop_psnrs(crops):
    """Mean PSNR of the 48-filter model (and of TV) on training crops and on other crops."""
    from skimage.restoration import denoise_tv_chambolle

    model = bilevel.load(MODELS / "wcrr48x7_rho095_sigma25")
    out = {}
    for name, seed, noise_seed in (("training crops, training noise", 0, None),
                                   ("training crops, fresh noise", 0, 7),
                                   ("other crops", 1, None)):
        clean, noisy, _ = train_denoiser.training_pairs(800, 40, 25.0, seed=seed,
                                                        crops_per_image=2)
        clean, noisy = clean[:crops], noisy[:crops]
        if noise_seed is not None:
            noisy = datasets.add_noise(clean, 25 / 255, noise_seed)
        x = torch.as_tensor(model.denoise(noisy, tol=1e-3, pad=6))
        tv = np.stack([denoise_tv_chambolle(y.numpy(), weight=TV_WEIGHT) for y in noisy])
        out[name] = dict(model=datasets.quality(x, clean)["psnr"],
                         tv=datasets.quality(torch.as_tensor(tv), clean)["psnr"])
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crops", type=int, default=400)
    parser.add_argument("--out", default="results/benchmarks")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    floor, psnr = floor_use(), crop_psnrs(args.crops)
    lines = [f"1. `wcrr24x7_symbol_sigma25`: {floor['below_l1_floor']} of {floor['slopes']} "
             f"slopes, in {floor['potentials_below']} potentials, lie below the l1 bound's "
             f"floor for the same filters and alpha (the symbol floor is "
             f"{floor['floor_ratio']:.2f} times deeper); the deepest at "
             f"{floor['deepest_over_l1_floor']:.2f} times the l1 floor; certified mu "
             f"{floor['mu']:.3f}.", "",
             f"2. `wcrr48x7_rho095_sigma25` on {args.crops} crops 40x40 (mean PSNR, dB; TV at "
             f"weight {TV_WEIGHT:.4f}):", "", "| crops | model | TV |", "|---|---|---|"]
    lines += [f"| {k} | {v['model']:.3f} | {v['tv']:.3f} |" for k, v in psnr.items()]
    RunFolder(args.out).write_report("learned_wcrr_checks", "Checks on the learned weakly "
                                     "convex ridges", dict(floor=floor, crops=args.crops,
                                                           psnr=psnr), "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
