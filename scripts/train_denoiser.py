"""Train a learned denoiser on BSD400 patches: TV, a field of experts, a (weakly) convex ridge.

    python scripts/train_denoiser.py --model tv|foe|ridge|wcrr --sigma 25
        [--patches 400] [--patch-size 40] [--method maid_sgd] [--batch-size 20]
        [--border B] [--start dct|tv] [--tv-weight W] [--knots N] [--x-range R] [--rho RHO]
        [--floor-bound l1|symbol]
        [--alpha0 A] [--max-iter 2000]
        [--max-time 7200] [--set KEY=VALUE ...]
        [--init RUN_DIR [--wake F [--wake-norm R] | --split F]]
        [--out results/denoisers/MODEL_sigmaS] [--quick]

``--patches`` random crops of ``--patch-size``, ``--crops-per-image`` (1) from each of the
first BSD400 training images (docs/data.md; without the data, crops of the images bundled
with scikit-image), Gaussian noise of ``--sigma``/255 (images in [0, 1], no clipping, seed
``--seed``). The model is learned by ``--method`` (``maid_sgd``: minibatches of
``--batch-size`` patches, each batch's hypergradient certified for that batch, a full-batch
certified check of the returned theta; ``maid`` / ``maid_lbfgs``: full batch, every step
certified) under the budgets given. A checkpoint is written every ``--checkpoint-every``
iterations to OUT/checkpoint.pt; the same command with ``--resume`` goes on from it (budgets
count from the start of the run; the method's settings are the checkpoint's, except a new
``--set final_check=loss|True|False`` or ``--set batch_bounds=True|False``, which change how
the run ends and what its rows record, never an iterate). ``kill PID``
(SIGTERM) or Ctrl-C stops a run as its budget would: the folder is written with the last
iterate and the checkpoint resumes it. ``--init RUN_DIR`` starts from a learned model
instead of the problem's start: the same model, or a field of experts or (weakly) convex
ridge carried into a larger bank, or a field of experts carried into a ridge (its experts as
spline potentials: ``ridge_embedding.from_fields_of_experts``, which needs a grid
``--knots`` / ``--x-range`` as fine as the learned kinks), ``--wake`` switching on a ridge's
sleeping filters (``--wake-norm``: their norm) or setting the new FoE filters' weight,
``--split F`` doubling a ridge's bank with perturbed copies of its filters
(bilevel_problems.ridge_embedding, foe_embedding); the folder's cost and time are this run's
only.  ``torchrun --nproc-per-node N scripts/train_denoiser.py ... --distributed`` trains one
model on N processes (tv / ridge / wcrr, CPU): each rank solves its share of every batch and
of the final check, the same decisions on every rank, one checkpoint per rank
(OUT/checkpoint.rank{r}of{N}.pt; ``--resume`` with the same N).  The run folder holds what
``bilevel.load(OUT)`` needs (meta.json's ``problem`` spec and theta.json), so that

    model = bilevel.load("results/denoisers/foe_sigma25"); x = model.denoise(y)

and ``python benchmarks/bsd68.py --model foe=results/denoisers/foe_sigma25`` evaluates it.
Writes OUT/{data.csv (one row per outer iteration), theta.json, meta.json (with the final
check's certified bounds), checkpoint.pt, summary.md, training.png (the batch losses and
their mean over an epoch, the final check's brackets, the learned filters)}.  With
``--set average=0.99`` the final check also certifies the moving average of the iterates
and theta.json holds whichever has the lower certified bound on F (bilevel.outer.final_check).
"""
from __future__ import annotations

import math
import sys
import textwrap
from pathlib import Path

import _figure
import numpy as np
import torch
from bilevel_problems import datasets, foe_embedding, ridge_embedding
from bilevel_problems.fields_of_experts import FieldsOfExperts

import bilevel
from bilevel import experiment, interrupts, registry

