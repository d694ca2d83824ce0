"""Learned models: a run folder read back as a denoiser, without its training data.

``bilevel.load(run_dir)`` reads ``meta.json`` (its ``problem``: the spec the run
solved, as ``python -m bilevel run --out`` writes it, or as a
:func:`~bilevel.results.save_run` caller gives it in ``meta``) and ``theta.json``,
and rebuilds the problem from the spec's structural parameters (variant, filters,
knots, dtype...) on one small stand-in image: the training images are neither
loaded nor needed.  The :class:`LearnedModel` it returns denoises new images with
the learned theta, through the problem's own certified ``denoise(noisy, theta)``::

    model = bilevel.load("runs/tv")
    x = model.denoise(y)            # y: (H, W) or (N, H, W), tensor or array, in [0, 1]

``bilevel.load(run_dir, device="cuda")`` rebuilds the problem on that device: ``denoise``
then solves there and hands the result back where ``y`` came from.
"""
from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any

import torch

from . import registry
from .results import CorruptRunError, RunFolder

#: Spec parameters that say where the training images come from or which of them a
#: rank holds; a rebuilt model has its stand-in image instead.
_DATA_PARAMETERS = ("n_images", "size", "source", "images", "noisy", "shard")
#: Where the run solved: a model trained on a GPU loads on the CPU (``load``'s ``device``).
_PLACE_PARAMETERS = ("device",)


@dataclasses.dataclass(frozen=True, eq=False)
class LearnedModel:
    """A learned denoiser: the problem ``spec`` a run solved and the ``theta`` it learned.

    Attributes
    ----------
    spec : str
        The problem spec of the run (``"tv_denoising[variant=anisotropic]"``).
    name : str
        The problem's registered name.
    theta : torch.Tensor
        The learned hyperparameters (float64, as ``theta.json`` holds them).
    problem : BilevelProblem
        The problem rebuilt on a stand-in image; its ``denoise`` does the work.
    path : str
        The run folder it was read from.
    """

    spec: str
    name: str
    theta: torch.Tensor
    problem: Any = dataclasses.field(repr=False)
    path: str = ""

    def denoise(self, y, tol=None, max_iter=100_000, pad=None):
        """Denoise ``y``, (H, W) or (N, H, W), with the learned theta.

        Returns x shaped like ``y``: a tensor on ``y``'s device for a tensor, a numpy array
        otherwise, with certified ||x - x*(theta)|| <= tol (None: the problem's default, raised
        to what the dtype can certify).  ``y`` must be floating point, on the scale
        of the training images ([0, 1] for the built-in ones).  ``pad``: the mirrored
        border of the problem's ``denoise`` (None: its default, s - 1 pixels for filter
        banks, none for TV).
        """
        is_tensor = isinstance(y, torch.Tensor)
        images = y if is_tensor else torch.as_tensor(y)
        if images.ndim not in (2, 3):
            raise ValueError(f"{self.name}: denoise takes (H, W) or (N, H, W) images, got "
                             f"shape {tuple(images.shape)}")
        if not images.is_floating_point():
            raise TypeError(f"{self.name}: denoise needs floating-point images on the scale "
                            f"of the training images ([0, 1]), got {images.dtype}")
        x = self.problem.denoise(images, self.theta, tol=tol, max_iter=max_iter, pad=pad)
        return x.to(images.device) if is_tensor else x.detach().cpu().numpy()


