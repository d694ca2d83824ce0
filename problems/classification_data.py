"""Classification data for the logistic-regression problem: digits and MNIST files.

Two sources, one result type (:class:`ClassificationSplit`):

- :func:`load_digits_split`: scikit-learn's bundled 8x8 digits (1797 images,
  10 classes, 64 features); nothing to download.
- :func:`load_mnist_split`: MNIST from its standard IDX files in a folder
  (``train-images-idx3-ubyte`` and friends, optionally gzipped), read by
  :func:`read_idx`, optionally resized (12x12 is the paper's setting).  Nothing
  is downloaded: the files must already be there.

Splits are stratified and seeded; :func:`standardise` fits the feature means
and scales on the training split only, so no validation or test statistic
leaks into the model.
"""
from __future__ import annotations

import dataclasses
import gzip
import os
import struct

import numpy as np

#: IDX type codes (the third byte of the magic number) -> big-endian numpy dtypes.
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

#: The four standard MNIST file names (without the optional ``.gz``).
MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte",
}


@dataclasses.dataclass(frozen=True)
class ClassificationSplit:
    """Features and integer labels of a train / validation / test split.

    Attributes
    ----------
    X_train, X_val, X_test : numpy.ndarray
        Float64 feature matrices, one sample per row.
    y_train, y_val, y_test : numpy.ndarray
        Integer labels in ``0 .. n_classes - 1``.
    n_classes : int
    source : str
        Where the data came from (for reports and meta.json).
    """

    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    source: str = ""

    def __post_init__(self):
        """Check the data (one line naming the part at fault) and store float64 / int64 arrays.

        Refused: a split without samples (the test split may be empty), no
        features, NaN or inf features, labels that are not integers (a float
        label 2.7 would otherwise be truncated to class 2), labels out of range,
        and a training split with fewer than two classes (nothing to separate).
        """
        n_classes = self.n_classes
        if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)) \
                or n_classes < 2:
            raise ValueError(f"ClassificationSplit: n_classes must be an integer >= 2, got "
                             f"{n_classes!r}")
        X_train = _features("X_train", self.X_train)
        if X_train.shape[1] == 0:
            raise ValueError("ClassificationSplit: X_train has no features (shape "
                             f"{X_train.shape}); need at least 1 column")
        d = X_train.shape[1]
        for part in ("train", "val", "test"):
            X = X_train if part == "train" else _features(f"X_{part}", getattr(self, f"X_{part}"))
            if X.shape[1] != d:
                raise ValueError(f"ClassificationSplit: X_{part} must have {d} columns (as "
                                 f"X_train), got shape {X.shape}")
            if part != "test" and X.shape[0] == 0:
                raise ValueError(f"ClassificationSplit: X_{part} has no samples; the {part} "
                                 "split needs at least 1")
            y = _labels(f"y_{part}", getattr(self, f"y_{part}"), n_classes)
            if y.shape != (X.shape[0],):
                raise ValueError(f"ClassificationSplit: y_{part} has shape {y.shape}, X_{part} "
                                 f"has {X.shape[0]} rows")
            object.__setattr__(self, f"X_{part}", X)
            object.__setattr__(self, f"y_{part}", y)
        present = np.unique(self.y_train)
        if len(present) < 2:
            raise ValueError(f"ClassificationSplit: y_train holds one class only "
                             f"({present.tolist()}); need at least 2 classes to learn from")

    @property
    def n_features(self) -> int:
        return self.X_train.shape[1]


def _features(name, X) -> np.ndarray:
    """X as a finite 2-D float64 array, or ValueError naming it."""
    try:
        X = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"ClassificationSplit: {name} must be a 2-D array of numbers") from None
    if X.ndim != 2:
        raise ValueError(f"ClassificationSplit: {name} must be 2-D (samples x features), got "
                         f"shape {X.shape}")
    if not np.isfinite(X).all():
        raise ValueError(f"ClassificationSplit: {name} contains NaN or inf "
                         f"({int((~np.isfinite(X)).sum())} entries)")
    return X


