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

import torch

from . import contract
from .constants import BoundConstants, estimate_bound_constants
from .contract import DerivativeWarning, refuse  # noqa: F401 - DerivativeWarning: public here too
from .distributed import ONE_PROCESS, Reduction

#: Why a problem without :meth:`BilevelProblem.subset` cannot be minibatched.
NOT_SAMPLE_SEPARABLE = (
    "not sample-separable: a minibatch method needs h and g to be sums / means over "
    "samples and the problem to say how to build itself on a batch (n_samples and "
    "subset(indices), docs/adding_a_problem.md)")


class BilevelProblem(abc.ABC):
    """Base class of every bilevel problem.

    Required: :meth:`lower_objective`, :meth:`upper_objective`,
    :meth:`strong_convexity`, :meth:`initial_theta`, :meth:`initial_x`.
    Recommended: :meth:`smoothness` (an upper bound on L) and
    :meth:`bound_constants` (certified constants of the hypergradient bound).
    Optional: :attr:`n_samples` and :meth:`subset`, for minibatch methods on
    problems that are sums over samples.

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
    sensitivity_by_solves : bool
        True to bound ||A^{-1} B|| by dim(theta) extra CG solves at every hypergradient
        (:mod:`bilevel.sensitivity`) instead of ||B|| / mu, where theta is short and mu far
        below the curvature along B's columns (a reconstruction's gamma): a sharper
        omega for dearer hypergradients (``reconstruction[sensitivity_by_solves=True]``).
    newton_certificate : bool
        True to certify the lower level by one Newton step (:mod:`bilevel.newton_certificate`:
        ||A^{-1} grad_x h|| plus a term quadratic in the error) instead of ||grad_x h|| / mu,
        after the solver stopped on ||grad_x h|| / mu <= eps as usual (the sharper bound is
        reported, not spent).  Needs :meth:`hessian_lipschitz_along`.
    """

    name: str = "custom"
    upper_convex_in_x: bool = False
    sensitivity_by_solves: bool = False
    newton_certificate: bool = False

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
                contract.validate(self)

        cls.__init__ = checked_init

    def __init__(self):
        if type(self).__init__ is BilevelProblem.__init__:
            contract.validate(self)

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
                refuse(self, "lower_objective(x, theta) does not depend on x (no autograd "
                            "graph): h must be strongly convex in x")
            (grad,) = torch.autograd.grad(value, x)
        return grad

    def _lower_grad_graph(self, x, theta):
        """grad_x h with its graph (create_graph), for the second-derivative defaults."""
        value = self.lower_objective(x, theta)
        if not value.requires_grad:
            refuse(self, "lower_objective(x, theta) does not depend on x (no autograd graph): "
                        "h must be strongly convex in x")
        (grad,) = torch.autograd.grad(value, x, create_graph=True)
        if not grad.requires_grad:
            refuse(self, "the autograd default of lower_hvp / mixed_vjp needs lower_objective "
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
            refuse(self, "the autograd default of lower_hvp found grad_x h independent of x "
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

    def solve_lower(self, theta, tol, x0=None, max_iter=10_000, **options):
        """Solve the lower level to certified accuracy ``tol``; a LowerSolution.

        The default is strongly convex FISTA (:func:`bilevel.lower.fista`);
        ``options`` reach it (``smoothness``: a previous solution's estimate of L).
        An override may ignore ``options`` but must accept them.
        """
        from .lower import fista

        return fista(self, theta, tol, x0=x0, max_iter=max_iter, **options)

    # ------------------------------------------------------------ data parallel
    #: Sums, maxima and norms over the processes sharing the samples
    #: (:class:`bilevel.distributed.Reduction`); one process unless
    #: :func:`bilevel.distributed.data_parallel` joined this problem to a group.
    parallel: Reduction = ONE_PROCESS

    # ---------------------------------------------------------- sample-separable
    # Optional: what a minibatch method (``method="maid_sgd"``) needs.  A problem is
    # sample-separable when h = sum_i h_i(x_i, theta) and g = mean_i g_i(x_i, theta)
    # over samples i, each x_i its own block of x.
    @property
    def n_samples(self) -> int:
        """The number of samples held here (on a data-parallel rank: this rank's).

        Sample-separable problems only; the default refuses (:meth:`subset`).
        """
        refuse(self, NOT_SAMPLE_SEPARABLE, NotImplementedError)

    def subset(self, indices, total: int | None = None) -> BilevelProblem:
        """This problem on the samples ``indices`` (of the ``n_samples`` held here).

        The view has the same theta, h = the sum of h_i over the batch, and
        g = (1/``total``) sum of g_i over the batch (``total`` defaults to
        ``len(indices)``: g is the batch's mean; a data-parallel run passes the
        global batch size).  x is stacked by sample along dim 0: the view's
        ``initial_x(theta)`` is ``initial_x(theta)[indices]``, and its lower-level
        solution is the batch's blocks of the full one.  Its mu, L and bound
        constants are those of the batch problem.  Building it must be cheap (no
        reloading): it is built for every batch.  The default refuses:
        ``NotImplementedError`` "not sample-separable".
        """
        refuse(self, NOT_SAMPLE_SEPARABLE, NotImplementedError)

    # ---------------------------------------------------------------- helpers
    @property
    def dtype(self):
        return self.initial_theta().dtype

    @property
    def device(self):
        return self.initial_theta().device

    def __repr__(self):
        return f"<{type(self).__name__} '{self.name}'>"
