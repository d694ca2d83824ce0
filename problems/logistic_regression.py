"""Multinomial logistic regression with learned ridge weights (docs/problems.md).

    h(X, theta) = (1/n) sum_n CE(softmax(X^T a_n), y_n) + 1/2 sum_j e^{theta_j} W_j^2
    g(X)        = (1/n_val) sum_n CE(softmax(X^T a_n^val), y_n^val)

The paper's setting is one hyperparameter per weight (``layout="weight"``),
MNIST resized to 12x12 and theta0 = -3; the default data here are
scikit-learn's 8x8 digits, which need no download.  The training loss is a
mean, as in the paper, so e^theta is a ridge weight relative to the mean loss
(scikit-learn's C = 1 / (n e^theta)); mu comes from the ridge alone, so the
mean does not weaken any certificate.

The variable x
--------------
x is the (p, C) matrix X of the linear model, C classes.  Without a bias
(``fit_bias=False``, the default) p = d, X = W and the logits of a sample a
(a row of the feature matrix) are ``a @ W``.  With ``fit_bias=True`` p = d + 1,
the last row of X is the bias b, and each feature row is extended by a
constant 1, so the logits are still ``a~ @ X`` with a~ = (a, 1).

Why the bias is off by default, and what happens when it is on
-------------------------------------------------------------
Softmax is invariant to adding one constant to every logit, so the
cross-entropy is flat along b -> b + c 1: an unregularised bias makes h not
strongly convex (not even strictly), x* is not unique, and no certificate
holds.  The default therefore fits no bias, on features standardised with the
training split's statistics (centred features need little of a bias; the
digit classes are balanced).  With ``fit_bias=True`` the bias gets a small
*fixed* ridge ``bias_ridge / 2 ||b||^2`` (default 1e-2, not learned), which
restores strong convexity; mu is then ``min(min_j e^{theta_j}, bias_ridge)``,
so a very small ``bias_ridge`` makes every certificate (and the lower-level
solver) slow.  scikit-learn leaves its intercept unpenalised, so only the
bias-free model equals scikit-learn's exactly.

Hyperparameter layouts (``layout``)
-----------------------------------
"weight"   one theta per weight W_{jc}: d*C hyperparameters (the paper's);
"feature"  one per feature row W_{j,:}: d hyperparameters;
"scalar"   one for all weights: 1 hyperparameter (plain ridge; scikit-learn's
           ``C = 1 / (n e^theta)``).
Write Lambda for the (p, C) matrix of ridge weights: e^{theta} placed by the
layout on the weight rows, ``bias_ridge`` on the bias row.

Closed-form constants (all certified)
-------------------------------------
Write A (n x p) for the training design matrix (with the column of ones when
there is a bias), S(z) = diag(softmax(z)) - softmax(z) softmax(z)^T for the
Hessian of log-sum-exp at the logits z, and ||.|| for Euclidean / spectral
norms (x is measured as a flat vector, i.e. Frobenius norm of X).

- Hessian: A(X) = (1/n) sum_n (a_n a_n^T) kron S(X^T a_n) + diag(Lambda).
  The eigenvalues of S lie in [0, 1/2]: for unit v, v^T S v = Var_p(v) (the
  variance of the entries of v under the class probabilities p), which is >= 0
  and <= (max v - min v)^2 / 4 <= 1/2 (Popoviciu's inequality), so
      mu = min Lambda = min(min_j e^{theta_j}, bias_ridge),
      L  = ||A||^2 / (2 n) + max Lambda.
- L_g = ||A_val||^2 / (2 n_val), by the same argument on the validation set
  (g has no regulariser).
- B = d/dtheta grad_x h = d/dtheta (Lambda * X) maps a unit vector of group j
  (a weight, a feature row or all weights) to e^{theta_j} X restricted to the
  group; the groups are disjoint, so ||B(x)|| = max_j e^{theta_j} ||X_group j||.
  The bound of docs/certificates.md, section 2 needs ||B|| at x~ (its term is
  ||B(x~)|| ||q~ - q*||), which :meth:`bound_constants` computes at the x it is
  given.
- L_B: ||B(x) - B(x')|| = max_j e^{theta_j} ||X_j - X'_j|| <= max_j e^{theta_j} ||x - x'||.
- L_A, the Lipschitz constant of the Hessian.  S is the Hessian of
  lse(z) = log sum_c e^{z_c}, so its derivative along u is the symmetric
  trilinear form T(z)[u, v, w] = D^3 lse(z)[u, v, w], and
  ||S(z) - S(z')|| <= sup_z ||T(z)|| ||z - z'||.  Three facts bound ||T(z)||:
  (i) for a symmetric trilinear form on a real Hilbert space,
  ||T|| = sup_{||u|| = 1} |T[u, u, u]| (Banach 1938, "Ueber homogene Polynome
  in (L^2)"); (ii) T(z)[u, u, u] = E_p[(U - E_p U)^3], the third central moment
  of the random variable U taking the value u_c with probability
  p_c = softmax(z)_c; (iii) a zero-mean variable Y supported in an interval of
  length r has |E Y^3| <= r^3 / (6 sqrt 3): E Y^3 is linear in the law of Y,
  whose extreme points under the one constraint E Y = 0 are laws with at most
  two atoms y1 <= 0 <= y2, for which E Y^3 = s t (t - s) with s = -y1,
  t = y2, s + t <= r, maximal r^3 / (6 sqrt 3) at s = r (3 - sqrt 3) / 6.
  For unit u the range of U is max u - min u <= sqrt 2, hence
      L_S = sup_z ||T(z)|| <= 2 sqrt 2 / (6 sqrt 3) = sqrt 6 / 9 ~ 0.2722,
  attained with two classes (a numerical search over z, u finds the same).
  (Without fact (i): |T[u, v, v]| = |E_p[(U - EU)(V - EV)^2]|
  <= (max u - min u) Var_p(V) <= sqrt 2 / 2, a 2.6 times weaker bound.)
  Then z_n - z'_n = (X - X')^T a_n gives ||S(z_n) - S(z'_n)|| <= c_n with
  c_n = L_S ||a_n|| ||x - x'||, so -c_n I <= S(z_n) - S(z'_n) <= c_n I and
      ||A(X) - A(X')|| <= ||(1/n) sum_n c_n a_n a_n^T||
                        = L_S ||A^T diag(||a_n||) A|| / n ||x - x'|| =: L_A ||x - x'||,
  which is at most both L_S max_n ||a_n|| ||A||^2 / n and L_S mean_n ||a_n||^3.
  L_Ainv = L_A / mu^2.  g does not read theta: L_gtheta = 0.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from bilevel import BilevelProblem, BoundConstants
from bilevel.contract import check_theta
from bilevel.lower import newton_cg

from . import params
from .classification_data import ClassificationSplit, load_digits_split, load_mnist_split

LAYOUTS = ("weight", "feature", "scalar")
LOWER_SOLVERS = ("newton", "fista")

#: Lipschitz constant of z -> diag(softmax z) - softmax z softmax z^T in operator norm,
#: sqrt(6) / 9 (module docstring: the largest third central moment of a unit vector's
#: entries under any class probabilities).
L_SOFTMAX_HESSIAN = math.sqrt(6.0) / 9.0


class LogisticRegression(BilevelProblem):
    """Learned ridge weights of multinomial logistic regression.

    Parameters
    ----------
    layout : {'weight', 'feature', 'scalar'}
        One hyperparameter per weight (the paper's), per feature row, or one in all.
    theta0 : float or array-like
        Starting log ridge weight(s) (-3, the paper's).
    n_train, n_val : int
        Sizes of the training and validation splits.
    n_test : int, optional
        Size of the test split (default: the rest of the digits; all 10000 MNIST
        test images).
    seed : int
        Seed of the stratified split.
    fit_bias : bool
        Fit a bias row with a fixed ridge ``bias_ridge`` (see the module
        docstring for why it cannot be left unregularised).
    bias_ridge : float
        The bias's fixed ridge weight (only with ``fit_bias``).
    mnist_path : str, optional
        Folder of the four MNIST IDX files; if given, MNIST replaces the digits.
    mnist_size : int, optional
        Side of the resized MNIST images (12, the paper's; None keeps 28).
    data : ClassificationSplit, optional
        Use these features and labels as they are (no standardisation); replaces
        both the digits and MNIST.
    lower_solver : {'newton', 'fista'}
        Newton-CG with a Jacobi preconditioner (default: the ridge weights spread
        over orders of magnitude, so FISTA's rate sqrt(mu / L) is poor while
        Hessian-vector products cost a gradient), or the generic FISTA.
    dtype, device
        Of all tensors (float64 on CPU by default).
    """

    name = "logistic_regression"
    upper_convex_in_x = True

    def __init__(self, layout="weight", theta0=-3.0, n_train=600, n_val=600, n_test=None,
                 seed=0, fit_bias=False, bias_ridge=1e-2, mnist_path=None, mnist_size=12,
                 data=None, lower_solver="newton", dtype=torch.float64, device="cpu"):
        name = self.name
        params.choice(name, "layout", layout, LAYOUTS)
        params.choice(name, "lower_solver", lower_solver, LOWER_SOLVERS)
        if fit_bias:
            # An unregularised bias is not strongly convex.
            bias_ridge = params.number(name, "bias_ridge (with fit_bias)", bias_ridge,
                                       positive=True)
        self.lower_solver = lower_solver
        if data is None:
            data = self._load(n_train, n_val, n_test, seed, mnist_path, mnist_size)
        if not isinstance(data, ClassificationSplit):
            raise TypeError("logistic_regression: data must be a ClassificationSplit, got "
                            f"{type(data).__name__}")
        self.data = data
        self.layout = layout
        self.fit_bias = bool(fit_bias)
        self.bias_ridge = float(bias_ridge)
        self.n_features = data.n_features
        self.n_classes = data.n_classes
        to = {"dtype": dtype, "device": device}

        def design(X):
            X = torch.as_tensor(np.asarray(X, dtype=np.float64))
            if self.fit_bias:
                X = torch.cat([X, torch.ones(len(X), 1, dtype=X.dtype)], dim=1)
            return X

        def onehot(y):
            return torch.nn.functional.one_hot(
                torch.as_tensor(np.asarray(y, dtype=np.int64)), self.n_classes).double()

        parts = {"train": (data.X_train, data.y_train), "val": (data.X_val, data.y_val),
                 "test": (data.X_test, data.y_test)}
        self._A = {k: design(X) for k, (X, _) in parts.items()}
        self._Y = {k: onehot(y) for k, (_, y) in parts.items()}
        self._labels = {k: torch.as_tensor(np.asarray(y, dtype=np.int64)).to(device)
                        for k, (_, y) in parts.items()}

        # Spectral constants in float64, once, before any cast to a lower precision.
        A, A_val = self._A["train"], self._A["val"]
        n, n_val = len(A), len(A_val)
        norm2 = float(torch.linalg.matrix_norm(A, ord=2)) ** 2
        row = torch.linalg.vector_norm(A, dim=1)
        self._L_data = norm2 / (2 * n)
        self._L_g = float(torch.linalg.matrix_norm(A_val, ord=2)) ** 2 / (2 * n_val)
        weighted = A.T @ (row[:, None] * A) / n  # (1/n) sum_n ||a_n|| a_n a_n^T
        self._L_A = L_SOFTMAX_HESSIAN * float(torch.linalg.eigvalsh(weighted)[-1])
        self._norm2, self._row_norms = norm2, row.to(**to)

        self._A = {k: v.to(**to) for k, v in self._A.items()}
        self._Y = {k: v.to(**to) for k, v in self._Y.items()}
        size = {"weight": self.n_features * self.n_classes, "feature": self.n_features,
                "scalar": 1}[layout]
        self.theta0 = params.vector(name, "theta0", theta0, size,
                                    f"(layout {layout!r})").to(**to)
        super().__init__()

    def _load(self, n_train, n_val, n_test, seed, mnist_path, mnist_size):
        """The digits or MNIST split, sizes checked; errors name the problem."""
        name = self.name
        n_train = params.integer(name, "n_train", n_train, 1)
        n_val = params.integer(name, "n_val", n_val, 1)
        n_test = None if n_test is None else params.integer(name, "n_test", n_test, 1)
        seed = params.integer(name, "seed", seed, 0)
        try:
            if mnist_path is not None:
                size = None if mnist_size is None else params.integer(name, "mnist_size",
                                                                      mnist_size, 1)
                return load_mnist_split(mnist_path, n_train=n_train, n_val=n_val,
                                        n_test=10_000 if n_test is None else n_test,
                                        seed=seed, size=size)
            return load_digits_split(n_train=n_train, n_val=n_val, n_test=n_test, seed=seed)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None

    # ------------------------------------------------------------------ helpers
    @property
    def n_hyper(self) -> int:
        """Number of hyperparameters."""
        return self.theta0.numel()

    @property
    def x_shape(self) -> tuple:
        """(d, C), or (d + 1, C) with the bias as last row."""
        return (self.n_features + self.fit_bias, self.n_classes)

    def ridge_weights(self, theta):
        """Lambda: the (p, C) ridge weights e^{theta} placed by the layout, bias row last."""
        d, C = self.n_features, self.n_classes
        e = torch.exp(theta)
        if self.layout == "weight":
            lam = e.reshape(d, C)
        elif self.layout == "feature":
            lam = e.reshape(d, 1).expand(d, C)
        else:
            lam = e.reshape(1, 1).expand(d, C)
        if self.fit_bias:
            lam = torch.cat([lam, torch.full((1, C), self.bias_ridge, dtype=lam.dtype,
                                             device=lam.device)])
        return lam

    def _reduce(self, G):
        """Sum a (d, C) weight-shaped tensor over each hyperparameter's group."""
        if self.layout == "weight":
            return G.reshape(-1)
        if self.layout == "feature":
            return G.sum(dim=1)
        return G.sum().reshape(1)

    def weights(self, x):
        """(W, b) from x; b is None without a bias."""
        if self.fit_bias:
            return x[:-1], x[-1]
        return x, None

    def _cross_entropy(self, x, part):
        Z = self._A[part] @ x
        return torch.mean(torch.logsumexp(Z, dim=1) - torch.sum(Z * self._Y[part], dim=1))

    def _ce_grad(self, x, part):
        """(mean CE, its gradient in x) on a split, without autograd."""
        A, Y = self._A[part], self._Y[part]
        Z = A @ x
        lse = torch.logsumexp(Z, dim=1, keepdim=True)
        value = torch.mean(lse[:, 0] - torch.sum(Z * Y, dim=1))
        P = torch.exp(Z - lse)  # softmax, from the same log-sum-exp
        return value, A.T @ (P - Y) / len(A)

    # ------------------------------------------------------------------ contract
    def lower_objective(self, x, theta):
        return self._cross_entropy(x, "train") + 0.5 * torch.sum(self.ridge_weights(theta) * x * x)

    def upper_objective(self, x, theta):
        return self._cross_entropy(x, "val")

    def strong_convexity(self, theta):
        mu = float(torch.exp(theta.min()))
        return min(mu, self.bias_ridge) if self.fit_bias else mu

    def smoothness(self, theta):
        top = float(torch.exp(theta.max()))
        return self._L_data + (max(top, self.bias_ridge) if self.fit_bias else top)

    def initial_theta(self):
        return self.theta0.clone()

    def initial_x(self, theta):
        return torch.zeros(self.x_shape, dtype=theta.dtype, device=theta.device)

    def bound_constants(self, theta, x):
        """Closed-form, certified constants (module docstring); ||B|| and K taken at ``x``."""
        W = self.weights(x)[0]
        e = torch.exp(theta)
        if self.layout == "weight":
            B_norm = float(torch.max(e * W.reshape(-1).abs()))
        elif self.layout == "feature":
            B_norm = float(torch.max(e * torch.linalg.vector_norm(W, dim=1)))
        else:
            B_norm = float(e[0] * torch.linalg.vector_norm(W))
        mu = self.strong_convexity(theta)
        return BoundConstants(L_g=self._L_g, B_norm=B_norm, L_B=float(e.max()),
                              L_Ainv=self._L_A / mu ** 2, L_gtheta=0.0,
                              sensitivity=self._sensitivity(theta, x), certified=True)

    # ------------------------------------------------- local rates of the bound
    def _group_norms(self, M):
        """Per hyperparameter, the norm of a weight-shaped (d, C) tensor over its group."""
        if self.layout == "weight":
            return M.reshape(-1).abs()
        if self.layout == "feature":
            return torch.linalg.vector_norm(M, dim=1)
        return torch.linalg.vector_norm(M).reshape(1)

    def _sensitivity(self, theta, x):
        r"""K >= ||A(x')^{-1} B(x)|| for every x': the ridge metric instead of mu.

        A(x') >= diag(Lambda) for every x' (the data term is convex), so
        Lambda^{1/2} A^{-1} Lambda^{1/2} <= I and A^{-2} <= A^{-1} / mu, hence
        ||A^{-1} Lambda^{1/2}||^2 = ||Lambda^{1/2} A^{-2} Lambda^{1/2}||
        <= ||Lambda^{1/2} A^{-1} Lambda^{1/2}|| / mu <= 1 / mu.  B maps a unit
        group direction u to Lambda X u (restricted to the group), which is
        Lambda^{1/2} applied to Lambda^{1/2} X u; the groups are disjoint, so
        ||A^{-1} B|| <= max_j sqrt(e^{theta_j}) ||X_group j|| / sqrt(mu).  Against
        ||B|| / mu = max_j e^{theta_j} ||X_j|| / mu this gains sqrt(e^{theta_j} / mu)
        wherever the ridge is heavier than the lightest one.
        """
        W = self.weights(x)[0]
        mu = self.strong_convexity(theta)
        return float(torch.max(torch.exp(0.5 * theta) * self._group_norms(W))) / math.sqrt(mu)

    def hessian_lipschitz_along(self, theta, x, q, radius, x_radius=math.inf):
        r"""M >= ||(A(x') - A(x)) q'|| / ||x' - x|| for every x' and ||q' - q|| <= radius.

        A(X) - A(X') acts on q' as (1/n) A^T [(S(z_n) - S(z'_n)) Q'_n]_n with
        Q'_n = q'^T a_n the C-vector of the adjoint's logits and
        ||S(z_n) - S(z'_n)|| <= L_S ||z_n - z'_n|| (module docstring), so
            ||(A(X) - A(X')) q'|| <= (1/n) ||A|| L_S (sum_n |z_n - z'_n|^2 |Q'_n|^2)^{1/2}
                                  <= (1/n) ||A||^2 L_S max_n |Q'_n| ||x - x'||,
        with |Q'_n| <= |Q_n| + ||a_n|| radius.  L_A ||q'|| of :meth:`bound_constants`
        has max_n ||a_n|| ||q'|| in place of max_n |Q'_n|: the adjoint's logits are
        much smaller than ||a_n|| ||q||, and ||q~|| much smaller than
        ||grad_x g|| / mu.  Global in x.  One oracle call.
        """
        A = self._A["train"]
        Q = torch.linalg.vector_norm(A @ q.detach(), dim=1)
        top = float(torch.max(Q + self._row_norms * radius))
        return self._norm2 / len(A) * L_SOFTMAX_HESSIAN * top

    def mixed_lipschitz_along(self, theta, x, q, radius, x_radius=math.inf):
        r"""N >= ||(B(x') - B(x))^T q'|| / ||x' - x|| for every x' and ||q' - q|| <= radius.

        (B(x') - B(x))^T q' sums e^{theta_j} (X' - X) o q' over each group j, at
        most e^{theta_j} ||X'_j - X_j|| ||q'_j|| (Cauchy-Schwarz in the group), so
        N = max_j e^{theta_j} (||q_j|| + radius) over the weight rows (the bias does
        not depend on theta).  L_B ||q*|| has max_j e^{theta_j} and the whole
        ||q*|| instead.  Global in x.
        """
        Qw = self.weights(q.detach())[0]
        return float(torch.max(torch.exp(theta) * (self._group_norms(Qw) + radius)))

    # ---------------------------------------------------------------- solver
    def solve_lower(self, theta, tol, x0=None, max_iter=10_000):
        if self.lower_solver == "newton":
            return newton_cg(self, theta, tol, x0=x0, max_iter=max_iter)
        return super().solve_lower(theta, tol, x0=x0, max_iter=max_iter)

    def lower_preconditioner(self, theta, x):
        """The Hessian's diagonal: (1/n) sum_n a_nj^2 p_nc (1 - p_nc) + Lambda_jc (one pass)."""
        A = self._A["train"]
        P = torch.softmax(A @ x, dim=1)
        return (A * A).T @ (P * (1 - P)) / len(A) + self.ridge_weights(theta)

    # ------------------------------------------------- closed-form derivatives
    def lower_grad(self, x, theta):
        return self._ce_grad(x, "train")[1] + self.ridge_weights(theta) * x

    def lower_hvp(self, x, theta, v):
        # Hessian of log-sum-exp at z applied to u: p * (u - <p, u>), row by row.
        A = self._A["train"]
        P = torch.softmax(A @ x, dim=1)
        U = A @ v
        dP = P * (U - torch.sum(P * U, dim=1, keepdim=True))
        return A.T @ dP / len(A) + self.ridge_weights(theta) * v

    def mixed_vjp(self, x, theta, w):
        # d/dtheta_j of Lambda * X is e^{theta_j} X on group j: B^T w sums X * Lambda * w
        # over each group (the bias row does not depend on theta).
        lam_x_w = self.ridge_weights(theta) * x * w
        if self.fit_bias:
            lam_x_w = lam_x_w[:-1]
        return self._reduce(lam_x_w)

    def upper_grads(self, x, theta):
        value, gx = self._ce_grad(x, "val")
        return value, gx, torch.zeros_like(theta)

    # ---------------------------------------------------------------- reporting
    def predict_proba(self, x, part="test"):
        """Class probabilities of the model x on a split ('train', 'val' or 'test')."""
        return torch.softmax(self._A[part] @ x, dim=1)

    def metrics(self, x):
        """Mean cross-entropy and accuracy of the model x on every split."""
        out = {}
        for part in ("train", "val", "test"):
            Z = self._A[part] @ x
            out[f"{part}_loss"] = float(self._cross_entropy(x, part))
            out[f"{part}_accuracy"] = float(
                (Z.argmax(dim=1) == self._labels[part]).double().mean())
        return out

    def evaluate(self, theta, x=None, tol=1e-8, max_iter=100_000):
        """Losses and accuracies of the model learned with hyperparameters theta.

        Parameters
        ----------
        theta : torch.Tensor
        x : torch.Tensor, optional
            A lower-level solution to use as it is, or as the warm start of a
            solve to ``tol`` (it is solved again only if its certificate is worse).
        tol : float
            Certified accuracy ||x - x*(theta)|| of the model evaluated.

        Returns
        -------
        dict
            ``train_loss``, ``train_accuracy``, ``val_loss``, ``val_accuracy``,
            ``test_loss``, ``test_accuracy``, and ``error_bound`` (the certified
            distance of the evaluated model to x*(theta)).
        """
        theta = check_theta(self, theta).detach()
        sol = self.solve_lower(theta, tol, x0=x, max_iter=max_iter)
        return {**self.metrics(sol.x), "error_bound": sol.error_bound}

    def sklearn_C(self, theta) -> float:
        """scikit-learn's C for a scalar hyperparameter.

        scikit-learn minimises 1/2 ||W||^2 + C sum_n CE_n; dividing h by e^theta
        gives that with C = 1 / (n e^theta).
        """
        if self.layout != "scalar":
            raise ValueError("sklearn_C needs layout='scalar'")
        return 1.0 / (len(self._A["train"]) * math.exp(float(theta.reshape(-1)[0])))


ENTRY = {
    "factory": LogisticRegression,
    "description": "Multinomial logistic regression on digits/MNIST with learned ridge "
                   "weights (per weight, per feature or scalar); validation cross-entropy",
    "test_params": {"layout": "feature", "n_train": 150, "n_val": 150, "n_test": 100},
}
