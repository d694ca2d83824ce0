"""A user's plug-in regulariser with two scalar hyperparameters: MAID against a grid.

    python scripts/plugin_regularizer.py [--quick] [--theta0 T0 T1] [--max-iter N]

The experiment of issue 14, written as a user would write it: a pretrained convex
regulariser R (fields of experts: K zero-mean s x s filters c_k with weights a_k
and Charbonnier smoothings nu_k, all learned earlier by this library and then
frozen) and two scalar hyperparameters, a log weight and a log smoothing scale:

    h(x; theta) = 1/2 ||x - y||^2 + e^{theta_0} R(x; e^{theta_1}),
    R(x; s)     = sum_k a_k sum_p sqrt((c_k * x)_p^2 + (s nu_k)^2),
    g(x)        = mean((x - x_true)^2)          (so PSNR = -10 log10 g).

The problem class below has only the five required methods plus ``smoothness``;
it gives no ``bound_constants``, so the hypergradient bounds use *estimated*
constants (``certified=False``).  mu = 1 is certified (R is convex).

Steps:

1. MAID (``bilevel.solve(problem, "maid")`` with its default settings, plus
   ``max_iter`` and ``max_cost``) from ``--theta0``, in float64 and in float32; and
   the same with ``direction="lbfgs"`` (L-BFGS directions, certified the same way:
   with two hyperparameters, one flat and one steep, steepest descent zig-zags).
2. A two-stage grid over the same two scalars, in float64: a coarse 7 x 7 grid,
   then a fine 7 x 7 grid around its best point (spacing a quarter of the coarse
   one, kept inside the coarse box; points already solved are not solved again).
   Grid points are solved in snake order, each warm-started from its neighbour.
3. Every grid point and each MAID result is solved in float64 to the same
   certified accuracy ``--eval-tol`` (||x - x*|| <= eval_tol; the PSNR is then
   known to about 1e-3 dB, reported as ``psnr_error_db``), and MAID's PSNR is
   compared with the grid's best; costs are lower-level + CG iterations and
   wall time.

The prior: the 8 filters 3 x 3 of results/learned_foe/k8_3x3_n16_1500it (BSD400
crops, sigma 0.1) when that committed run is present; else results/plugin_regularizer/
prior.pt; else it is trained here briefly with ``bilevel.solve`` on other crops
and cached there.  Data: 12 random 96 x 96 crops of Set12 where
:func:`bilevel.experiment.image_folder` finds it, else of 12 images bundled with
scikit-image; noise sigma 25/255,
fixed seed.  Writes results/plugin_regularizer/{summary.json, summary.md,
plugin_regularizer.png, data.csv (one row per MAID iterate, kind maid_RUN, and per
grid point, kind grid_coarse / grid_fine), meta.json}; ``--quick`` (2 crops 32 x
32, 3 x 3 grids, 3 MAID iterations) runs in seconds and is what the tests run.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import _figure
import numpy as np
import torch
import torch.nn.functional as F
from bilevel_problems import datasets

import bilevel
from bilevel import experiment

ROOT = Path(__file__).resolve().parents[1]
SIGMA = 25 / 255
#: The committed fields-of-experts run whose learned theta is the pretrained prior.
COMMITTED_PRIOR = ROOT / "results" / "learned_foe" / "k8_3x3_n16_1500it" / "meta.json"
DTYPES = {"float64": torch.float64, "float32": torch.float32}
FILES = {"data.csv": "one row per MAID iterate (kind maid_RUN: theta, psnr of g(x~), cost) "
                     "and per grid point (kind grid_coarse / grid_fine: theta, certified psnr)",
         "summary.json": "MAID's runs (status, message, warnings, costs) against the grid"}


# ----------------------------------------------------------------- the user's problem
class PluginDenoiser(bilevel.BilevelProblem):
    """Denoising with a frozen convex prior; theta = (log weight, log smoothing scale).

    Parameters
    ----------
    clean, noisy : torch.Tensor
        Images (N, H, W).
    prior : dict
        ``filters`` (K, s, s), ``weights`` (K,) and ``smoothings`` (K,), all fixed.
    theta0 : sequence of two floats
        The starting hyperparameters.
    dtype : torch.dtype
    """

    name = "plugin_regularizer"
    upper_convex_in_x = True  # g is a mean of squares

    def __init__(self, clean, noisy, prior, theta0=(0.0, 0.0), dtype=torch.float64):
        to = dict(dtype=dtype)
        self.clean, self.noisy = clean.to(**to), noisy.to(**to)
        filters = prior["filters"]
        self.size = filters.shape[-1]
        self.filters = filters.reshape(filters.shape[0], -1).to(**to)      # (K, s^2)
        self.weights = prior["weights"].to(**to).view(1, -1, 1)
        self.smoothings = prior["smoothings"].to(**to).view(1, -1, 1)
        self.theta_start = torch.tensor(theta0, **to)
        super().__init__()

    def regulariser(self, x, log_scale):
        # Responses as patches @ filters: the numbers of conv2d, but autograd's
        # Hessian-vector products through it are ~5x faster in float64 on the CPU.
        z = self.filters @ F.unfold(x.unsqueeze(1), self.size)            # (N, K, positions)
        nu = torch.exp(log_scale) * self.smoothings
        return torch.sum(self.weights * torch.sqrt(z * z + nu * nu))

    def lower_objective(self, x, theta):
        data = 0.5 * torch.sum((x - self.noisy) ** 2)
        return data + torch.exp(theta[0]) * self.regulariser(x, theta[1])

    def upper_objective(self, x, theta):
        return torch.mean((x - self.clean) ** 2)

    def strong_convexity(self, theta):
        return 1.0  # the data term gives I, the convex prior only adds curvature

    def smoothness(self, theta):
        # sqrt(t^2 + nu^2)'' <= 1 / nu, and ||x -> c * x||^2 <= ||c||_1^2 (Young).
        l1 = self.filters.double().abs().sum(dim=1)
        w, nu = self.weights.double().flatten(), self.smoothings.double().flatten()
        scale = math.exp(float(theta[0]) - float(theta[1]))
        return 1.0 + scale * float(torch.sum(w * l1 ** 2 / nu))

    def initial_theta(self):
        return self.theta_start.clone()

    def initial_x(self, theta):
        return self.noisy.clone()


# ------------------------------------------------------------------------ data, prior
def load_data(args):
    """(clean crops (N, H, W) float64, noisy crops, description)."""
    folder = experiment.image_folder("Set12")
    if folder:
        clean = datasets.load_images(folder, n=args.n_images, size=args.size, mode="crop",
                                     seed=args.seed)
        source = "Set12"
    else:
        # Images the fallback prior is not trained on (it uses SKIMAGE_NAMES[:4]).
        names = (datasets.SKIMAGE_NAMES[4:] + datasets.SKIMAGE_EXTRA)[:args.n_images]
        clean = datasets.crop(datasets.skimage_images(names), args.size, seed=args.seed)
        source = "scikit-image: " + ", ".join(names)
    noisy = datasets.add_noise(clean, SIGMA, args.seed)
    return clean.double(), noisy.double(), source


def _foe_prior(theta, K, s):
    """The frozen prior of a fields-of-experts theta [theta_0, w (K), l (K), filters]."""
    weights, smoothings, filters = _figure.foe_parts(theta, K, s)
    return dict(filters=filters, weights=weights, smoothings=smoothings)


def train_prior(args, path):
    """Learn an 8-filter 3x3 fields of experts briefly on other crops; cache it at ``path``."""
    from bilevel_problems.fields_of_experts import FieldsOfExperts

    folder = experiment.image_folder("train")
    if folder:
        images = datasets.load_images(folder, n=8, size=48, mode="crop", seed=args.seed)
        source = "BSD400 (8 random crops 48x48)"
    else:
        images = datasets.resize(datasets.skimage_images(datasets.SKIMAGE_NAMES[:4]), 48)
        source = "scikit-image: " + ", ".join(datasets.SKIMAGE_NAMES[:4])
    foe = FieldsOfExperts(images=images, sigma=SIGMA, seed=args.seed, num_filters=8,
                          filter_size=3, log_scale=-3.0)
    # A brief run, on purpose: its ConvergenceWarning is recorded by the runner, not shown.
    result = experiment.run_method(foe, experiment.Run("prior", "maid", dict(alpha0=0.1)),
                                   max_iter=args.prior_iter).result
    p = foe.params(result.theta)
    prior = dict(filters=p.filters.view(8, 3, 3), weights=p.alpha, smoothings=p.nu)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(dict(prior, source=f"trained here: {args.prior_iter} MAID iterations on "
                                   f"{source}, sigma 25/255"), path)
    return prior, f"trained here ({args.prior_iter} MAID iterations on {source}), cached"


def load_prior(args):
    """(prior dict, where it came from): committed run, else cache, else train."""
    cache = Path(args.out) / "prior.pt"
    if args.prior == "auto" and COMMITTED_PRIOR.exists():
        meta = json.loads(COMMITTED_PRIOR.read_text())
        theta = torch.tensor(meta["models"]["foe"]["theta"], dtype=torch.float64)
        K, s = meta["settings"]["filters"], meta["settings"]["filter_size"]
        return _foe_prior(theta, K, s), str(COMMITTED_PRIOR.relative_to(ROOT))
    if args.prior == "auto" and cache.exists():
        saved = torch.load(cache, weights_only=True)
        return {k: saved[k] for k in ("filters", "weights", "smoothings")}, saved["source"]
    return train_prior(args, cache)


# ------------------------------------------------------------------------- evaluation
class Evaluator:
    """Solves the float64 problem at any theta to certified ``tol`` and scores it."""

    def __init__(self, problem, tol):
        self.problem, self.tol = problem, tol

    def __call__(self, theta, x0=None):
        p = self.problem
        sol = p.solve_lower(torch.as_tensor(theta, dtype=torch.float64), self.tol, x0=x0,
                            max_iter=200_000)
        if not sol.converged:
            raise RuntimeError(f"evaluation stopped at {sol.error_bound:.2e} > {self.tol:g}")
        n = sol.x.numel()
        mse = float(torch.mean((sol.x - p.clean) ** 2))
        # |g(x~) - g(x*)| <= ||grad g|| e + e^2 / n with e the certified distance.
        e = sol.error_bound
        slack = 2 * math.sqrt(mse / n) * e + e * e / n
        return dict(psnr=-10 * math.log10(mse), mse=mse,
                    psnr_mean=float(datasets.psnr(sol.x, p.clean).mean()),
                    psnr_error_db=10 / math.log(10) * slack / mse,
                    iterations=sol.iterations), sol.x


def grid_axes(lo, hi, n):
    return [float(v) for v in np.linspace(lo, hi, n)]


def fine_axis(best, step, n, lo, hi):
    """n points around ``best`` at spacing step / (n // 2 + 1), shifted inside [lo, hi].

    They span +-(n // 2) / (n // 2 + 1) coarse steps: up to the midpoints
    between the best coarse point and its neighbours and beyond, none of them a
    coarse point except ``best`` itself.
    """
    spacing = step / (n // 2 + 1)
    half = spacing * (n // 2)
    centre = min(max(best, lo + half), hi - half)
    return [centre + spacing * (i - n // 2) for i in range(n)]


def run_grid(evaluate, axis0, axis1, stage, done, x):
    """Solve every new point of the grid in snake order; rows and the last x."""
    rows = []
    for i, a in enumerate(axis0):
        for b in (axis1 if i % 2 == 0 else axis1[::-1]):
            key = (round(a, 9), round(b, 9))
            if key in done:
                continue
            started = time.perf_counter()
            score, x = evaluate((a, b), x0=x)
            done[key] = score
            rows.append(dict(kind=f"grid_{stage}", theta0=a, theta1=b, **score,
                             time=time.perf_counter() - started))
            print(f"grid {stage} ({a:+.3f}, {b:+.3f}): PSNR {score['psnr']:.4f} dB, "
                  f"{score['iterations']} iterations", flush=True)
    return rows, x


def run_maid(args, problem, dtype_name, direction):
    """MAID with the library's defaults but ``direction``; its path, result and wall time."""
    path = [[float(v) for v in problem.initial_theta()]]
    seen = {"estimates": 0, "cache": None}

    def callback(state, row):
        path.append([float(v) for v in state.theta])
        # Instrumentation for the report (a user need not look): the estimate cache
        # on the problem is replaced each time the constants are estimated afresh.
        cache = getattr(problem, "_estimated_constants", None)
        if cache is not seen["cache"]:
            seen["estimates"] += 1
            seen["cache"] = cache
        print(f"maid {dtype_name} {row['iteration']}: theta ({path[-1][0]:+.4f}, "
              f"{path[-1][1]:+.4f}) PSNR(x~) {-10 * math.log10(row['upper_value']):.4f} "
              f"||z|| {row['grad_norm']:.2e} omega {row['error_bound']:.2e} eps {row['eps']:.1e} "
              f"accepted {row['accepted']} cost {row['cost']} t {row['time']:.0f}s", flush=True)
        return False

    settings = dict(direction=direction)
    if args.lower_max_iter is not None:
        settings["lower_max_iter"] = args.lower_max_iter
    started = time.perf_counter()
    outcome = experiment.run_method(problem, experiment.Run(dtype_name, "maid", settings),
                                    callback=callback, max_iter=args.max_iter,
                                    max_cost=args.max_cost)
    wall = time.perf_counter() - started
    return outcome.result, path, seen["estimates"], wall, outcome.warnings


def _within_cost(history, target_psnr):
    """Iteration, cumulative cost and time of the first row whose g(x~) reaches the target.

    A row's g is at the theta the iteration started from, and its cost includes
    that iteration's line search: a conservative count.
    """
    for row in history:
        if -10 * math.log10(row["upper_value"]) >= target_psnr:
            return dict(iteration=row["iteration"], cost=row["cost"], time_s=row["time"])
    return None


# ---------------------------------------------------------------------------- compute
def compute(args, folder):
    if args.quick:
        args.n_images, args.size, args.grid, args.max_iter = 2, 32, 3, 3
        args.prior_iter = min(args.prior_iter, 5)
        args.lower_max_iter = args.lower_max_iter or 2000
    clean, noisy, source = load_data(args)
    prior, prior_source = load_prior(args)
    print(f"data: {len(clean)} crops {args.size}x{args.size} from {source}, sigma 25/255; "
          f"prior: {prior_source}", flush=True)
    problem64 = PluginDenoiser(clean, noisy, prior, args.theta0, torch.float64)
    evaluate = Evaluator(problem64, args.eval_tol)
    start_score, _ = evaluate(args.theta0)

    rows, maid, histories = [], {}, {}
    runs = [(dtype, direction) for direction in args.directions for dtype in args.dtypes]
    for dtype, direction in runs:
        # "float64" is the library's default direction; "float64 L-BFGS" direction="lbfgs".
        name = dtype if direction == "gradient" else f"{dtype} L-BFGS"
        problem = PluginDenoiser(clean, noisy, prior, args.theta0, DTYPES[dtype])
        result, path, estimates, wall, caught = run_maid(args, problem, name, direction)
        final, _ = evaluate(path[-1])
        histories[name] = result.history
        last = result.history[-1] if result.history else {}
        maid[name] = dict(
            theta=path[-1], status=result.status, message=result.message, warnings=caught,
            iterations=len(result.history), cost=last.get("cost", 0),
            lower_iterations=last.get("lower_iterations", 0),
            cg_iterations=last.get("cg_iterations", 0),
            oracle_calls=last.get("oracle_calls", 0), constant_estimates=estimates,
            certified=bool(last.get("certified", False)), wall_s=wall,
            final_eps=last.get("eps"), **{f"final_{k}": v for k, v in final.items()})
        for i, theta in enumerate(path):
            row = result.history[i] if i < len(result.history) else None
            rows.append(dict(kind=f"maid_{name}", iteration=i, theta0=theta[0], theta1=theta[1],
                             psnr=(-10 * math.log10(row["upper_value"]) if row else
                                   final["psnr"]),
                             cost=(result.history[i - 1]["cost"] if i else 0),
                             time=(result.history[i - 1]["time"] if i else 0.0)))

    # The grid, in float64, each point to the same certified accuracy.
    started = time.perf_counter()
    done = {}
    n = args.grid
    coarse0, coarse1 = grid_axes(*args.box0, n), grid_axes(*args.box1, n)
    grid_rows, x = run_grid(evaluate, coarse0, coarse1, "coarse", done, None)
    best = max(done, key=lambda k: done[k]["psnr"])
    fine0 = fine_axis(best[0], coarse0[1] - coarse0[0], n, *args.box0)
    fine1 = fine_axis(best[1], coarse1[1] - coarse1[0], n, *args.box1)
    fine_rows, _ = run_grid(evaluate, fine0, fine1, "fine", done, x)
    grid_rows += fine_rows
    grid_wall = time.perf_counter() - started
    best = max(done, key=lambda k: done[k]["psnr"])
    grid = dict(points=len(done), coarse=dict(theta0=coarse0, theta1=coarse1),
                fine=dict(theta0=fine0, theta1=fine1), best_theta=list(best),
                best_psnr=done[best]["psnr"], best_psnr_mean=done[best]["psnr_mean"],
                lower_iterations=sum(r["iterations"] for r in grid_rows), wall_s=grid_wall,
                max_psnr_error_db=max(r["psnr_error_db"] for r in grid_rows))
    rows += grid_rows

    for name, m in maid.items():
        m["psnr_gap_db"] = m["final_psnr"] - grid["best_psnr"]
        m["within_0.05dB"] = m["psnr_gap_db"] >= -0.05
        m["cheaper_in_cost"] = m["cost"] < grid["lower_iterations"]
        m["cheaper_in_time"] = m["wall_s"] < grid["wall_s"]
        # When MAID's own iterate first came within 0.05 dB (g at its certified x~).
        m["within_0.05dB_at"] = _within_cost(histories[name], grid["best_psnr"] - 0.05)
    summary = dict(
        command=args.command, quick=args.quick, seed=args.seed, threads=args.threads,
        data=dict(source=source, crops=len(clean), size=args.size, sigma=SIGMA),
        prior=dict(source=prior_source, filters=int(prior["filters"].shape[0]),
                   filter_size=int(prior["filters"].shape[-1])),
        theta0=list(args.theta0), start=start_score, eval_tol=args.eval_tol,
        maid_settings=dict(max_iter=args.max_iter, max_cost=args.max_cost,
                           lower_max_iter=args.lower_max_iter, directions=args.directions,
                           other="library defaults"),
        maid=maid, grid=grid)
    folder.write_rows("data.csv", rows)
    folder.write_json("summary.json", summary)
    return dict(settings={k: v for k, v in vars(args).items() if k != "command"},
                summary="summary.json")


def summarise(folder):
    folder.write_text("summary.md", summary_markdown(folder.read_json("summary.json")))


def summary_markdown(s):
    grid, start = s["grid"], s["start"]
    lines = [
        "# A plug-in regulariser tuned by MAID against a grid",
        "",
        f"Data: {s['data']['crops']} crops {s['data']['size']}x{s['data']['size']} "
        f"({s['data']['source']}), sigma 25/255, seed {s['seed']}. Prior: "
        f"{s['prior']['filters']} filters {s['prior']['filter_size']}x"
        f"{s['prior']['filter_size']} ({s['prior']['source']}). Bound constants: "
        "estimated (no `bound_constants`), so no bound is certified.",
        "",
        f"Start theta = ({s['theta0'][0]:g}, {s['theta0'][1]:g}): PSNR {start['psnr']:.3f} dB. "
        f"Every PSNR below is of the whole set (-10 log10 of the MSE that g is), from a "
        f"float64 solve to certified ||x - x*|| <= {s['eval_tol']:g} (error below "
        f"{grid['max_psnr_error_db']:.1e} dB).",
        "",
        "| run | theta | PSNR (dB) | vs grid best | status | iterations | cost (lower + CG) "
        "| estimates of the constants | wall (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in s["maid"].items():
        lines.append(
            f"| MAID {name} | ({m['theta'][0]:.3f}, {m['theta'][1]:.3f}) | "
            f"{m['final_psnr']:.3f} | {m['psnr_gap_db']:+.3f} | {m['status']} | "
            f"{m['iterations']} | {m['cost']} ({m['lower_iterations']} + "
            f"{m['cg_iterations']}) | {m['constant_estimates']} | {m['wall_s']:.0f} |")
    lines.append(
        f"| grid ({grid['points']} points) | ({grid['best_theta'][0]:.3f}, "
        f"{grid['best_theta'][1]:.3f}) | {grid['best_psnr']:.3f} | best | - | - | "
        f"{grid['lower_iterations']} (lower only) | - | {grid['wall_s']:.0f} |")
    lines += ["", "Targets: MAID within 0.05 dB of the grid's best, at a lower cost.", ""]
    for name, m in s["maid"].items():
        at = m["within_0.05dB_at"]
        reached = (f"its iterate was within 0.05 dB from iteration {at['iteration']} "
                   f"(cost {at['cost']}, {at['time_s']:.0f} s)" if at else
                   "its iterates never came within 0.05 dB")
        lines.append(
            f"- MAID {name}: within 0.05 dB: **{'yes' if m['within_0.05dB'] else 'no'}** "
            f"({m['psnr_gap_db']:+.3f} dB); cheaper than the grid: cost "
            f"**{'yes' if m['cheaper_in_cost'] else 'no'}** ({m['cost']} vs "
            f"{grid['lower_iterations']}), wall time "
            f"**{'yes' if m['cheaper_in_time'] else 'no'}** ({m['wall_s']:.0f} s vs "
            f"{grid['wall_s']:.0f} s); {reached}. Stopped: {m['status']}: {m['message']}")
    lines += ["", f"Command: `{s['command']}`", ""]
    return "\n".join(lines)


def plot(folder):
    summary, rows = folder.read_json("summary.json"), folder.read_rows("data.csv")
    plt = _figure.pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.8))
    grid = [r for r in rows if r["kind"].startswith("grid")]
    t0, t1, p = (np.array([float(r[k]) for r in grid]) for k in ("theta0", "theta1", "psnr"))
    floor = np.percentile(p, 10)  # keep the colours for the interesting top of the range
    sc = ax.scatter(t0, t1, c=np.maximum(p, floor), s=[60 if r["kind"] == "grid_coarse"
                                                       else 18 for r in grid],
                    cmap="viridis", edgecolors="none")
    fig.colorbar(sc, ax=ax, label="PSNR (dB)")
    best = summary["grid"]["best_theta"]
    ax.plot(*best, marker="*", ms=16, color="red", ls="none", label="grid best")
    styles = {"float64": "-o", "float32": "--s", "float64 L-BFGS": "-^",
              "float32 L-BFGS": "--v"}
    for name in summary["maid"]:
        path = [r for r in rows if r["kind"] == f"maid_{name}"]
        ax.plot([float(r["theta0"]) for r in path], [float(r["theta1"]) for r in path],
                styles.get(name, "-"), ms=3, lw=1, label=f"MAID {name}")
        spent = [r for r in path if float(r["cost"]) > 0]  # the start costs nothing: off a log axis
        bx.plot([float(r["cost"]) for r in spent], [float(r["psnr"]) for r in spent],
                styles.get(name, "-"), ms=3, lw=1, label=f"MAID {name}")
    ax.set(xlabel="theta_0 (log weight)", ylabel="theta_1 (log smoothing scale)",
           title="PSNR over the grid, and MAID's path")
    ax.legend(fontsize=8, loc="upper right", framealpha=0.9)
    g = summary["grid"]
    bx.axhline(g["best_psnr"], color="red", lw=1, label=f"grid best ({g['points']} points)")
    bx.axhline(g["best_psnr"] - 0.05, color="red", lw=0.8, ls=":", label="grid best - 0.05 dB")
    bx.axvline(g["lower_iterations"], color="gray", lw=1, label="grid cost")
    top = g["best_psnr"]
    bx.set(xlabel="cost (lower-level + CG iterations)", ylabel="PSNR (dB)", xscale="log",
           ylim=(top - 1.0, top + 0.1), title="MAID: PSNR of its iterate against cost")
    bx.legend(fontsize=8, loc="lower right")
    _figure.save(fig, folder / "plugin_regularizer.png", dpi=130)


def add_arguments(p):
    p.add_argument("--theta0", type=float, nargs=2, default=(-1.0, 1.0),
                   help="MAID's start (log weight, log smoothing scale); default (-1, 1)")
    p.add_argument("--n-images", type=int, default=12)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--max-iter", type=int, default=60, help="MAID iterations")
    p.add_argument("--max-cost", type=float, default=40_000,
                   help="MAID budget of lower-level + CG iterations")
    p.add_argument("--lower-max-iter", type=int, default=None,
                   help="MAID's lower_max_iter (default: the library's)")
    p.add_argument("--dtypes", nargs="+", default=["float64", "float32"], choices=list(DTYPES))
    p.add_argument("--directions", nargs="+", default=["gradient", "lbfgs"],
                   choices=["gradient", "lbfgs"],
                   help="MAID's search directions to run (the default 'gradient', and 'lbfgs')")
    p.add_argument("--grid", type=int, default=7, help="points per axis of each grid stage")
    p.add_argument("--box0", type=float, nargs=2, default=(-1.5, 1.5), help="grid theta_0 range")
    p.add_argument("--box1", type=float, nargs=2, default=(-2.0, 2.0), help="grid theta_1 range")
    p.add_argument("--eval-tol", type=float, default=1e-3,
                   help="certified accuracy of every grid point and MAID result")
    p.add_argument("--prior", choices=("auto", "train"), default="auto",
                   help="'train' ignores the committed prior and the cache")
    p.add_argument("--prior-iter", type=int, default=100, help="MAID iterations of training")


def main(argv=None):
    return experiment.main(__doc__, "plugin_regularizer", compute, summarise=summarise,
                           plot=plot, argv=argv, add_arguments=add_arguments, files=FILES)


if __name__ == "__main__":
    main()
