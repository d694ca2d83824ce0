"""Figure: MAID against HOAG's accuracy schedules, learning a field of experts.

    python scripts/foe_vs_hoag.py [--quick] [--seed 0] [--budget 40000]
                                  [--filters K --filter-size s] [--n-train N --size S]

The paper's fields-of-experts comparison at CPU size: K zero-mean s x s
Charbonnier experts with their weights and smoothings (1 + 2K + K s^2
hyperparameters, problems/fields_of_experts/) learned on ``--n-train`` noisy
crops (BSD400 beside the repository when present, else scikit-image's images),
sigma 0.1.  MAID (the library's defaults and the paper's settings, ``maid_paper``,
both with alpha0 ``--alpha0``) and HOAG with the
geometric, quadratic and cubic schedules (eps0 ``--hoag-eps0``) start from the
same theta and spend the same budget of lower-level + CG iterations.

Panels: the upper loss each method reports against that cost; the accuracy eps
each method asked for against outer iterations; one held-out test image
(centre crop of the first Set68 image) denoised with each method's final theta,
with its PSNR.  The mean PSNR over ``--n-test`` test crops goes to summary.md.

Writes results/foe_vs_hoag/{data.csv (one row per outer iteration of each
method), test.csv (one row per method and test image: PSNR / SSIM), runs.csv (one
row per method: status, message, warnings), panels.npz (the first test image:
noisy, clean and each method's denoising), meta.json, foe_vs_hoag.png,
summary.md}.
"""
from __future__ import annotations

import _figure
import numpy as np
import torch
from bilevel_problems import datasets
from bilevel_problems.fields_of_experts import FieldsOfExperts

from bilevel import experiment

METHODS = ("maid", "maid_paper", "maid_lbfgs", "hoag_geometric", "hoag_quadratic",
           "hoag_cubic")
LABELS = {"maid": "MAID", "maid_paper": "MAID (paper's settings)",
          "maid_lbfgs": "MAID L-BFGS",
          "hoag_geometric": "HOAG geometric",
          "hoag_quadratic": "HOAG quadratic", "hoag_cubic": "HOAG cubic"}
TEST_TOL = 1e-3  # certified ||x - x*|| of the test denoisings: far below PSNR resolution
KEEP = ("iteration", "cost", "upper_value", "grad_norm", "error_bound", "eps", "step",
        "backtracks", "accepted", "lower_iterations", "cg_iterations", "time")
FILES = {"data.csv": "one row per outer iteration of each method (run, method, cost, "
                     "upper_value, eps, accepted, ...)",
         "test.csv": "one row per method and test image: psnr, ssim",
         "runs.csv": "one row per method: status, message, warnings",
         "panels.npz": "the first test image: noisy, clean, each method's denoising"}


def add_arguments(p):
    experiment.add_image_arguments(p, n_train=16, n_test=16)
    p.add_argument("--filters", type=int, default=8, help="K")
    p.add_argument("--filter-size", type=int, default=3, help="s")
    p.add_argument("--log-scale", type=float, default=-3.0, help="starting theta_0")
    p.add_argument("--budget", type=float, default=4e4,
                   help="lower-level + CG iterations per method")
    p.add_argument("--alpha0", type=float, default=0.1, help="MAID's first step")
    p.add_argument("--hoag-eps0", type=float, default=1e-1, help="HOAG's first accuracy")


def build(args):
    """The training problem and the noisy / clean test crops of ``args`` (deterministic)."""
    clean, test, names, sources = experiment.image_sets(args)
    problem = FieldsOfExperts(images=clean,
                              noisy=datasets.add_noise(clean, args.sigma, args.seed),
                              num_filters=args.filters, filter_size=args.filter_size,
                              log_scale=args.log_scale, seed=args.seed)
    return problem, datasets.add_noise(test, args.sigma, args.seed + 1), test, names, sources


