"""Two numerical kernels used across the library: power iteration and damped Newton.

:func:`power_iteration` estimates the largest eigenvalue of a symmetric positive
semi-definite operator M (a Hessian, A^T A for a layer's norm, B^T B); its
callers differ only in the stop rule they ask for.  :func:`damped_newton`
minimises a smooth strongly convex h to a gradient-norm certificate, from
Newton directions its caller computes (a dense solve, or CG).

Both take the norm (and inner product) as arguments, so that a data-parallel
problem passes its global reductions and every rank takes the same decisions.
"""
from __future__ import annotations

import dataclasses
import math

import torch


def _norm(t: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(t))


def _dot(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.dot(a.reshape(-1), b.reshape(-1)))


def random_unit(like: torch.Tensor, generator: torch.Generator, norm=_norm) -> torch.Tensor:
    """A random unit vector shaped like ``like``, in its dtype and on its device.

    Drawn in float64 on the CPU, so that one seed gives the same direction in
    every dtype and on every device.
    """
    v = torch.randn(like.shape, generator=generator, dtype=torch.float64)
    v = v.to(device=like.device, dtype=like.dtype)
    return v / norm(v)


# ------------------------------------------------------------------ power iteration
@dataclasses.dataclass(frozen=True)
class PowerIteration:
    """What power iteration learned about lambda_max(M), M symmetric PSD.

    Attributes
    ----------
    value : float
        The largest ||M v_k|| met over the unit iterates v_k: at most lambda_max,
        and nondecreasing in k in exact arithmetic.  0 for M v_1 = 0 and NaN for
        a NaN ||M v_k|| (a broken operator shows, instead of reading as 0).
    rayleigh : float
        The largest Rayleigh quotient <M v_k, v_k> (also at most lambda_max);
        computed only with ``residual_tol``, else NaN.
    residual : float
        ||M v - rho v|| / rho at the last step (with ``residual_tol``, else NaN):
        some eigenvalue lies within it of rho, not necessarily the largest.
    iterations : int
        Applications of M.
    converged : bool
        Whether the stop rule asked for held (False with neither rule).
    """

    value: float
    rayleigh: float
    residual: float
    iterations: int
    converged: bool


def power_iteration(apply, v, max_iter, *, rtol=None, residual_tol=None, norm=_norm,
                    dot=_dot) -> PowerIteration:
    """Power iteration from the unit vector ``v`` on the symmetric PSD operator ``apply``.

    Stop rules, either or both (none: exactly ``max_iter`` steps):

    - ``rtol``: once ||M v_k|| grows by less than ``rtol`` relatively (for PSD M
      it never decreases, so this is a plateau; at once for a multiple of I);
    - ``residual_tol``: once ||M v - rho v|| <= residual_tol rho, rho the
      Rayleigh quotient (v is then nearly an eigenvector).

    ``norm`` (and ``dot``, used only with ``residual_tol``) may be global
    reductions.  A zero or NaN ||M v_k|| stops at once.
    """
    value, rayleigh, residual = 0.0, math.nan, math.nan
    if residual_tol is not None:
        rayleigh, residual = 0.0, math.inf
    for k in range(1, max_iter + 1):
        w = apply(v)
        size = norm(w)
        if residual_tol is not None:
            rho = dot(w, v)
            rayleigh = max(rayleigh, rho)
        if not size > 0.0:  # v in the null space (M = 0 but for probability zero), or NaN
            zero = size == 0.0
            return PowerIteration(size, rayleigh, 0.0 if zero else math.nan, k, zero)
        converged = rtol is not None and k > 1 and size <= value * (1 + rtol)
        value = max(value, size)
        if residual_tol is not None:
            residual = norm(w - rho * v) / max(rho, 1e-300)
            converged = converged or residual <= residual_tol
        if converged:
            return PowerIteration(value, rayleigh, residual, k, True)
        v = w / size
    return PowerIteration(value, rayleigh, residual, max_iter, False)


# ---------------------------------------------------------------------- damped Newton
#: Backtracking halves the step at most this often (t >= 2^-40 ~ 1e-12).
HALVINGS = 40
#: Armijo's sufficient-decrease constant.
ARMIJO = 1e-4


