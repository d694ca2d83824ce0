"""The linear-operator protocol, and the operators built from others (identity, composition).

A forward operator is a linear map A from real images x to measurements y.  A
reconstruction problem h(x) = 1/2 ||A x - y||^2 + R(x) + gamma/2 ||x||^2 needs four
things from it, and :class:`LinearOperator` asks for exactly these:

- ``A(x)`` and ``A_adjoint(y)``, the adjoint for the real inner products
  <x, x'> = sum x x' and <y, y'> = Re sum conj(y) y' (complex measurements are
  pairs of reals), so that grad_x 1/2 ||A x - y||^2 = A^T (A x - y);
- ``norm_squared()``, an upper bound of ||A||^2 = lambda_max(A^T A): the data term's
  share of the smoothness constant L of h;
- ``gram_lower_bound()``, a lower bound of lambda_min(A^T A) (0 when none is known):
  the data term's share of the strong convexity constant mu of h.

Shapes: images are real tensors of shape (N, H, W) (the built-ins accept any
leading shape (..., H, W)); each operator documents its measurements' shape.  The
output's dtype and device follow the input's: an operator keeps its data (kernel,
mask, matrix) in float64 and copies it once to each dtype and device it meets.
"""
from __future__ import annotations

import abc
import math

import torch


class LinearOperator(abc.ABC):
    """A linear map from real images (..., H, W) to measurements.

    Subclasses implement :meth:`A`, :meth:`A_adjoint` and :meth:`norm_squared`;
    :meth:`gram_lower_bound` defaults to 0, which is always valid.

    Attributes
    ----------
    norm_certified : bool
        True when :meth:`norm_squared` is proven to bound ||A||^2 (for the operator
        with its float64 data; evaluating A in float32 adds float32 rounding to A x,
        not to the bound).  False (the default, so that only a subclass that says so
        claims a proof) for an estimate such as power iteration, which may fall
        short of ||A||^2.
    """

    norm_certified: bool = False

    @abc.abstractmethod
    def A(self, x: torch.Tensor) -> torch.Tensor:
        """The measurements A x of the images ``x`` (..., H, W)."""

    @abc.abstractmethod
    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """A^T y, a real tensor shaped like the images, for measurements ``y``."""

    @abc.abstractmethod
    def norm_squared(self) -> float:
        """An upper bound of ||A||^2 = lambda_max(A^T A) (see ``norm_certified``)."""

    def gram_lower_bound(self) -> float:
        """A lower bound of lambda_min(A^T A); 0 (always valid) unless a subclass knows more."""
        return 0.0

    def A_adjoint_A(self, x: torch.Tensor) -> torch.Tensor:
        """A^T A x, shaped like ``x`` (the Hessian of 1/2 ||A x - y||^2 applied to x)."""
        return self.A_adjoint(self.A(x))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.A(x)


class Identity(LinearOperator):
    """A = I: denoising as a reconstruction problem.  ||A||^2 = lambda_min(A^T A) = 1."""

    norm_certified = True

    def A(self, x):
        return x

    def A_adjoint(self, y):
        return y

    def norm_squared(self):
        return 1.0

    def gram_lower_bound(self):
        return 1.0


#: A relative margin for a few float64 roundings (4 unit roundoffs, 4.4e-16).
ROUNDING_SLACK = 2 * torch.finfo(torch.float64).eps


class Composition(LinearOperator):
    """A = A_1 A_2 ... A_k (the last one acts first), e.g. blur then decimation.

    Bounds: ||A_1 A_2|| <= ||A_1|| ||A_2||, and ||A_1 A_2 x||^2 >= mu_1 ||A_2 x||^2 >=
    mu_1 mu_2 ||x||^2 with mu_i the Gram lower bounds, so both products are valid
    (the second needs each A_i to map into the domain of the next one, as here).
    Certified when every factor's norm bound is.
    """

    def __init__(self, *operators: LinearOperator):
        if not operators:
            raise ValueError("Composition needs at least one operator")
        self.operators = tuple(operators)
        self.norm_certified = all(op.norm_certified for op in self.operators)

    def A(self, x):
        for op in reversed(self.operators):
            x = op.A(x)
        return x

    def A_adjoint(self, y):
        for op in self.operators:
            y = op.A_adjoint(y)
        return y

    def norm_squared(self):
        # Each factor's float64 bound carries its own rounding margin; one more
        # product per factor is covered by ROUNDING_SLACK.
        product = math.prod(op.norm_squared() for op in self.operators)
        return product * (1 + ROUNDING_SLACK * len(self.operators))

    def gram_lower_bound(self):
        product = math.prod(op.gram_lower_bound() for op in self.operators)
        return product * (1 - ROUNDING_SLACK * len(self.operators))


class TensorCopies:
    """A float64 (or complex128) tensor and its copies in each dtype and device met so far.

    Operators keep their data here so that applying them to float32 CUDA images
    neither converts the data at every call nor changes what the operator is.
    """

    def __init__(self, master: torch.Tensor):
        self.master = master
        self._copies: dict = {}

    def like(self, x: torch.Tensor) -> torch.Tensor:
        """The data in the precision of ``x`` (complex64/128 for complex data) on its device."""
        real = x.real.dtype if x.is_complex() else x.dtype
        if self.master.is_complex():
            dtype = torch.complex128 if real == torch.float64 else torch.complex64
        else:
            dtype = real
        key = (dtype, x.device)
        if key not in self._copies:
            self._copies[key] = self.master.to(device=x.device, dtype=dtype)
        return self._copies[key]


def check_image(x: torch.Tensor, image_shape, name: str) -> None:
    """Raise a ValueError unless ``x`` is a real tensor (..., H, W) with (H, W) = image_shape."""
    if x.is_complex() or x.dim() < 2:
        raise ValueError(f"{name} expects real images of shape (..., H, W), got "
                         f"{tuple(x.shape)} {x.dtype}")
    if image_shape is not None and tuple(x.shape[-2:]) != tuple(image_shape):
        raise ValueError(f"{name} was built for images of size {tuple(image_shape)}, "
                         f"got {tuple(x.shape[-2:])}")


class Scaled(LinearOperator):
    """A = c A_0 for a constant c > 0, e.g. a tomography matrix scaled to ||A|| <= 1.

    ||c A_0||^2 = c^2 ||A_0||^2 and lambda_min(c^2 A_0^T A_0) = c^2 lambda_min(A_0^T A_0):
    both bounds scale exactly (one more rounding each, in ROUNDING_SLACK).  Certified
    when A_0's are.
    """

    def __init__(self, operator: LinearOperator, factor: float):
        factor = float(factor)
        if not (math.isfinite(factor) and factor > 0):
            raise ValueError(f"Scaled: factor must be a finite number > 0, got {factor!r}")
        self.operator, self.factor = operator, factor
        self.norm_certified = operator.norm_certified

    def A(self, x):
        return self.factor * self.operator.A(x)

    def A_adjoint(self, y):
        return self.factor * self.operator.A_adjoint(y)

    def norm_squared(self):
        return self.factor ** 2 * self.operator.norm_squared() * (1 + ROUNDING_SLACK)

    def gram_lower_bound(self):
        return self.factor ** 2 * self.operator.gram_lower_bound() * (1 - ROUNDING_SLACK)
