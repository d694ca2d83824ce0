"""Learned TV reconstruction: MAID against a grid over the same two parameters.

    python scripts/reconstruction.py --operator blur|inpainting|superresolution|mri|tomography
        [--quick] [--size 64]

Learns theta = (log weight, log smoothing) of smoothed TV reconstruction
(``reconstruction[operator=...]``, :class:`bilevel_problems.reconstruction.ReconstructionProblem`)
from ``--n-train`` measured training images with MAID (``maid``) and MAID with L-BFGS
directions (``maid_lbfgs``), and compares with a grid over the same two parameters: a coarse
grid (log weight in steps of 1, log smoothing in steps of 1), then a fine one (steps of 1/4)
around the coarse grid's best, each point solved to a certified accuracy by the problem's own
lower solve, warm-started from the previous point (a snake through the grid, so that
neighbours follow each other).  The grid picks its point by the training loss, the loss MAID
minimises; cost is counted the same way for both (lower-level + CG iterations).

Held out: ``--n-test`` other images, the same operator, other noise
(:meth:`ReconstructionProblem.on_images`); mean PSNR / SSIM over the images of

- ``measured``: y itself for blur, else the back-projection A^T y / ||A||^2 (zero-filled
  for inpainting and MRI, each value on its block for super-resolution);
- ``grid``: the grid's point (chosen on the training images);
- ``grid oracle``: the best fine-grid point scored on the held-out images themselves (the best
  any fine-grid point could do there; its held-out solves are not charged to the grid);
- ``MAID``, ``MAID L-BFGS``: the learned parameters.

The images are scikit-image's bundled ones, resized (shorter side) and centre-cropped to
``--size`` (training: the first ``--n-train`` of :data:`datasets.SKIMAGE_NAMES`; held out: the
next ones).  Writes results/reconstruction/<operator>/{data.csv (MAID iterations and grid
points: cost, training loss and PSNR, theta), heldout.csv, runs.csv, example.npz, meta.json,
summary.md, reconstruction.png}.
"""
from __future__ import annotations

import math
import sys
import time

import _figure
import numpy as np
import torch
from bilevel_problems import datasets
from bilevel_problems.reconstruction import ReconstructionProblem

from bilevel import experiment

FILES = {"data.csv": "one row per MAID iteration and per grid point: run, stage, cost "
                     "(cumulative lower + CG iterations), upper_value, train_psnr, theta_0, "
                     "theta_1 (grid fine points: held_psnr too)",
         "heldout.csv": "one row per reconstruction of the held-out images: psnr, ssim, theta, "
                        "cost of finding theta",
         "runs.csv": "each MAID run's status, message and warnings",
         "example.npz": "the first held-out image: clean, measured, grid, learned (float32)"}
OPERATORS = ("blur", "inpainting", "superresolution", "mri", "tomography")
METHODS = (("MAID", "maid"), ("MAID L-BFGS", "maid_lbfgs"))
GRID_TOL = 1e-3  # certified ||x - x*|| over the training stack: ~1e-3 dB of PSNR
TEST_TOL = 1e-4  # the same for the held-out reconstructions
# Far corners of the grid (large weight, tiny smoothing: condition number ~1e7 with mu = gamma)
# need more FISTA iterations than this; they are kept, marked unconverged, never chosen.
GRID_MAX_ITER = 20_000


def add_arguments(p):
    p.add_argument("--operator", default="blur", choices=OPERATORS)
    p.add_argument("--n-train", type=int, default=None, help="training images (4; quick 2)")
    p.add_argument("--n-test", type=int, default=None, help="held-out images (4; quick 2)")
    p.add_argument("--size", type=int, default=None, help="image side (64; quick 16)")
    p.add_argument("--sigma", type=float, default=0.01, help="measurement noise")
    p.add_argument("--blur-sigma", type=float, default=1.5, help="Gaussian blur width")
    p.add_argument("--fraction-missing", type=float, default=0.5, help="inpainting")
    p.add_argument("--angles", type=int, default=60, help="tomography: angles over [0, pi)")
    p.add_argument("--max-iter", type=int, default=None, help="MAID iterations (100; quick 4)")


