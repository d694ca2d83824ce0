"""LinearSpline: evaluation, derivatives, functionals, constraints, sparsification, memory."""
import math

import numpy as np
import pytest
import torch

from bilevel.nn.splines import (
    LinearSpline,
    evaluate_potential,
    interpolation_matrix,
    linear_spline,
    linear_spline_autograd,
    potential_tables,
)


def random_spline(C=3, N=9, R=1.5, seed=0):
    sp = LinearSpline(C, N, R, init="zero", dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sp.coefficients.copy_(torch.randn(C, N, generator=gen, dtype=torch.float64))
    return sp


def numpy_reference(x, t, c):
    """np.interp inside the grid, linear extrapolation with the end slopes outside."""
    y = np.interp(x, t, c)
    lo, hi = x < t[0], x > t[-1]
    y[lo] = c[0] + (c[1] - c[0]) / (t[1] - t[0]) * (x[lo] - t[0])
    y[hi] = c[-1] + (c[-1] - c[-2]) / (t[-1] - t[-2]) * (x[hi] - t[-1])
    return y


def away_from_knots(x, sp, margin=1e-3):
    """Move points within ``margin`` of a knot off it (finite differences across a kink fail)."""
    t = sp.grid
    d = (x.unsqueeze(-1) - t).abs().amin(dim=-1)
    return torch.where(d < margin, x + 3 * margin, x)


@pytest.mark.parametrize("shape", [(40, 3), (5, 3, 4, 6)])
def test_equals_numpy_interp_with_linear_extension(shape):
    sp = random_spline()
    x = 3.0 * sp.x_range * (2 * torch.rand(shape, dtype=torch.float64) - 1)  # in and out
    y = sp(x).detach().numpy()
    t = sp.grid.numpy()
    for ch in range(3):
        xs = x.select(1, ch).numpy().ravel()
        ref = numpy_reference(xs, t, sp.coefficients[ch].detach().numpy())
        np.testing.assert_allclose(y.take(ch, axis=1).ravel(), ref, rtol=0, atol=1e-12)
    assert ((x.abs() > sp.x_range).float().mean() > 0.3)  # the extension was exercised


def test_float32_and_one_dimensional_input():
    sp = LinearSpline(1, 7, 1.0, init="absolute_value")
    x = torch.linspace(-3, 3, 101)
    assert sp(x).dtype == torch.float32
    torch.testing.assert_close(sp(x), x.abs(), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="channels"):
        LinearSpline(4, 7, 1.0)(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="odd"):
        LinearSpline(1, 8, 1.0)


@pytest.mark.parametrize("init,fn", [
    ("relu", torch.relu), ("identity", lambda t: t), ("absolute_value", torch.abs),
    ("zero", torch.zeros_like),
    ("leaky_relu", lambda t: torch.nn.functional.leaky_relu(t, 0.01))])
def test_inits_are_exact_everywhere(init, fn):
    sp = LinearSpline(2, 11, 2.0, init=init, dtype=torch.float64)
    x = torch.linspace(-7, 7, 301, dtype=torch.float64).view(-1, 1).expand(-1, 2)
    torch.testing.assert_close(sp(x), fn(x), atol=1e-14, rtol=0)


def test_custom_backward_matches_autograd_reference():
    sp = random_spline()
    x = (4 * torch.rand(6, 3, 5, dtype=torch.float64) - 2).requires_grad_(True)
    w = torch.randn(6, 3, 5, dtype=torch.float64)
    y1 = linear_spline(x, sp.coefficients, sp.x_range)
    g1 = torch.autograd.grad((y1 * w).sum(), (x, sp.coefficients))
    y2 = linear_spline_autograd(x, sp.coefficients, sp.x_range)
    g2 = torch.autograd.grad((y2 * w).sum(), (x, sp.coefficients))
    torch.testing.assert_close(y1, y2, atol=1e-14, rtol=0)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def test_float32_fast_path_on_non_contiguous_input():
    sp = LinearSpline(4, 11, 2.0, init="leaky_relu")
    with torch.no_grad():
        sp.coefficients.add_(0.1 * torch.randn(4, 11))
    base = 3 * torch.randn(5, 6, 4, 3)
    x = base.permute(0, 2, 3, 1).requires_grad_(True)  # (5, 4, 3, 6): channels in dim 1
    assert not x.is_contiguous()
    w = torch.randn(x.shape)
    y1 = sp(x)
    g1 = torch.autograd.grad((y1 * w).sum(), (x, sp.coefficients))
    y2 = linear_spline_autograd(x, sp.coefficients, sp.x_range)
    g2 = torch.autograd.grad((y2 * w).sum(), (x, sp.coefficients))
    torch.testing.assert_close(y1, y2, atol=1e-5, rtol=1e-5)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)


