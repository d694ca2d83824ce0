"""Bilevel choice of the weight of a Lipschitz penalty (docs/problems.md).

The model is a 1-D linear spline u(x) = sum_k c_k phi_k(x): hat functions phi_k on
K uniform knots t_k = a + k T of [a, b] (constant beyond them, by clamping x), so
it is linear in its parameters c and Lip(u) = max_k |s_k| with the slopes
s = D c, (D c)_k = (c_{k+1} - c_k) / T.  With lam = e^theta:

    h(c, theta) = (1/n) ||Phi c - y||^2 + lam S(c) + (r/2) ||c||^2
    g(c)        = (1/n_val) ||Phi_val c - y_val||^2

S(c) = (1/beta) log sum_k exp(beta phi(s_k)), phi(s) = sqrt(s^2 + nu^2), is a
smooth convex surrogate of max_k |s_k| (phi is convex, log-sum-exp convex and
increasing): max_k |s_k| <= S(c) <= max_k |s_k| + nu + log(K - 1) / beta.  The
small ridge r keeps h strongly convex when some hat function sees no data.

Derivatives (p = softmax(beta phi(s)), phi' = s / phi, phi'' = nu^2 / phi^3)
---------------------------------------------------------------------------
grad S = D^T (p phi'),   Hess S = D^T M D,
M = beta diag(phi') (diag p - p p^T) diag(phi') + diag(p phi'').

Closed-form constants (all certified)
-------------------------------------
Norms are Euclidean / spectral; G = Phi^T Phi, G_val likewise.

- ||D|| = 2 cos(pi / (2K)) / T (D^T D is the path Laplacian / T^2, with
  eigenvalues 4 sin^2(pi j / (2K)) / T^2, j = 0..K-1).
- mu: Hess S is PSD (S convex), so Hess h >= (2/n) G + r I and
  mu = (2/n) lambda_min(G) + r (>= r; more when the data cover every knot).
- L: for a unit v, v^T (diag p - p p^T) v = Var_p(v) <= range(v)^2 / 4 <= 1/2 and
  |phi'| <= 1, phi'' <= 1/nu, p_k <= 1, so ||M|| <= beta/2 + 1/nu and
  L = (2/n) lambda_max(G) + lam ||D||^2 (beta/2 + 1/nu) + r.
- L_g = (2/n_val) lambda_max(G_val); g is convex and ignores theta (L_gtheta = 0).
- B = d/dtheta grad_c h = lam grad S(c), one column: ||B(c~)|| = lam ||grad S(c~)||
  at the point the bound is used (docs/certificates.md, section 2 needs ||B|| at x~).
- L_B = lam sup ||Hess S|| <= lam ||D||^2 (beta/2 + 1/nu).
- L_A = lam ||D||^3 C3, the Lipschitz constant of c -> Hess h.  With
  G(s) = f(phi(s)), f(z) = (1/beta) lse(beta z), b = phi' a, e = phi'' a^2:
      D^3 G[a, a, a] = D^3 f[b, b, b] + 3 D^2 f[b, e] + <p, phi''' a^3>.
  (i) D^3 f[b, b, b] = beta^2 E_p[(B - E B)^3], a third central moment, at most
  beta^2 (sqrt 6 / 9) ||b||^3 (a zero-mean law on an interval of length
  r <= sqrt 2 ||b|| has |third moment| <= r^3 / (6 sqrt 3); see
  problems/logistic_regression.py); (ii) |D^2 f[b, e]| = beta |Cov_p(b, e)|
  <= beta sqrt(Var b Var e) <= beta (||b|| / sqrt 2)(max e / 2) with
  0 <= e <= ||a||^2 / nu; (iii) |phi'''| = 3 nu^2 |s| / phi^5 <= 48 / (25 sqrt 5 nu^2)
  (largest at s = nu / 2).  A symmetric trilinear form's norm is the sup of its
  cubic form on the unit sphere (Banach 1938), so
      C3 = (sqrt 6 / 9) beta^2 + 3 beta / (2 sqrt 2 nu) + 48 / (25 sqrt 5 nu^2),
  and Hess S(c) = D^T (Hess G)(D c) D adds ||D||^3.
- L_Ainv.  The bound needs ||A(x~)^-1 - A(x*)^-1|| <= L_Ainv ||x~ - x*|| only between
  the point x~ where the constants are asked for and x*; since
  A(x~)^-1 - A(x*)^-1 = A(x~)^-1 (A(x*) - A(x~)) A(x*)^-1, the constant
  L_Ainv = L_A / (mu lambda_min(A(x~))) serves, with lambda_min(A(x~)) >= mu computed
  exactly (eigvalsh, less its rounding); it is often ten times mu, since the
  surrogate adds curvature where the slopes are large.

Lower-level solver: damped Newton on the dense K x K Hessian (K is small), which
converges quadratically where FISTA would need sqrt(L / mu) ~ 10^3 steps per
digit; it stops on the same certificate ||grad h|| / mu <= tol and counts Newton
steps as iterations (:class:`~bilevel_problems.dense_newton.DenseNewtonSolve`).
"""
from __future__ import annotations

