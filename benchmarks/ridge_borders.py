"""Filter-bank denoisers at image borders, and the certified L of a learned ridge.

    python benchmarks/ridge_borders.py [--run results/denoisers/ridge_sigma25]
                                       [--patches 200] [--quick]

The numbers docs/problems.md and the README quote for the learned convex ridge
(``--run``, trained by scripts/train_denoiser.py) on the training patches it saw (the
first ``--patches`` BSD400 crops of 40x40, sigma 25/255, seed 0; bundled images without
the data):

- ``smoothness``: its certified L (the symbol bound of problems/filter_bank.py), Young's
  l1 bound used before, and the Hessian's norm at a flat 128x128 image (every response
  at 0: the worst case), by 300 steps of power iteration;
- ``border``: the MSE of the outer 2 pixels of each patch and of the rest, for the ridge
  solved on the patch itself (pad 0) and on the patch mirrored by s - 1 pixels (what
  ``denoise`` does by default), and for the learned TV next to it (``--tv-run``);
- ``tv_start``: the training loss F = mean 1/2 ||x* - x_true||^2 at the start of
  ``ridge_regularizer[start=tv]`` (weight 0.07, thresholds 0.06 and 0.015) and of the
  default DCT start, without and with ``border=4``.

Every solve is certified to ||x - x*|| <= 1e-3 (F and MSE move by far less than the
digits quoted).  Writes results/benchmarks/ridge_borders.{json,md}.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

import bilevel
from bilevel import experiment, registry

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
SPEC = "ridge_regularizer[num_filters=16, filter_size=5, num_knots=21, x_range=0.3{}]"
TOL = 1e-3


def add_arguments(p):
    p.add_argument("--run", default="results/denoisers/ridge_sigma25")
    p.add_argument("--tv-run", default="results/denoisers/tv_sigma25")
    p.add_argument("--patches", type=int, default=None, help="training patches (200; quick 4)")


def _patches(args):
    import train_denoiser

    clean, noisy, _ = train_denoiser.training_pairs(args.patches, 16 if args.quick else 40,
                                                    sigma=25.0)
    return clean, noisy


def _mse(x, clean):
    band = torch.ones(clean.shape[-2:], dtype=torch.bool)
    band[2:-2, 2:-2] = False
    e = (x - clean) ** 2
    return dict(band=float(e[:, band].mean()), inside=float(e[:, ~band].mean()),
                F=float(0.5 * e.sum(dim=(1, 2)).mean()))


def smoothness(model):
    from bilevel_problems import filter_bank

    p, theta = model.problem, model.theta
    alpha, C, slopes, _ = p.params(theta)
    auto = filter_bank.autocorrelations(C, p.s)
    weights = slopes.amax(dim=1).clamp(min=0)
    young = 1.0 + float(alpha) * float((weights.view(-1, 1, 1) * auto).sum(0).abs().sum())
    flat = torch.full((1, 128, 128), 0.5, dtype=torch.float64)
    at_flat = p.on_images(flat, theta)
    v = torch.randn(flat.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for _ in range(300):
        v = at_flat.lower_hvp(flat, theta, v)
        value = float(v.norm())
        v = v / value
    return dict(certified_L=p.smoothness(theta), young_L=young, flat_image_hessian_norm=value)


def compute(args, folder):
    torch.set_num_threads(1)
    args.patches = args.patches or (4 if args.quick else 200)
    clean, noisy = _patches(args)
    ridge, tv = bilevel.load(args.run), bilevel.load(args.tv_run)
    border = {"ridge, pad 0": _mse(ridge.denoise(noisy, tol=TOL, pad=0), clean),
              f"ridge, pad {ridge.problem.s - 1}": _mse(ridge.denoise(noisy, tol=TOL), clean),
              "learned TV": _mse(tv.denoise(noisy, tol=TOL), clean)}
    starts = {}
    for extra in (", start=tv", ", start=tv, init_width=0.015", ""):
        for b in (0, 4):
            spec = SPEC.format(extra + (f", border={b}" if b else ""))
            p = registry.make_problem(spec, images=clean, noisy=noisy, sigma=25 / 255)
            theta = p.initial_theta()
            x = p.solve_lower(theta, TOL, max_iter=20_000).x
            starts[spec] = float(p.upper_objective(x, theta))
    return dict(run=args.run, tv_run=args.tv_run, patches=args.patches, tol=TOL,
                smoothness=smoothness(ridge), border=border, tv_start=starts)


def write_table(folder):
    meta = folder.read_meta()
    s = meta["smoothness"]
    lines = [f"# Ridge regulariser at image borders ({meta['run']}, {meta['patches']} patches)",
             "", f"`{meta['command']}`", "",
             f"Certified L {s['certified_L']:.0f} (Young's l1 bound {s['young_L']:.0f}); "
             f"Hessian norm at a flat image {s['flat_image_hessian_norm']:.0f}.", "",
             "| denoiser | MSE outer 2 px | MSE inside | F |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['band']:.3e} | {v['inside']:.3e} | {v['F']:.4f} |"
              for k, v in meta["border"].items()]
    lines += ["", "| start | F at the start |", "|---|---|"]
    lines += [f"| `{k}` | {v:.4f} |" for k, v in meta["tv_start"].items()]
    folder.write_text("ridge_borders.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None):
    return experiment.main(__doc__, "ridge_borders", compute, summarise=write_table, argv=argv,
                           add_arguments=add_arguments, kind="benchmarks",
                           meta_name="ridge_borders.json")


if __name__ == "__main__":
    main()
