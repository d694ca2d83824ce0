"""Learned fields of experts vs. learned TV: both MAID-trained on the same crops and noise.

    python scripts/learned_foe.py [--quick] [--filters K --filter-size s] [--n-train N]
                                  [--size S] [--max-iter M] [--threads T]

Training set: ``--n-train`` random crops of ``--size`` pixels from the training
folder (BSD400 at ../shared/data/bsd/train beside the repository when present, else the images
bundled with scikit-image, resized), Gaussian noise ``--sigma`` (seed ``--seed``).
Both models are trained on exactly these noisy/clean pairs:

- ``tv``: smoothed isotropic TV, theta = (log weight, log smoothing)
  (problems/tv_denoising.py);
- ``foe``: Charbonnier fields of experts with K zero-mean s x s filters, their
  weights and smoothings, 1 + 2K + K s^2 parameters (problems/fields_of_experts/).

Recipe (as benchmarks/ridge_vs_foe.py): each model's global scale (TV: log
weight at log smoothing -5; FoE: theta_0) is first picked on a 5-point grid by
training loss, then MAID runs ``--max-iter`` iterations (alpha0 ``--alpha0`` for
FoE, ``--tv-alpha0`` for TV).  Test: centre crops of ``--test-size`` of the first
``--n-test`` Set68 images (else other scikit-image images), noise seed + 1;
mean PSNR / SSIM of the lower-level solutions (certified accuracy 1e-3) and of
the noisy observations.

Writes results/learned_foe/{data.csv, history.csv, meta.json, summary.md,
filters.png, example.png}.
"""
from __future__ import annotations

import math
import platform
import sys
import time
import warnings
from pathlib import Path

import torch
from bilevel_problems import datasets
from bilevel_problems.fields_of_experts import FieldsOfExperts
from bilevel_problems.tv_denoising import TVDenoising

import bilevel
from bilevel.results import write_csv

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _figure  # noqa: E402

TOL = 1e-3  # certified ||x - x*|| of the test solutions: far below PSNR resolution


def parse_args():
    p = _figure.parser(__doc__, "learned_foe")
    p.add_argument("--train-dir", default=None, help="default: BSD400 if present, else skimage")
    p.add_argument("--test-dir", default=None, help="default: Set68 if present, else skimage")
    p.add_argument("--n-train", type=int, default=8)
    p.add_argument("--size", type=int, default=64, help="training crop side")
    p.add_argument("--n-test", type=int, default=12)
    p.add_argument("--test-size", type=int, default=96)
    p.add_argument("--sigma", type=float, default=0.1)
    p.add_argument("--filters", type=int, default=8, help="K")
    p.add_argument("--filter-size", type=int, default=5, help="s")
    p.add_argument("--max-iter", type=int, default=100, help="MAID iterations (both models)")
    p.add_argument("--tv-max-iter", type=int, default=None, help="default: --max-iter")
    p.add_argument("--alpha0", type=float, default=0.1, help="MAID alpha0 for FoE")
    p.add_argument("--tv-alpha0", type=float, default=1e-2, help="MAID alpha0 for TV")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    return p.parse_args()


def load_sets(args):
    train_dir = _figure.bsd_folder("train", args.train_dir)
    test_dir = _figure.bsd_folder("Set68", args.test_dir)
    return datasets.train_test_images(train_dir, test_dir, args.n_train, args.n_test, args.size,
                                      args.test_size, seed=args.seed)


def build(model, args, clean, noisy, scale):
    if model == "tv":
        return TVDenoising(images=clean, noisy=noisy, theta0=(scale, -5.0), variant="isotropic")
    return FieldsOfExperts(images=clean, noisy=noisy, num_filters=args.filters,
                           filter_size=args.filter_size, log_scale=scale, seed=args.seed)


SCALE_GRID = dict(tv=(-4.0, -3.0, -2.5, -2.0, -1.0), foe=(-5.0, -4.0, -3.0, -2.0, -1.0))


