"""Gray denoising on BSD68 and Set12: TV at its oracle weight, BM3D, learned run folders.

    python benchmarks/bsd68.py [--set Set68,Set12] [--sigma 15,25] [--n-images N]
                               [--model NAME=RUN_DIR ...] [--tol T] [--data DIR]
                               [--out results/bsd68] [--resume] [--workers N]
    python benchmarks/bsd68.py --merge FOLDER [--merge FOLDER ...] [--out results/bsd68]

Protocol (the usual one of the published tables).  Every PNG of the set, gray in
[0, 1], at its full size; noise sigma/255 * N(0, 1), unclipped, drawn by numpy's
``default_rng(i)`` for the i-th image in sorted file order (the same draw, scaled, at
every sigma).  PSNR (data range 1) and SSIM (scikit-image, 7x7 window) of the
unclipped output against the clean image, averaged over the images.

- ``TV (oracle weight)``: ``skimage.restoration.denoise_tv_chambolle`` (its defaults,
  eps 2e-4, 200 iterations) with ONE weight per set and sigma, chosen on the grid
  :data:`TV_WEIGHTS` by the mean PSNR on that same set: an oracle, an upper bound of
  what TV with one tuned weight can do there, not a held-out result.
- ``BM3D``: the ``bm3d`` package (``pip install -e ".[benchmarks]"``) with the true
  sigma; a benchmark-only dependency, skipped with a message when it is not installed.
- ``--model NAME=RUN_DIR``: a learned run folder, ``bilevel.load(RUN_DIR).denoise``,
  certified ||x - x*(theta)|| <= ``--tol`` (default: the problem's own).  On a 481x321
  image tol = 1e-2 moves the PSNR by at most about 0.005 dB (||x* - clean|| is about 23
  at sigma 25: the squared error moves by at most 2 * 23 * tol) and takes fewer
  iterations than the default 1e-4.

Writes, in ``--out``: summary.json (a list, one entry per set and sigma:
``{"set", "sigma", "sigma_255", "n_images", "psnr": {model: dB}, "ssim": {...},
"seconds_per_image": {...}, "tv_weight"}``), per_image.csv (one row per set, sigma,
image and model), tv_grid.csv (the oracle's grid: mean PSNR / SSIM per weight),
summary.md (the tables, next to the published numbers) and meta.json (command,
machine).  While it runs, per_image_partial.csv holds the learned models' rows of the images
done; ``--resume`` (one set, one sigma, the same models) reuses them after a stop: those
images are not denoised again (TV is, it is cheap), each one's noisy PSNR is checked
against the record (another sigma or noise draw is refused), and meta.json counts them in
``resumed_images``; the seconds per image are those measured when each was run.

``--workers N`` denoises N images at a time, each in a forked process of one thread (the
same numbers).

``--merge FOLDER`` evaluates nothing: it copies the learned models of FOLDER's summary.json
(an evaluation with ``--model``, e.g. results/bsd68_learned/ridge) into the entries of
``--out``'s summary.json with the same set, sigma and number of images (the same images and
noise), naming the source in the entry's ``learned_from``, and redraws summary.md: one file
with every model.
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bilevel import experiment
from bilevel.results import RunFolder, command_line

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bsd68_report import TV, TV_WEIGHTS, merge, summarise, versions  # noqa: E402


def noisy_image(clean, sigma, seed):
    """clean + sigma N(0, 1), unclipped, from ``numpy.random.default_rng(seed)``."""
    return clean + sigma * np.random.default_rng(seed).standard_normal(clean.shape)


def _metrics(x, clean):
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    return (float(peak_signal_noise_ratio(clean, x, data_range=1.0)),
            float(structural_similarity(clean, x, data_range=1.0)))


def denoised(denoise, y, clean):
    """(output, PSNR, SSIM, seconds) of ``denoise`` on ``y``, the noisy ``clean``."""
    start = time.perf_counter()
    x = np.asarray(denoise(y), dtype=np.float64)
    seconds = time.perf_counter() - start
    return (x, *_metrics(x, clean), seconds)


def bm3d_denoiser(sigma):
    """BM3D at noise level ``sigma``, or None (and a message) without the bm3d package."""
    try:
        import bm3d
    except ImportError as exc:
        print(f"BM3D skipped: cannot import bm3d ({exc}); pip install -e '.[benchmarks]'")
        return None
    return lambda y: bm3d.bm3d(y, sigma_psd=sigma)


def learned_denoiser(run_dir, tol=None, device=None):
    """``bilevel.load(run_dir, device).denoise`` on numpy images, to certified accuracy
    ``tol``."""
    import torch

    import bilevel

    model = bilevel.load(run_dir, device=device)
    return lambda y: model.denoise(torch.from_numpy(y), tol=tol).numpy()


def evaluate(images, names, sigma, denoisers, weights=TV_WEIGHTS, progress=print,
             partial=None, done=None, workers=1):
    """Denoise each image once per model; (summary, per-image rows, TV grid rows).

    ``images``: clean 2-D arrays in [0, 1]; ``denoisers``: {name: f(noisy) -> array}
    (None skips that model); the TV oracle is always evaluated, on ``weights``.
    ``partial(rows)``, if given, receives the learned models' rows after each image (a
    long run that is stopped keeps what it measured). ``done``: such rows of an earlier,
    stopped run, by (image, model): those models are not run again on those images (TV is
    cheap and always rerun); ValueError if an image's noisy PSNR differs from the one
    recorded (another sigma, seed or image).  ``workers`` > 1 denoises that many images at
    a time in forked processes of one thread each (the same numbers: each image's noise
    comes from its own seed).
    """
    denoisers = {k: f for k, f in denoisers.items() if f is not None}
    n, grid = len(images), np.zeros((len(images), len(weights), 3))  # psnr, ssim, seconds
    per_image = [None] * n
    job = dict(images=images, names=names, sigma=sigma, denoisers=denoisers, weights=weights,
               done=done or {})
    for count, (i, image_rows, grid[i], line) in enumerate(_each_image(job, workers), 1):
        per_image[i] = image_rows
        progress(f"  {count}/{n} {names[i]}: " + line + " dB")
        if partial is not None:
            partial([r for rows in per_image if rows for r in rows])
    rows = [r for image_rows in per_image for r in image_rows]
    best = int(grid[:, :, 0].mean(0).argmax())
    for i, name in enumerate(names):
        rows.append(dict(image=name, model=TV, psnr=grid[i, best, 0], ssim=grid[i, best, 1],
                         seconds=grid[i, best, 2]))
    models = ["noisy", TV, *denoisers]
    summary = dict(sigma=sigma, sigma_255=round(sigma * 255, 6), n_images=n,
                   psnr={m: _mean(rows, m, "psnr") for m in models},
                   ssim={m: _mean(rows, m, "ssim") for m in models if m != "noisy"},
                   seconds_per_image={m: _mean(rows, m, "seconds") for m in models[1:]},
                   tv_weight=weights[best],
                   tv_weight_at_grid_edge=len(weights) > 1 and best in (0, len(weights) - 1))
    grid_rows = [dict(weight=w, psnr=grid[:, k, 0].mean(), ssim=grid[:, k, 1].mean())
                 for k, w in enumerate(weights)]
    return summary, rows, grid_rows


def _each_image(job, workers):
    """(index, rows, TV grid row, progress line) of each image, in the order they finish.

    Workers are forked (the denoisers, closures, are inherited rather than pickled), each
    taking every ``workers``-th image; only their results cross a queue."""
    n = len(job["images"])
    if workers <= 1 or n <= 1:
        yield from (_one_image(job, i) for i in range(n))
        return
    import multiprocessing
    import queue as queues

    context = multiprocessing.get_context("fork")
    results = context.Queue()
    processes = [context.Process(target=_worker, args=(job, range(w, n, workers), results),
                                 daemon=True) for w in range(min(workers, n))]
    for process in processes:
        process.start()
    try:
        for _ in range(n):
            while True:
                try:
                    item = results.get(timeout=5)
                    break
                except queues.Empty:
                    dead = [p.exitcode for p in processes if p.exitcode not in (None, 0)]
                    if dead:
                        raise RuntimeError(f"bsd68: a worker died (exit code {dead[0]})") \
                            from None
            if isinstance(item, str):
                raise RuntimeError(f"bsd68: a worker failed:\n{item}")
            yield item
    finally:
        for process in processes:  # all finished, unless the parent stops early
            if process.is_alive():
                process.terminate()
            process.join()


def _worker(job, indices, results):
    import traceback

    import torch

    torch.set_num_threads(1)
    try:
        for i in indices:
            results.put(_one_image(job, i))
    except Exception:  # the parent raises it, with the worker's traceback
        results.put(traceback.format_exc())


def _one_image(job, i):
    """The noisy row, the learned models' rows (or a stopped run's), TV's grid on image i."""
    from skimage.restoration import denoise_tv_chambolle

    clean, name = job["images"][i], job["names"][i]
    y = noisy_image(clean, job["sigma"], seed=i)
    rows = [dict(image=name, model="noisy", psnr=_metrics(y, clean)[0], ssim=None,
                 seconds=0.0)]
    earlier = _earlier_rows(job["done"], rows[0])
    grid = np.zeros((len(job["weights"]), 3))
    for k, w in enumerate(job["weights"]):
        start = time.perf_counter()
        x = denoise_tv_chambolle(y, weight=w)
        grid[k] = (*_metrics(x, clean), time.perf_counter() - start)
    line = [f"noisy {rows[0]['psnr']:.2f}", f"TV best {grid[:, 0].max():.2f}"]
    for model, denoise in job["denoisers"].items():
        if model in earlier:
            rows.append(earlier[model])
            line.append(f"{model} {earlier[model]['psnr']:.2f} (resumed)")
            continue
        _, psnr, ssim, seconds = denoised(denoise, y, clean)
        rows.append(dict(image=name, model=model, psnr=psnr, ssim=ssim, seconds=seconds))
        line.append(f"{model} {psnr:.2f} ({seconds:.1f} s)")
    return i, rows, grid, ", ".join(line)


