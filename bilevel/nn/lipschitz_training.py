"""Lipschitz-regularised regression (Oberman and Calder 2018; docs/problems.md).

    minimise over u   (1/n) sum_i loss(u(x_i), y_i) + lam * Lip(u)

:func:`train_lipschitz_regression` trains a network u with Lip(u) replaced by a
smooth maximum (temperature * logsumexp(r / temperature)) of the local
estimates r of a mini-batch: the ratios |u(x_i) - u(x_j)| / ||x_i - x_j|| over
its pairs (sorted neighbours in 1-D, where they give the batch's exact maximum;
all pairs otherwise), its input-gradient norms, or both.  The smooth maximum
exceeds the maximum by at most temperature * log(#r) and spreads the gradient
over the near-maximal r instead of one, which makes the stochastic penalty far
less noisy.

:func:`fit_lipschitz_1d` solves the 1-D problem with squared loss *exactly*
over all Lipschitz functions: only the values v_i = u(x_i) enter the loss, and
for given values the smallest Lipschitz constant of an interpolant is the
largest slope between sorted neighbours (attained by the piecewise linear
interpolant), so the problem is the convex quadratic program

    minimise (1/n) sum_i (v_i - y_i)^2 + lam * L   s.t.  |v_{k+1} - v_k| <= L (x_{k+1} - x_k),

solved by cvxpy (an optional dependency, in the ``test`` extra).  The values are
unique (the objective is strictly convex in v); between and beyond the data any
function with the same constant is as good, and the piecewise linear
interpolant, constant outside the data, is returned.
"""
from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import torch
from torch import nn

from .lipschitz import input_gradient_norms

ESTIMATES = ("pairs", "gradient", "both")


