"""Self-checks of a bilevel problem, shipped as public API (in the spirit of pylops' dottest).

``check_problem(problem)`` tells a user, before a long run, whether the
derivatives, the strong convexity constant and the certificates of a problem
are right: central finite differences in float64, Hessian symmetry, the
curvature along random directions, the lower-level certificate against a
high-accuracy solve, and the hypergradient (with its error bound) against
finite differences of F.
"""
from __future__ import annotations

import dataclasses
import math

import torch

from .constants import _upper_hvp as upper_hvp
from .contract import check_mu, check_theta
from .hypergradient import hypergradient
from .problem import BilevelProblem


@dataclasses.dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


@dataclasses.dataclass(frozen=True)
class CheckReport:
    """Results of :func:`check_problem`; ``bool(report)`` is True when all passed."""

    problem: str
    checks: tuple

    def __bool__(self):
        return all(c.passed for c in self.checks)

    @property
    def failures(self):
        return [c for c in self.checks if not c.passed]

    def __str__(self):
        lines = [f"check_problem({self.problem}): "
                 f"{sum(c.passed for c in self.checks)}/{len(self.checks)} passed"]
        lines += [f"  [{'ok' if c.passed else 'FAIL'}] {c.name}: {c.detail}" for c in self.checks]
        return "\n".join(lines)


def _rand(like, gen):
    v = torch.randn(like.shape, generator=gen, dtype=like.dtype).to(like.device)
    return v / torch.linalg.vector_norm(v)


def _dot(a, b):
    return float(torch.sum(a * b))


def _worst(a, b):
    """max(a, b) that keeps NaN: ``max(0.0, nan)`` is 0.0, which would pass a NaN."""
    if math.isnan(a) or math.isnan(b):
        return math.nan
    return max(a, b)


def _error(exact, fd, noise, rtol):
    """|exact - fd| relative to max(|exact|, |fd|), with an absolute floor.

    ``noise`` bounds the finite difference's own error (rounding of the values
    divided by the step): where the derivative is about zero a pure relative
    error compares two rounding noises, so the scale never drops below
    noise / rtol.  NaN or inf in either value gives NaN (a failure).
    """
    if not (math.isfinite(exact) and math.isfinite(fd)):
        return math.nan
    return abs(exact - fd) / max(abs(exact), abs(fd), noise / rtol, 1e-300)


def _value_noise(*values, step):
    """Rounding error of a central difference of values (float64): 100 eps |f| / step."""
    return 100 * _EPS * max(abs(v) for v in values) / step


def _ok(worst, limit):
    """Passed: finite and within the limit (NaN compares False)."""
    return math.isfinite(worst) and worst <= limit


_EPS = torch.finfo(torch.float64).eps
_NOT_TWICE = ("{what} by autograd is zero or missing where finite differences of {first} "
              "are not: {objective} is not twice differentiable by autograd (a custom "
              "torch.autograd.Function with first derivatives only?); override {hooks}")
_PART_MISSING = ("is {objective} twice differentiable by autograd? (a term computed by a "
                 "custom torch.autograd.Function with first derivatives only is missing from "
                 "{what}); if not, override {hooks}")


def _run_check(record, name, run):
    """Record ``run()``'s (passed, detail); an exception is a failure naming it.

    ``run`` returns (passed, detail), a list of (name, passed, detail), or None
    when it recorded its own checks.
    """
    try:
        result = run()
    except Exception as exc:  # noqa: BLE001 - any error of the problem's code is a finding
        result = False, f"raised {type(exc).__name__}: {exc}"
    if isinstance(result, list):
        for check in result:
            record(*check)
    elif result is not None:
        record(name, *result)


def _compare(pairs, rtol, hint=None):
    """(passed, detail) of (exact, fd, noise) triples.

    ``hint`` (a dict of the :data:`_NOT_TWICE` fields) is given for a second
    derivative taken by autograd: a failure where its values are all zero while
    the finite differences are not is the signature of an objective autograd
    differentiates only once; any other failure may be such a term missing.
    """
    worst = 0.0
    for exact, fd, noise in pairs:
        worst = _worst(worst, _error(exact, fd, noise, rtol))
    passed = _ok(worst, rtol)
    detail = f"max rel. error {worst:.1e}"
    if math.isnan(worst):
        detail = "NaN or inf in the derivative or its finite differences"
    dead = all(e == 0.0 or not math.isfinite(e) for e, _, _ in pairs)
    if not passed and hint and not math.isnan(worst):
        if dead and any(abs(f) > n / rtol for _, f, n in pairs):
            detail += "; " + _NOT_TWICE.format(**hint)
        else:
            detail += "; " + _PART_MISSING.format(**hint)
    return passed, detail


