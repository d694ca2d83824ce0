"""Linear splines on a uniform grid as functions: evaluation, its gradients, interpolation.

The grid, the evaluation and the two implementations are described in
:mod:`bilevel.nn.splines`.
"""
from __future__ import annotations

import math

import torch


# --------------------------------------------------------------------- the grid
def knots(num_knots: int, x_range: float, dtype=torch.float64, device=None) -> torch.Tensor:
    """The uniform grid t_k = -R + k T, k = 0..N-1, with T = 2R / (N - 1)."""
    _check_grid(num_knots, x_range)
    return torch.linspace(-x_range, x_range, num_knots, dtype=dtype, device=device)


def _check_grid(num_knots, x_range):
    if int(num_knots) != num_knots or num_knots < 3 or num_knots % 2 == 0:
        raise ValueError(f"num_knots must be an odd integer >= 3 (so that 0 is a knot), "
                         f"got {num_knots}")
    if not (x_range > 0 and math.isfinite(x_range)):
        raise ValueError(f"x_range must be a positive number, got {x_range}")


def _locate(x, x_min, T, N, offsets=None):
    """Interval index k (int64, clamped to [0, N-2], plus channel ``offsets``) and
    fraction f = (x - x_min) / T - k (x's dtype).

    k never carries gradients; f does when x requires grad and grad mode is on
    (the plain-autograd reference, and double backward through the custom
    function).  Otherwise everything runs in place: this pass runs in every
    forward and backward, on tensors as large as the input.
    """
    with torch.no_grad():
        u = torch.mul(x, 1.0 / T).add_(-x_min / T)
        k = torch.floor(u).clamp_(0, N - 2)
    if x.requires_grad and torch.is_grad_enabled():
        f = x / T - x_min / T - k
    else:
        f = u.sub_(k)
    if offsets is not None:
        k.add_(offsets)  # exact: small integers in floating point
    return k.long(), f


def _channel_offsets(x, C, N):
    """Offsets c * N of each channel (x's dtype), broadcastable against x (channel dim 1)."""
    if x.ndim == 1:
        if C != 1:
            raise ValueError(f"a 1-D input needs num_activations == 1, got {C}")
        return None
    if x.shape[1] != C:
        raise ValueError(f"input has {x.shape[1]} channels in dim 1, the spline has {C} "
                         f"activations")
    shape = [1, C] + [1] * (x.ndim - 2)
    return (torch.arange(C, device=x.device, dtype=x.dtype) * N).view(shape)


def _flat_index(x, C, N, x_min, T):
    return _locate(x, x_min, T, N, _channel_offsets(x, C, N))


def _differences(coefficients):
    """c_{k+1} - c_k per channel, padded with a 0 at k = N-1 and flattened (C * N)."""
    d = torch.diff(coefficients, dim=1)
    return torch.cat([d, torch.zeros_like(d[:, :1])], dim=1).reshape(-1)


def linear_spline_autograd(x, coefficients, x_range):
    """sigma(x) by plain gather ops, differentiated by autograd (reference version).

    Parameters
    ----------
    x : torch.Tensor
        Input, channel dimension 1 ((N, C, ...) or (N, C)); 1-D if C == 1.
    coefficients : torch.Tensor
        (C, N) values at the knots.
    x_range : float
        R, the grid is [-R, R].
    """
    C, N = coefficients.shape
    T = 2 * x_range / (N - 1)
    flat, f = _flat_index(x, C, N, -x_range, T)
    c = coefficients.reshape(-1)
    c0, c1 = c[flat], c[flat + 1]
    return c0 + f * (c1 - c0)


def _fast_index(x, C, N, x_min, T):
    """No-grad pass for large inputs: (idx, f, buf) with few allocations.

    idx: int32 flat index k + channel offset; f: the fraction; buf: a spare float
    buffer of x's shape for the caller to reuse as its output.  Three tensors
    of x's size are allocated, everything else runs in place: on the CPU,
    allocating (and first touching) a large tensor costs as much as a pass over
    it, and ReLU allocates once per pass.  x must be contiguous.
    """
    u = torch.mul(x, 1.0 / T).add_(-x_min / T)
    buf = torch.clamp(u, 0, N - 2).floor_()  # = clamp(floor(u)), N - 2 being an integer
    f = u.sub_(buf)
    offsets = _channel_offsets(x, C, N)
    if offsets is not None:
        buf.add_(offsets)
    return buf.to(torch.int32).view(-1), f, buf


