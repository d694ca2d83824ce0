"""Any ``deepinv.physics.LinearPhysics`` as a :class:`~bilevel.operators.LinearOperator`.

deepinv (``pip install -e ".[deepinv]"``) is imported here, lazily, when an adapter is
built: ``import bilevel`` and ``import bilevel.operators`` never import it.

deepinv's physics act on (B, C, H, W) tensors; this library's images are (N, H, W).
The adapter puts each gray image in a channel of its own (x -> x[:, None]), or, for
physics of complex images (deepinv's MRI classes, C = 2: real and imaginary parts),
makes it the real part (x -> (x, 0)); the adjoint keeps channel 0, which is the
exact adjoint of either embedding.  The measurements are deepinv's own, unchanged,
so that y = physics(x_true[:, None]) can be used as data.

The norm bound:

- ``norm_bound=`` given: yours, taken as certified;
- a ``DecomposablePhysics`` (A = U diag(s) V^T, U and V orthonormal by deepinv's
  contract: Inpainting, MRI, ...): max |s|^2, certified given that contract (the
  embedding above is an isometry, so it cannot increase the norm);
- a ``Blur`` with ``padding`` "valid" or "circular": ||filter||_1^2 (the largest over
  the filters it holds), certified by Young's inequality (zero-extended full
  convolution then a restriction; or a periodic convolution);
- any other physics: deepinv's power method (``compute_sqnorm``), an *estimate*
  (``norm_certified`` False): it approaches ||A||^2 from below and may fall short.

Gram lower bound: 0 (nothing about deepinv's operators proves more).
"""
from __future__ import annotations

import math
from fractions import Fraction

import torch

from .base import LinearOperator
from .bounds import float_above, inflate


def _deepinv():
    try:
        import deepinv
    except ImportError as error:  # pragma: no cover - exercised only without deepinv
        raise ImportError("the deepinv adapter needs deepinv: pip install -e '.[deepinv]'") \
            from error
    return deepinv


class DeepinvOperator(LinearOperator):
    """A deepinv ``LinearPhysics`` seen through this library's protocol.

    Parameters
    ----------
    physics : deepinv.physics.LinearPhysics
        Its ``A`` and ``A_adjoint`` are used as they are (their dtype and device are
        the physics' buffers': convert it, e.g. ``physics.double()``, to match).
    image_shape : (H, W)
        For the power method (the physics does not always know it).
    complex_image : bool, optional
        Embed images as the real part of a complex image (C = 2); by default, True
        for deepinv's MRI classes and False otherwise.
    norm_bound : float, optional
        A proven upper bound of ||A||^2, used instead of anything below.
    seed, max_iter, tol
        For deepinv's power method, when it is used: once, at the first call of
        :meth:`norm_squared` (a physics changed later keeps the old estimate), with
        the global RNG left as it was.

    Images (N, H, W) -> deepinv's measurements (N, ...).
    """

    def __init__(self, physics, image_shape: tuple[int, int], *, complex_image: bool | None = None,
                 norm_bound: float | None = None, seed: int = 0, max_iter: int = 500,
                 tol: float = 1e-7):
        deepinv = _deepinv()
        if not isinstance(physics, deepinv.physics.LinearPhysics):
            raise TypeError(f"expected a deepinv.physics.LinearPhysics, got {type(physics)}")
        self.physics = physics
        self.image_shape = tuple(image_shape)
        if complex_image is None:
            mri_classes = getattr(getattr(deepinv, "utils", None), "mixins", None)
            mri_classes = getattr(mri_classes, "MRIMixin", ())
            complex_image = bool(mri_classes) and isinstance(physics, mri_classes)
        self.complex_image = complex_image
        self._norm_bound = norm_bound
        self._kind = "given" if norm_bound is not None else self._certified_kind(deepinv)
        self.norm_certified = self._kind != "estimate"
        self._power = dict(seed=seed, max_iter=max_iter, tol=tol)
        self._estimate = None

    def _certified_kind(self, deepinv) -> str:
        physics = deepinv.physics
        if isinstance(self.physics, physics.DecomposablePhysics):
            return "singular values"
        if isinstance(self.physics, physics.Blur) and self.physics.padding in ("valid",
                                                                                "circular"):
            return "young"
        return "estimate"

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.is_complex():
            raise ValueError(f"DeepinvOperator expects real images (N, H, W), got "
                             f"{tuple(x.shape)} {x.dtype}")
        if self.complex_image:
            return torch.stack([x, torch.zeros_like(x)], dim=1)
        return x[:, None]

    def A(self, x):
        return self.physics.A(self._embed(x))

    def A_adjoint(self, y):
        return self.physics.A_adjoint(y)[:, 0]

    def norm_squared(self):
        if self._kind == "given":
            return float(self._norm_bound)
        if self._kind == "singular values":
            mask = torch.as_tensor(self.physics.mask).detach()
            largest = float(mask.abs().max())
            if mask.is_complex():  # |s| is rounded: widen
                return inflate(largest * largest, 0)
            return float_above(Fraction(largest) ** 2)
        if self._kind == "young":
            filters = self.physics.filter.detach().to(torch.float64)
            per_filter = filters.abs().flatten(start_dim=-2).sum(dim=-1)
            l1 = inflate(float(per_filter.max()), math.prod(filters.shape[-2:]))
            return inflate(l1 * l1, 0)
        if self._estimate is None:
            self._estimate = self._power_method()
        return self._estimate

    def _power_method(self) -> float:
        channels = 2 if self.complex_image else 1
        dtype = next((b.dtype for b in self.physics.buffers() if b.is_floating_point()),
                     torch.get_default_dtype())
        device = next((b.device for b in self.physics.buffers()), torch.device("cpu"))
        start = torch.zeros(1, channels, *self.image_shape, dtype=dtype, device=device)
        compute = getattr(self.physics, "compute_sqnorm", None)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(self._power["seed"])
            if compute is not None:
                value = compute(start, max_iter=self._power["max_iter"],
                                tol=self._power["tol"], verbose=False)
            else:  # older deepinv: compute_norm returned ||A^T A||
                value = self.physics.compute_norm(start, max_iter=self._power["max_iter"],
                                                  tol=self._power["tol"], verbose=False)
        return float(value)