def check_problem(problem, *, seed=0, theta=None, fd_step=1e-5, rtol=1e-5, probes=3,
                  solve_tol=1e-9, raise_on_fail=False) -> CheckReport:
    """Check a problem's derivatives and certificates numerically (float64).

    Every comparison uses a mixed criterion: relative to the size of the
    derivative, but never finer than the finite differences' own rounding (so a
    derivative that is about zero is not a false failure), and a NaN or inf
    anywhere is a failure.  A check whose code raises fails with the exception
    named; a second derivative that autograd gives as zero (or cannot give)
    while finite differences of the first derivative are not is named as such.

    Parameters
    ----------
    problem : BilevelProblem
    seed : int
        Seed of the random directions.
    theta : torch.Tensor, optional
        Where to check (``initial_theta()`` by default).
    fd_step : float
        Central finite-difference step.
    rtol : float
        Relative tolerance of the derivative checks.
    probes : int
        Random directions per check.
    solve_tol : float
        Accuracy of the reference lower-level solves.
    raise_on_fail : bool
        Raise ``AssertionError`` with the report if any check fails.

    Returns
    -------
    CheckReport
    """
    theta = problem.initial_theta() if theta is None else theta
    theta = check_theta(problem, theta).detach()
    if theta.dtype != torch.float64:
        raise ValueError(f"{problem.name}: check_problem needs float64 (finite differences "
                         f"are meaningless in {theta.dtype}); build the problem with "
                         "dtype=torch.float64")
    gen = torch.Generator().manual_seed(seed)
    checks = []

    def record(name, passed, detail):
        checks.append(Check(name, bool(passed), detail))

    # A point that is not the minimiser, so every derivative is exercised.
    x_star = problem.solve_lower(theta, solve_tol, max_iter=100_000)
    x = x_star.x + 0.1 * _rand(x_star.x, gen) * (1 + float(x_star.x.norm()))
    args = (problem, x, theta, gen, fd_step, rtol, probes)
    _run_check(record, "lower_grad vs finite differences", lambda: _lower_grad(*args))
    _run_check(record, "lower_hvp vs finite differences", lambda: _lower_hvp(*args))
    _run_check(record, "Hessian symmetry <u, Av> = <v, Au>",
                      lambda: _symmetry(problem, x, theta, gen))
    _run_check(record, "mixed_vjp vs finite differences", lambda: _mixed_vjp(*args))
    _run_check(record, "upper_grads vs finite differences", lambda: _upper_grads(*args))
    if not _overrides(problem, "bound_constants"):
        # The estimated constants read Hessian-vector products of g, which no hook gives.
        _run_check(record, "upper Hessian (estimated L_g) vs finite differences",
                          lambda: _upper_hessian(*args))

    mu = check_mu(problem, theta)
    _run_check(record, "strong convexity <d, Ad> >= mu",
               lambda: _curvature(problem, (x, x_star.x), theta, gen, probes, mu))
    _run_check(record, "local rates", lambda: _local_rates(problem, x, theta, gen, mu, record))
    _run_check(record, "lower certificate >= true error",
               lambda: _lower_certificate(problem, theta, x_star))
    state = {}

    def accurate():
        state["hg"] = hypergradient(problem, theta, solve_tol, solve_tol,
                                    lower_max_iter=100_000, cg_max_iter=100_000)
        return _hypergradient_vs_fd(problem, theta, state["hg"], gen, fd_step, probes,
                                    solve_tol)

    _run_check(record, "hypergradient vs finite differences of F", accurate)
    if "hg" in state:
        _run_check(record, "hypergradient bound >= true error",
                   lambda: _hypergradient_bound(problem, theta, state["hg"]))

    report = CheckReport(problem.name, tuple(checks))
    if raise_on_fail and not report:
        raise AssertionError(str(report))
    return report


def _overrides(problem, method):
    return getattr(type(problem), method) is not getattr(BilevelProblem, method)


def _lower_grad(problem, x, theta, gen, t, rtol, probes):
    h = problem.lower_objective
    pairs = []
    for _ in range(probes):
        d = _rand(x, gen)
        hp, hm = float(h(x + t * d, theta)), float(h(x - t * d, theta))
        pairs.append((_dot(problem.lower_grad(x, theta), d), (hp - hm) / (2 * t),
                      _value_noise(hp, hm, step=t)))
    return _compare(pairs, rtol)