def compute(args, folder):
    if args.quick:
        args.n_train, args.size, args.n_test, args.test_size = 2, 24, 2, 32
        args.filters, args.budget = 3, 600
    problem, test_noisy, test, names, sources = build(args)
    clean = problem.clean
    print(f"train {tuple(clean.shape)} from {sources['train']}, test {tuple(test.shape)} from "
          f"{sources['test']}; {problem.dim_theta} hyperparameters, budget {args.budget:g}",
          flush=True)
    outcomes, tests, runs = [], [], {}
    panels = dict(noisy=test_noisy[0], clean=test[0])
    for method in METHODS:
        settings = dict(alpha0=args.alpha0) if method.startswith("maid") \
            else dict(eps0=args.hoag_eps0)
        outcome = experiment.run_method(problem, experiment.Run(LABELS[method], method, settings),
                                        max_iter=100_000, max_cost=args.budget)
        outcomes.append(outcome)
        result, last = outcome.result, outcome.last
        x = problem.denoise(test_noisy, result.theta, tol=TEST_TOL)
        panels[method] = x[0]
        q = datasets.quality(x, test)
        tests += [dict(method=method, image=n, psnr=p, ssim=s) for n, p, s in
                  zip(names, q["psnr_per_image"], q["ssim_per_image"], strict=True)]
        # The returned theta is the method's next point, not yet evaluated: its training
        # loss, to certified accuracy, is what the method delivers.
        sol = problem.solve_lower(result.theta, TEST_TOL)
        train_loss = float(problem.upper_objective(sol.x, result.theta))
        runs[method] = dict(settings=settings, status=result.status, message=result.message,
                            iterations=len(result.history), cost=last["cost"],
                            rejected=sum(not r["accepted"] for r in result.history),
                            time=round(last["time"], 1), train_loss=train_loss,
                            test_psnr=q["psnr"], test_ssim=q["ssim"],
                            theta=result.theta.tolist(), warnings=outcome.warnings)
        print(f"{outcome.line()} training loss={train_loss:.5f} test PSNR={q['psnr']:.3f} dB",
              flush=True)
    q = datasets.quality(test_noisy, test)
    tests += [dict(method="noisy", image=n, psnr=p, ssim=s) for n, p, s in
              zip(names, q["psnr_per_image"], q["ssim_per_image"], strict=True)]
    runs["noisy"] = dict(test_psnr=q["psnr"], test_ssim=q["ssim"])
    folder.write_rows("data.csv", experiment.history_rows(outcomes, KEEP))
    folder.write_rows("test.csv", tests)
    folder.write_rows("runs.csv", experiment.summary_rows(outcomes))
    # float32: images to show (and their PSNR to 1e-5 dB), at half the size.
    folder.write_arrays("panels.npz", **{k: v.float() for k, v in panels.items()})
    return dict(problem="fields_of_experts",
                settings={k: v for k, v in vars(args).items()
                          if k not in ("out", "replot", "no_plot", "command")},
                sources=sources, hyperparameters=problem.dim_theta,
                n_train=len(clean), n_test=len(test), test_images=names,
                test_tol=TEST_TOL, torch_threads=torch.get_num_threads(), runs=runs)


def ran(meta):
    """The methods of METHODS that a run folder holds (an older one may lack some)."""
    return [m for m in METHODS if m in meta["runs"]]


def held_loss(rows):
    """Upper loss at the point a method holds after each iteration.

    A rejected HOAG trial evaluates a point and returns to the previous one, so
    its loss is not that of the held point; a MAID row without an accepted step
    keeps its theta too.
    """
    held, value = [], float("nan")
    for r in rows:
        if r["accepted"] is True or r["accepted"] == "True" or value != value:
            value = float(r["upper_value"])
        held.append(value)
    return held


def plot(folder):
    """Loss against cost, eps against iterations, and the first test image per method
    (from panels.npz; a folder without it gets the curves only)."""
    plt = _figure.pyplot()
    from matplotlib.ticker import NullFormatter

    rows, meta = folder.read_rows("data.csv"), folder.read_meta()
    s, methods = meta["settings"], ran(meta)
    has_panels = (folder / "panels.npz").is_file()
    fig = plt.figure(figsize=(17, 7.5 if has_panels else 4.5))
    grid = fig.add_gridspec(2 if has_panels else 1, len(methods) + 2,
                            height_ratios=[1.2, 1] if has_panels else None)
    half = (len(methods) + 2) // 2
    loss, acc = fig.add_subplot(grid[0, :half]), fig.add_subplot(grid[0, half:])
    start = []
    for i, method in enumerate(methods):
        sel = [r for r in rows if r["method"] == method]
        style = dict(color=f"C{i}", lw=2 if method == "maid" else 1.2)
        held = held_loss(sel)
        start.append(held[0])
        loss.plot([int(r["cost"]) for r in sel], held, label=LABELS[method], **style)
        acc.plot([int(r["iteration"]) for r in sel], [float(r["eps"]) for r in sel], **style)
    final = min(meta["runs"][m]["train_loss"] for m in methods)
    loss.set_ylim(final - 0.03 * (max(start) - final), max(start) + 0.05 * (max(start) - final))
    loss.set(xlabel="lower-level + CG iterations", ylabel="upper loss g(x~) (training)",
             xscale="log", title="upper loss at the point each method holds")
    loss.xaxis.set_minor_formatter(NullFormatter())
    acc.set(xlabel="outer iteration", ylabel="eps (= delta)", yscale="log",
            title="accuracy asked for")
    loss.legend(fontsize=8)
    if has_panels:
        draw_panels(fig, grid, np.load(folder / "panels.npz"), meta, methods)
    fig.suptitle(f"Fields of experts ({s['filters']} filters {s['filter_size']}x"
                 f"{s['filter_size']}, {meta['hyperparameters']} hyperparameters, "
                 f"{meta['n_train']} training crops): MAID vs HOAG at a budget of "
                 f"{s['budget']:g}", fontsize=10)
    _figure.save(fig, folder / "foe_vs_hoag.png", dpi=110, rect=(0, 0.03, 1, 1))