def defaults(args):
    """The sizes of a full run, or of a seconds-long ``--quick`` one."""
    quick = args.quick
    args.n_train = args.n_train or (2 if quick else 4)
    args.n_test = args.n_test or (2 if quick else 4)
    args.size = args.size or (16 if quick else 64)
    args.max_iter = args.max_iter or (4 if quick else 100)
    # (log weight, log smoothing) axes of the coarse grid, and the fine grid's half-width
    # and step around the coarse best.
    if quick:
        args.coarse = (np.arange(-9.0, 0.0, 3.0), np.arange(-6.0, 1.0, 3.0))
        args.fine = (1.0, 1.0)
    else:
        args.coarse = (np.arange(-10.0, 0.0, 1.0), np.arange(-7.0, 1.0, 1.0))
        args.fine = (1.0, 0.25)


def image_sets(args):
    """(training, held-out) clean images: disjoint bundled images at one size."""
    held_names = (datasets.SKIMAGE_NAMES[args.n_train:] + datasets.SKIMAGE_EXTRA)[:args.n_test]
    train = datasets.resize(datasets.skimage_images(datasets.SKIMAGE_NAMES[:args.n_train]),
                            args.size)
    held = datasets.resize(datasets.skimage_images(held_names), args.size)
    return train.double(), held.double(), list(held_names)


def train_psnr(problem, upper_value):
    """The PSNR of the mean squared error that g = mean_i 1/2 ||x_i - x_i^true||^2 is."""
    pixels = problem.clean[0].numel()
    return 10 * math.log10(pixels / (2 * upper_value))


def as_theta(values):
    return torch.tensor([float(v) for v in values], dtype=torch.float64)


# ------------------------------------------------------------------------ MAID
def learn(problem, args):
    """Each MAID variant on the training images: its outcome and its rows of data.csv."""
    outcomes, rows = [], []
    for label, method in METHODS:
        def theta_of(state, row):
            return dict(theta_0=float(state.theta[0]), theta_1=float(state.theta[1]))

        outcome = experiment.run_method(problem, experiment.Run(label, method), record=theta_of,
                                        max_iter=args.max_iter)
        print(outcome.line(), flush=True)
        outcomes.append(outcome)
        for row in outcome.rows(keep=("iteration", "cost", "upper_value", "time")):
            rows.append(dict(row, stage="maid", train_psnr=train_psnr(problem, row["upper_value"])))
    return outcomes, rows


# ------------------------------------------------------------------------ grid
def snake(weights, smoothings):
    """Every (log weight, log smoothing) pair, each next to the one before: warm starts."""
    for i, w in enumerate(weights):
        for s in (smoothings if i % 2 == 0 else smoothings[::-1]):
            yield float(w), float(s)


def grid_stage(problem, points, stage, rows, spent, x=None, held=None):
    """Solve the training problem at each point (warm-started), one row per point.

    ``spent``: the grid's cost so far (cumulative cost in the rows).  ``held``: also score
    each point on the held-out problem (not charged).  Returns the last solution and cost.
    """
    x_held = None
    for w, s in points:
        theta = as_theta((w, s))
        sol = problem.solve_lower(theta, GRID_TOL, x0=x, max_iter=GRID_MAX_ITER)
        x, spent = sol.x, spent + sol.iterations
        value = float(problem.upper_objective(x, theta))
        row = dict(run="grid", stage=stage, cost=spent, upper_value=value,
                   train_psnr=train_psnr(problem, value), theta_0=w, theta_1=s,
                   converged=bool(sol.converged), error_bound=float(sol.error_bound))
        if held is not None:
            x_held = held.solve_lower(theta, TEST_TOL, x0=x_held, max_iter=GRID_MAX_ITER).x
            row["held_psnr"] = datasets.quality(x_held, held.clean)["psnr"]
        rows.append(row)
    return x, spent


def grid_best(rows, key="upper_value"):
    """The converged grid point of least training loss (``key='held_psnr'``: best held out)."""
    sign = -1 if key == "held_psnr" else 1
    return min((r for r in rows if r["converged"] and key in r), key=lambda r: sign * r[key])


def fine_axes(best, half_width, step):
    count = int(round(half_width / step))
    offsets = step * np.arange(-count, count + 1)
    return best["theta_0"] + offsets, best["theta_1"] + offsets