def _gradient_difference(grad, point, direction, v, t):
    """(<grad(p + t d) - grad(p - t d), v> / 2t, its rounding noise)."""
    gp, gm = grad(point + t * direction), grad(point - t * direction)
    norms = float(torch.linalg.vector_norm(gp)), float(torch.linalg.vector_norm(gm))
    return (_dot(gp, v) - _dot(gm, v)) / (2 * t), _value_noise(*norms, step=t)


def _lower_hvp(problem, x, theta, gen, t, rtol, probes):
    pairs = []
    for _ in range(probes):
        d, v = _rand(x, gen), _rand(x, gen)
        fd, noise = _gradient_difference(lambda p: problem.lower_grad(p, theta), x, d, v, t)
        pairs.append((_dot(problem.lower_hvp(x, theta, d), v), fd, noise))
    hint = None
    if not _overrides(problem, "lower_hvp"):
        hint = dict(what="the Hessian of h", first="lower_grad", objective="lower_objective",
                    hooks="lower_hvp and mixed_vjp")
    return _compare(pairs, rtol, hint)


def _symmetry(problem, x, theta, gen):
    u, v = _rand(x, gen), _rand(x, gen)
    asym = _error(_dot(u, problem.lower_hvp(x, theta, v)), _dot(v, problem.lower_hvp(x, theta, u)),
                  0.0, 1.0)
    if math.isnan(asym):
        return False, "NaN or inf in lower_hvp"
    return asym <= 1e-8, f"rel. asymmetry {asym:.1e}"


def _mixed_vjp(problem, x, theta, gen, t, rtol, probes):
    pairs = []
    for _ in range(probes):
        w, e = _rand(x, gen), _rand(theta, gen)
        fd, noise = _gradient_difference(lambda th: problem.lower_grad(x, th), theta, e, w, t)
        pairs.append((_dot(problem.mixed_vjp(x, theta, w), e), fd, noise))
    hint = None
    if not _overrides(problem, "mixed_vjp"):
        hint = dict(what="the mixed derivative B", first="lower_grad in theta",
                    objective="lower_objective", hooks="lower_hvp and mixed_vjp")
    return _compare(pairs, rtol, hint)


def _upper_grads(problem, x, theta, gen, t, rtol, probes):
    g = problem.upper_objective
    pairs = []
    for _ in range(probes):
        d, e = _rand(x, gen), _rand(theta, gen)
        _, gx, gt = problem.upper_grads(x, theta)
        gxp, gxm = float(g(x + t * d, theta)), float(g(x - t * d, theta))
        gtp, gtm = float(g(x, theta + t * e)), float(g(x, theta - t * e))
        fd_x, fd_t = (gxp - gxm) / (2 * t), (gtp - gtm) / (2 * t)
        pairs.append((_dot(gx, d), fd_x, _value_noise(gxp, gxm, step=t)))
        # grad_theta g is often zero: measured on the scale of the x-derivative too.
        noise_t = max(_value_noise(gtp, gtm, step=t), rtol * abs(fd_x))
        pairs.append((_dot(gt, e), fd_t, noise_t))
    return _compare(pairs, rtol)


def _upper_hessian(problem, x, theta, gen, t, rtol, probes):
    """What the bound-constant estimator reads as Hessian_xx g, against differences of grad_x g."""
    pairs = []
    for _ in range(probes):
        d, v = _rand(x, gen), _rand(x, gen)
        fd, noise = _gradient_difference(lambda p: problem.upper_grads(p, theta)[1], x, d, v, t)
        pairs.append((_dot(upper_hvp(problem, x, theta, d), v), fd, noise))
    hint = dict(what="the Hessian of g", first="upper_grads", objective="upper_objective",
                hooks="upper_grads or bound_constants")
    return _compare(pairs, rtol, hint)


def _curvature(problem, points, theta, gen, probes, mu):
    """<d, A d> along random directions >= mu; a second check <= L where L is given.

    Returns a list of (name, passed, detail).
    """
    curv = []
    for point in points:
        for _ in range(probes):
            d = _rand(point, gen)
            curv.append(_dot(problem.lower_hvp(point, theta, d), d))
    if not all(math.isfinite(c) for c in curv):
        return [("strong convexity <d, Ad> >= mu", False, "NaN or inf in <d, Ad>")]
    checks = [("strong convexity <d, Ad> >= mu", min(curv) >= mu * (1 - 1e-8),
               f"min curvature {min(curv):.4g} vs mu {mu:.4g}")]
    L = problem.smoothness(theta)
    if L is not None:
        checks.append(("smoothness <d, Ad> <= L", max(curv) <= float(L) * (1 + 1e-8),
                       f"max curvature {max(curv):.4g} vs L {float(L):.4g}"))
    return checks


