r"""Fields of experts: learning convolution filters, their weights and smoothings.

Lower level (docs/problems.md), for N images x_i of size H x W:

    h(x, theta) = sum_i [ 1/2 ||x_i - y_i||^2
                          + e^{theta_0} sum_k e^{w_k} sum_p phi_{nu_k}((K_k x_i)_p) ],
    phi_nu(t) = sqrt(t^2 + nu^2)  (Charbonnier),   nu_k = e^{l_k},   c_k = r_k - mean(r_k),

with K_k the 'valid' correlation with the s x s filter c_k (``conv2d``; the
(H - s + 1) x (W - s + 1) positions where the filter fits inside the image) and
K_k^T its exact adjoint (``conv_transpose2d``): no boundary rule is needed, so
<K x, z> = <x, K^T z> holds to rounding.  Upper level:
g(x) = mean_i 1/2 ||x_i - x_i^true||^2.

theta is flat: [theta_0, w_1..w_K, l_1..l_K, r_1..r_K] (r_k an s x s raw filter,
row-major), so 1 + 2K + K s^2 entries (2449 for the paper's 48 filters of 7 x 7).
The filters are zero-mean by construction: c_k = P r_k with P the projection that
removes the mean.  They start from the 2-D DCT-II basis without its constant
function (zero-mean and orthonormal; s^2 - 1 of them, exactly 48 for 7 x 7),
taken in order of increasing frequency; further filters are random, zero-mean,
unit-norm, drawn from ``seed``.

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
in :mod:`.bounds` (:meth:`FieldsOfExperts.smoothness`, :meth:`FieldsOfExperts.bound_constants`).
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from bilevel import BilevelProblem

from .. import datasets, params
from .bounds import CertifiedConstants
from .gemm import CHUNK_COLUMNS, plan_chunks, run_chunks

BACKENDS = ("auto", "gemm", "conv")


def dct_filters(size: int, count: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    """Zero-mean, unit-norm starting filters (count, size, size).

    The 2-D DCT-II basis without its constant function, by increasing frequency
    (u + v, then u); beyond the size^2 - 1 basis functions, random zero-mean
    unit-norm filters drawn from ``seed``.
    """
    n = torch.arange(size, dtype=torch.float64)
    freqs = sorted(((u, v) for u in range(size) for v in range(size) if (u, v) != (0, 0)),
                   key=lambda uv: (uv[0] + uv[1], uv[0]))
    basis = []
    for u, v in freqs[:count]:
        cu = torch.cos(math.pi * (2 * n + 1) * u / (2 * size))
        cv = torch.cos(math.pi * (2 * n + 1) * v / (2 * size))
        basis.append(torch.outer(cu, cv))
    if count > len(basis):
        gen = torch.Generator().manual_seed(seed)
        basis.extend(torch.randn((count - len(basis), size, size), generator=gen,
                                 dtype=torch.float64).unbind(0))
    filters = torch.stack(basis)
    filters = filters - filters.mean(dim=(1, 2), keepdim=True)
    filters = filters / torch.linalg.vector_norm(filters, dim=(1, 2), keepdim=True)
    return filters.to(dtype)


class Params(NamedTuple):
    """theta unpacked: alpha_k = e^{theta_0 + w_k}, nu_k = e^{l_k}, filters c_k as rows (K, s^2)."""

    alpha: torch.Tensor
    nu: torch.Tensor
    filters: torch.Tensor


class FieldsOfExperts(CertifiedConstants, datasets.DenoisingQuality, BilevelProblem):
    """Bilevel learning of a fields-of-experts denoiser: filters, weights, smoothings.

    Parameters
    ----------
    n_images : int
        Training images (ignored when ``images`` is given).
    size : int or (int, int)
        Image size after an aspect-preserving resize (ignored with ``images``).
    sigma : float
        Standard deviation of the Gaussian noise.
    seed : int
        Seed of the noise and of any random starting filters.
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
    source : None or str
        None uses the images bundled with scikit-image; a folder of PNGs otherwise
        (:func:`bilevel_problems.datasets.load_images`).
    images : torch.Tensor, optional
        Clean images (N, H, W) or (H, W), instead of loading them.
    noisy : torch.Tensor, optional
        Noisy observations of ``images``, instead of adding noise here.
    backend : {'auto', 'gemm', 'conv'}
        How the convolutions of the closed-form derivatives run: 'gemm' (im2col +
        GEMM on cache-sized chunks, the fastest on the CPU), 'conv' (``conv2d`` on
        the whole batch), 'auto' = 'gemm' on the CPU and 'conv' elsewhere.
    chunk_columns : int
        Output pixels per chunk of the 'gemm' backend.
    dtype, device
        Of every tensor (float64 on CPU by default).
    """

    name = "fields_of_experts"
    upper_convex_in_x = True

    def __init__(self, n_images=4, size=64, sigma=0.1, seed=0, num_filters=8, filter_size=5,
                 log_scale=-5.0, log_smoothing=-3.0, source=None, images=None, noisy=None,
                 backend="auto", chunk_columns=CHUNK_COLUMNS, dtype=torch.float64,
                 device="cpu"):
        params.choice(self.name, "backend", backend, BACKENDS)
        to = dict(dtype=dtype, device=device)
        self.K = params.integer(self.name, "num_filters", num_filters, 1)
        self.s = params.integer(self.name, "filter_size", filter_size, 2)
        log_scale = params.number(self.name, "log_scale", log_scale)
        log_smoothing = params.number(self.name, "log_smoothing", log_smoothing)
        self.clean, self.noisy = datasets.denoising_pair(
            self.name, images, noisy, source=source, n=n_images, size=size, sigma=sigma,
            seed=seed, min_size=self.s, **to)
        images = self.clean
        self.sigma, self.n_images = sigma, images.shape[0]
        self.backend = (("gemm" if torch.device(device).type == "cpu" else "conv")
                        if backend == "auto" else backend)
        self.chunk_columns = max(1, int(chunk_columns))
        filters = dct_filters(self.s, self.K, seed=seed)
        self.theta0 = torch.cat([
            torch.tensor([float(log_scale)], dtype=torch.float64),
            torch.zeros(self.K, dtype=torch.float64),
            torch.full((self.K,), float(log_smoothing), dtype=torch.float64),
            filters.flatten()]).to(**to)
        super().__init__()

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
        raw = theta[1 + 2 * K:].view(K, self.s ** 2)
        return Params(alpha=torch.exp(theta[0] + theta[1:1 + K]),
                      nu=torch.exp(theta[1 + K:1 + 2 * K]),
                      filters=raw - raw.mean(dim=1, keepdim=True))

    def filters(self, theta) -> torch.Tensor:
        """The zero-mean filters c_k of theta, shape (K, s, s)."""
        return self.params(theta).filters.view(self.K, self.s, self.s)

    def convolve(self, x, theta) -> torch.Tensor:
        """K x: responses (N, K, H - s + 1, W - s + 1) of x (N, H, W) to every filter."""
        C = self.params(theta).filters
        return F.conv2d(x.unsqueeze(1), C.view(self.K, 1, self.s, self.s))

    def convolve_adjoint(self, z, theta) -> torch.Tensor:
        """K^T z = sum_k K_k^T z_k, the exact adjoint of :meth:`convolve`, shape (N, H, W)."""
        C = self.params(theta).filters
        return F.conv_transpose2d(z, C.view(self.K, 1, self.s, self.s)).squeeze(1)

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
        z = F.conv2d(x.unsqueeze(1), p.filters.view(self.K, 1, self.s, self.s))
        nu = p.nu.view(1, -1, 1, 1)
        reg = torch.sqrt(z * z + nu * nu).sum(dim=(0, 2, 3))
        return 0.5 * torch.sum((x - self.noisy) ** 2) + torch.sum(p.alpha * reg)

    def upper_objective(self, x, theta):
        return 0.5 * torch.sum((x - self.clean) ** 2) / self.n_images

    def strong_convexity(self, theta):
        # phi_nu is convex, so the Hessian is I + (PSD); h is a sum over images.
        return 1.0


    def initial_theta(self):
        return self.theta0.clone()

    def initial_x(self, theta):
        return self.noisy.clone()

    # ------------------------------------------------------------ closed forms
    def lower_grad(self, x, theta):
        x = x.contiguous()  # the flat layout addresses pixels by storage offset
        p = self.params(theta)
        nu2 = (p.nu * p.nu).view(-1, 1)
        Ca = p.alpha.view(-1, 1) * p.filters
        out = x - self.noisy

        def work(ch):
            z = ch.response(x)
            # In place: the pointwise work costs as much as a GEMM on the CPU.
            d1 = torch.addcmul(nu2, z, z, out=ch.buffer("t")).rsqrt_().mul_(z)
            ch.adjoint_into(out, d1, Ca)

        self._sweep(p, x.shape, work, x, theta, self.noisy)
        return out

    def lower_hvp(self, x, theta, v):
        x, v = x.contiguous(), v.contiguous()
        p = self.params(theta)
        nu2 = (p.nu * p.nu).view(-1, 1)
        Ca = p.alpha.view(-1, 1) * p.filters
        out = v.clone()

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

    def upper_grads(self, x, theta):
        r = x - self.clean
        return (0.5 * torch.sum(r * r) / self.n_images, r / self.n_images,
                torch.zeros_like(theta))

    # ------------------------------------------------------------------ usage
    def denoise(self, noisy, theta=None, tol=None, max_iter=100_000):
        """Denoise new images (N, H, W) or (H, W) with ``theta`` (default theta0).

        Returns x shaped like ``noisy`` with certified ||x - x*|| <= tol (None:
        1e-6, raised to what the dtype can certify); raises ``RuntimeError`` if
        the solve stops short (:meth:`~bilevel_problems.datasets.DenoisingQuality.solve_certified`).
        """
        noisy = torch.as_tensor(noisy, dtype=self.dtype, device=self.device)
        theta = self.initial_theta() if theta is None else theta
        problem = FieldsOfExperts(images=noisy, noisy=noisy, num_filters=self.K,
                                  filter_size=self.s, backend=self.backend,
                                  chunk_columns=self.chunk_columns, dtype=self.dtype,
                                  device=self.device)
        return self.solve_certified(problem, theta, tol, max_iter, noisy.shape)


ENTRY = dict(
    factory=FieldsOfExperts,
    description="Fields of experts denoising: learn K zero-mean s x s filters, their weights "
                "and Charbonnier smoothings (1 + 2K + K s^2 hyperparameters); closed-form "
                "derivatives by convolutions, certified bound constants",
    test_params=dict(n_images=2, size=16, num_filters=3, filter_size=3),
)
