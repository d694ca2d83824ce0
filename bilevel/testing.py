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

import torch

from .hypergradient import hypergradient


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


def _rel(a, b):
    return abs(a - b) / max(abs(a), abs(b), 1e-30)


def check_problem(problem, *, seed=0, theta=None, fd_step=1e-5, rtol=1e-5, probes=3,
                  solve_tol=1e-9, raise_on_fail=False) -> CheckReport:
    """Check a problem's derivatives and certificates numerically (float64).

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
    theta = problem.check_theta(theta).detach()
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
    h = problem.lower_objective
    t = fd_step

    worst = 0.0
    for _ in range(probes):
        d = _rand(x, gen)
        fd = (float(h(x + t * d, theta)) - float(h(x - t * d, theta))) / (2 * t)
        worst = max(worst, _rel(_dot(problem.lower_grad(x, theta), d), fd))
    record("lower_grad vs finite differences", worst <= rtol, f"max rel. error {worst:.1e}")

    worst = 0.0
    for _ in range(probes):
        d, v = _rand(x, gen), _rand(x, gen)
        fd = (_dot(problem.lower_grad(x + t * d, theta), v)
              - _dot(problem.lower_grad(x - t * d, theta), v)) / (2 * t)
        worst = max(worst, _rel(_dot(problem.lower_hvp(x, theta, d), v), fd))
    record("lower_hvp vs finite differences", worst <= rtol, f"max rel. error {worst:.1e}")

    u, v = _rand(x, gen), _rand(x, gen)
    asym = _rel(_dot(u, problem.lower_hvp(x, theta, v)), _dot(v, problem.lower_hvp(x, theta, u)))
    record("Hessian symmetry <u, Av> = <v, Au>", asym <= 1e-8, f"rel. asymmetry {asym:.1e}")

    worst = 0.0
    for _ in range(probes):
        w, e = _rand(x, gen), _rand(theta, gen)
        fd = (_dot(problem.lower_grad(x, theta + t * e), w)
              - _dot(problem.lower_grad(x, theta - t * e), w)) / (2 * t)
        worst = max(worst, _rel(_dot(problem.mixed_vjp(x, theta, w), e), fd))
    record("mixed_vjp vs finite differences", worst <= rtol, f"max rel. error {worst:.1e}")

    worst = 0.0
    g = problem.upper_objective
    for _ in range(probes):
        d, e = _rand(x, gen), _rand(theta, gen)
        _, gx, gt = problem.upper_grads(x, theta)
        fd_x = (float(g(x + t * d, theta)) - float(g(x - t * d, theta))) / (2 * t)
        fd_t = (float(g(x, theta + t * e)) - float(g(x, theta - t * e))) / (2 * t)
        err_t = abs(_dot(gt, e) - fd_t) / max(abs(fd_x), abs(fd_t), 1e-30)
        worst = max(worst, _rel(_dot(gx, d), fd_x), err_t)
    record("upper_grads vs finite differences", worst <= rtol, f"max rel. error {worst:.1e}")

    mu = problem.check_mu(theta)
    L = problem.smoothness(theta)
    curv = []
    for point in (x, x_star.x):
        for _ in range(probes):
            d = _rand(point, gen)
            curv.append(_dot(problem.lower_hvp(point, theta, d), d))
    lo, hi = min(curv), max(curv)
    record("strong convexity <d, Ad> >= mu", lo >= mu * (1 - 1e-8),
           f"min curvature {lo:.4g} vs mu {mu:.4g}")
    if L is not None:
        record("smoothness <d, Ad> <= L", hi <= float(L) * (1 + 1e-8),
               f"max curvature {hi:.4g} vs L {float(L):.4g}")

    # The local rates must hold on the certified ball around x: sample inside it.
    x_radius = float(problem.global_norm(problem.lower_grad(x, theta))) / mu
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
        record(label, max(rates) <= bound * (1 + 1e-8),
               f"max rate {max(rates):.3g} vs bound {bound:.3g}")

    ref_err = x_star.error_bound
    ok, detail = True, []
    for tol in (1e-1, 1e-3):
        sol = problem.solve_lower(theta, tol)
        true = float(torch.linalg.vector_norm(sol.x - x_star.x))
        # ||x - x*|| <= ||x - x_ref|| + ||x_ref - x*||: allow the reference's own bound.
        ok &= sol.converged and sol.error_bound + ref_err >= true
        detail.append(f"tol {tol:g}: bound {sol.error_bound:.2e} >= error {true:.2e}")
    record("lower certificate >= true error", ok, "; ".join(detail))

    hg = hypergradient(problem, theta, solve_tol, solve_tol, lower_max_iter=100_000,
                       cg_max_iter=100_000)
    worst, fd_step_F = 0.0, max(t, 1e-4)
    x_warm = hg.lower.x
    for _ in range(probes):
        e = _rand(theta, gen)
        values = []
        for s in (1, -1):
            th = theta + s * fd_step_F * e
            sol = problem.solve_lower(th, solve_tol, x0=x_warm, max_iter=100_000)
            values.append(float(problem.upper_objective(sol.x, th)))
        fd = (values[0] - values[1]) / (2 * fd_step_F)
        worst = max(worst, abs(_dot(hg.grad, e) - fd) / max(float(hg.grad.norm()), 1e-30))
    record("hypergradient vs finite differences of F", worst <= 1e-4,
           f"max error {worst:.1e} relative to ||grad F||")

    loose = hypergradient(problem, theta, 1e-2, 1e-2, x0=None)
    true = float(torch.linalg.vector_norm(loose.grad - hg.grad)) - hg.error_bound
    kind = "certified" if loose.certified else "estimated"
    record("hypergradient bound >= true error", loose.error_bound >= true,
           f"omega {loose.error_bound:.2e} ({kind}) >= error {max(true, 0):.2e} at eps=delta=1e-2")

    report = CheckReport(problem.name, tuple(checks))
    if raise_on_fail and not report:
        raise AssertionError(str(report))
    return report