#: ridge_regularizer's default tv_weight: TV's best weight at sigma 25/255.
TV_WEIGHT_25 = 0.07
#: model -> (registered problem, its structural parameters by default).
MODELS = {
    "tv": ("tv_denoising", dict()),
    "foe": ("fields_of_experts", dict(num_filters=8, filter_size=5)),
    "ridge": ("ridge_regularizer", dict(num_filters=8, filter_size=5, num_knots=21,
                                        x_range=0.3)),
    "wcrr": ("weakly_convex_ridge", dict(num_filters=8, filter_size=5, num_knots=21,
                                         x_range=0.3, rho=0.5)),
}
FILES = {"data.csv": "one row per outer iteration: cost, batch or full upper value, omega, step",
         "theta.json": "the learned theta (bilevel.load reads it with meta.json's problem)",
         "checkpoint.pt": "state, warm starts and history: --resume goes on from it "
                          "(--distributed: checkpoint.rank{r}of{w}.pt, one per rank)"}


def add_arguments(p):
    p.add_argument("--model", default="foe", choices=tuple(MODELS))
    p.add_argument("--sigma", type=float, default=25.0, help="noise level in /255 units")
    p.add_argument("--patches", type=int, default=None, help="training patches (400; quick 8)")
    p.add_argument("--crops-per-image", type=int, default=1,
                   help="random crops taken from each training image (1: one crop from each "
                        "of the first --patches images)")
    p.add_argument("--patch-size", type=int, default=None, help="patch side (40; quick 16)")
    p.add_argument("--filters", type=int, default=None, help="FoE / ridge filters (8)")
    p.add_argument("--filter-size", type=int, default=None, help="FoE / ridge filter side (5)")
    p.add_argument("--method", default="maid_sgd", help="maid_sgd, maid, maid_lbfgs")
    p.add_argument("--batch-size", type=int, default=None, help="maid_sgd batch (20; quick 4)")
    p.add_argument("--border", type=int, default=None,
                   help="foe / ridge / wcrr: train on patches mirrored by this many pixels, "
                        "the loss on the crop (filter size - 1 is what denoise uses; default 0)")
    p.add_argument("--start", default=None, choices=("dct", "tv"),
                   help="ridge / wcrr: the starting filters and potentials (default dct)")
    p.add_argument("--tv-weight", type=float, default=None,
                   help="--start tv: TV's weight at the start (default 0.07 sigma / 25, TV's "
                        "best weight scaling with the noise level)")
    p.add_argument("--knots", type=int, default=None,
                   help="ridge / wcrr: knots of the spline potentials, odd (21)")
    p.add_argument("--x-range", type=float, default=None,
                   help="ridge / wcrr: the splines' grid [-R, R] in filter-response units (0.3)")
    p.add_argument("--rho", type=float, default=None,
                   help="wcrr: the weak-convexity budget, mu = 1 - rho (0.5)")
    p.add_argument("--floor-bound", choices=("l1", "symbol"), default=None,
                   help="wcrr: Lambda >= ||sum_k K_k^T K_k|| behind the concave slopes' floor "
                        "-rho / (alpha Lambda): A's l1 norm (default) or its symbol's sup, "
                        "about 1.5 times smaller (a deeper floor)")
    p.add_argument("--alpha0", type=float, default=None,
                   help="first trial step (default: HOAG's sqrt(dim theta)/||z0||, which can be "
                        "far too long for filters: every first search then fails)")
    p.add_argument("--set", action="append", default=None, metavar="KEY=VALUE",
                   help="a setting of --method (repeatable; e.g. direction_test=always, "
                        "max_conditioning_growth=inf): see bilevel.outer")
    p.add_argument("--init", default=None, metavar="RUN_DIR",
                   help="start from a learned model's theta (bilevel.load(RUN_DIR)): the same "
                        "model, or a field of experts or (weakly) convex ridge carried into a "
                        "larger bank (more or larger filters; bilevel_problems.foe_embedding, "
                        "ridge_embedding)")
    p.add_argument("--wake", type=float, default=None,
                   help="with --init, ridge: switch on the filters whose slopes all lie below "
                        "this fraction of s_max (weak Huber-like potentials at that fraction); "
                        "foe: the new filters' weight, a fraction of the learned ones' (0.1)")
    p.add_argument("--wake-norm", type=float, default=None, metavar="R",
                   help="with --wake, ridge / wcrr: the woken filters' norm (1); small norms "
                        "keep the weakly convex ridge's floor where the learned bank put it")
    p.add_argument("--split", type=float, default=None, metavar="F",
                   help="with --init, ridge / wcrr: twice the learned filters, each potential "
                        "halved, the copies perturbed by F times their norm "
                        "(ridge_embedding.embed's split: the new filters start active)")
    p.add_argument("--init-scale", type=float, default=None, metavar="F",
                   help="with --init, foe / ridge / wcrr: start from F times the learned "
                        "regularizer (foe_embedding / ridge_embedding.rescale; about sigma / "
                        "sigma_init carries a model to another noise level)")
    p.add_argument("--max-iter", type=int, default=None, help="outer iterations (2000; quick 3)")
    p.add_argument("--max-time", type=float, default=None, help="wall-time budget (s)")
    p.add_argument("--checkpoint-every", type=int, default=10)
    p.add_argument("--resume", action="store_true", help="go on from OUT/checkpoint.pt")
    p.add_argument("--data", default=None, help="the BSD400 training folder (docs/data.md)")
    p.add_argument("--distributed", action="store_true",
                   help="data parallel over torchrun's ranks (tv / ridge / wcrr, on the CPU): "
                        "each rank solves its share of every batch and of the final check "
                        "and writes its own checkpoint; rank 0 writes the folder")
    p.add_argument("--device", default="cpu",
                   help="where the lower level is solved (cuda; the crops, theta and the "
                        "method's state live there; the run folder reads the same on any "
                        "device)")