def test_gradcheck_input_and_coefficients():
    sp = random_spline(C=2, N=7)
    x = away_from_knots(3 * sp.x_range * (2 * torch.rand(4, 2, 3, dtype=torch.float64) - 1), sp)
    x.requires_grad_(True)
    coeffs = sp.coefficients.detach().clone().requires_grad_(True)

    def f(a, c):
        return linear_spline(a, c, sp.x_range)

    assert torch.autograd.gradcheck(f, (x, coeffs))
    # The backward is built from differentiable ops: double backward works too
    # (needed by Hessian-vector products through the spline).
    assert torch.autograd.gradgradcheck(f, (x, coeffs))


def test_tv2_and_lipschitz_closed_forms():
    # Grid on [-2, 2] with T = 0.5 contains 0 and +-1.
    R, N = 2.0, 9
    relu = LinearSpline(1, N, R, init="relu", dtype=torch.float64)
    absv = LinearSpline(1, N, R, init="absolute_value", dtype=torch.float64)
    ident = LinearSpline(1, N, R, init="identity", dtype=torch.float64)
    clamp = LinearSpline(1, N, R, init="zero", dtype=torch.float64)
    with torch.no_grad():
        clamp.coefficients.copy_(clamp.grid.clamp(-1, 1).view(1, -1))
    x = torch.linspace(-6, 6, 241, dtype=torch.float64).view(-1, 1)
    torch.testing.assert_close(clamp(x), x.clamp(-1, 1), atol=1e-14, rtol=0)
    for sp, tv, lip in ((relu, 1.0, 1.0), (absv, 2.0, 1.0), (clamp, 2.0, 1.0), (ident, 0.0, 1.0)):
        assert float(sp.tv2().detach()) == pytest.approx(tv, abs=1e-12)
        assert float(sp.lipschitz(per_channel=False).detach()) == pytest.approx(lip, abs=1e-12)
    # Scaling the function scales both; per-channel shapes.
    sp = LinearSpline(3, N, R, init="absolute_value", dtype=torch.float64)
    with torch.no_grad():
        sp.coefficients.mul_(torch.tensor([[1.0], [2.0], [3.0]], dtype=torch.float64))
    torch.testing.assert_close(sp.tv2(per_channel=True),
                               torch.tensor([2.0, 4.0, 6.0], dtype=torch.float64))
    torch.testing.assert_close(sp.lipschitz(), torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    assert float(sp.tv2().detach()) == pytest.approx(12.0)
    assert sp.num_active_knots(1e-6).tolist() == [1, 1, 1]


def test_tv2_is_differentiable():
    sp = random_spline()
    sp.tv2().backward()
    assert sp.coefficients.grad is not None and torch.isfinite(sp.coefficients.grad).all()


@pytest.mark.parametrize("anchor", ["zero", "mean"])
@pytest.mark.parametrize("bounds", [(0.0, 1.0), (-0.5, 0.5), (0.2, 3.0)])
def test_slope_projection_is_feasible_and_idempotent(anchor, bounds):
    sp = random_spline(C=4, N=11)
    before = sp.coefficients.detach().clone()
    sp.project_slopes_(*bounds, anchor=anchor)
    s = sp.slopes().detach()
    assert s.min() >= bounds[0] - 1e-12 and s.max() <= bounds[1] + 1e-12
    after = sp.coefficients.detach().clone()
    if anchor == "zero":  # sigma(0) kept
        torch.testing.assert_close(after[:, 5], before[:, 5], atol=1e-14, rtol=0)
    else:
        torch.testing.assert_close(after.mean(1), before.mean(1), atol=1e-12, rtol=0)
    sp.project_slopes_(*bounds, anchor=anchor)
    torch.testing.assert_close(sp.coefficients.detach(), after, atol=1e-12, rtol=0)


def test_slope_projection_keeps_feasible_splines():
    sp = LinearSpline(2, 9, 1.0, init="relu", dtype=torch.float64)
    before = sp.coefficients.detach().clone()
    sp.project_slopes_(0.0, 1.0)
    torch.testing.assert_close(sp.coefficients.detach(), before, atol=1e-14, rtol=0)


@pytest.mark.parametrize("tol", [0.05, 0.3, 10.0])
def test_sparsify_keeps_the_function_within_the_reported_deviation(tol):
    gen = torch.Generator().manual_seed(1)
    sp = LinearSpline(3, 21, 2.0, init="absolute_value", dtype=torch.float64)
    with torch.no_grad():  # |x| plus small wiggles: many knots with small slope changes
        sp.coefficients.add_(0.01 * torch.randn(3, 21, generator=gen, dtype=torch.float64))
        sp.coefficients[2] = sp.coefficients[2] * 0.0 + 0.3 * sp.grid  # affine channel
    x = torch.linspace(-8, 8, 4001, dtype=torch.float64).view(-1, 1).expand(-1, 3)
    old = sp(x).detach()
    active_before = sp.active_knots(tol)
    coeffs_before = sp.coefficients.detach().clone()
    report = sp.sparsify_(tol)
    new = sp(x).detach()
    dev = (new - old).abs().amax(dim=0)
    # Removed knots have slope change 0; kept (active) knots keep their values.
    changes = sp.slope_changes().detach().abs()
    assert float(changes[~active_before].max()) <= 1e-9
    interior = sp.coefficients.detach()[:, 1:-1]
    torch.testing.assert_close(interior[active_before], coeffs_before[:, 1:-1][active_before])
    assert report.active.tolist() == active_before.sum(1).tolist()
    for ch in range(3):
        if math.isfinite(float(report.max_deviation[ch])):
            assert float(dev[ch]) <= float(report.max_deviation[ch]) + 1e-12
            assert float(report.max_deviation[ch]) <= report.bound + 1e-12
        inside = x[:, ch].abs() <= sp.x_range
        assert float((new - old)[inside, ch].abs().max()) <= \
            float(report.max_deviation_grid[ch]) + 1e-12
    assert float(report.max_deviation[2]) < 1e-12  # an affine channel is untouched
    if tol == 0.05:
        assert int(report.active[0]) >= 1  # the kink of |x| at 0 survives a small tol


def test_sparsify_removes_nothing_when_every_knot_is_active():
    sp = LinearSpline(1, 5, 1.0, init="zero", dtype=torch.float64)
    with torch.no_grad():
        sp.coefficients.copy_(torch.tensor([[0.0, 1.0, 0.0, 1.0, 0.0]], dtype=torch.float64))
    report = sp.sparsify_(0.1)
    assert int(report.removed[0]) == 0 and float(report.max_deviation[0]) == 0.0


def test_saved_memory_is_one_input_sized_tensor():
    """The autograd graph of LinearSpline keeps only x (plus the small coefficients)."""
    sp = LinearSpline(8, 31, 2.0)
    x = torch.randn(16, 8, 10, 10, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = sp(x)
    assert sum(saved) <= x.numel() * 4 + sp.coefficients.numel() * 4
    y.sum().backward()
    assert x.grad.shape == x.shape and sp.coefficients.grad.shape == (8, 31)


def test_interpolation_matrix_reproduces_the_spline():
    sp = random_spline(C=1, N=9)
    x = 3 * (2 * torch.rand(50, dtype=torch.float64) - 1)
    S = interpolation_matrix(x, 9, sp.x_range)
    torch.testing.assert_close(S @ sp.coefficients[0].detach(), sp(x).detach(),
                               atol=1e-13, rtol=0)


def test_smoothed_potential_tables():
    """psi(0) = psi'(0) = 0, derivatives consistent, psi'' within the slope range, and
    psi' is the width-T box average of the linear spline (up to a constant)."""
    R, N = 1.5, 7
    T = 2 * R / (N - 1)
    s = torch.rand(2, N - 1, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    tables = potential_tables(s, R)
    zero = torch.zeros(1, 2, 1, dtype=torch.float64)
    for v in evaluate_potential(zero, tables, R, (0, 1)):
        assert float(v.abs().max()) < 1e-15
    z = torch.linspace(-4, 4, 1601, dtype=torch.float64).view(1, 1, -1).expand(1, 2, -1)
    p0, p1, p2 = evaluate_potential(z.contiguous(), tables, R, (0, 1, 2))
    h = float(z[0, 0, 1] - z[0, 0, 0])
    fd1 = (p0[..., 2:] - p0[..., :-2]) / (2 * h)
    assert float((fd1 - p1[..., 1:-1]).abs().max()) < 1e-4
    fd2 = (p1[..., 2:] - p1[..., :-2]) / (2 * h)
    assert float((fd2 - p2[..., 1:-1]).abs().max()) < 1e-2  # psi''' jumps at the nodes
    assert bool((p2 >= s.min(1).values.view(1, 2, 1) - 1e-14).all())
    assert bool((p2 <= s.max(1).values.view(1, 2, 1) + 1e-14).all())
    # box average of the linear spline with these slopes
    sp = LinearSpline(2, N, R, init="zero", dtype=torch.float64)
    with torch.no_grad():
        sp.coefficients.copy_(torch.cat([torch.zeros(2, 1, dtype=torch.float64),
                                         torch.cumsum(s * T, 1)], 1))
    t = torch.linspace(-3, 3, 61, dtype=torch.float64)
    w = torch.linspace(-T / 2, T / 2, 4001, dtype=torch.float64)
    pts = (t.view(-1, 1) + w.view(1, -1)).reshape(-1, 1).expand(-1, 2).contiguous()
    vals = sp(pts).detach().view(61, 4001, 2)
    avg = ((vals[:, 1:] + vals[:, :-1]) / 2).mean(1)  # trapezoid rule: exact on pieces
    (sig,) = evaluate_potential(t.view(1, 1, -1).expand(1, 2, -1).contiguous(), tables, R, (1,))
    diff = avg - sig[0].T
    assert float((diff - diff.mean(0)).abs().max()) < 1e-6


@pytest.mark.parametrize("shape", [(16, 3, 40, 40), (1, 3, 150, 150)])
def test_potentials_in_cpu_blocks_equal_the_whole_evaluation(shape):
    """Blocks of samples (or of one image's rows) give every entry, and the gradient in
    the tables, exactly as one evaluation of the whole tensor."""
    from bilevel.nn.splines import potentials

    assert torch.Size(shape).numel() > potentials.CPU_BLOCK
    gen = torch.Generator().manual_seed(0)
    slopes = torch.rand(3, 20, generator=gen, dtype=torch.float64).requires_grad_(True)
    tables = potentials.potential_tables(slopes, 0.3)
    z = 0.2 * torch.randn(shape, generator=gen, dtype=torch.float64)
    blocked = potentials.evaluate_potential(z, tables, 0.3, (0, 1, 2))
    whole = potentials._evaluate_block(z, tables, 0.3, (0, 1, 2))
    for a, b in zip(blocked, whole, strict=True):
        assert torch.equal(a, b)
    (g_blocked,) = torch.autograd.grad(blocked[1].sum(), slopes, retain_graph=True)
    (g_whole,) = torch.autograd.grad(whole[1].sum(), slopes)
    torch.testing.assert_close(g_blocked, g_whole, rtol=1e-12, atol=1e-12)