def _earlier_rows(done, noisy_row):
    """{model: row} measured on this image by a stopped run, once its noise is checked."""
    name = noisy_row["image"]
    if (name, "noisy") not in done:
        return {}
    recorded = float(done[name, "noisy"]["psnr"])
    if abs(recorded - noisy_row["psnr"]) > 1e-9:
        raise ValueError(f"cannot resume: {name}'s noisy PSNR is {noisy_row['psnr']:.12g}, "
                         f"the stopped run recorded {recorded:.12g} (another sigma, seed or "
                         "image)")
    return {model: dict(image=name, model=model, psnr=float(row["psnr"]),
                        ssim=float(row["ssim"]), seconds=float(row["seconds"]))
            for (image, model), row in done.items() if image == name and model != "noisy"}


def read_partial(folder: RunFolder, models) -> dict:
    """The rows of ``folder``'s per_image_partial.csv by (image, model); SystemExit if there
    is none, or if it holds a model not asked for now (it belongs to another run)."""
    if not (folder.path / "per_image_partial.csv").is_file():
        raise SystemExit(f"bsd68: --resume: no per_image_partial.csv in {folder.path}")
    rows = folder.read_rows("per_image_partial.csv")
    stray = {r["model"] for r in rows} - {"noisy", *models}
    if stray:
        raise SystemExit(f"bsd68: --resume: {folder.path}/per_image_partial.csv holds "
                         f"{sorted(stray)}, not among the models asked for {sorted(models)}")
    return {(r["image"], r["model"]): r for r in rows}