def grid_search(problem, held, args):
    """The coarse grid, then the fine one around its best (by training loss): the rows."""
    rows = []
    x, spent = grid_stage(problem, snake(*args.coarse), "coarse", rows, 0)
    best = grid_best(rows)
    grid_stage(problem, snake(*fine_axes(best, *args.fine)), "fine", rows, spent, x, held)
    return rows


# ------------------------------------------------------------------- held out
def measured_image(problem):
    """What a user sees of the measurements: y where it is an image (blur), else the
    back-projection A^T y / ||A||^2 (a mask: zero-filled; downsampling: each value on its
    block; MRI: the zero-filled inverse FFT)."""
    y = problem.measurements
    if y.shape == problem.clean.shape and not y.is_complex():
        return y
    return problem.operator.A_adjoint(y) / problem.operator.norm_squared()


def held_out_row(held, label, theta, cost, time_s, x=None):
    """PSNR / SSIM of one reconstruction (``x``, or solved at ``theta``) of the held-out set."""
    x = held.reconstruct(theta, tol=TEST_TOL) if x is None else x
    q = datasets.quality(x, held.clean)
    row = dict(method=label, psnr=q["psnr"], ssim=q["ssim"], cost=cost, time=time_s,
               theta_0=float("nan"), theta_1=float("nan"))
    if theta is not None:
        row.update(theta_0=float(theta[0]), theta_1=float(theta[1]))
    return row, x


def evaluate(held, outcomes, grid_rows, grid_time):
    """The held-out rows, and the first held-out image of each reconstruction shown."""
    rows, shown = [], {}
    row, shown["measured"] = held_out_row(held, "measured", None, 0, 0.0,
                                          x=measured_image(held))
    rows.append(row)
    best = grid_best(grid_rows)
    theta = as_theta((best["theta_0"], best["theta_1"]))
    row, shown["grid"] = held_out_row(held, "grid", theta, grid_rows[-1]["cost"], grid_time)
    rows.append(row)
    oracle = grid_best(grid_rows, "held_psnr")
    row, _ = held_out_row(held, "grid oracle", as_theta((oracle["theta_0"], oracle["theta_1"])),
                          grid_rows[-1]["cost"], grid_time)
    rows.append(row)
    for outcome in outcomes:
        last = outcome.last
        row, x = held_out_row(held, outcome.run.label, outcome.result.theta, last["cost"],
                              last["time"])
        rows.append(row)
        shown.setdefault("learned", x)  # the first MAID variant: plain MAID
    return rows, {k: v[0].float() for k, v in shown.items()}


# -------------------------------------------------------------------- compute
def build_problems(args):
    train, test, held_names = image_sets(args)
    problem = ReconstructionProblem(args.operator, images=train, sigma=args.sigma,
                                    seed=args.seed, blur_sigma=args.blur_sigma,
                                    fraction_missing=args.fraction_missing, angles=args.angles,
                                    mask_seed=args.seed)
    return problem, problem.on_images(test, seed=args.seed + 1), held_names


def compute(args, folder):
    defaults(args)
    problem, held, held_names = build_problems(args)
    print(f"{args.operator}: train {tuple(problem.clean.shape)}, held out "
          f"{tuple(held.clean.shape)} ({', '.join(held_names)}), sigma={args.sigma}", flush=True)
    outcomes, maid_rows = learn(problem, args)
    started = time.perf_counter()
    grid_rows = grid_search(problem, held, args)
    grid_time = time.perf_counter() - started  # with the fine points' held-out scores
    print(f"grid: {len(grid_rows)} points, cost {grid_rows[-1]['cost']}, {grid_time:.0f} s",
          flush=True)
    held_rows, shown = evaluate(held, outcomes, grid_rows, grid_time)
    folder.write_rows("data.csv", maid_rows + grid_rows)
    folder.write_rows("heldout.csv", held_rows)
    folder.write_rows("runs.csv", experiment.summary_rows(outcomes))
    folder.write_arrays("example.npz", clean=held.clean[0].float(), **shown)
    return dict(operator=args.operator, n_train=problem.n_images, n_test=held.n_images,
                size=args.size, sigma=args.sigma, blur_sigma=args.blur_sigma,
                fraction_missing=args.fraction_missing, angles=args.angles, gamma=problem.gamma,
                variant=problem.variant, held_out=held_names, held_noise_seed=args.seed + 1,
                max_iter=args.max_iter, grid_tol=GRID_TOL, test_tol=TEST_TOL,
                coarse=[a.tolist() for a in args.coarse], fine=list(args.fine),
                grid_points=len(grid_rows), grid_max_iter=GRID_MAX_ITER,
                grid_unconverged=sum(not r["converged"] for r in grid_rows),
                grid_time_s=round(grid_time, 2))


