"""Learned fields of experts vs. learned TV: both MAID-trained on the same crops and noise.

    python scripts/learned_foe.py [--quick] [--filters K --filter-size s] [--n-train N]
                                  [--size S] [--max-iter M] [--threads T]

Training set: ``--n-train`` random crops of ``--size`` pixels from the training
folder (BSD400 where :func:`bilevel.experiment.image_folder` finds it, else the
images bundled with scikit-image, resized), Gaussian noise ``--sigma`` (seed ``--seed``).
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

Writes results/learned_foe/{data.csv (one row per method and test image: psnr,
ssim), history.csv (one row per MAID iteration of each model), runs.csv (one row
per model: status, message, warnings), example.npz (the first test image: noisy,
TV, FoE, clean), meta.json, summary.md, filters.png, example.png}.
"""
from __future__ import annotations

import math
import time

import _figure
import numpy as np
import torch
from bilevel_problems import datasets
from bilevel_problems.fields_of_experts import FieldsOfExperts
from bilevel_problems.tv_denoising import TVDenoising

from bilevel import experiment

TOL = 1e-3  # certified ||x - x*|| of the test solutions: far below PSNR resolution
FILES = {"data.csv": "one row per method and test image: psnr, ssim",
         "history.csv": "one row per MAID iteration of each model (model, run, method, ...)",
         "runs.csv": "one row per model's MAID run: status, message, warnings",
         "example.npz": "the first test image: noisy, tv, foe, clean"}
LABELS = dict(noisy="noisy", tv="TV (MAID)", foe="FoE (MAID)", clean="clean")
SCALE_GRID = dict(tv=(-4.0, -3.0, -2.5, -2.0, -1.0), foe=(-5.0, -4.0, -3.0, -2.0, -1.0))


def add_arguments(p):
    experiment.add_image_arguments(p, n_train=8, n_test=12)
    p.add_argument("--filters", type=int, default=8, help="K")
    p.add_argument("--filter-size", type=int, default=5, help="s")
    p.add_argument("--max-iter", type=int, default=100, help="MAID iterations (both models)")
    p.add_argument("--tv-max-iter", type=int, default=None, help="default: --max-iter")
    p.add_argument("--alpha0", type=float, default=0.1, help="MAID alpha0 for FoE")
    p.add_argument("--tv-alpha0", type=float, default=1e-2, help="MAID alpha0 for TV")


def build(model, args, clean, noisy, scale):
    if model == "tv":
        return TVDenoising(images=clean, noisy=noisy, theta0=(scale, -5.0), variant="isotropic")
    return FieldsOfExperts(images=clean, noisy=noisy, num_filters=args.filters,
                           filter_size=args.filter_size, log_scale=scale, seed=args.seed)


def train(model, args, clean, noisy):
    """Pick the global scale on a grid by training loss, then MAID; (problem, outcome, info)."""
    started = time.perf_counter()
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
    outcome = experiment.run_method(problem, experiment.Run(model, "maid", dict(alpha0=alpha0)),
                                    max_iter=max_iter, progress=not args.quick)
    print(outcome.line(), flush=True)
    last = outcome.last
    info = dict(start_scale=scale, calibration=calib, status=outcome.result.status,
                message=outcome.result.message, iterations=len(outcome.history),
                cost=last["cost"], upper_value=last["upper_value"], maid_time_s=last["time"],
                parameters=int(outcome.result.theta.numel()), alpha0=alpha0, max_iter=max_iter,
                train_wall_s=round(time.perf_counter() - started, 1))
    return problem, outcome, info


