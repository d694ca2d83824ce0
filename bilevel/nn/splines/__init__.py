r"""Learned linear-spline activations (Aziznejad, Gupta, Campos, Unser 2020).

A linear spline here is the linear interpolation of coefficients c_0..c_{N-1}
on the uniform grid

    t_k = -R + k T,   k = 0..N-1,   T = 2 R / (N - 1),   N odd,

so the grid is symmetric about 0 and 0 is a knot (t_{(N-1)/2} = 0).  Outside
[-R, R] the spline continues linearly with its end slopes, so it is affine
beyond the grid and its breakpoints are the interior knots t_1..t_{N-2} only.
With slopes s_k = (c_{k+1} - c_k) / T (docs/problems.md):

    TV(2)(sigma) = sum_{k=1}^{N-2} |s_k - s_{k-1}| = sum_k |c_{k+1} - 2 c_k + c_{k-1}| / T
    Lip(sigma)   = max_k |s_k|.

Evaluation locates x in its interval, k = clamp(floor((x + R) / T), 0, N - 2),
takes the fractional part f = (x + R) / T - k (outside the grid f < 0 or
f > 1, which *is* the linear extension), and gathers two coefficients:
sigma(x) = c_k + f (c_{k+1} - c_k).  No tensor has a knot dimension on top of
the input's: memory is O(input), whatever N.

Two implementations of the same map:

- :class:`SplineFunction` (what :class:`LinearSpline` uses): a custom autograd
  function that saves only the input ``x`` (recomputing k and f in the
  backward pass), so the activation memory is the same as ReLU's one saved
  tensor; forward and backward allocate three temporaries of the input's size
  (an int32 index, the fractions, one buffer reused as the output).  Double
  backward (Hessian-vector products) goes through a differentiable version of
  the backward.
- :func:`linear_spline_autograd`: the same formula in plain gather ops, left to
  autograd (which saves two int64 index tensors, the fractions and the
  coefficient differences: 24 bytes per float32 element); kept as an
  independent reference for tests and the memory benchmark.

``benchmarks/spline_activation.py`` measures both against ReLU.

The package also has the smoothed monotone splines used as potentials of convex
ridge regularizers (:func:`potential_tables`, :func:`evaluate_potential`).
"""
from __future__ import annotations

from .functional import (
    SplineFunction,
    interpolation_matrix,
    knots,
    linear_spline,
    linear_spline_autograd,
)
from .module import INITS, LinearSpline, SparsifyReport
from .potentials import evaluate_potential, potential_tables

__all__ = ["INITS", "LinearSpline", "SparsifyReport", "SplineFunction", "evaluate_potential",
           "interpolation_matrix", "knots", "linear_spline", "linear_spline_autograd",
           "potential_tables"]