import math

import torch

from bilevel import BilevelProblem, BoundConstants

from . import params
from .dense_newton import DenseNewtonSolve

TARGETS = ("sign", "sine")
_PHI3 = 48.0 / (25.0 * math.sqrt(5.0))  # max_t 3 t / (1 + t^2)^(5/2), at t = 1/2
_EPS64 = torch.finfo(torch.float64).eps


def hat_features(x, knots):
    """(n, K) matrix of the hat functions on uniform ``knots`` at ``x`` (clamped)."""
    K = len(knots)
    a, T = float(knots[0]), float(knots[1] - knots[0])
    t = (torch.clamp(x, float(knots[0]), float(knots[-1])) - a) / T
    left = torch.clamp(torch.floor(t), 0, K - 2).long()
    w = t - left
    Phi = torch.zeros(len(x), K, dtype=x.dtype, device=x.device)
    rows = torch.arange(len(x), device=x.device)
    Phi[rows, left] = 1 - w
    Phi[rows, left + 1] += w
    return Phi


def make_data(n, *, target="sign", flip=0.0, noise=0.0, x_range=(-1.0, 1.0), generator=None):
    """x uniform on ``x_range`` (sorted), clean labels, and noisy ones.

    'sign': y = sign(x), flipped with probability ``flip``; 'sine': y = sin(pi x).
    Gaussian noise of std ``noise`` is added to either.  Returns (x, y_noisy, y_clean).
    """
    if target not in TARGETS:
        raise ValueError(f"lipschitz_regression: target must be one of {TARGETS}, got {target!r}")
    a, b = x_range
    x, _ = torch.sort(a + (b - a) * torch.rand(n, generator=generator, dtype=torch.float64))
    clean = torch.sign(x) if target == "sign" else torch.sin(math.pi * x)
    y = clean.clone()
    if flip > 0:
        y = torch.where(torch.rand(n, generator=generator, dtype=torch.float64) < flip, -y, y)
    if noise > 0:
        y = y + noise * torch.randn(n, generator=generator, dtype=torch.float64)
    return x, y, clean