def _mean(rows, model, key):
    return float(np.mean([r[key] for r in rows if r["model"] == model]))


def load_set(name, data=None, n=None):
    """(file names, clean images) of the set ``name``: ``DATA/name`` or image_folder's."""
    from bilevel_problems.datasets import folder_images

    folder = str(Path(data) / name) if data else experiment.image_folder(name)
    if folder is None or not Path(folder).is_dir():
        where = f"{data}/{name}" if data else "$BILEVEL_DATA/bsd or ../shared/data/bsd"
        raise SystemExit(f"bsd68: no image set {name} ({where}); pass --data DIR, the folder "
                         "holding Set68/ and Set12/ (docs/data.md)")
    files = sorted(p.name for p in Path(folder).glob("*.png"))[:n]
    return files, [im.numpy() for im in folder_images(folder, limit=n)], folder


def _arguments(argv):
    p = experiment.parser(__doc__)
    p.add_argument("--set", default="Set68,Set12", help="image sets, comma-separated")
    p.add_argument("--sigma", default="15,25", help="noise levels x 255, comma-separated")
    p.add_argument("--n-images", type=int, default=None, help="the first N of each set")
    p.add_argument("--data", default=None, help="the folder holding Set68/ and Set12/")
    p.add_argument("--model", action="append", default=[], metavar="NAME=RUN_DIR",
                   help="a learned run folder (bilevel.load); repeatable")
    p.add_argument("--tol", type=float, default=None,
                   help="certified ||x - x*|| of the learned models (default: the problem's)")
    p.add_argument("--no-bm3d", action="store_true", help="leave BM3D out")
    p.add_argument("--device", default=None,
                   help="where the learned models solve (cuda; default: the CPU)")
    p.add_argument("--tv-weights", default=None, metavar="W,...",
                   help="TV's weights, comma-separated (default: the 41-weight oracle grid; "
                        "one known weight makes TV's row cheap when only learned rows are "
                        "wanted)")
    p.add_argument("--workers", type=int, default=1,
                   help="images denoised at a time, each in a forked process of one thread "
                        "(default 1; the same numbers)")
    p.add_argument("--resume", action="store_true",
                   help="reuse the images of --out's per_image_partial.csv, left by a stopped "
                        "run of the same models, one set and one sigma")
    p.add_argument("--merge", action="append", default=[], metavar="FOLDER",
                   help="copy the learned models of FOLDER/summary.json into --out's "
                        "(evaluates nothing); repeatable")
    args = p.parse_args(argv)
    if any("=" not in item for item in args.model):
        p.error("--model takes NAME=RUN_DIR")
    args.models = dict(item.split("=", 1) for item in args.model)
    args.weights = TV_WEIGHTS
    if args.tv_weights is not None:
        try:
            args.weights = tuple(float(w) for w in args.tv_weights.split(","))
        except ValueError:
            p.error(f"--tv-weights takes numbers separated by commas, got {args.tv_weights!r}")
        if not all(0 < w < float("inf") for w in args.weights):
            p.error(f"--tv-weights must be positive and finite, got {args.tv_weights!r}")
    if args.workers < 1:
        p.error(f"--workers must be >= 1, got {args.workers}")
    if args.resume and ("," in args.set or "," in args.sigma):
        p.error("--resume takes one --set and one --sigma (the partial file holds one)")
    if args.quick:  # two images of Set12, never over the committed results
        args.n_images, args.set = args.n_images or 2, "Set12"
        args.out = args.out or str(Path(tempfile.gettempdir()) / "bilevel-quick" / "bsd68")
    args.out = args.out or "results/bsd68"
    return args