def spec(args):
    """The problem spec of the model: what bilevel.load rebuilds (no data in it)."""
    name, structure = MODELS[args.model]
    structure = dict(structure)
    if args.filters and "num_filters" in structure:
        structure["num_filters"] = args.filters
    if args.filter_size and "filter_size" in structure:
        structure["filter_size"] = args.filter_size
    for flag, key, value, models in (("border", "border", args.border, ("foe", "ridge", "wcrr")),
                                     ("start", "start", args.start, ("ridge", "wcrr")),
                                     ("knots", "num_knots", args.knots, ("ridge", "wcrr")),
                                     ("x-range", "x_range", args.x_range, ("ridge", "wcrr")),
                                     ("rho", "rho", args.rho, ("wcrr",)),
                                     ("floor-bound", "floor_bound", args.floor_bound,
                                      ("wcrr",))):
        if value is not None and not (key == "border" and value == 0):  # 0: the default
            if args.model not in models:
                raise SystemExit(f"--{flag} is for --model {' / '.join(models)}")
            structure[key] = value
    if args.tv_weight is not None and args.start != "tv":
        raise SystemExit("--tv-weight is for --start tv")
    if args.start == "tv":
        weight = args.tv_weight or round(TV_WEIGHT_25 * args.sigma / 25, 6)
        if weight != TV_WEIGHT_25:  # the problem's default: specs of sigma 25 stay as they were
            structure["tv_weight"] = weight
    inner = ", ".join(f"{k}={v}" for k, v in structure.items())
    return f"{name}[{inner}]" if inner else name