@dataclasses.dataclass(frozen=True)
class NewtonRun:
    """The end of a :func:`damped_newton` run.

    Attributes
    ----------
    x, grad : torch.Tensor
        The last iterate and grad h there.
    grad_norm : float
        ||grad|| (inf when it was not finite).
    steps : int
        Newton steps taken.
    gradients, values : int
        Gradients and objective values computed.
    direction_cost : int
        What the directions reported they cost (Hessian-vector products of CG).
    converged : bool
        Whether ``converged(x, grad_norm)`` held.
    """

    x: torch.Tensor
    grad: torch.Tensor
    grad_norm: float
    steps: int
    gradients: int
    values: int
    direction_cost: int
    converged: bool

    @property
    def evaluations(self) -> int:
        """Every oracle call: gradients, objective values and the directions' cost."""
        return self.gradients + self.values + self.direction_cost


def rounding_slack(value: float, dtype: torch.dtype) -> float:
    """How far rounding alone may move an objective value near ``value``: 64 eps max(1, |h|)."""
    return 64 * torch.finfo(dtype).eps * max(1.0, abs(value))


def damped_newton(x, gradient, objective, direction, *, converged, max_steps,
                  max_work=math.inf, norm=_norm, dot=_dot, stall=10) -> NewtonRun:
    """Minimise a smooth strongly convex h from ``x`` by damped Newton steps.

    Parameters
    ----------
    x : torch.Tensor
    gradient, objective : callable
        x -> grad h(x) (a tensor) and x -> h(x) (a float).
    direction : callable
        (x, grad, grad_norm) -> (s, cost): s ~ Hess h(x)^{-1} grad (a dense solve,
        or CG) and the oracle calls it spent.
    converged : callable
        (x, grad_norm) -> bool: the certificate that ends the run.
    max_steps : int
        Most Newton steps.
    max_work : float
        Stop once gradients plus the directions' cost reach it (the iterations
        of a first-order method, each a gradient or a Hessian-vector product).
    norm, dot
        Possibly global reductions.
    stall : int
        Stop after this many steps in a row that reduce neither ||grad|| by 10%
        nor h beyond its rounding: the dtype cannot get closer.

    Each step backtracks from the full Newton step, t = 1, 1/2, ... (at most
    :data:`HALVINGS` halvings), and keeps x - t s at the first t where h satisfies
    Armijo's test, or, where h cannot resolve the decrease (within
    :func:`rounding_slack`: near x* the decrease ~ ||grad||^2 / mu drowns in the
    rounding of h), where ||grad h|| is smaller.  With no such t the run stops:
    rounding has won.  (Accepting a full step on a smaller ||grad h|| alone, as
    one could to save a value of h, lets h rise far from x*, where it takes a
    detour of twice the steps on lipschitz_regression.)  The run also stops on
    ``converged``, at ``max_steps`` or ``max_work``, and on a non-finite
    gradient (``grad_norm`` inf).
    """
    work = dict(gradients=1, values=0, direction_cost=0)
    grad = gradient(x)
    g_norm = norm(grad)
    steps, stalled, best = 0, 0, math.inf
    h_x = None  # h at x, once known

    def end(done, g_norm):
        return NewtonRun(x, grad, g_norm, steps, converged=done, **work)

    def grad_at(point):
        work["gradients"] += 1
        g = gradient(point)
        return g, norm(g)

    def value_at(point):
        work["values"] += 1
        return objective(point)

    while True:
        if not math.isfinite(g_norm):
            return end(False, math.inf)
        if converged(x, g_norm):
            return end(True, g_norm)
        if (steps >= max_steps or stalled >= stall
                or work["gradients"] + work["direction_cost"] >= max_work):
            return end(False, g_norm)
        s, cost = direction(x, grad, g_norm)
        work["direction_cost"] += cost
        if h_x is None:
            h_x = value_at(x)
        slope, slack, t = dot(grad, s), rounding_slack(h_x, x.dtype), 1.0
        for _ in range(HALVINGS + 1):
            trial = x - t * s
            h_trial = value_at(trial)
            g_trial = None
            if h_trial <= h_x - ARMIJO * t * slope:
                break
            if h_trial <= h_x + slack:  # h cannot tell: the gradient decides
                g_trial, n_trial = grad_at(trial)
                if n_trial < g_norm:
                    break
            t *= 0.5
        else:
            return end(False, g_norm)
        if g_trial is None:
            g_trial, n_trial = grad_at(trial)
        best = min(best, g_norm)
        stalled = 0 if h_trial < h_x - slack or n_trial < 0.9 * best else stalled + 1
        x, grad, g_norm, h_x = trial, g_trial, n_trial, h_trial
        steps += 1
