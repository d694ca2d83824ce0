"""The report of benchmarks/bsd68.py: summary.md from summary.json, and --merge.

The published numbers the tables stand next to, the names of the baselines, and the two
things that read a finished evaluation folder: :func:`summarise` (its summary.md) and
:func:`merge` (learned models of other evaluations on the same images and noise copied in).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bilevel.results import RunFolder

#: TV weights of the oracle: 0.01 to 0.32, a factor 2^(1/8) (9%) apart.
TV_WEIGHTS = tuple(float(w) for w in 0.01 * 2.0 ** (np.arange(41) / 8))
#: Published mean PSNRs (dB), {set: {sigma/255: {method: dB}}}.  BSD68: Zhang et al.,
#: DnCNN, IEEE TIP 2017, Table II (BM3D, TNRD, DnCNN-S), the CRR-NN and WCRR-NN papers
#: (Goujon et al.) and Chen, Ranftl, Pock 2014 (FoE, 48 filters 7x7); Set12: DnCNN's
#: Table III (average of the 12 images).
PUBLISHED = {
    "Set68": {15: {"BM3D": 31.07, "CRR-NN": 30.55, "WCRR-NN": 31.21, "TNRD": 31.42,
                   "DnCNN-S": 31.73},
              25: {"BM3D": 28.57, "CRR-NN": 28.10, "WCRR-NN": 28.68, "FoE (bilevel)": 28.66,
                   "TNRD": 28.92, "DnCNN-S": 29.23}},
    "Set12": {15: {"BM3D": 32.37, "DnCNN-S": 32.86}, 25: {"BM3D": 29.97, "DnCNN-S": 30.44}},
}
TV = "TV (oracle weight)"


BASELINES = ("noisy", TV, "BM3D")


def merge(folder: RunFolder, sources) -> Path:
    """Copy the learned models of each source folder into ``folder``'s summary.json."""
    summaries = folder.read_json("summary.json")
    entries = {(e["set"], e["sigma_255"], e["n_images"]): e for e in summaries}
    for source in sources:
        for learned in RunFolder(source).read_json("summary.json"):
            key = (learned["set"], learned["sigma_255"], learned["n_images"])
            if key not in entries:
                raise SystemExit(f"bsd68 --merge: {source} has {key[0]} at sigma {key[1]:g}/255 "
                                 f"on {key[2]} images; {folder.path} has no such entry")
            entry = entries[key]
            for model in learned["psnr"]:
                if model in BASELINES:
                    continue
                for field in ("psnr", "ssim", "seconds_per_image"):
                    entry[field][model] = learned[field][model]
                entry.setdefault("learned_from", {})[model] = Path(source).as_posix()
    folder.write_json("summary.json", summaries)
    summarise(folder)
    print(f"merged {', '.join(sources)} into {folder.path}")
    return folder.path


def versions():
    from importlib import metadata

    out = {}
    for package in ("scikit-image", "bm3d", "numpy"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = None
    return out


def _tv_text(weights):
    first, last, count = weights
    if (first, last, count) == (TV_WEIGHTS[0], TV_WEIGHTS[-1], len(TV_WEIGHTS)):
        return ("TV's weight is an oracle: chosen on the same images by mean PSNR (grid "
                f"{first:g} to {last:.3g}, {count} weights, 2^(1/8) apart; tv_grid.csv).")
    return (f"TV's weight: the best by mean PSNR of the {count} given (--tv-weights, {first:g} "
            f"to {last:.3g}; tv_grid.csv), not the 41-weight oracle.")


def summarise(folder: RunFolder) -> Path:
    """summary.md from summary.json and meta.json."""
    summaries, meta = folder.read_json("summary.json"), folder.read_meta()
    env = meta["environment"]
    lines = ["# Gray denoising: BSD68 and Set12", "",
             f"`{meta['command']}` ({meta['wall_time_s']:.0f} s; {env['cpu']}, "
             f"{env['cpus']} cores, torch threads {env['torch_threads']}; "
             + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()) + ")", "",
             "Mean PSNR (dB) / SSIM over the images; noise unclipped, seed i for image i. "
             + _tv_text(meta["tv_weights"]) + " Seconds are wall-clock per image on a "
             f"machine that may be shared with other jobs, learned models on "
             f"{meta.get('device') or 'cpu'} (per_image.csv has each).", ""]
    for entry in summaries:
        published = PUBLISHED.get(entry["set"], {}).get(round(entry["sigma_255"]), {})
        lines += [f"## {entry['set']}, sigma {entry['sigma_255']:g}/255 "
                  f"({entry['n_images']} images)", "",
                  "| model | PSNR | SSIM | s / image | published PSNR |", "|---|---|---|---|---|"]
        for model, psnr in entry["psnr"].items():
            ssim = entry["ssim"].get(model)
            label = f"{TV}: {entry['tv_weight']:.4f}" if model == TV else model
            seconds = entry["seconds_per_image"].get(model)
            lines.append(f"| {label} | {psnr:.3f} | {'-' if ssim is None else f'{ssim:.4f}'} "
                         f"| {'-' if seconds is None else f'{seconds:.2f}'} "
                         f"| {published.get(model, '-')} |")
        others = {k: v for k, v in published.items() if k not in entry["psnr"]}
        if others:
            lines += ["", "Published, not run here: "
                      + ", ".join(f"{k} {v}" for k, v in others.items()) + "."]
        if entry["tv_weight_at_grid_edge"]:
            lines += ["", "**The TV oracle weight is at the edge of the grid.**"]
        if entry.get("learned_from"):
            lines += ["", "Learned models evaluated in (their summary.md: commands, tolerance): "
                      + ", ".join(f"{k}: {v}" for k, v in entry["learned_from"].items()) + "."]
        lines.append("")
    lines += ["Published: Zhang et al., DnCNN (IEEE TIP 2017), Tables II-III; CRR-NN / "
              "WCRR-NN: Goujon et al.; FoE (48 filters 7x7): Chen, Ranftl, Pock 2014."]
    return folder.write_text("summary.md", "\n".join(lines) + "\n")