def mlp(in_features, hidden=(64, 64), out_features=1, activation="relu", *, seed=0,
        dtype=torch.float64, num_knots=21, x_range=3.0, init="relu"):
    """A fully connected network as an ``nn.Sequential`` (so its bound is computable).

    Parameters
    ----------
    in_features, out_features : int
    hidden : sequence of int
        Widths of the hidden layers.
    activation : {'relu', 'tanh', 'spline'}
        'spline' uses :class:`bilevel.nn.splines.LinearSpline` (one learned linear
        spline per neuron, with ``num_knots`` (odd) on [-x_range, x_range] and
        ``init``).
    seed : int
        Seed of the initial weights.
    dtype : torch.dtype

    Returns
    -------
    nn.Sequential
    """
    if activation not in ("relu", "tanh", "spline"):
        raise ValueError(f"activation must be 'relu', 'tanh' or 'spline', got {activation!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layers, width = [], in_features
        for h in hidden:
            layers.append(nn.Linear(width, h))
            if activation == "spline":
                from .splines import LinearSpline  # optional: written alongside this module

                layers.append(LinearSpline(h, num_knots, x_range, init))
            else:
                layers.append(nn.ReLU() if activation == "relu" else nn.Tanh())
            width = h
        layers.append(nn.Linear(width, out_features))
        return nn.Sequential(*layers).to(dtype)


def smooth_max(values, temperature):
    """temperature * logsumexp(values / temperature): in [max, max + temperature log m]."""
    return temperature * torch.logsumexp(values / temperature, dim=0)


def _pair_indices(X):
    n = X.shape[0]
    Xf = X.reshape(n, -1)
    if Xf.shape[1] == 1:  # sorted neighbours: the exact maximum over the batch's pairs
        order = torch.argsort(Xf[:, 0])
        return order[:-1], order[1:]
    i, j = torch.triu_indices(n, n, offset=1, device=X.device)
    return i, j


def batch_lipschitz(model, X, *, estimate="pairs", temperature=0.02):
    """Smooth and hard maxima of the Lipschitz estimates of one mini-batch.

    Parameters
    ----------
    model : callable
    X : torch.Tensor
        The batch, shape (n, ...).
    estimate : {'pairs', 'gradient', 'both'}
        Pair ratios, input-gradient norms, or both pooled.
    temperature : float
        Relative temperature of the smooth maximum (times the batch's hard
        maximum, so the penalty is scale free).

    Returns
    -------
    (soft, hard) : (torch.Tensor, float)
        ``soft`` is differentiable in the model's parameters.
    """
    if estimate not in ESTIMATES:
        raise ValueError(f"estimate must be one of {ESTIMATES}, got {estimate!r}")
    n = X.shape[0]
    parts = []
    if estimate in ("pairs", "both"):
        out = model(X).reshape(n, -1)
        i, j = _pair_indices(X)
        Xf = X.reshape(n, -1)
        dist = torch.linalg.vector_norm(Xf[i] - Xf[j], dim=1)
        keep = dist > 0  # repeated inputs carry no slope
        parts.append(torch.linalg.vector_norm(out[i[keep]] - out[j[keep]], dim=1) / dist[keep])
    if estimate in ("gradient", "both"):
        parts.append(input_gradient_norms(model, X, create_graph=True))
    r = torch.cat(parts)
    if r.numel() == 0:
        return torch.zeros((), dtype=X.dtype, device=X.device), 0.0
    hard = float(r.detach().max())
    t = temperature * hard
    soft = smooth_max(r, t) if t > 0 else r.max()
    return soft, hard


@dataclasses.dataclass
class TrainResult:
    """Outcome of :func:`train_lipschitz_regression`.

    Attributes
    ----------
    model : nn.Module
        The trained model, with the parameters of the best validation epoch.
    history : list of dict
        Per epoch: epoch, loss, lipschitz (mean soft penalty), objective, val_loss.
    best_epoch : int
        The epoch whose parameters were kept (the last one without validation
        or with ``restore_best=False``).
    stopped_early : bool
        Whether the run stopped for lack of validation progress.
    """

    model: nn.Module
    history: list
    best_epoch: int
    stopped_early: bool


def _mse(pred, target):
    return torch.mean((pred.reshape(target.shape) - target) ** 2)


def train_lipschitz_regression(model, X, y, lam, *, X_val=None, y_val=None, loss=None,
                               estimate="pairs", temperature=0.02, epochs=500, batch_size=None,
                               lr=1e-3, patience=50, min_delta=0.0, restore_best=True,
                               callback=None, seed=0, progress=False) -> TrainResult:
    """Minimise mean loss + lam * (smooth batch estimate of Lip(model)) with Adam.

    Parameters
    ----------
    model : nn.Module
        Trained in place.
    X, y : torch.Tensor
        Training inputs (n, ...) and targets (n, ...) or (n,).
    lam : float
        Weight of the Lipschitz penalty.
    X_val, y_val : torch.Tensor, optional
        Validation data: the run keeps the parameters of the epoch with the
        smallest validation loss and stops after ``patience`` epochs without an
        improvement larger than ``min_delta``.
    loss : callable, optional
        ``loss(pred, target)`` -> mean loss (default mean squared error).
    estimate : {'pairs', 'gradient', 'both'}
        See :func:`batch_lipschitz`.
    temperature : float
        Relative temperature of the smooth maximum.
    epochs : int
    batch_size : int, optional
        Mini-batch size (default: the whole training set).
    lr : float
        Adam's step.
    patience : int
    min_delta : float
    restore_best : bool
        Return the parameters of the best validation epoch (default) rather than
        the last ones.
    callback : callable, optional
        ``callback(model, row) -> bool`` after every epoch (row: that epoch's
        history entry, which the callback may extend); True stops the run.
    seed : int
        Seed of the batch order.
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    TrainResult
    """
    from tqdm.auto import tqdm

    loss = _mse if loss is None else loss
    n = X.shape[0]
    batch_size = n if batch_size is None else min(int(batch_size), n)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    validate = X_val is not None and y_val is not None
    best_val, best_state, best_epoch, stale = math.inf, None, 0, 0
    history, stopped = [], False
    bar = tqdm(range(1, epochs + 1), disable=not progress, desc="lipschitz regression",
               mininterval=0.5)
    for epoch in bar:
        model.train()
        order = torch.randperm(n, generator=gen).to(X.device)
        sums = dict(loss=0.0, lipschitz=0.0)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            xb, yb = X[idx], y[idx]
            fit = loss(model(xb), yb)
            soft, _ = batch_lipschitz(model, xb, estimate=estimate, temperature=temperature)
            objective = fit + lam * soft
            opt.zero_grad()
            objective.backward()
            opt.step()
            sums["loss"] += float(fit.detach()) * len(idx) / n
            sums["lipschitz"] += float(soft.detach()) * len(idx) / n
        row = dict(epoch=epoch, loss=sums["loss"], lipschitz=sums["lipschitz"],
                   objective=sums["loss"] + lam * sums["lipschitz"])
        if validate:
            model.eval()
            with torch.no_grad():
                row["val_loss"] = float(loss(model(X_val), y_val))
            if row["val_loss"] < best_val - min_delta:
                best_val, best_epoch, stale = row["val_loss"], epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                stale += 1
        history.append(row)
        if callback is not None and callback(model, row):
            break
        bar.set_postfix(loss=f"{row['loss']:.3g}", lip=f"{row['lipschitz']:.3g}",
                        refresh=False)
        if validate and stale >= patience:
            stopped = True
            break
    bar.close()
    if best_state is not None and restore_best:
        model.load_state_dict(best_state)
    else:
        best_epoch = len(history)
    model.eval()
    return TrainResult(model=model, history=history, best_epoch=best_epoch,
                       stopped_early=stopped)


# --------------------------------------------------------------- the exact 1-D fit
@dataclasses.dataclass(frozen=True)
class LipschitzFit1D:
    """The exact minimiser of the 1-D problem, as a piecewise linear function.

    Attributes
    ----------
    knots : numpy.ndarray
        The distinct data points, increasing.
    values : numpy.ndarray
        The optimal values there.
    lipschitz : float
        Its Lipschitz constant (largest slope between neighbours).
    objective : float
        (1/n) sum (u(x_i) - y_i)^2 + lam * lipschitz.
    status : str
        The solver's status.
    """

    knots: np.ndarray
    values: np.ndarray
    lipschitz: float
    objective: float
    status: str

    def __call__(self, t):
        """u(t): linear between the knots, constant beyond them."""
        return np.interp(np.asarray(t, dtype=np.float64), self.knots, self.values)


def fit_lipschitz_1d(x, y, lam, *, solver="CLARABEL") -> LipschitzFit1D:
    """Exact minimiser of (1/n) sum (u(x_i) - y_i)^2 + lam Lip(u) over all functions of x.

    Parameters
    ----------
    x, y : array-like
        n points and labels (repeated points are merged: their values must agree).
    lam : float
        Weight of the Lipschitz constant (> 0).
    solver : str
        cvxpy solver name.

    Returns
    -------
    LipschitzFit1D

    Raises
    ------
    ImportError
        Without cvxpy (``pip install cvxpy``, or the ``test`` extra).
    """
    try:
        import cvxpy as cp
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("fit_lipschitz_1d needs cvxpy (pip install cvxpy)") from exc
    if not lam > 0:
        raise ValueError(f"lam must be > 0, got {lam}")
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    n = len(x)
    # One value per distinct point: sum_i (v - y_i)^2 = w (v - mean)^2 + constant.
    knots, inverse, weights = np.unique(x, return_inverse=True, return_counts=True)
    means = np.bincount(inverse, weights=y) / weights
    const = float(np.sum((y - means[inverse]) ** 2))
    gaps = np.diff(knots)
    v, L = cp.Variable(len(knots)), cp.Variable(nonneg=True)
    objective = cp.sum(cp.multiply(weights / n, cp.square(v - means))) + lam * L
    constraints = [cp.abs(cp.diff(v)) <= L * gaps] if len(knots) > 1 else []
    problem = cp.Problem(cp.Minimize(objective), constraints)
    problem.solve(solver=solver)
    values = np.asarray(v.value, dtype=np.float64)
    lip = float(np.max(np.abs(np.diff(values)) / gaps)) if len(knots) > 1 else 0.0
    value = float(np.sum(weights * (values - means) ** 2) + const) / n + lam * lip
    return LipschitzFit1D(knots=knots, values=values, lipschitz=lip, objective=value,
                          status=str(problem.status))