# -------------------------------------------------------------- summary, plot
def cost_to_reach(rows, run, within=0.01):
    """The cost at which ``run`` first came within ``within`` dB of its best training PSNR:
    how much of a run's cost the answer needed (the rest is polishing or search)."""
    mine = [r for r in rows if r["run"] == run]
    top = max(r["train_psnr"] for r in mine)
    return next(int(r["cost"]) for r in mine if r["train_psnr"] >= top - within)


def summarise(folder):
    rows, meta = folder.read_rows("heldout.csv"), folder.read_meta()
    curves = folder.read_rows("data.csv")
    reach = [f"- {run}: {cost_to_reach(curves, run)} (of "
             f"{int(max(r['cost'] for r in curves if r['run'] == run))})"
             for run in [label for label, _ in METHODS] + ["grid"]]
    runs = {r["run"]: r for r in folder.read_rows("runs.csv")}
    by = {r["method"]: r for r in rows}
    lines = ["| held out | log weight | log smoothing | PSNR (dB) | SSIM | cost (lower + CG) "
             "| time (s) | PSNR - grid (dB) | PSNR - grid oracle (dB) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['theta_0']:.3f} | {r['theta_1']:.3f} | "
                     f"{r['psnr']:.3f} | {r['ssim']:.4f} | {int(r['cost'])} | {r['time']:.1f} | "
                     f"{r['psnr'] - by['grid']['psnr']:+.3f} | "
                     f"{r['psnr'] - by['grid oracle']['psnr']:+.3f} |")
    verdicts = [f"- {label}: {by[label]['psnr'] - by['grid']['psnr']:+.3f} dB against the grid, "
                f"{by[label]['psnr'] - by['grid oracle']['psnr']:+.3f} dB against the grid "
                f"oracle: within 0.1 dB of the grid: "
                f"**{'yes' if by[label]['psnr'] >= by['grid']['psnr'] - 0.1 else 'no'}**; "
                f"of the oracle: "
                f"**{'yes' if by[label]['psnr'] >= by['grid oracle']['psnr'] - 0.1 else 'no'}**; "
                f"cost {by[label]['cost'] / by['grid']['cost']:.2f} x the grid's; status "
                f"`{runs[label]['status']}` after {int(runs[label]['iterations'])} iterations"
                for label, _ in METHODS if label in by]
    operator = {"blur": f"Gaussian blur (sigma_blur {meta['blur_sigma']})",
                "inpainting": f"inpainting ({meta['fraction_missing']:.0%} of the pixels missing)",
                "superresolution": "super-resolution (average pooling by 2)",
                "mri": "MRI (Cartesian undersampling, acceleration 4)",
                "tomography": f"parallel-beam tomography ({meta.get('angles', 60)} angles over "
                              "[0, pi), Joseph's method)"}[meta["operator"]]
    text = [
        f"# Learned TV reconstruction: {meta['operator']}", "",
        f"{operator}, noise sigma {meta['sigma']}, gamma {meta['gamma']}, {meta['variant']} "
        f"smoothed TV.  Trained on {meta['n_train']} bundled scikit-image images, held out "
        f"{meta['n_test']} others ({', '.join(meta['held_out'])}; noise seed "
        f"{meta['held_noise_seed']}), all resized to {meta['size']}x{meta['size']}.", "",
        f"Grid: {meta['grid_points']} points (coarse log weight {meta['coarse'][0][0]:g}.."
        f"{meta['coarse'][0][-1]:g}, log smoothing {meta['coarse'][1][0]:g}.."
        f"{meta['coarse'][1][-1]:g} in steps of {meta['coarse'][0][1] - meta['coarse'][0][0]:g}; "
        f"fine +-{meta['fine'][0]:g} in steps of {meta['fine'][1]:g} around the coarse best), "
        f"each solved to certified ||x - x*|| <= {meta['grid_tol']:g} warm-started "
        f"({meta['grid_unconverged']} far points stopped short at {meta['grid_max_iter']} "
        "iterations: charged, never chosen); its point is chosen by the training loss.  "
        "The grid oracle is the fine-grid point best on the held-out images themselves.  "
        "Costs are lower-level (+ CG) iterations on the training images; the grid's time "
        "includes scoring its fine points on the held-out images.", "",
        f"Mean PSNR / SSIM over the held-out images (reconstructions to certified accuracy "
        f"{meta['test_tol']:g}):", "", *lines, "", *verdicts, "",
        "Cost (lower + CG iterations) at which each run first came within 0.01 dB of its own "
        "best training PSNR (the grid: in its snake order, coarse grid first):", "", *reach, "",
        f"Command: `{meta['command']}` ({meta['wall_time_s']:.0f} s in all).", ""]
    print("\n".join(lines + verdicts))
    folder.write_text("summary.md", "\n".join(text))


