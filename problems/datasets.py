"""Gray image sets for the denoising problems, as float64 torch tensors in [0, 1].

Two sources: the images scikit-image bundles (always present, no network) and a
folder of PNG files (e.g. the BSD sets of a shared data folder, which a fresh
machine need not have, hence the explicit path).  Everything is deterministic:
files are read in sorted order and every random choice takes an explicit seed.

Images of different sizes come back as a list of 2-D tensors; :func:`crop` and
:func:`resize` turn such a list into one ``(N, H, W)`` tensor.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from . import params

#: The default scikit-image set: gray images bundled with the package, sorted.
SKIMAGE_NAMES = ("astronaut", "brick", "camera", "chelsea", "coffee", "coins", "grass",
                 "gravel", "moon", "rocket")
#: More bundled images, for a held-out set when no folder of images is at hand.
SKIMAGE_EXTRA = ("cell", "clock", "hubble_deep_field", "immunohistochemistry", "page", "text")


def _to_gray_float(image) -> np.ndarray:
    """A uint8/bool/float array, gray or RGB(A), as a float64 gray array in [0, 1]."""
    from skimage.color import rgb2gray, rgba2rgb
    from skimage.util import img_as_float

    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 4:
        image = rgba2rgb(image)
    if image.ndim == 3:
        image = rgb2gray(image)
    return np.clip(img_as_float(image).astype(np.float64), 0.0, 1.0)


def skimage_images(names=None) -> list[torch.Tensor]:
    """The gray images scikit-image bundles (no download needed).

    Parameters
    ----------
    names : sequence of str, optional
        Names of ``skimage.data`` functions; default :data:`SKIMAGE_NAMES`.
        Colour images are converted with ``rgb2gray``.

    Returns
    -------
    list of torch.Tensor
        2-D float64 tensors in [0, 1], in the order of ``names``.
    """
    import skimage.data

    names = SKIMAGE_NAMES if names is None else tuple(names)
    images = []
    for name in names:
        loader = getattr(skimage.data, name, None)
        if loader is None:
            raise ValueError(f"skimage.data has no image {name!r}")
        images.append(torch.from_numpy(_to_gray_float(loader())))
    return images


def folder_images(path, limit=None) -> list[torch.Tensor]:
    """The PNG images of a folder, sorted by file name, as gray float64 tensors.

    Parameters
    ----------
    path : str or os.PathLike
        A folder such as ``<shared>/data/bsd/train``.
    limit : int, optional
        Read only the first ``limit`` files (in sorted order).
    """
    from skimage.io import imread

    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {os.fspath(folder)!r} does not exist; pass "
                                "source=None to use the images bundled with scikit-image")
    files = sorted(folder.glob("*.png"))
    if not files:
        raise FileNotFoundError(f"no PNG files in {os.fspath(folder)!r}")
    files = files if limit is None else files[:limit]
    return [torch.from_numpy(_to_gray_float(imread(f))) for f in files]


def _size2(size):
    h, w = (size, size) if np.isscalar(size) else size
    return int(h), int(w)


def _as_list(images):
    """A list of 2-D tensors from a list, a stack (N, H, W) or one image (H, W)."""
    if isinstance(images, torch.Tensor) and images.ndim == 2:
        return [images]
    return list(images)


def crop(images, size, seed=None) -> torch.Tensor:
    """Crop every image to ``size``: centred, or at random positions with ``seed``.

    Parameters
    ----------
    images : list of 2-D tensors or a tensor (N, H, W)
    size : int or (int, int)
    seed : int, optional
        None gives centre crops; an int gives random crops from a generator seeded here.

    Returns
    -------
    torch.Tensor
        Shape (N, h, w).
    """
    h, w = _size2(size)
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    out = []
    for image in _as_list(images):
        H, W = image.shape[-2:]
        if H < h or W < w:
            raise ValueError(f"cannot crop a {H}x{W} image to {h}x{w}")
        if gen is None:
            top, left = (H - h) // 2, (W - w) // 2
        else:
            top = int(torch.randint(H - h + 1, (1,), generator=gen))
            left = int(torch.randint(W - w + 1, (1,), generator=gen))
        out.append(image[top:top + h, left:left + w])
    return torch.stack(out)


def resize(images, size) -> torch.Tensor:
    """Resize keeping the aspect ratio: shorter side to fit, then a centre crop.

    Anti-aliased (``skimage.transform.resize``), so a large photograph shrunk to
    64x64 keeps its structure rather than aliasing into noise.

    Returns
    -------
    torch.Tensor
        Shape (N, h, w), float64 in [0, 1].
    """
    from skimage.transform import resize as sk_resize

    h, w = _size2(size)
    out = []
    for image in _as_list(images):
        H, W = image.shape[-2:]
        scale = max(h / H, w / W)  # the side that fits first sets the scale
        shape = (max(h, round(H * scale)), max(w, round(W * scale)))
        array = sk_resize(image.cpu().double().numpy(), shape, anti_aliasing=scale < 1,
                          preserve_range=True)
        out.append(torch.from_numpy(np.clip(array, 0.0, 1.0)))
    return crop(out, (h, w))


def add_noise(clean, sigma, seed) -> torch.Tensor:
    """clean + sigma * N(0, 1) noise, unclipped.

    The noise is drawn in float64 on the CPU from a generator seeded here and
    then moved to ``clean``'s device and dtype, so a seed gives the same noise
    on every device.
    """
    gen = torch.Generator().manual_seed(int(seed))
    noise = torch.randn(tuple(clean.shape), generator=gen, dtype=torch.float64)
    return clean + sigma * noise.to(device=clean.device, dtype=clean.dtype)


def train_test_split(images, n_train, n_test, seed):
    """Disjoint random subsets (train, test) of a stack of images (N, H, W)."""
    if n_train + n_test > len(images):
        raise ValueError(f"cannot take {n_train} + {n_test} images out of {len(images)}")
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    train, test = order[:n_train].sort().values, order[n_train:n_train + n_test].sort().values
    return images[train], images[test]


def load_images(source=None, n=None, size=64, seed=None, mode="resize",
                dtype=torch.float64, device="cpu") -> torch.Tensor:
    """The first ``n`` images of a source, brought to one size; what problems call.

    Parameters
    ----------
    source : None, 'skimage' or a folder path
        None and 'skimage' give :func:`skimage_images` (always available); a
        path gives :func:`folder_images`.
    n : int, optional
        Number of images (all by default), taken in sorted order.
    size : int or (int, int)
    seed : int, optional
        Only used by ``mode='crop'`` (random crop positions).
    mode : {'resize', 'crop'}
        'resize' shrinks the whole image (:func:`resize`); 'crop' cuts a
        patch at the native resolution (:func:`crop`).

    Returns
    -------
    torch.Tensor
        Shape (n, h, w), in [0, 1].
    """
    if source is None or source == "skimage":
        images = skimage_images()
    else:
        images = folder_images(source, limit=n)
    if n is not None:
        if n > len(images):
            raise ValueError(f"asked for {n} images, the source has {len(images)}")
        images = images[:n]
    if mode == "resize":
        stack = resize(images, size)
    elif mode == "crop":
        stack = crop(images, size, seed=seed)
    else:
        raise ValueError(f"mode must be 'resize' or 'crop', got {mode!r}")
    return stack.to(dtype=dtype, device=device)


def _pairs(x, clean):
    x = x.detach().cpu().double().numpy().reshape(-1, *x.shape[-2:])
    clean = clean.detach().cpu().double().numpy().reshape(-1, *clean.shape[-2:])
    if x.shape != clean.shape:
        raise ValueError(f"shapes differ: {x.shape} vs {clean.shape}")
    return x, clean


def psnr(x, clean) -> np.ndarray:
    """Per-image PSNR in dB (data range 1); ``.mean()`` is the usual table entry."""
    from skimage.metrics import peak_signal_noise_ratio

    x, clean = _pairs(x, clean)
    return np.array([peak_signal_noise_ratio(c, a, data_range=1.0)
                     for a, c in zip(x, clean, strict=True)])


def ssim(x, clean) -> np.ndarray:
    """Per-image SSIM (data range 1, scikit-image's default 7x7 window)."""
    from skimage.metrics import structural_similarity

    x, clean = _pairs(x, clean)
    return np.array([structural_similarity(c, a, data_range=1.0)
                     for a, c in zip(x, clean, strict=True)])


def quality(x, clean) -> dict:
    """Mean PSNR and SSIM over images, plus the per-image values."""
    p, s = psnr(x, clean), ssim(x, clean)
    return dict(psnr=float(p.mean()), ssim=float(s.mean()), psnr_per_image=p.tolist(),
                ssim_per_image=s.tolist())


def denoising_pair(name, images=None, noisy=None, *, source=None, n=None, size=64, sigma=0.1,
                   seed=0, min_size=1, dtype=torch.float64, device="cpu"):
    """(clean, noisy) training images of a denoising problem, checked, shape (N, H, W).

    ``images`` (clean, (N, H, W) or (H, W)) and ``noisy`` are the user's tensors;
    without ``images`` the first ``n`` images of ``source`` are loaded, and without
    ``noisy`` Gaussian noise of ``sigma`` is drawn with ``seed``.  Errors name the
    problem ``name`` and the parameter.  ``noisy`` must have exactly the shape of
    ``images``: a transposed or flattened observation is refused, never reshaped
    (a reshape would pair each noisy pixel with another pixel's clean value).
    """
    to = dict(dtype=dtype, device=device)
    if noisy is None:  # checked before loading anything
        sigma = params.number(name, "sigma", sigma, minimum=0.0)
        seed = params.integer(name, "seed", seed, 0)
    if images is None:
        n = None if n is None else params.integer(name, "n_images", n, 1)
        size = params.size2(name, "size", size, min_size)
        images = load_images(source, n=n, size=size)
    images = _image_stack(name, "images", images, **to)
    if images.shape[0] == 0:
        raise ValueError(f"{name}: images must hold at least 1 image, got shape "
                         f"{tuple(images.shape)}")
    if min(images.shape[-2:]) < min_size:
        raise ValueError(f"{name}: images of {tuple(images.shape[-2:])} are smaller than "
                         f"{min_size}x{min_size}")
    if noisy is None:
        noisy = add_noise(images, sigma, seed)
    noisy = _image_stack(name, "noisy", noisy, **to)
    if noisy.shape != images.shape:
        raise ValueError(f"{name}: noisy has shape {tuple(noisy.shape)}, the clean images "
                         f"{tuple(images.shape)}; they must match (N, H, W) exactly")
    return images, noisy


def _image_stack(name, label, images, dtype, device):
    """``images`` as a finite (N, H, W) tensor; one (H, W) image becomes (1, H, W)."""
    try:
        images = torch.as_tensor(images).to(dtype=dtype, device=device)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{name}: {label} must be a tensor or array of shape (N, H, W), "
                         f"got {type(images).__name__} ({exc})") from None
    if images.ndim == 2:
        images = images.unsqueeze(0)
    if images.ndim != 3:
        raise ValueError(f"{name}: {label} must have shape (N, H, W) or (H, W), got "
                         f"{tuple(images.shape)}")
    if not torch.isfinite(images).all():
        raise ValueError(f"{name}: {label} contain NaN or Inf")
    return images


def train_test_images(train_dir, test_dir, n_train, n_test, size, test_size, seed=0):
    """Training crops and held-out test crops for the denoising scripts.

    Folders (e.g. BSD400 / Set68) give random crops ``size`` for training and
    centre crops ``test_size`` for testing; without a folder the scikit-image
    images are resized (training: :data:`SKIMAGE_NAMES`, test: :data:`SKIMAGE_EXTRA`).
    Returns (train, test, test names, sources).
    """
    if train_dir:
        train = load_images(train_dir, n=n_train, size=size, mode="crop", seed=seed)
    else:
        train = resize(skimage_images(SKIMAGE_NAMES[:n_train]), size)
    if test_dir:
        test = crop(folder_images(test_dir, limit=n_test), test_size)
        names = [p.name for p in sorted(Path(test_dir).glob("*.png"))][:n_test]
    else:
        names = list(SKIMAGE_EXTRA[:n_test])
        test = resize(skimage_images(names), test_size)
    if len(names) != len(test):
        names = [f"test_{i:02d}" for i in range(len(test))]
    return (train.double(), test.double(), names,
            dict(train=train_dir or "skimage", test=test_dir or "skimage (extra set)"))