def train(model, args, clean, noisy):
    t0 = time.perf_counter()
    calib = []
    for scale in SCALE_GRID[model]:
        problem = build(model, args, clean, noisy, scale)
        theta = problem.initial_theta()
        sol = problem.solve_lower(theta, TOL)
        calib.append((float(problem.upper_objective(sol.x, theta)), scale))
        print(f"  {model}: start scale {scale:+.1f}: training loss {calib[-1][0]:.4f}",
              flush=True)
    scale = min(calib)[1]
    problem = build(model, args, clean, noisy, scale)
    max_iter = args.tv_max_iter or args.max_iter if model == "tv" else args.max_iter
    alpha0 = args.tv_alpha0 if model == "tv" else args.alpha0
    print(f"{model}: MAID from scale {scale:+.1f}, {max_iter} iterations, alpha0={alpha0}",
          flush=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bilevel.ConvergenceWarning)
        result = bilevel.solve(problem, "maid", max_iter=max_iter, alpha0=alpha0,
                               progress=True)
    wall = time.perf_counter() - t0
    last = result.history[-1]
    print(f"{model}: {result.status} after {len(result.history)} iterations, {wall:.0f} s, "
          f"cost {last['cost']}, upper {last['upper_value']:.5f}", flush=True)
    info = dict(start_scale=scale, calibration=calib, status=result.status,
                message=result.message, iterations=len(result.history), cost=last["cost"],
                upper_value=last["upper_value"], maid_time_s=last["time"],
                train_wall_s=round(wall, 1), parameters=int(result.theta.numel()),
                alpha0=alpha0, max_iter=max_iter)
    return problem, result, info


