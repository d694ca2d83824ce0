r"""Fields of experts: learning convolution filters, their weights and smoothings.

Lower level (docs/problems.md), for N images x_i of size H x W:

    h(x, theta) = sum_i [ 1/2 ||x_i - y_i||^2
                          + e^{theta_0} sum_k e^{w_k} sum_p phi_{nu_k}((K_k x_i)_p) ],
    phi_nu(t) = sqrt(t^2 + nu^2)  (Charbonnier),   nu_k = e^{l_k},   c_k = r_k - mean(r_k),

with K_k the 'valid' correlation with the s x s filter c_k and K_k^T its exact
adjoint (:mod:`bilevel_problems.filter_bank`).  Upper level:
g(x) = mean_i 1/2 ||x_i - x_i^true||^2 (:mod:`bilevel_problems.denoising`).

theta is flat: [theta_0, w_1..w_K, l_1..l_K, r_1..r_K] (r_k an s x s raw filter,
row-major), so 1 + 2K + K s^2 entries (2449 for the paper's 48 filters of 7 x 7).
The filters are zero-mean by construction: c_k = P r_k with P the projection that
removes the mean.  They start from the 2-D DCT-II basis without its constant
function (:func:`~bilevel_problems.filter_bank.dct_filters`: s^2 - 1 of them,
exactly 48 for 7 x 7); further filters are random, drawn from ``seed``.

Notation below: alpha_k = e^{theta_0 + w_k}, z_k = K_k x, u_k = K_k w,
phi' = t / r, phi'' = nu^2 / r^3 with r = sqrt(t^2 + nu^2), and
d phi'(t) / d l = -t phi''(t) (as d/dl = nu d/dnu).  Closed forms, no double backward:

    grad_x h = x - y + sum_k alpha_k K_k^T phi'(z_k)
    A v      = v + sum_k alpha_k K_k^T (phi''(z_k) K_k v)
    B^T w    = ( sum_k alpha_k G_k,  alpha_k G_k,  -alpha_k <z_k phi''(z_k), u_k>,
                 alpha_k P [corr(x, phi''(z_k) u_k) + corr(w, phi'(z_k))] )_k,
               G_k = <phi'(z_k), u_k>,

where corr(x, a)_j = sum_p a_p x_{p + j} (j in the s x s window) is the derivative
of <a, K_c x> in c: it is the weight gradient of a convolution.

Implementation.  All K filters act as one convolution with K output channels.  On
the CPU the convolutions are done as im2col + GEMM on chunks of about
``chunk_columns`` output pixels (a strip of rows of one image, or several small
images): patches (one strided copy), (K x s^2) @ (s^2 x L), the pointwise
nonlinearity in place, (s^2 x K) @ (K x L), and the fold back onto the image, all
while the chunk is in cache.  The columns follow the rows of the input block, gaps
included (the 'flat' layout of :class:`.gemm.Chunk`), so that the fold is two small
GEMVs on shifted views of zero-padded buffers rather than ``F.fold``.  The chunks
run on ``torch.get_num_threads()`` threads at once, each single-threaded
(:func:`.gemm.run_chunks`; small GEMMs scale poorly inside the BLAS, the pointwise work not
at all); strips that share pixels run in different phases, so the result is the
same, bit for bit, for any number of threads.  That is several times faster than
``conv2d`` and ``conv_transpose2d``, which in float64 on the CPU have no oneDNN
kernel, and it never holds the N x K x H x W responses: the buffers, kept by the
problem for the next call, take up to about 20 MiB per thread (48 filters of 7 x 7,
256-pixel-wide images, float64), where autograd's double backward needs GiB
(``benchmarks/hvp_closed_form.py`` measures both).  When autograd records the
operations (an input that requires grad), the chunks run one at a time with
``F.fold``.  Elsewhere (CUDA) ``conv2d`` / ``conv_transpose2d`` on the whole batch.
``backend`` chooses explicitly.

Certified constants (mu = 1, L, and those of the hypergradient bound) are derived
in :mod:`.bounds` (:meth:`FieldsOfExperts.smoothness`, :meth:`FieldsOfExperts.bound_constants`),
the local rates of the bound in :mod:`.local_rates`.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import torch

from .. import filter_bank, params
from ..denoising import DenoisingProblem
from .bounds import CertifiedConstants
from .gemm import CHUNK_COLUMNS, plan_chunks, run_chunks
from .local_rates import LocalRates

BACKENDS = ("auto", "gemm", "conv")


class Params(NamedTuple):
    """theta unpacked: alpha_k = e^{theta_0 + w_k}, nu_k = e^{l_k}, filters c_k as rows (K, s^2)."""

    alpha: torch.Tensor
    nu: torch.Tensor
    filters: torch.Tensor


class FieldsOfExperts(LocalRates, CertifiedConstants, DenoisingProblem):
    """Bilevel learning of a fields-of-experts denoiser: filters, weights, smoothings.

    Parameters
    ----------
    num_filters : int
        K.  The paper uses 48; the default 8 keeps CPU runs short.
    filter_size : int
        s (filters are s x s).  The paper uses 7; the default 5.
    log_scale : float
        Starting theta_0 (global weight e^{theta_0}); -5 starts near the identity
        denoiser, as the paper's TV start (-5, -5).
    log_smoothing : float
        Starting l_k for every filter (nu_k = e^{l_k}); -3 gives nu = 0.05, about
        half the response of a unit-norm filter to noise of sigma = 0.1.
    backend : {'auto', 'gemm', 'conv'}
        How the convolutions of the closed-form derivatives run: 'gemm' (im2col +
        GEMM on cache-sized chunks, the fastest on the CPU), 'conv' (``conv2d`` on
        the whole batch), 'auto' = 'gemm' on the CPU and 'conv' elsewhere.
    chunk_columns : int
        Output pixels per chunk of the 'gemm' backend.
    border : int
        Train on the noisy images mirrored by ``border`` pixels, g on the crop
        (:class:`~bilevel_problems.denoising.DenoisingProblem`).  Default 0.
    n_images, size, sigma, seed, source, images, noisy, dtype, device
        The training images (:class:`~bilevel_problems.denoising.DenoisingProblem`):
        4 of 64 x 64 by default, float64 on the CPU; ``seed`` also draws any
        random starting filters.
    """

    name = "fields_of_experts"

    def __init__(self, n_images=4, size=64, sigma=0.1, seed=0, num_filters=8, filter_size=5,
                 log_scale=-5.0, log_smoothing=-3.0, source=None, images=None, noisy=None,
                 backend="auto", chunk_columns=CHUNK_COLUMNS, border=0, dtype=torch.float64,
                 device="cpu"):
        params.choice(self.name, "backend", backend, BACKENDS)
        to = dict(dtype=dtype, device=device)
        self.K, self.s = filter_bank.check_bank(self.name, num_filters, filter_size)
        self.boundary_pad = self.s - 1  # DenoisingProblem.boundary_pad
        log_scale = params.number(self.name, "log_scale", log_scale)
        log_smoothing = params.number(self.name, "log_smoothing", log_smoothing)
        super().__init__(n_images=n_images, size=size, sigma=sigma, seed=seed, source=source,
                         images=images, noisy=noisy, min_size=self.s, border=border, **to)
        self.backend = (("gemm" if torch.device(device).type == "cpu" else "conv")
                        if backend == "auto" else backend)
        self.chunk_columns = max(1, int(chunk_columns))
        filters = filter_bank.dct_filters(self.s, self.K, seed=seed)
        self.theta0 = torch.cat([
            torch.tensor([float(log_scale)], dtype=torch.float64),
            torch.zeros(self.K, dtype=torch.float64),
            torch.full((self.K,), float(log_smoothing), dtype=torch.float64),
            filters.flatten()]).to(**to)

    # ------------------------------------------------------------ parameters
    @property
    def dim_theta(self) -> int:
        """1 + 2K + K s^2."""
        return 1 + 2 * self.K + self.K * self.s ** 2

    def params(self, theta) -> Params:
        """Unpack theta into (alpha_k, nu_k, zero-mean filters c_k as rows (K, s^2))."""
        K = self.K
        if theta.shape != (self.dim_theta,):
            raise ValueError(f"fields_of_experts: theta must have {self.dim_theta} entries "
                             f"(1 + 2K + K s^2), got shape {tuple(theta.shape)}")
        return Params(alpha=torch.exp(theta[0] + theta[1:1 + K]),
                      nu=torch.exp(theta[1 + K:1 + 2 * K]),
                      filters=filter_bank.zero_mean(theta[1 + 2 * K:].view(K, self.s ** 2)))

    def filters(self, theta) -> torch.Tensor:
        """The zero-mean filters c_k of theta, shape (K, s, s)."""
        return self.params(theta).filters.view(self.K, self.s, self.s)

    def convolve(self, x, theta) -> torch.Tensor:
        """K x: responses (N, K, H - s + 1, W - s + 1) of x (N, H, W) to every filter."""
        return filter_bank.correlate(x, self.params(theta).filters, self.s)

    def convolve_adjoint(self, z, theta) -> torch.Tensor:
        """K^T z = sum_k K_k^T z_k, the exact adjoint of :meth:`convolve`, shape (N, H, W)."""
        return filter_bank.correlate_adjoint(z, self.params(theta).filters, self.s)

    def _chunks(self, p, shape, whole_images=False, flat=False):
        """The blocks of output pixels a closed form sweeps over (:func:`.gemm.plan_chunks`)."""
        return plan_chunks(self.backend, p.filters, self.s, shape, self.chunk_columns,
                           whole_images=whole_images, flat=flat)

    def _sweep(self, p, shape, work, *inputs):
        """``work(chunk)`` for every chunk of images of ``shape``; the results in chunk order.

        The 'gemm' backend on the CPU outside autograd runs :func:`.gemm.run_chunks` on
        ``torch.get_num_threads()`` threads in the flat layout, with workspaces kept
        by the problem; otherwise (the 'conv' backend, another device, or autograd
        recording the operations, i.e. grad enabled and an input that requires
        grad) the chunks run in this thread, compact.
        """
        threads = None
        if (self.backend == "gemm" and all(t.device.type == "cpu" for t in inputs)
                and not (torch.is_grad_enabled() and any(t.requires_grad for t in inputs))):
            threads = torch.get_num_threads()
        workspaces = self.__dict__.setdefault("_workspaces", {})
        return run_chunks(self._chunks(p, shape, flat=threads is not None), threads, work,
                           workspaces)

    # ------------------------------------------------------------ the contract
    def lower_objective(self, x, theta):
        p = self.params(theta)
        z = filter_bank.correlate(x, p.filters, self.s)
        nu = p.nu.view(1, -1, 1, 1)
        reg = torch.sqrt(z * z + nu * nu).sum(dim=(0, 2, 3))
        return self.data_value(x) + torch.sum(p.alpha * reg)

    # ------------------------------------------------------------ closed forms
    def lower_grad(self, x, theta):
        x = x.contiguous()  # the flat layout addresses pixels by storage offset
        p = self.params(theta)
        nu2 = (p.nu * p.nu).view(-1, 1)
        Ca = p.alpha.view(-1, 1) * p.filters
        out = self.data_grad(x)

        def work(ch):
            z = ch.response(x)
            # In place: the pointwise work costs as much as a GEMM on the CPU.
            d1 = torch.addcmul(nu2, z, z, out=ch.buffer("t")).rsqrt_().mul_(z)
            ch.adjoint_into(out, d1, Ca)

        self._sweep(p, x.shape, work, x, theta)
        return out

    def lower_hvp(self, x, theta, v):
        x, v = x.contiguous(), v.contiguous()
        p = self.params(theta)
        nu2 = (p.nu * p.nu).view(-1, 1)
        Ca = p.alpha.view(-1, 1) * p.filters
        out = self.data_hvp(v)

        def work(ch):
            z = ch.response(x)
            d2 = torch.addcmul(nu2, z, z, out=ch.buffer("t"))
            d2.rsqrt_().pow_(3).mul_(nu2)  # phi''(z)
            ch.adjoint_into(out, d2.mul_(ch.response(v, "u")), Ca)

        self._sweep(p, x.shape, work, x, theta, v)
        return out

    def mixed_vjp(self, x, theta, w):
        x, w = x.contiguous(), w.contiguous()
        p = self.params(theta)
        nu2 = (p.nu * p.nu).view(-1, 1)

        def work(ch):
            z, u = ch.response(x), ch.response(w, "u")
            rs = torch.addcmul(nu2, z, z, out=ch.buffer("t")).rsqrt_()
            d1 = torch.mul(z, rs, out=ch.buffer("d1"))  # phi'(z)
            a = rs.pow_(3).mul_(nu2).mul_(u)             # phi''(z) u
            G = torch.sum(torch.mul(d1, u, out=ch.buffer("prod")), dim=(0, 2))
            S = torch.sum(torch.mul(z, a, out=ch.buffer("prod")), dim=(0, 2))
            return G, S, ch.correlate(x, a) + ch.correlate(w, d1)

        parts = self._sweep(p, x.shape, work, x, theta, w)
        G, S, corr = (functools.reduce(torch.add, part) for part in zip(*parts, strict=True))
        aG = p.alpha * G
        corr = p.alpha.view(-1, 1) * corr
        corr = corr - corr.mean(dim=1, keepdim=True)  # P^T = P: back to the raw r_k
        return torch.cat([aG.sum().view(1), aG, -p.alpha * S, corr.flatten()])

    # ------------------------------------------------------------------ usage
    def on_images(self, images, theta):
        return FieldsOfExperts(images=images, noisy=images, num_filters=self.K,
                               filter_size=self.s, backend=self.backend,
                               chunk_columns=self.chunk_columns, dtype=self.dtype,
                               device=self.device)


ENTRY = dict(
    factory=FieldsOfExperts,
    description="Fields of experts denoising: learn K zero-mean s x s filters, their weights "
                "and Charbonnier smoothings (1 + 2K + K s^2 hyperparameters); closed-form "
                "derivatives by convolutions, certified bound constants",
    test_params=dict(n_images=2, size=16, num_filters=3, filter_size=3),
)