def _labels(name, y, n_classes) -> np.ndarray:
    """y as int64 labels in 0..n_classes-1; non-integer values are refused, not truncated."""
    y = np.asarray(y)
    if y.dtype == bool or not np.issubdtype(y.dtype, np.number):
        raise ValueError(f"ClassificationSplit: {name} must hold integer class labels, got "
                         f"dtype {y.dtype}")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.isfinite(y).all() or not np.array_equal(y, np.round(y)):
            bad = y[~(np.isfinite(y) & (y == np.round(y)))][:3].tolist()
            raise ValueError(f"ClassificationSplit: {name} must hold integer class labels, got "
                             f"non-integer values such as {bad}")
    y = y.astype(np.int64)
    if len(y) and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"ClassificationSplit: {name} has labels outside 0..{n_classes - 1} "
                         f"(min {y.min()}, max {y.max()})")
    return y


def standardise(split: ClassificationSplit) -> ClassificationSplit:
    """Centre and scale every feature with the training split's mean and std.

    A feature that is constant on the training split (e.g. a border pixel of the
    digits that is always 0) keeps scale 1: dividing by a zero std would put
    infinities into the validation and test features.
    """
    mean = split.X_train.mean(axis=0)
    std = split.X_train.std(axis=0)
    std = np.where(std > 1e-12, std, 1.0)
    return dataclasses.replace(
        split, X_train=(split.X_train - mean) / std, X_val=(split.X_val - mean) / std,
        X_test=(split.X_test - mean) / std)


def _take(X, y, n, seed):
    """Stratified, seeded choice of n of the rows: ((X_n, y_n), (X_rest, y_rest))."""
    from sklearn.model_selection import train_test_split

    if n >= len(y):
        return (X, y), (X[:0], y[:0])
    X_n, X_rest, y_n, y_rest = train_test_split(X, y, train_size=n, stratify=y,
                                                random_state=seed)
    return (X_n, y_n), (X_rest, y_rest)


def _three_way_split(X, y, n_train, n_val, n_test, seed):
    """Stratified, seeded train / validation / test split of (X, y); n_test None = the rest."""
    n = len(y)
    n_test = n - n_train - n_val if n_test is None else n_test
    if min(n_train, n_val, n_test) <= 0 or n_train + n_val + n_test > n:
        raise ValueError(f"cannot split {n} samples into n_train={n_train}, n_val={n_val}, "
                         f"n_test={n_test}")
    (X_tr, y_tr), rest = _take(X, y, n_train, seed)
    (X_val, y_val), rest = _take(*rest, n_val, seed + 1)
    (X_te, y_te), _ = _take(*rest, n_test, seed + 2)
    return X_tr, y_tr, X_val, y_val, X_te, y_te


def load_digits_split(n_train=600, n_val=600, n_test=None, seed=0,
                      standardize=True) -> ClassificationSplit:
    """scikit-learn's 8x8 digits, split stratified with ``seed``.

    Parameters
    ----------
    n_train, n_val : int
        Sizes of the training and validation splits.
    n_test : int, optional
        Size of the test split (default: all remaining of the 1797 images).
    seed : int
    standardize : bool
        Standardise with the training split's statistics (:func:`standardise`).
    """
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    parts = _three_way_split(X.astype(np.float64), y.astype(np.int64), n_train, n_val,
                             n_test, seed)
    split = ClassificationSplit(*parts, n_classes=10,
                                source=f"sklearn digits 8x8, seed {seed}")
    return standardise(split) if standardize else split