def plot_filters(problem, theta, path):
    plt = _figure.pyplot()
    p = problem.params(theta)
    filt = problem.filters(theta).cpu()
    K = filt.shape[0]
    cols = min(K, 8)
    rows = math.ceil(K / cols)
    order = torch.argsort(p.alpha, descending=True).tolist()
    fig, axes = plt.subplots(rows, cols, figsize=(1.5 * cols, 1.75 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, k in zip(axes.flat, order, strict=False):
        f = filt[k].numpy()
        m = abs(f).max()
        ax.imshow(f, cmap="gray", vmin=-m, vmax=m, interpolation="nearest")
        ax.set_title(f"a={float(p.alpha[k]):.3g}\nnu={float(p.nu[k]):.2g}", fontsize=7)
    fig.suptitle(f"Learned FoE filters ({K} of {problem.s}x{problem.s}), by weight", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def plot_example(panels, title, path):
    plt = _figure.pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3.3))
    for ax, (label, img) in zip(axes, panels, strict=True):
        ax.imshow(img.clamp(0, 1).cpu().numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_title(label, fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def main():
    args = parse_args()
    if args.quick:
        args.n_train, args.size, args.n_test, args.test_size = 2, 24, 2, 32
        args.max_iter, args.filters, args.filter_size = 5, 3, 3
        args.tv_max_iter = 5
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    clean, test, names, sources = load_sets(args)
    noisy = datasets.add_noise(clean, args.sigma, args.seed)
    test_noisy = datasets.add_noise(test, args.sigma, args.seed + 1)
    print(f"train {tuple(clean.shape)} from {sources['train']}, test {tuple(test.shape)} from "
          f"{sources['test']}, sigma={args.sigma}, {args.threads} thread(s)", flush=True)

    models = {}
    for model in ("tv", "foe"):
        models[model] = train(model, args, clean, noisy)

    rows, outputs, means = [], {}, {}

    def record(method, x):
        q = datasets.quality(x, test)
        for name, p, s in zip(names, q["psnr_per_image"], q["ssim_per_image"], strict=True):
            rows.append(dict(method=method, image=name, psnr=p, ssim=s))
        means[method] = (q["psnr"], q["ssim"])
        outputs[method] = x

    record("noisy", test_noisy)
    train_psnr = {}
    for model, (problem, result, info) in models.items():
        t0 = time.perf_counter()
        record(model, problem.denoise(test_noisy, result.theta, tol=TOL))
        info["test_time_s"] = round(time.perf_counter() - t0, 1)
        train_psnr[model] = problem.quality(result.theta, tol=TOL)["psnr"]
        info["train_psnr"] = train_psnr[model]
    train_psnr["noisy"] = float(datasets.psnr(noisy, clean).mean())

    out = Path(args.out)
    meta_models = {m: dict(info, theta=res.theta.tolist()) for m, (_, res, info) in models.items()}
    tv_theta = models["tv"][1].theta
    meta_models["tv"].update(weight=math.exp(float(tv_theta[0])),
                             smoothing=math.exp(float(tv_theta[1])))
    settings = dict(script="scripts/learned_foe.py", quick=args.quick,
                    command="python " + " ".join(sys.argv),
                    settings=vars(args), sources=sources, n_train=len(clean), n_test=len(test),
                    test_images=names, train_noise_seed=args.seed, test_noise_seed=args.seed + 1,
                    test_tol=TOL, means={k: dict(psnr=v[0], ssim=v[1]) for k, v in means.items()},
                    train_psnr=train_psnr, models=meta_models)
    _figure.write(out, rows, settings, started)
    hist = [dict(model=m, **r) for m, (_, res, _) in models.items() for r in res.history]
    write_csv(out / "history.csv", hist)

    foe_problem, foe_result, _ = models["foe"]
    if not args.no_plot:
        plot_filters(foe_problem, foe_result.theta, out / "filters.png")
        i = 0
        panels = [("noisy", test_noisy[i]), ("TV (MAID)", outputs["tv"][i]),
                  ("FoE (MAID)", outputs["foe"][i]), ("clean", test[i])]
        per = {m: [r for r in rows if r["method"] == m][i]["psnr"] for m in ("noisy", "tv", "foe")}
        labelled = [(f"{lab}  {per[m]:.2f} dB" if m in per else lab, img)
                    for (lab, img), m in zip(panels, ("noisy", "tv", "foe", "clean"),
                                             strict=True)]
        plot_example(labelled, f"{names[i]} ({args.test_size}x{args.test_size} centre crop), "
                     f"sigma={args.sigma}", out / "example.png")

    wall = time.perf_counter() - started
    labels = dict(noisy="noisy", tv="TV (MAID, 2 parameters)",
                  foe=f"FoE (MAID, {foe_problem.dim_theta} parameters)")
    table = ["| method | test PSNR (dB) | test SSIM | train PSNR (dB) |", "|---|---|---|---|"]
    for m in ("noisy", "tv", "foe"):
        table.append(f"| {labels[m]} | {means[m][0]:.3f} | {means[m][1]:.4f} | "
                     f"{train_psnr[m]:.3f} |")
    status = ["| model | start scale | status | iterations | cost (lower + CG its) | "
              "final upper value | training time (s) |", "|---|---|---|---|---|---|---|"]
    for m, (_, _, info) in models.items():
        status.append(f"| {m} | {info['start_scale']:+.1f} | `{info['status']}` | "
                      f"{info['iterations']} | {info['cost']} | {info['upper_value']:.5f} | "
                      f"{info['train_wall_s']} |")
    wins = sum(r["psnr"] > q["psnr"] for r, q in zip(
        [r for r in rows if r["method"] == "foe"], [r for r in rows if r["method"] == "tv"],
        strict=True))
    summary = [
        "# Learned fields of experts vs. learned TV" + (" (quick)" if args.quick else ""),
        "",
        f"Train: {len(clean)} random crops {args.size}x{args.size} from {sources['train']} "
        f"(crop seed {args.seed}), sigma = {args.sigma}, noise seed {args.seed}; both models on "
        "the same noisy/clean pairs.  Test: centre crops "
        f"{args.test_size}x{args.test_size} of the first {len(test)} images of "
        f"{sources['test']}, noise seed {args.seed + 1}; mean over images, lower level solved "
        f"to certified accuracy {TOL:g}.",
        "",
        f"FoE: {args.filters} filters {args.filter_size}x{args.filter_size}, MAID alpha0 = "
        f"{args.alpha0}; TV: isotropic, theta = (log weight, log smoothing), MAID alpha0 = "
        f"{args.tv_alpha0}.  Each model's global scale is first picked on a 5-point grid by "
        "training loss (TV: log weight at log smoothing -5; FoE: theta_0).",
        "",
        *table,
        "",
        f"FoE beats TV on {wins} of {len(test)} test images (PSNR).  Learned TV: weight "
        f"{meta_models['tv']['weight']:.4g}, smoothing {meta_models['tv']['smoothing']:.3g}.",
        "",
        *status,
        "",
        f"Command: `{settings['command']}`",
        "",
        f"Machine: {platform.node()} ({platform.machine()}), {platform.processor() or 'cpu'}, "
        f"torch {torch.__version__}, {args.threads} torch thread(s).  Wall time "
        f"{wall:.0f} s in all.",
        "",
        "Files: data.csv (method, image, psnr, ssim), history.csv (MAID iterations of both), "
        "meta.json, filters.png (learned filters, by weight), example.png (noisy / TV / FoE / "
        "clean on the first test image).",
        "",
    ]
    (out / "summary.md").write_text("\n".join(summary))
    print("\n".join(table + [""] + status))
    print(f"wrote {out}/ in {wall:.0f} s", flush=True)


if __name__ == "__main__":
    main()