class LipschitzRegression(DenseNewtonSolve, BilevelProblem):
    """A 1-D linear spline with a learned Lipschitz penalty weight lam = e^theta.

    Parameters
    ----------
    n_train, n_val, n_test : int
        Sizes of the splits (the test labels are clean).
    num_knots : int
        K, the number of spline knots on ``x_range``.
    x_range : (float, float)
        Where the data and the knots lie.
    target : {'sign', 'sine'}
        The clean label function.
    flip : float
        Probability that a training or validation sign label is flipped.
    noise : float
        Std of Gaussian label noise.
    beta, nu : float
        Sharpness of the soft maximum and smoothing of |s| in the surrogate S.
    ridge : float
        r, the fixed ridge weight.
    theta0 : float
        Starting log penalty weight.
    seed : int
        Seed of the data.
    data : tuple, optional
        (x_train, y_train, x_val, y_val[, x_test, y_test]) 1-D tensors, used as given.
    dtype, device
        Of all tensors (float64 on CPU by default).
    """

    name = "lipschitz_regression"
    upper_convex_in_x = True

    def __init__(self, n_train=100, n_val=100, n_test=2000, num_knots=21, x_range=(-1.0, 1.0),
                 target="sign", flip=0.2, noise=0.0, beta=10.0, nu=0.1, ridge=1e-3,
                 theta0=-3.0, seed=0, data=None, dtype=torch.float64, device="cpu"):
        name = self.name
        num_knots = params.integer(name, "num_knots", num_knots, 3)
        beta = params.number(name, "beta", beta, positive=True)
        nu = params.number(name, "nu", nu, positive=True)
        ridge = params.number(name, "ridge", ridge, positive=True)
        theta0 = params.number(name, "theta0", theta0)
        x_range = params.vector(name, "x_range", x_range, 2, "(low, high)").tolist()
        if not x_range[0] < x_range[1]:
            raise ValueError(f"{name}: x_range must be (low, high) with low < high, got "
                             f"{tuple(x_range)}")
        if data is None:
            n_train = params.integer(name, "n_train", n_train, 1)
            n_val = params.integer(name, "n_val", n_val, 1)
            n_test = params.integer(name, "n_test", n_test, 1)
            seed = params.integer(name, "seed", seed, 0)
            flip = params.number(name, "flip", flip, minimum=0.0)
            if flip > 1:
                raise ValueError(f"{name}: flip must be a probability in [0, 1], got {flip}")
            noise = params.number(name, "noise", noise, minimum=0.0)
            gen = torch.Generator().manual_seed(seed)
            kw = dict(target=target, noise=noise, x_range=x_range, generator=gen)
            x_tr, y_tr, _ = make_data(n_train, flip=flip, **kw)
            x_va, y_va, _ = make_data(n_val, flip=flip, **kw)
            x_te, _, y_te = make_data(n_test, **{**kw, "noise": 0.0})
            data = (x_tr, y_tr, x_va, y_va, x_te, y_te)
        data = [torch.as_tensor(d, dtype=torch.float64).reshape(-1) for d in data]
        if len(data) == 4:
            data += [data[2], data[3]]
        self.x_train, self.y_train, self.x_val, self.y_val, self.x_test, self.y_test = data
        self.beta, self.nu, self.ridge = float(beta), float(nu), float(ridge)
        K = int(num_knots)
        self.knots = torch.linspace(float(x_range[0]), float(x_range[1]), K, dtype=torch.float64)
        self.T = float(self.knots[1] - self.knots[0])

        # Spectral constants in float64, once (module docstring).
        Phi, Phi_val = hat_features(self.x_train, self.knots), hat_features(self.x_val, self.knots)
        n, n_val = len(Phi), len(Phi_val)
        eig = torch.linalg.eigvalsh(Phi.T @ Phi)
        slack = 8 * K * _EPS64 * float(eig[-1])  # eigvalsh's rounding
        self._mu = max(2.0 / n * (float(eig[0]) - slack), 0.0) + self.ridge
        self._L_data = 2.0 / n * (float(eig[-1]) + slack)
        self._L_g = 2.0 / n_val * float(torch.linalg.eigvalsh(Phi_val.T @ Phi_val)[-1]) \
            * (1 + 8 * K * _EPS64)
        self.D_norm = 2.0 * math.cos(math.pi / (2 * K)) / self.T * (1 + 4 * _EPS64)
        self._curv = self.beta / 2 + 1.0 / self.nu  # ||M|| <= beta/2 + 1/nu
        self._C3 = (math.sqrt(6.0) / 9.0 * self.beta ** 2
                    + 3.0 * self.beta / (2.0 * math.sqrt(2.0) * self.nu)
                    + _PHI3 / self.nu ** 2)

        to = dict(dtype=dtype, device=device)
        self.knots = self.knots.to(**to)
        self.Phi, self.Phi_val = Phi.to(**to), Phi_val.to(**to)
        self.y, self.yv = self.y_train.to(**to), self.y_val.to(**to)
        self.gram = (self.Phi.T @ self.Phi) * (2.0 / n)
        self.Phi_y = (self.Phi.T @ self.y) * (2.0 / n)
        D = torch.zeros(K - 1, K, dtype=torch.float64)
        D[range(K - 1), range(K - 1)] = -1.0 / self.T
        D[range(K - 1), range(1, K)] = 1.0 / self.T
        self.D = D.to(**to)
        self.theta0 = torch.tensor([float(theta0)], **to)
        super().__init__()

    # ------------------------------------------------------------------ the model
    @property
    def num_knots(self) -> int:
        return len(self.knots)

    def predict(self, c, x):
        """u(x) for the spline coefficients c."""
        x = torch.as_tensor(x, dtype=c.dtype, device=c.device).reshape(-1)
        return hat_features(x, self.knots) @ c

    def slopes(self, c):
        """s = D c: the slopes of the spline between knots (Lip(u) = max |s|)."""
        return (c[1:] - c[:-1]) / self.T

    def surrogate(self, c):
        """S(c) = (1/beta) logsumexp(beta sqrt(s^2 + nu^2)) >= max |s| = Lip(u)."""
        z = torch.sqrt(self.slopes(c) ** 2 + self.nu ** 2)
        return torch.logsumexp(self.beta * z, dim=0) / self.beta

    def _pieces(self, c):
        s = self.slopes(c)
        phi = torch.sqrt(s ** 2 + self.nu ** 2)
        p = torch.softmax(self.beta * phi, dim=0)
        return s, phi, p

    def surrogate_grad(self, c):
        """grad S(c) = D^T (p phi')."""
        s, phi, p = self._pieces(c)
        return self.D.T @ (p * s / phi)

    def _surrogate_hvp(self, c, v):
        s, phi, p = self._pieces(c)
        d1, d2 = s / phi, self.nu ** 2 / phi ** 3
        a = self.D @ v
        b = d1 * a
        Ma = self.beta * d1 * (p * b - p * torch.dot(p, b)) + p * d2 * a
        return self.D.T @ Ma

    def _surrogate_hessian(self, c):
        s, phi, p = self._pieces(c)
        d1, d2 = s / phi, self.nu ** 2 / phi ** 3
        pd = p * d1
        M = self.beta * (torch.diag(p * d1 * d1) - torch.outer(pd, pd)) + torch.diag(p * d2)
        return self.D.T @ M @ self.D

    def lipschitz(self, c) -> float:
        """The exact Lipschitz constant max_k |s_k| of the spline."""
        return float(self.slopes(c).abs().max())

    # ---------------------------------------------------------------- the contract
    def lower_objective(self, x, theta):
        r = self.Phi @ x - self.y
        return (torch.dot(r, r) / len(r) + torch.exp(theta[0]) * self.surrogate(x)
                + 0.5 * self.ridge * torch.dot(x, x))

    def upper_objective(self, x, theta):
        r = self.Phi_val @ x - self.yv
        return torch.dot(r, r) / len(r)

    def strong_convexity(self, theta):
        return self._mu

    def smoothness(self, theta):
        lam = math.exp(float(theta[0]))
        return self._L_data + lam * self.D_norm ** 2 * self._curv + self.ridge

    def initial_theta(self):
        return self.theta0.clone()

    def initial_x(self, theta):
        return torch.zeros(self.num_knots, dtype=self.theta0.dtype, device=self.theta0.device)

    def bound_constants(self, theta, x):
        lam = math.exp(float(theta[0]))
        L_A = lam * self.D_norm ** 3 * self._C3
        B_norm = lam * float(torch.linalg.vector_norm(self.surrogate_grad(x)))
        # ||A(x)^-1 - A(x*)^-1|| <= ||A(x)^-1|| L_A ||x - x*|| / mu, with the exact
        # smallest eigenvalue at x (the module docstring).
        eig = torch.linalg.eigvalsh(self.hessian(x, theta).to(torch.float64))
        lam_min = max(self._mu, float(eig[0]) - 8 * self.num_knots * _EPS64 * float(eig[-1]))
        return BoundConstants(L_g=self._L_g, B_norm=B_norm * (1 + 1e-12),
                              L_B=lam * self.D_norm ** 2 * self._curv,
                              L_Ainv=L_A / (self._mu * lam_min), L_gtheta=0.0)

    # ------------------------------------------------------- closed-form derivatives
    def lower_grad(self, x, theta):
        lam = torch.exp(theta[0])
        return self.gram @ x - self.Phi_y + lam * self.surrogate_grad(x) + self.ridge * x

    def lower_hvp(self, x, theta, v):
        lam = torch.exp(theta[0])
        return self.gram @ v + lam * self._surrogate_hvp(x, v) + self.ridge * v

    def hessian(self, x, theta):
        """The dense K x K Hessian of h in c."""
        lam = torch.exp(theta[0])
        eye = torch.eye(self.num_knots, dtype=x.dtype, device=x.device)
        return self.gram + lam * self._surrogate_hessian(x) + self.ridge * eye

    def mixed_vjp(self, x, theta, w):
        lam = torch.exp(theta[0])
        return (lam * torch.dot(self.surrogate_grad(x), w)).reshape(1)

    def upper_grads(self, x, theta):
        r = self.Phi_val @ x - self.yv
        n = len(r)
        return torch.dot(r, r) / n, self.Phi_val.T @ r * (2.0 / n), torch.zeros_like(theta)

    # ---------------------------------------------------------------- evaluation
    def value(self, theta, tol=1e-10, x0=None):
        """F(theta) = validation loss of the lower-level solution, by an accurate solve."""
        sol = self.solve_lower(theta, tol, x0=x0)
        return float(self.upper_objective(sol.x, theta)), sol.x

    def test_metrics(self, c):
        """Test mean squared error against the clean labels, and the sign error rate."""
        pred = self.predict(c, self.x_test.to(c))
        clean = self.y_test.to(c)
        mse = float(torch.mean((pred - clean) ** 2))
        error = float(torch.mean((torch.sign(pred) != torch.sign(clean)).to(c.dtype)))
        return dict(test_mse=mse, test_error=error)


ENTRY = dict(
    factory=LipschitzRegression,
    description="1-D linear spline with a smooth Lipschitz penalty whose weight is learned "
                "(Oberman and Calder 2018)",
    test_params=dict(n_train=60, n_val=60, n_test=200, num_knots=11),
)