def main(argv=None):
    import torch

    args = _arguments(argv)
    torch.set_num_threads(args.threads or 1)
    folder = RunFolder(args.out)
    if args.replot:
        return summarise(folder)
    if args.merge:
        return merge(folder, args.merge)
    models = {name: learned_denoiser(path, args.tol, args.device)
              for name, path in args.models.items()}
    baselines = [] if args.no_bm3d else ["BM3D"]
    done = read_partial(folder, [*baselines, *models]) if args.resume else None
    folder.open()
    started, summaries, rows, grid_rows, sources = time.perf_counter(), [], [], [], {}
    for set_name in args.set.split(","):
        files, images, sources[set_name] = load_set(set_name, args.data, args.n_images)
        for sigma_255 in (float(s) for s in args.sigma.split(",")):
            sigma = sigma_255 / 255
            print(f"{set_name}, sigma {sigma_255:g}/255: {len(images)} images", flush=True)
            bm3d = None if args.no_bm3d else {"BM3D": bm3d_denoiser(sigma)}
            try:
                summary, image_rows, grid = evaluate(
                    images, files, sigma, {**(bm3d or {}), **models}, weights=args.weights,
                    progress=lambda line: print(line, flush=True),
                    partial=lambda rows: folder.write_rows("per_image_partial.csv", rows),
                    done=done, workers=args.workers)
            except ValueError as exc:  # a partial file of another sigma or image set
                raise SystemExit(f"bsd68: --resume: {exc}") from None
            tag = dict(set=set_name, sigma_255=sigma_255)
            summaries.append(dict(set=set_name, **summary))
            rows += [dict(tag, **r) for r in image_rows]
            grid_rows += [dict(tag, **r) for r in grid]
    folder.write_json("summary.json", summaries)
    folder.write_rows("per_image.csv", rows)
    (folder.path / "per_image_partial.csv").unlink(missing_ok=True)
    folder.write_rows("tv_grid.csv", grid_rows)
    folder.write_meta(dict(script="benchmarks/bsd68.py",
                           command=command_line(argv, "benchmarks/bsd68.py"),
                           sets=sources, sigmas_255=args.sigma, n_images=args.n_images,
                           models=args.models, tol=args.tol, noise="numpy default_rng(i), image i",
                           tv_weights=[args.weights[0], args.weights[-1], len(args.weights)],
                           device=args.device or "cpu", workers=args.workers,
                           resumed_images=sum(m == "noisy" for _, m in done or {}),
                           versions=versions(),
                           wall_time_s=round(time.perf_counter() - started, 1)))
    summarise(folder)
    print(f"wrote {folder.path}")
    return folder.path


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