def plot(folder):
    """The first held-out image four ways, and training PSNR against cost."""
    rows, held, meta = folder.read_rows("data.csv"), folder.read_rows("heldout.csv"), \
        folder.read_meta()
    images = np.load(folder / "example.npz")
    plt = _figure.pyplot()
    fig, axes = plt.subplot_mosaic([["clean", "measured", "grid", "learned", "curve"]],
                                   figsize=(16, 3.8), width_ratios=[1, 1, 1, 1, 1.7])
    titles = dict(clean="clean", measured="measured", grid="grid (training loss)",
                  learned="MAID (learned)")
    psnr = {r["method"]: r["psnr"] for r in held}
    psnr["learned"] = psnr["MAID"]
    for key, title in titles.items():
        ax = axes[key]
        ax.imshow(images[key], cmap="gray", vmin=0, vmax=1)
        if key != "clean":
            one = datasets.psnr(torch.as_tensor(images[key])[None].double(),
                                torch.as_tensor(images["clean"])[None].double())[0]
            title = f"{title}\n{one:.2f} dB (held-out mean {psnr[key]:.2f})"
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    draw_curve(axes["curve"], rows)
    fig.suptitle(f"TV reconstruction, {meta['operator']}: {meta['n_train']} training and "
                 f"{meta['n_test']} held-out images {meta['size']}x{meta['size']}", fontsize=10)
    _figure.save(fig, folder / "reconstruction.png", dpi=110)


def draw_curve(ax, rows):
    """Training PSNR (of the mean squared error) against cumulative lower + CG iterations:
    each MAID run's iterates, and the best grid point so far."""
    from matplotlib import ticker

    for label, _ in METHODS:
        pts = [(r["cost"], r["train_psnr"]) for r in rows if r["run"] == label]
        if pts:
            ax.semilogx(*zip(*pts, strict=True), ".-", label=label)
    grid = [r for r in rows if r["run"] == "grid"]
    best = np.maximum.accumulate([r["train_psnr"] for r in grid])
    ax.semilogx([r["cost"] for r in grid], best, "-", color="k", label="grid, best so far")
    top = max(r["train_psnr"] for r in rows)
    ax.set_ylim(top - 3, top + 0.3)
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())  # the minor labels overlap
    ax.set_xlabel("lower-level + CG iterations")
    ax.set_ylabel("training PSNR of the mean MSE (dB)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")


def with_default_out(argv):
    """``argv`` with ``--out results/reconstruction/OPERATOR`` unless it names a folder (or is
    a quick run, which writes to a temporary one): one folder per operator."""
    import argparse

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--operator", default="blur")
    pre.add_argument("--out")
    pre.add_argument("--quick", action="store_true")
    known, _ = pre.parse_known_args(argv)
    if known.out is None and not known.quick:
        argv = [*argv, "--out", f"results/reconstruction/{known.operator}"]
    return argv


def main(argv=None):
    argv = with_default_out(list(sys.argv[1:] if argv is None else argv))
    return experiment.main(__doc__, "reconstruction", compute, summarise=summarise, plot=plot,
                           argv=argv, add_arguments=add_arguments, files=FILES)


if __name__ == "__main__":
    main()