def compute(args, folder):
    if args.quick:
        args.n_train, args.size, args.n_test, args.test_size = 2, 24, 2, 32
        args.max_iter, args.filters, args.filter_size = 5, 3, 3
        args.tv_max_iter = 5
    clean, test, names, sources = experiment.image_sets(args)
    noisy = datasets.add_noise(clean, args.sigma, args.seed)
    test_noisy = datasets.add_noise(test, args.sigma, args.seed + 1)
    print(f"train {tuple(clean.shape)} from {sources['train']}, test {tuple(test.shape)} from "
          f"{sources['test']}, sigma={args.sigma}, {args.threads} thread(s)", flush=True)
    models = {model: train(model, args, clean, noisy) for model in ("tv", "foe")}

    rows, outputs, means = [], dict(noisy=test_noisy), {}
    for method in ("noisy", "tv", "foe"):
        if method != "noisy":
            problem, outcome, _ = models[method]
            outputs[method] = problem.denoise(test_noisy, outcome.result.theta, tol=TOL)
        q = datasets.quality(outputs[method], test)
        rows += [dict(method=method, image=name, psnr=p, ssim=s) for name, p, s in
                 zip(names, q["psnr_per_image"], q["ssim_per_image"], strict=True)]
        means[method] = dict(psnr=q["psnr"], ssim=q["ssim"])
    train_psnr = {m: problem.quality(outcome.result.theta, tol=TOL)["psnr"]
                  for m, (problem, outcome, _) in models.items()}
    train_psnr["noisy"] = float(datasets.psnr(noisy, clean).mean())

    folder.write_rows("data.csv", rows)
    folder.write_rows("history.csv", [dict(model=m, **row) for m, (_, outcome, _) in
                                      models.items() for row in outcome.rows()])
    folder.write_rows("runs.csv", [outcome.summary() for _, outcome, _ in models.values()])
    folder.write_arrays("example.npz", clean=test[0].float(),  # float32: images to show
                        **{m: x[0].float() for m, x in outputs.items()})
    meta_models = {m: dict(info, theta=outcome.result.theta.tolist(), train_psnr=train_psnr[m])
                   for m, (_, outcome, info) in models.items()}
    tv_theta = models["tv"][1].result.theta
    meta_models["tv"].update(weight=math.exp(float(tv_theta[0])),
                             smoothing=math.exp(float(tv_theta[1])))
    return dict(settings={k: v for k, v in vars(args).items() if k != "command"},
                sources=sources, n_train=len(clean), n_test=len(test), test_images=names,
                train_noise_seed=args.seed, test_noise_seed=args.seed + 1, test_tol=TOL,
                means=means, train_psnr=train_psnr, models=meta_models)