def training_pairs(patches, patch_size, sigma, seed=0, data=None, crops_per_image=1):
    """(clean, noisy) patches (N, P, P) and where the images came from: ``crops_per_image``
    random crops from each of the first ceil(N / crops_per_image) images, in image order;
    noise of ``sigma``/255."""
    folder = experiment.image_folder("train", data)
    per = crops_per_image
    if folder:
        n_images = -(-patches // per)
        images = datasets.folder_images(folder, limit=n_images)
        if len(images) < n_images:
            raise SystemExit(f"--patches {patches} --crops-per-image {per} needs "
                             f"{n_images} images; {folder} has {len(images)}")
    else:  # bundled images: as many crops as asked, cycling through the images
        images = datasets.skimage_images()
    picks = [images[(i // per) % len(images)] for i in range(patches)]
    clean = datasets.crop(picks, patch_size, seed=seed).double()
    return clean, datasets.add_noise(clean, sigma / 255, seed), folder or "skimage"


def training_problem(meta, data=None):
    """The problem a finished or running run trained on, rebuilt from its meta.json (its
    ``problem``, ``patches``, ``patch_size``, ``crops_per_image``, ``sigma``, ``seed``)."""
    clean, noisy, _ = training_pairs(meta["patches"], meta["patch_size"], meta["sigma"],
                                     meta["seed"], data, meta["crops_per_image"])
    return registry.make_problem(meta["problem"], images=clean, noisy=noisy,
                                 sigma=meta["sigma"] / 255)


def initial_theta(args, problem, problem_spec):
    """theta_0 from ``--init`` (None: the problem's own start)."""
    if args.init is None:
        for flag, value in (("--wake", args.wake), ("--wake-norm", args.wake_norm),
                            ("--split", args.split),
                            ("--init-scale", args.init_scale)):
            if value is not None:
                raise SystemExit(f"{flag} is for --init")
        return None
    if args.wake_norm is not None and (args.wake is None or args.model not in ("ridge", "wcrr")):
        raise SystemExit("--wake-norm is for --model ridge / wcrr with --wake")
    if args.split is not None and (args.wake is not None or args.model not in ("ridge", "wcrr")):
        raise SystemExit("--split is for --model ridge / wcrr, without --wake")
    if args.init_scale is not None and args.model not in ("foe", "ridge", "wcrr"):
        raise SystemExit("--init-scale is for --model foe / ridge / wcrr")
    theta = _carried_theta(args, problem, problem_spec)
    if args.init_scale is None:
        return theta
    try:
        embedding = foe_embedding if args.model == "foe" else ridge_embedding
        return embedding.rescale(problem, theta, args.init_scale)
    except ValueError as exc:
        raise SystemExit(f"--init-scale: {exc}") from None


def _carried_theta(args, problem, problem_spec):
    try:
        source = bilevel.load(args.init, device=args.device)
        if source.spec == problem_spec and args.wake is None and args.split is None:
            return source.theta.to(problem.theta0)
        if args.model == "foe":
            weight = {} if args.wake is None else dict(weight=args.wake)
            return foe_embedding.embed(problem, source.problem, source.theta, **weight)
        if isinstance(source.problem, FieldsOfExperts):
            if args.wake is not None or args.split is not None:
                raise SystemExit("--wake and --split are for a ridge or FoE source, not a FoE "
                                 "into a ridge")
            return ridge_embedding.from_fields_of_experts(problem, source.problem, source.theta)
        norm = {} if args.wake_norm is None else dict(wake_norm=args.wake_norm)
        if args.split is not None:
            norm["split"] = args.split
        return ridge_embedding.embed(problem, source.problem, source.theta, wake=args.wake,
                                     **norm)
    except (OSError, TypeError, ValueError, bilevel.CorruptRunError) as exc:
        raise SystemExit(f"--init {args.init}: {exc}") from None


def compute(args, folder):
    quick = args.quick
    args.patches = args.patches or (8 if quick else 400)
    args.patch_size = args.patch_size or (16 if quick else 40)
    args.batch_size = args.batch_size or (4 if quick else 20)
    args.max_iter = args.max_iter or (3 if quick else 2000)
    if args.crops_per_image < 1:
        raise SystemExit(f"--crops-per-image must be >= 1, got {args.crops_per_image}")
    settings = dict(batch_size=args.batch_size) if args.method == "maid_sgd" else {}
    if args.alpha0 is not None:
        settings["alpha0"] = args.alpha0
    try:
        settings.update(experiment.parse_settings(args.set))
        method = bilevel.outer.make_method(args.method, **settings)  # a bad one named now
    except (TypeError, ValueError) as exc:
        raise SystemExit(f"--method {args.method} --set: {exc}") from None
    clean, noisy, source = training_pairs(args.patches, args.patch_size, args.sigma, args.seed,
                                          args.data, args.crops_per_image)
    problem_spec = spec(args)
    try:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("this torch sees no CUDA device")
        if device.type == "cuda" and args.distributed:
            raise RuntimeError("--distributed runs on the CPU (one device per rank is not "
                               "wired here)")
    except RuntimeError as exc:
        raise SystemExit(f"--device {args.device}: {exc}") from None
    problem = _training_problem(args, problem_spec, clean, noisy, device)
    rank, ranks = problem.parallel.rank_and_world()
    budgets = dict(max_iter=args.max_iter, max_time=args.max_time,
                   progress=not quick and rank == 0, checkpoint_every=args.checkpoint_every)
    if rank == 0:
        print(f"{problem_spec}: {tuple(clean.shape)} patches from {source}, sigma "
              f"{args.sigma}/255, {args.method} {settings}"
              + (f", {ranks} data-parallel ranks" if ranks > 1 else ""), flush=True)
    result = _train(args, problem, problem_spec, method, settings, budgets,
                    Path(args.out) / "checkpoint.pt")
    if rank != 0:
        return {}  # rank 0 writes the folder: theta and the history are the same here
    print(f"{result.status}: {result.message}", flush=True)
    folder.write_rows("data.csv", result.history)
    folder.write_json("theta.json", result.theta.detach().cpu().tolist())
    last = result.history[-1] if result.history else {}
    return dict(problem=problem_spec, model=args.model, sigma=args.sigma, source=source,
                patches=int(clean.shape[0]), crops_per_image=args.crops_per_image,
                patch_size=args.patch_size, method=args.method,
                settings=settings, status=result.status, message=result.message,
                iterations=len(result.history), cost=last.get("cost"), init=args.init,
                wake=args.wake, wake_norm=args.wake_norm, split=args.split,
                init_scale=args.init_scale,
                device=str(device), ranks=ranks,
                final_check=getattr(result.state, "final_check", None),
                train_psnr_start=datasets.quality(noisy, clean)["psnr"])


def _training_problem(args, problem_spec, clean, noisy, device):
    """The problem on the crops; with --distributed this rank's share of them."""
    data = dict(images=clean, noisy=noisy, sigma=args.sigma / 255, device=device)
    if not args.distributed:
        return registry.make_problem(problem_spec, **data)
    try:
        return bilevel.distributed.data_parallel(problem_spec, **data)
    except (RuntimeError, TypeError) as exc:
        raise SystemExit(f"--distributed: {exc} (launch with torchrun --nproc-per-node N "
                         "scripts/train_denoiser.py ... --distributed)") from None


def _train(args, problem, problem_spec, method, settings, budgets, checkpoint):
    """Solve, or with --resume go on from the checkpoint (each rank's own with
    --distributed, :func:`bilevel.checkpoint.rank_path`)."""
    with interrupts.sigterm_interrupts():
        if not args.resume:
            theta0 = initial_theta(args, problem, problem_spec)
            return bilevel.solve(problem, method, theta0=theta0, checkpoint_path=checkpoint,
                                 **budgets)
        # The command's settings must be the checkpoint's (a mismatch is refused), bar
        # those that change no iterate (a new final check, batch bounds on or off).
        changes = {name: settings.get(name) for name in
                   getattr(type(method), "resumable_settings", ())}
        try:
            return bilevel.resume(problem, checkpoint, **budgets, method=method, **changes)
        except (FileNotFoundError, bilevel.CheckpointMismatchError) as exc:
            raise SystemExit(f"--resume: {exc}") from None


def summarise(folder):
    meta = folder.read_meta()
    rows = _rows(folder, meta)
    last = rows[-1] if rows else {}
    text = [f"# Training {meta['model']} at sigma {meta['sigma']:g}/255", "",
            f"Problem `{meta['problem']}` on {meta['patches']} patches "
            f"{meta['patch_size']}x{meta['patch_size']} from {meta['source']}; method "
            f"`{meta['method']}` {meta['settings']}, on {meta.get('device', 'cpu')}"
            + (f" ({meta['ranks']} data-parallel ranks)" if meta.get("ranks", 1) > 1 else "")
            + (f", from the learned `{meta['init']}`" if meta.get("init") else "")
            + (f" (sleeping filters woken at {meta['wake']:g} s_max"
               + (f", norm {meta['wake_norm']:g}" if meta.get("wake_norm") else "") + ")"
               if meta.get("wake") else "")
            + (f" (its filters split in two, copies perturbed by {meta['split']:g})"
               if meta.get("split") is not None else "")
            + (f", its regularizer times {meta['init_scale']:g}" if meta.get("init_scale")
               else "")
            + ".", "",
            f"Status `{meta['status']}` after {meta['iterations']} iterations, cost "
            f"{meta['cost']} lower + CG iterations, {last.get('time', math.nan):.0f} s of "
            f"training (this process: {meta['wall_time_s']:.0f} s; a resumed run counts "
            f"from its start): {meta['message']}", "",
            f"Last upper value {last.get('upper_value', math.nan):.6g} (noisy patches: "
            f"{meta['train_psnr_start']:.2f} dB).", "",
            f"Command: `{_launch(meta)}`.", "",
            "Evaluate: `python benchmarks/bsd68.py --model NAME=THIS_FOLDER`.", ""]
    text[-2:-2] = _concavity_lines(folder)
    folder.write_text("summary.md", "\n".join(text))
    print("\n".join(text))


def _launch(meta):
    """The command that reproduces the run: torchrun's for a data-parallel one."""
    ranks, command = meta.get("ranks", 1), meta["command"]
    if ranks > 1 and command.startswith("python "):
        return f"torchrun --nproc-per-node {ranks} " + command.removeprefix("python ")
    return command


def _concavity_lines(folder):
    """For a weakly convex ridge: how much of its budget the learned theta uses."""
    model = bilevel.load(folder.path)
    if not hasattr(model.problem, "concavity"):
        return []
    c = model.problem.concavity(model.theta)
    return [f"Weak convexity: floor -beta = -{c['floor']:.4g} (Lambda {c['kernel_bound']:.4g}, "
            f"`floor_bound={model.problem.floor_bound}`; the filters' symbol bound "
            f"{c['symbol']:.4g}); the deepest concave slope at {c['depth']:.3f} beta, "
            f"{c['concave_filters']} of {model.problem.K} potentials concave somewhere; "
            f"certified mu = {c['mu']:.4f} (1 - rho = {c['mu_floor']:.2g}).", ""]


def _rows(folder, meta):
    """data.csv's rows; none for a run stopped before its first iteration (the budget spent
    loading the crops), whose data.csv is empty."""
    return folder.read_rows("data.csv") if meta.get("iterations") else []


def plot(folder):
    """training.png: the training loss against epochs (or iterations) and, for a model with
    filters, the learned filters."""
    meta = folder.read_meta()
    rows = _rows(folder, meta)
    model = bilevel.load(folder.path)
    filtered = hasattr(model.problem, "filters")
    plt = _figure.pyplot()
    fig, axes = plt.subplots(1, 2 if filtered else 1, figsize=(11 if filtered else 6, 4),
                             squeeze=False, width_ratios=[3, 2] if filtered else None)
    _plot_losses(axes[0, 0], rows, meta)
    if filtered:
        _plot_filters(axes[0, 1], model)
    fig.suptitle(textwrap.fill(f"{meta['problem']}, sigma {meta['sigma']:g}/255", 90),
                 fontsize=8)
    _figure.save(fig, folder / "training.png", dpi=110)


def _plot_losses(ax, rows, meta):
    """Batch losses faint, their mean over an epoch bold (minibatches say little one by
    one), and the final check's certified brackets on F over all patches."""
    epochs = bool(rows) and "epoch" in rows[0]
    x = [r["epoch"] if epochs else r["iteration"] for r in rows]
    y = np.array([r["upper_value"] for r in rows], dtype=float)
    if epochs:
        ax.plot(x, y, ".", ms=2, alpha=0.3, color="C0", label="batch loss")
    else:
        ax.plot(x, y, ".-", ms=3, color="C0", label="F (all patches)")
    per_epoch = max(1, round(meta["patches"] / meta["settings"].get("batch_size", 1)))
    if epochs and len(y) >= per_epoch > 1:
        mean = np.convolve(y, np.ones(per_epoch) / per_epoch, mode="valid")
        ax.plot(x[per_epoch - 1:], mean, "-", color="C0", label="mean over the last epoch")
    check = meta.get("final_check") or {}
    for k, (name, c) in enumerate((check.get("candidates") or {"": check}).items()):
        if "lower_bound" in c:
            ax.errorbar([x[-1] if x else 0], [0.5 * (c["lower_bound"] + c["upper_bound"])],
                        yerr=[[0.5 * (c["upper_bound"] - c["lower_bound"])]] * 2,
                        fmt="os"[k % 2], color=f"C{1 + k}", ms=6, capsize=4,
                        label=f"certified F, all patches{', ' + name if name else ''}"
                              + (" (returned)" if name and name == check.get("theta") else ""))
    ax.set_xlabel("epochs" if epochs else "outer iterations")
    ax.set_ylabel("training loss (mean 1/2 ||x - x_true||^2)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def _plot_filters(ax, model):
    """The learned filters tiled, each on its own grey scale (zero is mid-grey); a field of
    experts' in order of strength alpha_k ||c_k|| (its potential's slope far out)."""
    filters = model.problem.filters(model.theta)
    strength = filters.flatten(1).norm(dim=1)
    if model.name == "fields_of_experts":
        strength = strength * model.problem.params(model.theta).alpha
    order = torch.argsort(strength, descending=True)
    K = filters.shape[0]
    s = math.isqrt(filters[0].numel())
    filters = filters.reshape(K, s, s)
    cols = math.ceil(math.sqrt(K * 1.5))
    tiles = np.full((math.ceil(K / cols) * (s + 1) + 1, cols * (s + 1) + 1), np.nan)
    for n, k in enumerate(order.tolist()):
        f = filters[k].detach().cpu().numpy()
        r, c = divmod(n, cols)
        tiles[1 + r * (s + 1):(r + 1) * (s + 1), 1 + c * (s + 1):(c + 1) * (s + 1)] = \
            f / max(abs(f).max(), 1e-300)
    ax.imshow(tiles, cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
    ax.set_title(f"learned filters ({K} of {s}x{s})", fontsize=8)
    ax.axis("off")


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--out" not in argv and "--quick" not in argv and "--replot" not in argv:
        import argparse

        pre = argparse.ArgumentParser(add_help=False)
        pre.add_argument("--model", default="foe")
        pre.add_argument("--sigma", type=float, default=25.0)
        known, _ = pre.parse_known_args(argv)
        argv += ["--out", f"results/denoisers/{known.model}_sigma{known.sigma:g}"]
    if "--distributed" not in argv:
        return experiment.main(__doc__, "train_denoiser", compute, summarise=summarise,
                               plot=plot, argv=argv, add_arguments=add_arguments, files=FILES)
    rank, _ = bilevel.distributed.init()
    try:
        if rank == 0:
            return experiment.main(__doc__, "train_denoiser", compute, summarise=summarise,
                                   plot=plot, argv=argv, add_arguments=add_arguments,
                                   files=FILES)
        # The other ranks train their share and write only their checkpoints.
        p = experiment.parser(__doc__)
        add_arguments(p)
        args = p.parse_args(argv)
        torch.set_num_threads(args.threads)
        Path(args.out).mkdir(parents=True, exist_ok=True)
        compute(args, None)
    finally:
        bilevel.distributed.finish()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
