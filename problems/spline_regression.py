r"""Learning the TV(2) weight of a 1-D linear-spline fit on validation data.

The fitted function is a linear spline sigma_c (:mod:`bilevel.nn.splines`) with
coefficients c in R^N on the grid t_k = -R + k T, T = 2R / (N - 1), extended
linearly beyond [-R, R].  With S the (n x N) interpolation matrix of the
training inputs (S c = sigma_c(x)) and D the scaled second differences,
(D c)_k = (c_{k+1} - 2 c_k + c_{k-1}) / T, k = 1..N-2 (the slope changes):

    h(c, theta) = 1/2 ||S c - y||^2 + lam sum_k phi_nu((D c)_k) + rho/2 ||c||^2,
    lam = e^{theta_0},   phi_nu(t) = sqrt(t^2 + nu^2) - nu,
    g(c)        = 1/(2 n_val) ||S_val c - y_val||^2.

phi_nu is a smooth approximation of |t| with |t| - nu <= phi_nu(t) <= |t|, so
the smoothed penalty differs from lam TV(2)(sigma_c) = lam ||D c||_1 by at most
Delta = lam (N - 2) nu everywhere.  If c_0 minimises the exact objective h_0
(same h with |.| instead of phi_nu, e.g. :func:`tv2_fit` with ``ridge=rho``)
and both are mu-strongly convex, then h_0(c_nu) - h_0(c_0) <= Delta and

    ||c_nu - c_0|| <= sqrt(2 Delta / mu) = sqrt(2 lam (N - 2) nu / mu),

so the smoothed fit converges to the exact TV(2) fit as nu -> 0, at rate
sqrt(nu) at worst (tests/test_spline_problems.py checks the bound).

Certified constants (all in closed form; the few N x N eigenvalues are computed
in float64 by a symmetric eigensolver, which is backward stable, and inflated
by a relative margin of 1e-10 that covers its rounding):

- mu = rho + lambda_min(S^T S): the penalty's Hessian is positive
  semi-definite.  ``data_curvature=False`` keeps mu = rho alone.
- L = lambda_max(S^T S) + rho + lam ||D||^2 / nu, with phi_nu'' <= 1/nu and
  ||D||^2 <= 16 / T^2 (the second-difference matrix has norm < 4).
- Bound constants: see :meth:`SplineRegression.bound_constants`.

The lower level is tiny (N ~ 10-100), so it is solved by damped Newton's
method with the same certificate ||grad h|| / mu
(:class:`~bilevel_problems.dense_newton.DenseNewtonSolve`).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from bilevel import BilevelProblem, BoundConstants
from bilevel.nn.splines import interpolation_matrix, knots

from . import params
from .dense_newton import DenseNewtonSolve

#: sup_t |phi_nu'''(t)| nu^2 = 3/2 (4/5)^{5/2}, attained at t = nu / 2.
C3 = 1.5 / 1.25 ** 2.5
#: Relative margin on eigenvalues computed in float64.
MARGIN = 1e-10

TARGETS = {
    # a piecewise-linear truth with three kinks: TV(2) = 1.5 + 2.5 + 1.5 = 5.5
    "kinks": lambda x: (0.3 + 0.5 * x - 1.5 * torch.relu(x + 0.5) + 2.5 * torch.relu(x - 0.1)
                        - 1.5 * torch.relu(x - 0.6)),
    "sine": lambda x: torch.sin(3 * x),
}


def second_differences(num_knots: int, x_range: float, dtype=torch.float64) -> torch.Tensor:
    """D, (N - 2) x N, with (D c)_k = (c_{k+1} - 2 c_k + c_{k-1}) / T (the slope changes)."""
    T = 2 * x_range / (num_knots - 1)
    D = torch.zeros(num_knots - 2, num_knots, dtype=dtype)
    rows = torch.arange(num_knots - 2)
    D[rows, rows], D[rows, rows + 1], D[rows, rows + 2] = 1 / T, -2 / T, 1 / T
    return D


def make_data(n, target="kinks", noise=0.1, x_range=1.0, seed=0, dtype=torch.float64):
    """n stratified samples on [-R, R] (sorted), y = target(x) + noise N(0, 1).

    Sample i is uniform on the i-th of n equal cells of [-R, R] (jittered
    design): with n >= N - 1 every knot interval holds data, so lambda_min(S^T S)
    > 0 and mu does not rest on the ridge term alone.
    """
    gen = torch.Generator().manual_seed(seed)
    cells = torch.arange(n, dtype=torch.float64) + torch.rand(n, generator=gen,
                                                              dtype=torch.float64)
    x = (2 * cells / n - 1) * x_range
    y = TARGETS[target](x) + noise * torch.randn(n, generator=gen, dtype=torch.float64)
    return x.to(dtype), y.to(dtype)


def tv2_fit(x, y, lam, num_knots, x_range, ridge=0.0, iterations=5000, tol=1e-12):
    r"""Exact TV(2)-penalised least-squares spline fit (no smoothing).

        minimise over c   1/2 ||S c - y||^2 + lam ||D c||_1 + ridge/2 ||c||^2

    by ADMM on the split z = D c, then *polished*: with the support A of D c
    and its signs read off the ADMM iterate, the optimality conditions on that
    support are a linear (KKT) system, solved exactly; the polished point is
    accepted when its multipliers satisfy |u_k| <= lam off the support and the
    signs agree (which proves it optimal), else the ADMM iterate is returned.

    Returns
    -------
    dict
        ``c`` (numpy, N), ``polished`` (bool), ``kkt`` (the stationarity
        residual max |Q c - b + D^T u|, 0 up to rounding when polished),
        ``iterations``.
    """
    S = interpolation_matrix(torch.as_tensor(x, dtype=torch.float64), num_knots,
                             x_range).numpy()
    D = second_differences(num_knots, x_range).numpy()
    y = np.asarray(y, dtype=np.float64)
    Q = S.T @ S + ridge * np.eye(num_knots)
    b = S.T @ y
    beta = max(1.0, float(np.linalg.eigvalsh(Q)[-1])) / max(float(np.linalg.norm(D, 2)) ** 2,
                                                            1e-300)
    M = np.linalg.inv(Q + beta * D.T @ D)
    z = np.zeros(D.shape[0])
    u = np.zeros_like(z)  # scaled dual
    c = M @ b
    it = 0
    while it < iterations:
        it += 1
        c = M @ (b + beta * D.T @ (z - u))
        Dc = D @ c
        z_new = np.sign(Dc + u) * np.maximum(np.abs(Dc + u) - lam / beta, 0.0)
        u += Dc - z_new
        done = (np.linalg.norm(Dc - z_new) <= tol * (1 + np.linalg.norm(Dc))
                and beta * np.linalg.norm(z_new - z) <= tol * (1 + np.linalg.norm(b)))
        z = z_new
        if done:
            break
    result = dict(c=c, polished=False, iterations=it,
                  kkt=float(np.abs(Q @ c - b + D.T @ (beta * u)).max()))
    # Polish on the support of z (ADMM's sparse copy of D c).
    support = np.abs(z) > 0
    signs = np.sign(z[support])
    Di = D[~support]
    k = Di.shape[0]
    kkt = np.block([[Q, Di.T], [Di, np.zeros((k, k))]])
    rhs = np.concatenate([b - lam * D[support].T @ signs, np.zeros(k)])
    try:
        sol = np.linalg.solve(kkt, rhs)
    except np.linalg.LinAlgError:
        return result
    cp, ui = sol[:num_knots], sol[num_knots:]
    multipliers = np.zeros(D.shape[0])
    multipliers[support], multipliers[~support] = lam * signs, ui
    ok = (np.all(np.abs(ui) <= lam * (1 + 1e-9))
          and np.all(np.sign(D[support] @ cp) == signs))
    if ok:
        result.update(c=cp, polished=True,
                      kkt=float(np.abs(Q @ cp - b + D.T @ multipliers).max()))
    return result


class SplineRegression(DenseNewtonSolve, BilevelProblem):
    """Bilevel learning of the TV(2) weight of a 1-D linear-spline regression.

    theta = [log lam] (one hyperparameter); x (the lower-level variable) is the
    coefficient vector c in R^N.

    Parameters
    ----------
    n_train, n_val : int
        Training and validation samples (drawn by :func:`make_data`).
    noise : float
        Standard deviation of the label noise.
    target : {'kinks', 'sine'}
        The function sampled: piecewise linear with three kinks, or sin(3x).
    num_knots : int
        N (odd).
    x_range : float
        R; samples and grid on [-R, R].
    smoothing : float
        nu of phi_nu (in slope units).
    ridge : float
        rho > 0, the ridge weight that makes h strongly convex whatever the data.
    data_curvature : bool
        Add lambda_min(S^T S) to mu (certified; see the module docstring).
    log_weight : float
        Starting theta_0 = log lam.
    seed : int
        Seed of the training data; validation uses seed + 1.
    x_train, y_train, x_val, y_val : array-like, optional
        Data instead of :func:`make_data`.
    dtype, device
    """

    name = "spline_regression"
    upper_convex_in_x = True

    def __init__(self, n_train=30, n_val=60, noise=0.2, target="kinks", num_knots=21,
                 x_range=1.0, smoothing=0.2, ridge=1e-3, data_curvature=True,
                 log_weight=0.0, seed=0, x_train=None, y_train=None, x_val=None, y_val=None,
                 dtype=torch.float64, device="cpu"):
        name = self.name
        params.choice(name, "target", target, tuple(TARGETS))
        smoothing = params.number(name, "smoothing", smoothing, positive=True)
        ridge = params.number(name, "ridge", ridge, positive=True)
        noise = params.number(name, "noise", noise, minimum=0.0)
        x_range = params.number(name, "x_range", x_range, positive=True)
        num_knots = params.integer(name, "num_knots", num_knots, 3)
        log_weight = params.number(name, "log_weight", log_weight)
        seed = params.integer(name, "seed", seed, 0)
        n_train = params.integer(name, "n_train", n_train, 1)
        n_val = params.integer(name, "n_val", n_val, 1)
        to = dict(dtype=dtype, device=device)
        if x_train is None:
            x_train, y_train = make_data(n_train, target, noise, x_range, seed)
        if x_val is None:
            x_val, y_val = make_data(n_val, target, noise, x_range, seed + 1)
        self.x_train, self.y_train = (torch.as_tensor(v, dtype=torch.float64).reshape(-1)
                                      for v in (x_train, y_train))
        self.x_val, self.y_val = (torch.as_tensor(v, dtype=torch.float64).reshape(-1)
                                  for v in (x_val, y_val))
        self.num_knots, self.x_range = int(num_knots), float(x_range)
        self.T = 2 * self.x_range / (self.num_knots - 1)
        self.nu, self.rho = float(smoothing), float(ridge)
        S = interpolation_matrix(self.x_train, self.num_knots, self.x_range)
        Sv = interpolation_matrix(self.x_val, self.num_knots, self.x_range)
        D = second_differences(self.num_knots, self.x_range)
        eig = torch.linalg.eigvalsh(S.T @ S)
        self.data_min = max(0.0, float(eig[0]) - MARGIN * float(eig[-1])) if data_curvature \
            else 0.0
        self.data_max = float(eig[-1]) * (1 + MARGIN)
        self.L_g = float(torch.linalg.eigvalsh(Sv.T @ Sv)[-1]) * (1 + MARGIN) / len(self.x_val)
        self.D_norm2 = 16.0 / self.T ** 2
        self.D_rowmax = math.sqrt(6.0) / self.T  # max row norm: ||D v||_inf <= it ||v||
        self.S, self.Sv, self.D = S.to(**to), Sv.to(**to), D.to(**to)
        self.y, self.yv = self.y_train.to(**to), self.y_val.to(**to)
        self.StS, self.Sty = self.S.T @ self.S, self.S.T @ self.y
        self.theta0 = torch.tensor([float(log_weight)], **to)
        super().__init__()

    # ------------------------------------------------------------ the contract
    def _phi(self, t, order):
        r = torch.sqrt(t * t + self.nu ** 2)
        if order == 0:
            return r - self.nu
        if order == 1:
            return t / r
        return self.nu ** 2 / r ** 3

    def lower_objective(self, c, theta):
        r = self.S @ c - self.y
        return (0.5 * torch.dot(r, r) + torch.exp(theta[0]) * self._phi(self.D @ c, 0).sum()
                + 0.5 * self.rho * torch.dot(c, c))

    def upper_objective(self, c, theta):
        r = self.Sv @ c - self.yv
        return 0.5 * torch.dot(r, r) / len(self.yv)

    def strong_convexity(self, theta):
        return self.rho + self.data_min

    def smoothness(self, theta):
        return self.data_max + self.rho + math.exp(float(theta[0])) * self.D_norm2 / self.nu

    def initial_theta(self):
        return self.theta0.clone()

    def initial_x(self, theta):
        return torch.zeros(self.num_knots, dtype=self.theta0.dtype, device=self.theta0.device)

    # ------------------------------------------------------------ closed forms
    def lower_grad(self, c, theta):
        lam = torch.exp(theta[0])
        return self.StS @ c - self.Sty + lam * (self.D.T @ self._phi(self.D @ c, 1)) + self.rho * c

    def hessian(self, c, theta):
        """The dense N x N Hessian S^T S + rho I + lam D^T diag(phi''(D c)) D."""
        lam = torch.exp(theta[0])
        w = self._phi(self.D @ c, 2)
        return (self.StS + self.rho * torch.eye(self.num_knots, dtype=c.dtype, device=c.device)
                + lam * (self.D.T * w) @ self.D)

    def lower_hvp(self, c, theta, v):
        lam = torch.exp(theta[0])
        return (self.StS @ v + self.rho * v
                + lam * (self.D.T @ (self._phi(self.D @ c, 2) * (self.D @ v))))

    def mixed_vjp(self, c, theta, w):
        # d/dtheta_0 grad_x h = lam D^T phi'(D c): one column.
        lam = torch.exp(theta[0])
        return (lam * torch.dot(self.D.T @ self._phi(self.D @ c, 1), w)).view(1)

    def upper_grads(self, c, theta):
        r = self.Sv @ c - self.yv
        n = len(self.yv)
        return 0.5 * torch.dot(r, r) / n, self.Sv.T @ r / n, torch.zeros_like(theta)

    # ---------------------------------------------------------- bound constants
    def bound_constants(self, theta, x):
        r"""Certified constants of the hypergradient bound, in closed form.

        - L_g = lambda_max(S_val^T S_val) / n_val (g is quadratic).
        - B(c) = lam D^T phi'(D c) (one column), so ||B(c)|| is computed exactly
          at c; B is L_B-Lipschitz with L_B = lam ||D||^2 / nu (phi'' <= 1/nu), and
          B_norm = ||B(c)|| + 2 e L_B, e = ||grad h(c)|| / mu >= ||c - c*||, covers
          every point within 2e of c (x~, x* and warm-started refinements).
        - L_A = lam ||D||^2 (C3 / nu^2) max_k ||D_k||: A(c1) - A(c2) =
          lam D^T diag(phi''(D c1) - phi''(D c2)) D with |phi'''| <= C3 / nu^2 and
          ||D (c1 - c2)||_inf <= max_k ||D_k|| ||c1 - c2|| (rows D_k, norm sqrt(6)/T);
          L_Ainv = L_A / mu^2.
        - L_gtheta = 0 (g ignores theta).
        """
        theta, c = theta.detach(), x.detach()
        lam = math.exp(float(theta[0]))
        mu = self.strong_convexity(theta)
        B_here = lam * float(torch.linalg.vector_norm(self.D.T @ self._phi(self.D @ c, 1)))
        e = float(torch.linalg.vector_norm(self.lower_grad(c, theta))) / mu
        L_B = lam * self.D_norm2 / self.nu
        L_A = lam * self.D_norm2 * C3 / self.nu ** 2 * self.D_rowmax
        return BoundConstants(L_g=self.L_g, B_norm=B_here * (1 + 1e-12) + 2 * e * L_B,
                              L_B=L_B, L_Ainv=L_A / mu ** 2, L_gtheta=0.0, certified=True,
                              cost=1)

    # ------------------------------------------------------------------ usage
    def spline(self, c):
        """The fitted function as a :class:`bilevel.nn.splines.LinearSpline` (one channel)."""
        from bilevel.nn.splines import LinearSpline

        module = LinearSpline(1, self.num_knots, self.x_range, init="zero", dtype=c.dtype)
        with torch.no_grad():
            module.coefficients.copy_(c.detach().view(1, -1))
        return module

    def knots(self):
        """The grid t_k."""
        return knots(self.num_knots, self.x_range, dtype=self.theta0.dtype)

    def smoothing_gap(self, theta) -> float:
        """Delta = lam (N - 2) nu, the sup-norm gap between smoothed and exact penalties."""
        return math.exp(float(theta[0])) * (self.num_knots - 2) * self.nu


ENTRY = dict(
    factory=SplineRegression,
    description="1-D linear-spline regression: learn the weight of a smoothed TV(2) penalty "
                "on validation data (Newton lower solver, certified constants)",
    test_params=dict(n_train=30, n_val=30, num_knots=11, smoothing=0.05),
)