def load(run_dir, device=None) -> LearnedModel:
    """The learned model of a run folder (``meta.json`` with ``problem``, ``theta.json``).

    ``device`` (``"cuda"``, a torch.device; None: the problem's default, the CPU for the
    built-in ones) is where the problem is rebuilt and ``denoise`` solves.  Raises
    FileNotFoundError for a missing folder, :class:`~bilevel.CorruptRunError` for a missing
    or unreadable file or a theta that does not fit the problem, TypeError for a problem
    that is not a denoiser (one without ``denoise``) or cannot take ``device``, and
    RuntimeError for a CUDA device that torch does not see.
    """
    path = Path(run_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"no run folder at {path}")
    folder = RunFolder(path)
    meta = folder.read_meta()
    spec = meta.get("problem")
    if not isinstance(spec, str) or not spec.strip():
        raise CorruptRunError(path / "meta.json",
                              f"'problem' is {spec!r}, not a problem spec such as "
                              "'tv_denoising[...]' (save_run: put it in meta)")
    status = meta.get("status")
    why = f" (meta.json says status {status!r})" if status in ("running", "failed") else ""
    theta = _theta(folder.read_json("theta.json", why), path / "theta.json")
    name, problem = _rebuild(spec, device)
    expected = problem.initial_theta().numel()
    if theta.numel() != expected:
        raise CorruptRunError(path / "theta.json", f"holds {theta.numel()} values; {spec} "
                                                   f"has {expected} hyperparameters")
    theta = theta.to(problem.initial_theta().device)
    return LearnedModel(spec=spec, name=name, theta=theta, problem=problem, path=str(path))


def _theta(values, path) -> torch.Tensor:
    try:
        theta = torch.tensor(values, dtype=torch.float64).flatten()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise CorruptRunError(path, f"not a JSON list of numbers ({exc})") from None
    if theta.numel() == 0 or not torch.isfinite(theta).all():
        raise CorruptRunError(path, "empty, or holds NaN or Inf")
    return theta


def _rebuild(spec, device=None):
    """(name, problem) of ``spec`` built on a stand-in image instead of its training data
    (on ``device``, when given)."""
    name, params = registry.parse_spec(spec)
    factory = registry.get_entry(name).factory
    if inspect.isclass(factory) and not hasattr(factory, "denoise"):
        raise TypeError(f"{name} is not a denoiser: its problem has no denoise(noisy, theta)")
    accepted = _parameters(factory)
    if accepted is not None and not {"images", "noisy"} <= accepted:
        raise TypeError(f"{name} is not a denoiser: it cannot be built on given images "
                        "(its factory takes no images= / noisy=)")
    stand_in = _stand_in(params.get("size", _default(factory, "size", 64)))
    kept = {k: v for k, v in params.items()
            if k not in _DATA_PARAMETERS + _PLACE_PARAMETERS}
    if device is not None:
        if accepted is not None and "device" not in accepted:
            raise TypeError(f"{name} cannot be rebuilt on device {device!r}: its factory "
                            "takes no device=")
        device = torch.device(device)  # a bad name is torch's RuntimeError, here
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"cannot rebuild {name} on {device}: this torch sees no CUDA "
                               "device")
        kept["device"] = device
    try:
        problem = registry.make_problem(name, **kept, images=stand_in, noisy=stand_in)
    except (TypeError, ValueError) as exc:
        if inspect.isclass(factory):  # a denoiser's own complaint about its spec
            raise
        raise TypeError(f"{name} is not a denoiser: it cannot be built on given images "
                        f"({exc})") from exc
    if not callable(getattr(problem, "denoise", None)):
        raise TypeError(f"{name} is not a denoiser: its problem has no denoise(noisy, theta)")
    return name, problem


def _parameters(factory):
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
        return None
    return set(signature.parameters)


def _default(factory, key, fallback):
    try:
        parameter = inspect.signature(factory).parameters.get(key)
    except (TypeError, ValueError):
        return fallback
    if parameter is None or parameter.default is inspect.Parameter.empty:
        return fallback
    return parameter.default


def _stand_in(size) -> torch.Tensor:
    """One ramp image of the training size (valid for the problem's filters), float64."""
    try:
        h, w = (int(size), int(size)) if isinstance(size, int | float) else map(int, size)
    except (TypeError, ValueError):
        raise ValueError(f"cannot rebuild a model for images of size {size!r}") from None
    if not (0 < h <= 4096 and 0 < w <= 4096):
        raise ValueError(f"cannot rebuild a model for images of size {size!r}")
    return torch.linspace(0.0, 1.0, h * w, dtype=torch.float64).reshape(1, h, w)
