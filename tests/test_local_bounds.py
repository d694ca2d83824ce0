"""The two-budget bounds of bilevel.local_bounds against an LP solver and random feasible points."""
import math

import numpy as np
import pytest
import torch
from scipy.optimize import linprog

from bilevel import local_bounds


@pytest.mark.parametrize("seed", range(5))
def test_max_weighted_sum_is_above_the_lp_optimum_and_close_to_it(seed):
    gen = np.random.default_rng(seed)
    n = 40
    a = gen.exponential(size=n) ** 3
    w = gen.exponential(size=n) * 10.0 ** gen.uniform(-3, 3, size=n)
    C1, C2 = 1.0, float(gen.uniform(0.01, 10))
    lp = linprog(-a, A_ub=np.stack([np.ones(n), w]), b_ub=[C1, C2], bounds=(0, None))
    optimum = -lp.fun
    bound = local_bounds.max_weighted_sum(torch.tensor(a), torch.tensor(w), C1, C2)
    assert bound >= optimum * (1 - 1e-12)
    # The grid of multipliers is a geometric one: the bound is near the optimum.
    assert bound <= 1.2 * optimum
    # Never worse than the Euclidean budget alone.
    assert bound <= C1 * a.max() * (1 + 1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_max_weighted_abs_sum_bounds_random_feasible_points(seed):
    gen = torch.Generator().manual_seed(seed)
    n = 30
    b = torch.rand(n, generator=gen, dtype=torch.float64) ** 2
    w = 10.0 ** (6 * torch.rand(n, generator=gen, dtype=torch.float64) - 3)
    C1, C2 = 1.0, 0.05
    bound = local_bounds.max_weighted_abs_sum(b, w, C1, C2)
    assert bound <= math.sqrt(C1 * float((b * b).sum())) * (1 + 1e-12)
    best = 0.0
    for _ in range(2000):
        d = torch.randn(n, generator=gen, dtype=torch.float64).abs() * b / (1 + w)
        scale = min(math.sqrt(C1 / float((d * d).sum())), math.sqrt(C2 / float((w * d * d).sum())))
        best = max(best, float((b * d).sum()) * scale)
    assert best <= bound * (1 + 1e-12)


def test_energy_budget():
    assert local_bounds.energy_budget(1.0, 2.0) == pytest.approx(1.0)   # ||r||^2 / 4
    assert local_bounds.energy_budget(0.1, 2.0) == pytest.approx(0.2)   # eps ||r||