# ------------------------------------------------------------------ from the files
def plot_filters(folder, meta):
    plt = _figure.pyplot()
    K, s = meta["settings"]["filters"], meta["settings"]["filter_size"]
    alpha, nu, filters = _figure.foe_parts(meta["models"]["foe"]["theta"], K, s)
    cols = min(K, 8)
    rows = math.ceil(K / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.5 * cols, 1.75 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, k in zip(axes.flat, torch.argsort(alpha, descending=True).tolist(), strict=False):
        f = filters[k].numpy()
        m = abs(f).max()
        ax.imshow(f, cmap="gray", vmin=-m, vmax=m, interpolation="nearest")
        ax.set_title(f"a={float(alpha[k]):.3g}\nnu={float(nu[k]):.2g}", fontsize=7)
    fig.suptitle(f"Learned FoE filters ({K} of {s}x{s}), by weight", fontsize=9)
    _figure.save(fig, folder / "filters.png", dpi=150)


def plot_example(folder, meta):
    plt = _figure.pyplot()
    images = np.load(folder / "example.npz")
    first = meta["test_images"][0]
    psnr = {r["method"]: r["psnr"] for r in folder.read_rows("data.csv") if r["image"] == first}
    fig, axes = plt.subplots(1, len(LABELS), figsize=(3 * len(LABELS), 3.3))
    for ax, (method, label) in zip(axes, LABELS.items(), strict=True):
        ax.imshow(np.clip(images[method], 0, 1), cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"{label}  {psnr[method]:.2f} dB" if method in psnr else label, fontsize=9)
        ax.axis("off")
    size = meta["settings"]["test_size"]
    fig.suptitle(f"{first} ({size}x{size} centre crop), sigma={meta['settings']['sigma']}",
                 fontsize=9)
    _figure.save(fig, folder / "example.png", dpi=150)


def plot(folder):
    """filters.png from the learned theta; example.png from example.npz (a folder written
    before example.npz existed keeps the example.png it has)."""
    meta = folder.read_meta()
    plot_filters(folder, meta)
    if (folder / "example.npz").is_file():
        plot_example(folder, meta)


def summarise(folder):
    meta, rows = folder.read_meta(), folder.read_rows("data.csv")
    a, means, train_psnr, models = meta["settings"], meta["means"], meta["train_psnr"], \
        meta["models"]
    foe_parameters = models["foe"].get("parameters", "")
    labels = dict(noisy="noisy", tv="TV (MAID, 2 parameters)",
                  foe=f"FoE (MAID, {foe_parameters} parameters)")
    table = ["| method | test PSNR (dB) | test SSIM | train PSNR (dB) |", "|---|---|---|---|"]
    for m in ("noisy", "tv", "foe"):
        table.append(f"| {labels[m]} | {means[m]['psnr']:.3f} | {means[m]['ssim']:.4f} | "
                     f"{train_psnr[m]:.3f} |")
    status = ["| model | start scale | status | iterations | cost (lower + CG its) | "
              "final upper value | training time (s) |", "|---|---|---|---|---|---|---|"]
    for m, info in models.items():
        status.append(f"| {m} | {info['start_scale']:+.1f} | `{info['status']}` | "
                      f"{info['iterations']} | {info['cost']} | {info['upper_value']:.5f} | "
                      f"{info['train_wall_s']} |")
    psnr = {(r["method"], r["image"]): r["psnr"] for r in rows}
    wins = sum(psnr["foe", image] > psnr["tv", image] for image in meta["test_images"])
    env = meta.get("environment", {})
    summary = [
        "# Learned fields of experts vs. learned TV" + (" (quick)" if a["quick"] else ""), "",
        f"Train: {meta['n_train']} random crops {a['size']}x{a['size']} from "
        f"{meta['sources']['train']} (crop seed {a['seed']}), sigma = {a['sigma']}, noise seed "
        f"{a['seed']}; both models on the same noisy/clean pairs.  Test: centre crops "
        f"{a['test_size']}x{a['test_size']} of the first {meta['n_test']} images of "
        f"{meta['sources']['test']}, noise seed {a['seed'] + 1}; mean over images, lower level "
        f"solved to certified accuracy {meta['test_tol']:g}.", "",
        f"FoE: {a['filters']} filters {a['filter_size']}x{a['filter_size']}, MAID alpha0 = "
        f"{a['alpha0']}; TV: isotropic, theta = (log weight, log smoothing), MAID alpha0 = "
        f"{a['tv_alpha0']}.  Each model's global scale is first picked on a 5-point grid by "
        "training loss (TV: log weight at log smoothing -5; FoE: theta_0).", "",
        *table, "",
        f"FoE beats TV on {wins} of {meta['n_test']} test images (PSNR).  Learned TV: weight "
        f"{models['tv']['weight']:.4g}, smoothing {models['tv']['smoothing']:.3g}.", "",
        *status, "",
        f"Command: `{meta.get('command', '')}`", "",
        f"Machine: {env.get('cpu', env.get('processor', 'cpu'))}, torch {env.get('torch')}, "
        f"{a['threads']} torch thread(s).  Wall time {meta['wall_time_s']:.0f} s in all.", "",
        "Files: data.csv (method, image, psnr, ssim), history.csv (MAID iterations of both), "
        "meta.json, filters.png (learned filters, by weight), example.png (noisy / TV / FoE / "
        "clean on the first test image).", ""]
    folder.write_text("summary.md", "\n".join(summary))
    print("\n".join(table + [""] + status))


def main(argv=None):
    return experiment.main(__doc__, "learned_foe", compute, summarise=summarise, plot=plot,
                           argv=argv, add_arguments=add_arguments, files=FILES)


if __name__ == "__main__":
    main()
