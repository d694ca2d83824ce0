"""The contract of a :class:`~bilevel.BilevelProblem`, checked.

The solvers call these on what they are given (theta, warm starts, mu), and
:func:`validate` runs once when a problem is built, so that a broken problem
fails with one line naming the piece at fault -- not with a size mismatch deep
inside torch, or a bound that silently rests on a NaN.
"""
from __future__ import annotations

import math
import warnings

import torch


def refuse(problem, what, exc=ValueError):
    """Raise ``exc`` with one line naming the problem and what is wrong."""
    raise exc(f"{problem.name}: {what}")


class DerivativeWarning(UserWarning):
    """An autograd default derivative disagrees with finite differences of the gradient."""


def _default(hook):
    """The base class's autograd default of ``hook`` (to tell whether it is overridden)."""
    from .problem import BilevelProblem

    return getattr(BilevelProblem, hook)


def _fixed_unit(like):
    """A deterministic unit vector shaped like ``like`` (drawn in float64 on the CPU)."""
    v = torch.randn(like.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    v = v.to(dtype=like.dtype, device=like.device)
    return v / torch.linalg.vector_norm(v)


def _difference(grad_at, point):
    """A central difference of a gradient, (fd, noise), or (None, noise) if unreliable.

    (grad_at(s) - grad_at(-s)) / 2s with s = sqrt(eps) max(1, ||point||), and
    again with s / 4: where the two disagree by more than 5% the difference is
    dominated by truncation (curvature varying on the scale of the step, e.g. a
    tiny smoothing) and says nothing; noise bounds its rounding.
    """
    eps = torch.finfo(point.dtype).eps
    step = math.sqrt(eps) * max(1.0, float(torch.linalg.vector_norm(point)))
    estimates, noise = [], 0.0
    for s in (step, step / 4):
        plus, minus = grad_at(s), grad_at(-s)
        estimates.append((plus - minus) / (2 * s))
        size = float(torch.linalg.vector_norm(plus) + torch.linalg.vector_norm(minus))
        noise = max(noise, 30 * eps * size / s)
    coarse, fine = estimates
    spread = float(torch.linalg.vector_norm(coarse - fine))
    if not spread <= 0.05 * float(torch.linalg.vector_norm(fine)) + noise:
        return None, noise
    return fine, noise


def check_theta(problem, theta) -> torch.Tensor:
    """Return theta if it is a finite flat 1-D floating tensor shaped like
    ``initial_theta()``, else raise (a wrong length would otherwise surface as a
    size mismatch deep inside torch)."""
    if not isinstance(theta, torch.Tensor):
        refuse(problem, f"theta must be a torch.Tensor, got {type(theta).__name__}", TypeError)
    if theta.ndim != 1:
        refuse(problem, f"theta must be a flat 1-D tensor, got shape {tuple(theta.shape)}")
    expected = _theta_shape(problem)
    if expected is not None and tuple(theta.shape) != expected:
        refuse(problem, f"theta has shape {tuple(theta.shape)}, expected {expected} "
                    "(the shape of initial_theta())")
    if not theta.is_floating_point():
        refuse(problem, f"theta must be floating point, got {theta.dtype}", TypeError)
    if not torch.isfinite(theta).all():
        refuse(problem, "theta contains NaN or Inf")
    return theta

def _theta_shape(problem):
    """The shape of ``initial_theta()``, read once; None while it cannot be read yet."""
    if not hasattr(problem, "_theta_shape_cache"):
        try:
            initial = problem.initial_theta()
        except Exception:  # noqa: BLE001 - validate() names a broken initial_theta
            return None
        if not isinstance(initial, torch.Tensor):
            return None
        problem._theta_shape_cache = tuple(initial.shape)
    return problem._theta_shape_cache

def check_x(problem, x, theta, what="x") -> torch.Tensor:
    """Return x if it has the shape of ``initial_x(theta)`` and is finite."""
    if not isinstance(x, torch.Tensor):
        refuse(problem, f"{what} must be a torch.Tensor, got {type(x).__name__}", TypeError)
    shape = _x_shape(problem, theta)
    if tuple(x.shape) != shape:
        refuse(problem, f"{what} has shape {tuple(x.shape)} but initial_x gives {shape}")
    if not torch.isfinite(x).all():
        refuse(problem, f"{what} contains NaN or Inf")
    return x

def check_mu(problem, theta) -> float:
    """mu(theta) as a float, after checking it is finite and positive."""
    mu = float(problem.strong_convexity(theta))
    if not math.isfinite(mu) or mu <= 0:
        refuse(problem, f"strong_convexity(theta) must be a finite number > 0, got {mu}")
    return mu

def _x_shape(problem, theta):
    if not hasattr(problem, "_x_shape_cache"):
        problem._x_shape_cache = tuple(problem.initial_x(theta).shape)
    return problem._x_shape_cache

def validate(problem) -> None:
    """Check the contract once on the initial point; raise naming what is wrong."""
    theta = check_theta(problem, problem.initial_theta())
    x = problem.initial_x(theta)
    if not isinstance(x, torch.Tensor):
        refuse(problem, f"initial_x must return a torch.Tensor, got {type(x).__name__}",
              TypeError)
    if x.dtype != theta.dtype or x.device != theta.device:
        refuse(problem, f"initial_x gives {x.dtype} on {x.device} but initial_theta gives "
                    f"{theta.dtype} on {theta.device}")
    check_x(problem, x, theta, "initial_x(theta)")
    for label, fn in (("lower_objective", problem.lower_objective),
                      ("upper_objective", problem.upper_objective)):
        value = fn(x, theta)
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            refuse(problem, f"{label}(x, theta) must return a scalar tensor")
        if not torch.isfinite(value).all():
            refuse(problem, f"{label}(x, theta) is not finite at the initial point "
                        "(NaN in the data?)")
    mu = check_mu(problem, theta)
    L = problem.smoothness(theta)
    if L is not None and not (math.isfinite(float(L)) and float(L) >= mu):
        refuse(problem, f"smoothness(theta) = {L} must be finite and >= mu = {mu}")
    # The derivatives run the same code on every sample: check them on one, where a
    # training set of thousands of crops would pay minutes here (h and g above saw all the
    # data, so a NaN anywhere in it is still caught).
    view, x = _one_sample(problem, theta, x)
    grad = view.lower_grad(x, theta)
    if tuple(grad.shape) != tuple(x.shape):
        refuse(problem, f"lower_grad returns shape {tuple(grad.shape)}, x has {tuple(x.shape)}")
    bw = view.mixed_vjp(x, theta, grad)
    if tuple(bw.shape) != tuple(theta.shape):
        refuse(problem, f"mixed_vjp returns shape {tuple(bw.shape)}, theta has "
                    f"{tuple(theta.shape)}")
    _spot_check_second_derivatives(view, x, theta)


def _one_sample(problem, theta, x):
    """(problem, x) itself, or its first sample's view and x when it is sample-separable
    (``subset`` overridden) with several samples; that view's x must be x[[0]]."""
    if type(problem).subset is _default("subset"):
        return problem, x
    try:
        if int(problem.n_samples) <= 1:
            return problem, x
        view = problem.subset([0])
    except (NotImplementedError, TypeError, ValueError):
        # An inherited subset this problem cannot honour (a per-image field it does not
        # know, say): then the checks run on all the data, as thorough, only slower; a
        # minibatch method that asks for a batch gets subset's own error.
        return problem, x
    x_one = view.initial_x(theta)
    if tuple(x_one.shape) != (1, *x.shape[1:]):
        refuse(problem, f"subset([0]).initial_x(theta) has shape {tuple(x_one.shape)}, not "
                        f"{(1, *x.shape[1:])} (initial_x(theta)[[0]], x stacked by sample)")
    return view, x_one

def _spot_check_second_derivatives(problem, x, theta):
    """Warn if an autograd default second derivative misses what differences see.

    An objective autograd can differentiate only once in part (a custom
    torch.autograd.Function with first derivatives only, beside autograd
    terms) gives a Hessian or a mixed derivative without that part, silently.
    A central difference of lower_grad at the initial point, along a fixed
    direction (checked against one at a quarter of the step, so truncation
    cannot raise a false alarm), compared with a tolerance far above its
    rounding (10%), catches that for four gradients per hook;
    :func:`bilevel.testing.check_problem` checks thoroughly.  Hooks the
    problem overrides are not checked.
    """
    if type(problem).lower_hvp is _default('lower_hvp'):
        v = _fixed_unit(x)
        fd, noise = _difference(lambda t: problem.lower_grad(x + t * v, theta), x)
        if fd is not None:
            _warn_if_apart(problem, "lower_hvp", "the Hessian of h",
                                problem.lower_hvp(x, theta, v), fd, noise)
    if type(problem).mixed_vjp is _default('mixed_vjp'):
        u = _fixed_unit(theta)
        fd, noise = _difference(lambda t: problem.lower_grad(x, theta + t * u), theta)
        size = 0.0 if fd is None else torch.linalg.vector_norm(fd)
        if float(size) > noise:
            # <B^T w, u> = <w, B u> with w along the difference: ||B u|| if B is right.
            along = torch.sum(problem.mixed_vjp(x, theta, fd / size) * u)
            _warn_if_apart(problem, "mixed_vjp", "the mixed derivative B", along, size, noise)

def _warn_if_apart(problem, hook, what, exact, fd, noise):
    gap = float(torch.linalg.vector_norm(exact - fd))
    scale = max(float(torch.linalg.vector_norm(fd)), float(torch.linalg.vector_norm(exact)))
    if math.isfinite(gap) and gap > 0.1 * scale + noise:
        warnings.warn(
            f"{problem.name}: {what} by autograd (the default {hook}) differs from finite "
            f"differences of lower_grad by {gap / scale:.0%} at the initial point: is "
            "lower_objective twice differentiable by autograd (a custom "
            "torch.autograd.Function with first derivatives only)?  Override lower_hvp and "
            "mixed_vjp, and run bilevel.testing.check_problem", DerivativeWarning,
            stacklevel=5)


def upper_depends_on_theta(problem) -> bool:
    """Whether g reads theta directly (autograd tells, once)."""
    if not hasattr(problem, "_upper_reads_theta"):
        theta = problem.initial_theta().detach().requires_grad_(True)
        x = problem.initial_x(theta.detach())
        with torch.enable_grad():
            value = problem.upper_objective(x, theta)
            gt = (torch.autograd.grad(value, theta, allow_unused=True)[0]
                  if value.requires_grad else None)
        problem._upper_reads_theta = gt is not None
    return problem._upper_reads_theta