class SplineFunction(torch.autograd.Function):
    """sigma(x) with a hand-written backward that saves only x (and the coefficients).

    Forward: gather c_k and d_k = c_{k+1} - c_k, and return c_k + f d_k.
    Backward, with g the incoming gradient: dsigma/dx = d_k / T (the right
    derivative at a knot), and dsigma/dc sends g (1 - f) to c_k and g f to
    c_{k+1}: two ``index_add`` over the same index (the sums of g and of g f per
    interval), then a shift on the small (C, N) table.  k and f are recomputed
    from x: one cheap pass instead of keeping an index tensor, so the saved
    memory equals ReLU's (one tensor of the input's size), and the temporaries
    are three tensors of the input's size (:func:`_fast_index`).

    Double backward (``create_graph=True``, e.g. Hessian-vector products) takes
    a second, differentiable implementation of the same backward (gather and
    ``scatter_add`` ops that autograd can differentiate).
    """

    @staticmethod
    def forward(ctx, x, coefficients, x_range):
        C, N = coefficients.shape
        T = 2 * x_range / (N - 1)
        ctx.save_for_backward(x, coefficients)
        ctx.x_range = x_range
        with torch.no_grad():
            xc = x.contiguous()
            idx, f, out = _fast_index(xc, C, N, -x_range, T)
            table = coefficients.to(x.dtype)
            torch.index_select(_differences(table), 0, idx, out=out.view(-1))
            out.mul_(f)
            torch.index_select(table.reshape(-1), 0, idx, out=f.view(-1))
            return out.add_(f)

    @staticmethod
    def backward(ctx, grad_out):
        x, coefficients = ctx.saved_tensors
        if torch.is_grad_enabled():
            return SplineFunction._differentiable_backward(ctx, x, coefficients, grad_out)
        C, N = coefficients.shape
        T = 2 * ctx.x_range / (N - 1)
        g = grad_out.contiguous()
        idx, f, buf = _fast_index(x.contiguous(), C, N, -ctx.x_range, T)
        grad_x = grad_c = None
        if ctx.needs_input_grad[1]:
            total = torch.zeros(C * N, dtype=x.dtype, device=x.device)
            total.index_add_(0, idx, g.view(-1))
            upper = torch.zeros_like(total).index_add_(0, idx, f.mul_(g).view(-1))
            grad_c = SplineFunction._shift(total.view(C, N), upper.view(C, N))
            grad_c = grad_c.to(coefficients.dtype)
        if ctx.needs_input_grad[0]:
            table = _differences(coefficients.to(x.dtype)) / T
            torch.index_select(table, 0, idx, out=buf.view(-1))
            grad_x = buf.mul_(g).view_as(x)
        return grad_x, grad_c, None

    @staticmethod
    def _shift(total, upper):
        """Interval k: c_k gets sum g (1 - f) = total - upper, c_{k+1} gets upper."""
        shifted = torch.cat([torch.zeros_like(upper[:, :1]), upper[:, :-1]], dim=1)
        return total - upper + shifted

    @staticmethod
    def _differentiable_backward(ctx, x, coefficients, grad_out):
        C, N = coefficients.shape
        T = 2 * ctx.x_range / (N - 1)
        flat, f = _flat_index(x, C, N, -ctx.x_range, T)
        grad_x = grad_c = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_out * torch.take(_differences(coefficients) / T, flat)
        if ctx.needs_input_grad[1]:
            idx = flat.reshape(-1)
            zeros = torch.zeros(C * N, dtype=grad_out.dtype, device=grad_out.device)
            total = zeros.scatter_add(0, idx, grad_out.reshape(-1)).view(C, N)
            upper = zeros.scatter_add(0, idx, (grad_out * f).reshape(-1)).view(C, N)
            grad_c = SplineFunction._shift(total, upper).to(coefficients.dtype)
        return grad_x, grad_c, None


def linear_spline(x, coefficients, x_range):
    """sigma(x) for coefficients (C, N) on [-R, R]; memory-lean (:class:`SplineFunction`)."""
    return SplineFunction.apply(x, coefficients, float(x_range))


def interpolation_matrix(x, num_knots, x_range) -> torch.Tensor:
    """The (n, N) matrix S with S c = sigma_c(x) for a single spline (1-D x).

    Row i holds 1 - f_i at k_i and f_i at k_i + 1 (with the linear extension,
    f_i < 0 or > 1 outside the grid).  Dense: meant for 1-D regression with a
    few dozen knots.
    """
    _check_grid(num_knots, x_range)
    x = torch.as_tensor(x).reshape(-1)
    T = 2 * x_range / (num_knots - 1)
    k, f = _locate(x, -x_range, T, num_knots)
    S = torch.zeros(x.numel(), num_knots, dtype=x.dtype, device=x.device)
    rows = torch.arange(x.numel(), device=x.device)
    S[rows, k] = 1 - f
    S[rows, k + 1] = f
    return S