def draw_panels(fig, grid, panels, meta, methods):
    """The bottom row: noisy, each method's denoising, clean, with their PSNR."""
    clean = torch.from_numpy(panels["clean"])
    shown = [("noisy", "noisy")] + [(m, LABELS[m]) for m in methods] + [("clean", "clean")]
    for j, (key, label) in enumerate(shown):
        img = torch.from_numpy(panels[key])
        ax = fig.add_subplot(grid[1, j])
        ax.imshow(img.clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1)
        if key != "clean":
            label = f"{label}\n{datasets.psnr(img, clean).mean():.2f} dB"
        ax.set_title(label, fontsize=9)
        ax.axis("off")
    fig.text(0.5, 0.02, f"test image {meta['test_images'][0]} ({clean.shape[0]}x"
             f"{clean.shape[1]} centre crop), sigma={meta['settings']['sigma']}", ha="center",
             fontsize=9)


def cost_to_reach(rows, run, level):
    """First cost at which the held loss (then the returned theta's) is <= level, or None."""
    for r, value in zip(rows, held_loss(rows), strict=True):
        if value <= level:
            return int(r["cost"])
    return run["cost"] if run["train_loss"] <= level else None


def summarise(folder):
    rows, meta = folder.read_rows("data.csv"), folder.read_meta()
    runs, s, methods = meta["runs"], meta["settings"], ran(meta)
    best = min(runs[m]["train_loss"] for m in methods)
    levels = (1.01 * best, 1.001 * best)
    lines = [
        "# Fields of experts: MAID against HOAG's accuracy schedules" +
        (" (quick)" if meta["quick"] else ""), "",
        f"{meta['n_train']} training crops {s['size']}x{s['size']} ({meta['sources']['train']}),"
        f" sigma = {s['sigma']}; FoE with {s['filters']} filters {s['filter_size']}x"
        f"{s['filter_size']} ({meta['hyperparameters']} hyperparameters), theta_0 starts at "
        f"{s['log_scale']}; budget {s['budget']:g} lower-level + CG iterations per method; MAID "
        f"alpha0 = {s['alpha0']}, HOAG eps0 = {s['hoag_eps0']}.  Test: {meta['n_test']} centre "
        f"crops {s['test_size']}x{s['test_size']} ({meta['sources']['test']}), noise seed "
        f"{s['seed'] + 1}, denoised to certified accuracy {meta['test_tol']:g}.", "",
        "'training loss' is g(x*(theta)) at the theta each method returns, solved to certified "
        f"accuracy {meta['test_tol']:g} (the returned theta is the method's next point, which "
        "its history has not evaluated).  'cost to reach' is the first cost at which the loss "
        f"of the point the method holds is within 1% / 0.1% of the best training loss "
        f"({best:.5f}).", "",
        "| method | status | iterations (rejected) | cost | time (s) | training loss | "
        "test PSNR (dB) | test SSIM | cost to reach 1% | cost to reach 0.1% |",
        "|---|---|---|---|---|---|---|---|---|---|"]
    for m in methods:
        r = runs[m]
        sel = [row for row in rows if row["method"] == m]
        reach = [cost_to_reach(sel, r, level) for level in levels]
        lines.append(f"| {LABELS[m]} | `{r['status']}` | {r['iterations']} ({r['rejected']}) | "
                     f"{r['cost']} | {r['time']} | {r['train_loss']:.5f} | {r['test_psnr']:.3f} | "
                     f"{r['test_ssim']:.4f} | "
                     + " | ".join("not reached" if c is None else str(c) for c in reach) + " |")
    lines += [f"| noisy | | | | | | {runs['noisy']['test_psnr']:.3f} | "
              f"{runs['noisy']['test_ssim']:.4f} | | |", "",
              f"Command: `{meta['command']}`", ""]
    folder.write_text("summary.md", "\n".join(lines))
    print("\n".join(lines))


def main(argv=None):
    return experiment.main(__doc__, "foe_vs_hoag", compute, summarise=summarise, plot=plot,
                           argv=argv, add_arguments=add_arguments, files=FILES)


if __name__ == "__main__":
    main()
