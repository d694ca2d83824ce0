"""The contract of a bilevel problem, with autograd defaults for every derivative.

A problem is

    minimise over theta   F(theta) = g(x*(theta), theta)
    where                 x*(theta) = argmin_x h(x, theta),

with ``h(., theta)`` mu(theta)-strongly convex.  A subclass writes ``h``
(:meth:`BilevelProblem.lower_objective`), ``g`` (:meth:`upper_objective`), a
certified lower bound on mu (:meth:`strong_convexity`) and the starting points;
every derivative the solvers need has an autograd default here, and a subclass
overrides only what it has in closed form.
"""
from __future__ import annotations

import abc
import functools
import math
import warnings

import torch

from .constants import BoundConstants, estimate_bound_constants


def _fail(problem, what, exc=ValueError):
    raise exc(f"{problem.name}: {what}")


class DerivativeWarning(UserWarning):
    """An autograd default derivative disagrees with finite differences of the gradient."""


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


class BilevelProblem(abc.ABC):
    """Base class of every bilevel problem.

    Required: :meth:`lower_objective`, :meth:`upper_objective`,
    :meth:`strong_convexity`, :meth:`initial_theta`, :meth:`initial_x`.
    Recommended: :meth:`smoothness` (an upper bound on L) and
    :meth:`bound_constants` (certified constants of the hypergradient bound).

    The contract is checked when the instance is built (:meth:`validate`): a
    missing method, a NaN, a non-positive mu or an inconsistent shape is a
    ``TypeError`` / ``ValueError`` naming the problem and the piece at fault.

    Attributes
    ----------
    name : str
        Used in messages and run folders.
    upper_convex_in_x : bool
        True when ``g(., theta)`` is convex; the lower bound on the upper loss
        then drops its ``eps**2`` term (docs/certificates.md, section 5).
    """

    name: str = "custom"
    upper_convex_in_x: bool = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return

        @functools.wraps(init)
        def checked_init(self, *args, **kw):
            init(self, *args, **kw)
            # Validate once, after the outermost __init__ of the hierarchy.
            if type(self).__init__ is checked_init:
                self.validate()

        cls.__init__ = checked_init

    def __init__(self):
        if type(self).__init__ is BilevelProblem.__init__:
            self.validate()

    # ------------------------------------------------------------------ required
    @abc.abstractmethod
    def lower_objective(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """h(x, theta), a scalar; strongly convex and smooth in x."""

    @abc.abstractmethod
    def upper_objective(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """g(x, theta), a scalar; differentiable."""

    @abc.abstractmethod
    def strong_convexity(self, theta: torch.Tensor) -> float:
        """A certified lower bound on the strong convexity constant mu(theta) of h."""

    @abc.abstractmethod
    def initial_theta(self) -> torch.Tensor:
        """The starting hyperparameters, a flat 1-D tensor."""

    @abc.abstractmethod
    def initial_x(self, theta: torch.Tensor) -> torch.Tensor:
        """A starting point of the lower-level solver; fixes the shape of x."""

    # --------------------------------------------------------------- recommended
    def smoothness(self, theta: torch.Tensor) -> float | None:
        """An upper bound on the Lipschitz constant L(theta) of grad_x h, or None.

        With None the lower-level solver estimates L (power iteration plus a
        descent-lemma safeguard) and counts that work as cost.  L only sets the
        solver's speed: the lower-level certificate uses mu alone.
        """
        return None

    def bound_constants(self, theta: torch.Tensor, x: torch.Tensor) -> BoundConstants:
        """Constants of the hypergradient error bound (docs/certificates.md, section 2).

        The default estimates them numerically near ``x`` and marks them as
        estimates (``certified=False``), in the problem's dtype.  An estimate costs
        tens of oracle calls, so it is cached on the problem and reused while
        ``||theta - theta_e||_inf <= 0.1`` and ``||x - x_e|| <= 0.1 max(||x_e||, ||x||)``
        around the point (theta_e, x_e) where it was made; a reused result has
        ``cost=0`` (:func:`~bilevel.estimate_bound_constants`).  Override with
        closed forms.
        """
        return estimate_bound_constants(self, theta, x)

    def hessian_lipschitz_along(self, theta: torch.Tensor, x: torch.Tensor, q: torch.Tensor,
                                radius: float, x_radius: float = math.inf) -> float | None:
        """A bound M on how fast the Hessian applied to the adjoint moves with x, or None.

        M must satisfy ||(A(x') - A(x)) q'|| <= M ||x' - x|| for every x' with
        ||x' - x|| <= ``x_radius`` (the certified ||grad_x h(x)|| / mu) and every q'
        with ||q' - q|| <= radius (q is the CG solution, radius its certified
        distance to the exact adjoint).  The hypergradient bound then takes the
        smaller of L_Ainv ||grad_x g|| ||B|| and K M for its Hessian term
        (:mod:`bilevel.constants`).  Worth overriding when the Hessian varies
        pointwise, as in fields of experts or TV: M then reads the largest response
        of q instead of its norm, and local derivatives on the ball instead of
        global ones.  Default None: the bound uses L_Ainv alone.
        """
        return None

    def mixed_lipschitz_along(self, theta: torch.Tensor, x: torch.Tensor, q: torch.Tensor,
                              radius: float, x_radius: float = math.inf) -> float | None:
        """A bound N on how fast B^T q moves with x, or None.

        N must satisfy ||(B(x') - B(x))^T q'|| <= N ||x' - x|| for every x' with
        ||x' - x|| <= ``x_radius`` and every q' with ||q' - q|| <= radius (radius
        covers the exact adjoint q* at x*).  It replaces L_B ||q*|| in the bound.
        Default None: L_B times a bound on ||q*||.
        """
        return None

    def lower_preconditioner(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor | None:
        """A positive diagonal shaped like x that approximates the Hessian's diagonal, or None.

        Used by the adjoint CG and by :func:`bilevel.lower.newton_cg`; it changes
        their speed, never a certificate (the residuals stay Euclidean).  Worth
        giving where the curvature differs by orders of magnitude between
        coordinates (e.g. ridges of different weights).  Default None.
        """
        return None

    # ------------------------------------------------- derivatives (autograd)
    # The second-derivative defaults differentiate lower_objective twice.  An
    # objective that autograd can differentiate only once (a custom
    # torch.autograd.Function with first derivatives only, numpy inside) has no
    # graph behind its gradient: that is refused by name below rather than read as
    # zero curvature; a problem with such an objective overrides lower_hvp and
    # mixed_vjp (check_problem flags the silent case, a partly missing graph).
    def lower_grad(self, x, theta):
        """grad_x h(x, theta)."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            value = self.lower_objective(x, theta.detach())
            if not value.requires_grad:
                _fail(self, "lower_objective(x, theta) does not depend on x (no autograd "
                            "graph): h must be strongly convex in x")
            (grad,) = torch.autograd.grad(value, x)
        return grad

    def _lower_grad_graph(self, x, theta):
        """grad_x h with its graph (create_graph), for the second-derivative defaults."""
        value = self.lower_objective(x, theta)
        if not value.requires_grad:
            _fail(self, "lower_objective(x, theta) does not depend on x (no autograd graph): "
                        "h must be strongly convex in x")
        (grad,) = torch.autograd.grad(value, x, create_graph=True)
        if not grad.requires_grad:
            _fail(self, "the autograd default of lower_hvp / mixed_vjp needs lower_objective "
                        "twice differentiable, but its gradient has no autograd graph (a "
                        "custom torch.autograd.Function with first derivatives only?); "
                        "override lower_hvp and mixed_vjp", TypeError)
        return grad

    def lower_hvp(self, x, theta, v):
        """Hessian_xx h(x, theta) applied to v (same shape as x)."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            grad = self._lower_grad_graph(x, theta.detach())
            (hv,) = torch.autograd.grad(grad, x, grad_outputs=v, allow_unused=True)
        if hv is None:
            _fail(self, "the autograd default of lower_hvp found grad_x h independent of x "
                        "(h is not strongly convex, or its second derivative is missing); "
                        "override lower_hvp", TypeError)
        return hv

    def mixed_vjp(self, x, theta, w):
        """B^T w with B = d/dtheta grad_x h(x, theta); theta-shaped (zero if theta is unused)."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            theta = theta.detach().requires_grad_(True)
            grad = self._lower_grad_graph(x, theta)
            (bw,) = torch.autograd.grad(grad, theta, grad_outputs=w, allow_unused=True)
        return torch.zeros_like(theta) if bw is None else bw

    def upper_grads(self, x, theta):
        """(g, grad_x g, grad_theta g) at (x, theta); g as a 0-d tensor.

        A g that reads neither x nor theta (a constant) has zero gradients.
        """
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            theta = theta.detach().requires_grad_(True)
            value = self.upper_objective(x, theta)
            if isinstance(value, torch.Tensor) and value.requires_grad:
                gx, gt = torch.autograd.grad(value, (x, theta), allow_unused=True)
            else:
                gx = gt = None
        value = torch.as_tensor(value, dtype=x.dtype, device=x.device)
        gx = torch.zeros_like(x) if gx is None else gx
        gt = torch.zeros_like(theta) if gt is None else gt
        return value.detach(), gx, gt

    def upper_depends_on_theta(self) -> bool:
        """Whether g reads theta directly (autograd tells, once)."""
        if not hasattr(self, "_upper_reads_theta"):
            theta = self.initial_theta().detach().requires_grad_(True)
            x = self.initial_x(theta.detach())
            with torch.enable_grad():
                value = self.upper_objective(x, theta)
                gt = (torch.autograd.grad(value, theta, allow_unused=True)[0]
                      if value.requires_grad else None)
            self._upper_reads_theta = gt is not None
        return self._upper_reads_theta

    def solve_lower(self, theta, tol, x0=None, max_iter=10_000):
        """Solve the lower level to certified accuracy ``tol``; a LowerSolution.

        The default is strongly convex FISTA (:func:`bilevel.lower.fista`).
        """
        from .lower import fista

        return fista(self, theta, tol, x0=x0, max_iter=max_iter)

    # ------------------------------------------------------------ data parallel
    #: Set by :func:`bilevel.distributed.data_parallel` on a problem that holds one
    #: rank's shard of the samples; None in one process.
    process_group = None

    def reduce_sum(self, value: torch.Tensor) -> torch.Tensor:
        """Sum ``value`` over data-parallel ranks; the identity in one process.

        The solvers pass every inner product, objective value and theta-shaped
        contribution through it, so ranks holding shards of the samples take the
        same decisions as one process holding all of them.  A problem that
        supports sharding computes its bound constants through it too.
        """
        if self.process_group is None:
            return value
        from .distributed import all_reduce

        return all_reduce(value, "sum", self.process_group)

    def reduce_max(self, value: torch.Tensor) -> torch.Tensor:
        """Maximum of ``value`` over data-parallel ranks; the identity in one process."""
        if self.process_group is None:
            return value
        from .distributed import all_reduce

        return all_reduce(value, "max", self.process_group)

    def global_norm(self, t: torch.Tensor) -> float:
        """||t|| over all ranks."""
        return math.sqrt(float(self.reduce_sum(torch.sum(t * t))))

    # ----------------------------------------------------------- contract checks
    def check_theta(self, theta) -> torch.Tensor:
        """Return theta if it is a finite flat 1-D floating tensor shaped like
        ``initial_theta()``, else raise (a wrong length would otherwise surface as a
        size mismatch deep inside torch)."""
        if not isinstance(theta, torch.Tensor):
            _fail(self, f"theta must be a torch.Tensor, got {type(theta).__name__}", TypeError)
        if theta.ndim != 1:
            _fail(self, f"theta must be a flat 1-D tensor, got shape {tuple(theta.shape)}")
        expected = self._theta_shape()
        if expected is not None and tuple(theta.shape) != expected:
            _fail(self, f"theta has shape {tuple(theta.shape)}, expected {expected} "
                        "(the shape of initial_theta())")
        if not theta.is_floating_point():
            _fail(self, f"theta must be floating point, got {theta.dtype}", TypeError)
        if not torch.isfinite(theta).all():
            _fail(self, "theta contains NaN or Inf")
        return theta

    def _theta_shape(self):
        """The shape of ``initial_theta()``, read once; None while it cannot be read yet."""
        if not hasattr(self, "_theta_shape_cache"):
            try:
                initial = self.initial_theta()
            except Exception:  # noqa: BLE001 - validate() names a broken initial_theta
                return None
            if not isinstance(initial, torch.Tensor):
                return None
            self._theta_shape_cache = tuple(initial.shape)
        return self._theta_shape_cache

    def check_x(self, x, theta, what="x") -> torch.Tensor:
        """Return x if it has the shape of ``initial_x(theta)`` and is finite."""
        if not isinstance(x, torch.Tensor):
            _fail(self, f"{what} must be a torch.Tensor, got {type(x).__name__}", TypeError)
        shape = self._x_shape(theta)
        if tuple(x.shape) != shape:
            _fail(self, f"{what} has shape {tuple(x.shape)} but initial_x gives {shape}")
        if not torch.isfinite(x).all():
            _fail(self, f"{what} contains NaN or Inf")
        return x

    def check_mu(self, theta) -> float:
        """mu(theta) as a float, after checking it is finite and positive."""
        mu = float(self.strong_convexity(theta))
        if not math.isfinite(mu) or mu <= 0:
            _fail(self, f"strong_convexity(theta) must be a finite number > 0, got {mu}")
        return mu

    def _x_shape(self, theta):
        if not hasattr(self, "_x_shape_cache"):
            self._x_shape_cache = tuple(self.initial_x(theta).shape)
        return self._x_shape_cache

    def validate(self) -> None:
        """Check the contract once on the initial point; raise naming what is wrong."""
        theta = self.check_theta(self.initial_theta())
        x = self.initial_x(theta)
        if not isinstance(x, torch.Tensor):
            _fail(self, f"initial_x must return a torch.Tensor, got {type(x).__name__}",
                  TypeError)
        if x.dtype != theta.dtype or x.device != theta.device:
            _fail(self, f"initial_x gives {x.dtype} on {x.device} but initial_theta gives "
                        f"{theta.dtype} on {theta.device}")
        self.check_x(x, theta, "initial_x(theta)")
        for label, fn in (("lower_objective", self.lower_objective),
                          ("upper_objective", self.upper_objective)):
            value = fn(x, theta)
            if not isinstance(value, torch.Tensor) or value.numel() != 1:
                _fail(self, f"{label}(x, theta) must return a scalar tensor")
            if not torch.isfinite(value).all():
                _fail(self, f"{label}(x, theta) is not finite at the initial point "
                            "(NaN in the data?)")
        mu = self.check_mu(theta)
        L = self.smoothness(theta)
        if L is not None and not (math.isfinite(float(L)) and float(L) >= mu):
            _fail(self, f"smoothness(theta) = {L} must be finite and >= mu = {mu}")
        grad = self.lower_grad(x, theta)
        if tuple(grad.shape) != tuple(x.shape):
            _fail(self, f"lower_grad returns shape {tuple(grad.shape)}, x has {tuple(x.shape)}")
        bw = self.mixed_vjp(x, theta, grad)
        if tuple(bw.shape) != tuple(theta.shape):
            _fail(self, f"mixed_vjp returns shape {tuple(bw.shape)}, theta has "
                        f"{tuple(theta.shape)}")
        self._spot_check_second_derivatives(x, theta)

    def _spot_check_second_derivatives(self, x, theta):
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
        if type(self).lower_hvp is BilevelProblem.lower_hvp:
            v = _fixed_unit(x)
            fd, noise = _difference(lambda t: self.lower_grad(x + t * v, theta), x)
            if fd is not None:
                self._warn_if_apart("lower_hvp", "the Hessian of h",
                                    self.lower_hvp(x, theta, v), fd, noise)
        if type(self).mixed_vjp is BilevelProblem.mixed_vjp:
            u = _fixed_unit(theta)
            fd, noise = _difference(lambda t: self.lower_grad(x, theta + t * u), theta)
            size = 0.0 if fd is None else torch.linalg.vector_norm(fd)
            if float(size) > noise:
                # <B^T w, u> = <w, B u> with w along the difference: ||B u|| if B is right.
                along = torch.sum(self.mixed_vjp(x, theta, fd / size) * u)
                self._warn_if_apart("mixed_vjp", "the mixed derivative B", along, size, noise)

    def _warn_if_apart(self, hook, what, exact, fd, noise):
        gap = float(torch.linalg.vector_norm(exact - fd))
        scale = max(float(torch.linalg.vector_norm(fd)), float(torch.linalg.vector_norm(exact)))
        if math.isfinite(gap) and gap > 0.1 * scale + noise:
            warnings.warn(
                f"{self.name}: {what} by autograd (the default {hook}) differs from finite "
                f"differences of lower_grad by {gap / scale:.0%} at the initial point: is "
                "lower_objective twice differentiable by autograd (a custom "
                "torch.autograd.Function with first derivatives only)?  Override lower_hvp and "
                "mixed_vjp, and run bilevel.testing.check_problem", DerivativeWarning,
                stacklevel=5)

    # ---------------------------------------------------------------- helpers
    @property
    def dtype(self):
        return self.initial_theta().dtype

    @property
    def device(self):
        return self.initial_theta().device

    def __repr__(self):
        return f"<{type(self).__name__} '{self.name}'>"