def _lower_certificate(problem, theta, x_star):
    ref_err = x_star.error_bound
    ok, detail = True, []
    for tol in (1e-1, 1e-3):
        sol = problem.solve_lower(theta, tol)
        true = float(torch.linalg.vector_norm(sol.x - x_star.x))
        # ||x - x*|| <= ||x - x_ref|| + ||x_ref - x*||: allow the reference's own bound.
        ok &= sol.converged and sol.error_bound + ref_err >= true
        detail.append(f"tol {tol:g}: bound {sol.error_bound:.2e} >= error {true:.2e}")
    return ok, "; ".join(detail)


def _hypergradient_bound(problem, theta, hg):
    loose = hypergradient(problem, theta, 1e-2, 1e-2, x0=None)
    true = float(torch.linalg.vector_norm(loose.grad - hg.grad)) - hg.error_bound
    kind = "certified" if loose.certified else "estimated"
    if not (math.isfinite(loose.error_bound) and math.isfinite(true)):
        return False, (f"omega {loose.error_bound:.2e} ({kind}), error {true:.2e}: an infinite "
                       "bound certifies nothing (NaN or a failed solve)")
    return (loose.error_bound >= true,
            f"omega {loose.error_bound:.2e} ({kind}) >= error {max(true, 0):.2e} "
            "at eps=delta=1e-2")


def _local_rates(problem, x, theta, gen, mu, record):
    """The problem's local rates must hold on the certified ball around x: sample inside it.

    Records one check per rate the problem gives; returns None (nothing more to record).
    """
    x_radius = float(problem.parallel.norm(problem.lower_grad(x, theta))) / mu
    q = _rand(x, gen)
    for hook, label, apply in (
            (problem.hessian_lipschitz_along, "hessian_lipschitz_along >= "
             "||(A(x+e) - A(x)) q|| / ||e||", lambda p: problem.lower_hvp(p, theta, q)),
            (problem.mixed_lipschitz_along, "mixed_lipschitz_along >= "
             "||(B(x+e) - B(x))^T q|| / ||e||", lambda p: problem.mixed_vjp(p, theta, q))):
        bound = hook(theta, x, q, 0.0, x_radius=x_radius)
        if bound is None:
            continue
        # Random directions at several scales: a lower bound on the true rate, so this
        # can only catch a bound that is too small, never prove one right.
        rates = []
        for scale in (1e-3, 1e-1, 1.0):
            e = min(scale, x_radius) * _rand(x, gen)
            rates.append(float((apply(x + e) - apply(x)).norm() / e.norm()))
        top = max(rates) if all(math.isfinite(r) for r in rates) else math.nan
        record(label, math.isfinite(top) and top <= bound * (1 + 1e-8),
               f"max rate {top:.3g} vs bound {bound:.3g}")
    return None


def _hypergradient_vs_fd(problem, theta, hg, gen, t, probes, solve_tol, rtol=1e-4):
    """(passed, detail): <z, e> against central differences of F, mixed criterion.

    Each F(theta +- s e) is g at a lower solution certified to ``err``, so it is off
    by at most ||grad_x g|| err (plus rounding), and their difference by the sum
    of the two over 2 s; z is off by omega.  So the allowed error is
    rtol ||z|| + omega + that noise: a relative error alone fails wherever
    grad F is about zero (near theta*), where it compares noise with noise.
    """
    step = max(t, 1e-4)
    x_warm = hg.lower.x
    z_norm = float(hg.grad.norm())
    worst, allowed_at_worst, ratio = 0.0, 0.0, 0.0
    for _ in range(probes):
        e = _rand(theta, gen)
        values, noise = [], 0.0
        for s in (1, -1):
            th = theta + s * step * e
            sol = problem.solve_lower(th, solve_tol, x0=x_warm, max_iter=100_000)
            value, gx, _ = problem.upper_grads(sol.x, th)
            values.append(float(value))
            noise += float(gx.norm()) * sol.error_bound + 100 * _EPS * abs(float(value))
        fd = (values[0] - values[1]) / (2 * step)
        error = abs(_dot(hg.grad, e) - fd) if math.isfinite(fd) else math.nan
        allowed = rtol * z_norm + hg.error_bound + noise / (2 * step)
        if not (math.isfinite(error) and math.isfinite(allowed)):
            return False, "NaN or inf in the hypergradient or in F"
        if error / allowed >= ratio:
            worst, allowed_at_worst, ratio = error, allowed, error / allowed
    return ratio <= 1, (f"max error {worst:.1e} vs allowed {allowed_at_worst:.1e} "
                        f"({rtol:g} ||grad F|| + omega + noise of the solves; "
                        f"||grad F|| ~ {z_norm:.1e})")