def read_idx(path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not, into a numpy array.

    The format: two zero bytes, a type code, the number of dimensions, then one
    big-endian int32 per dimension, then the data in C order, big-endian.
    """
    path = os.fspath(path)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_TYPES:
        raise ValueError(f"{path}: unknown IDX type code 0x{code:02x}")
    shape = struct.unpack(f">{ndim}i", raw[4:4 + 4 * ndim])
    dtype = np.dtype(_IDX_TYPES[code])
    count = int(np.prod(shape)) if ndim else 1
    offset = 4 + 4 * ndim
    if len(raw) - offset != count * dtype.itemsize:
        raise ValueError(f"{path}: header says shape {shape} ({count * dtype.itemsize} bytes) "
                         f"but {len(raw) - offset} data bytes follow")
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=offset)
    return data.reshape(shape).astype(dtype.newbyteorder("="))


def _find(folder, stem):
    for name in (stem, stem + ".gz"):
        path = os.path.join(folder, name)
        if os.path.exists(path):
            return path
    # torchvision and some mirrors write 't10k-images.idx3-ubyte'.
    alt = stem.replace("-idx", ".idx")
    for name in (alt, alt + ".gz"):
        path = os.path.join(folder, name)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"no {stem}[.gz] in {folder!r} (MNIST is not downloaded; put the "
                            "four standard IDX files there)")


def resize_images(images, size):
    """Resize (n, h, w) images to (n, size, size) with antialiased bilinear interpolation.

    Antialiasing averages over the footprint of each output pixel, as a
    downscale should, instead of sampling the nearest pixels (which aliases).
    """
    import torch
    import torch.nn.functional as F

    t = torch.as_tensor(np.asarray(images, dtype=np.float64)).unsqueeze(1)
    out = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True,
                        align_corners=False)
    return out.squeeze(1).numpy()


def load_mnist_split(path, n_train=5000, n_val=5000, n_test=10000, seed=0, size=12,
                     standardize=True) -> ClassificationSplit:
    """MNIST from the IDX files in folder ``path``; never downloads.

    Training and validation images are drawn (stratified, seeded) from the
    60000 training images, the test images from the 10000 test images, so the
    test set is the official one when ``n_test`` is 10000.

    Parameters
    ----------
    path : str or path-like
        Folder holding ``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``,
        ``t10k-images-idx3-ubyte[.gz]``, ``t10k-labels-idx1-ubyte[.gz]``.
    n_train, n_val, n_test : int
    seed : int
    size : int, optional
        Side of the resized images (12: the paper's 144 features); None keeps 28x28.
    standardize : bool
        Standardise with the training split's statistics.
    """
    files = {key: _find(os.fspath(path), stem) for key, stem in MNIST_FILES.items()}
    X_all, y_all = read_idx(files["train_images"]), read_idx(files["train_labels"])
    X_te_all, y_te_all = read_idx(files["test_images"]), read_idx(files["test_labels"])
    if size is not None:
        X_all, X_te_all = resize_images(X_all, size), resize_images(X_te_all, size)
    X_all = X_all.reshape(len(X_all), -1).astype(np.float64) / 255.0
    X_te_all = X_te_all.reshape(len(X_te_all), -1).astype(np.float64) / 255.0
    y_all, y_te_all = y_all.astype(np.int64), y_te_all.astype(np.int64)
    if min(n_train, n_val, n_test) <= 0 or n_train + n_val > len(y_all) \
            or n_test > len(y_te_all):
        raise ValueError(f"MNIST has {len(y_all)} training and {len(y_te_all)} test images; "
                         f"asked for {n_train}+{n_val} and {n_test}")
    (X_tr, y_tr), rest = _take(X_all, y_all, n_train, seed)
    (X_val, y_val), _ = _take(*rest, n_val, seed + 1)
    (X_te, y_te), _ = _take(X_te_all, y_te_all, n_test, seed + 2)
    n_classes = int(max(y_all.max(), y_te_all.max())) + 1
    split = ClassificationSplit(X_tr, y_tr, X_val, y_val, X_te, y_te, n_classes=n_classes,
                                source=f"MNIST IDX files in {os.fspath(path)}, "
                                       f"{'28x28' if size is None else f'{size}x{size}'}, "
                                       f"seed {seed}")
    return standardise(split) if standardize else split

