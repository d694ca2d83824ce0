r"""Fields of experts: learning convolution filters, their weights and smoothings.

Lower level (ALGORITHMS.md section 7), for N images x_i of size H x W:

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
included (the 'flat' layout of :class:`_Chunk`), so that the fold is two small
GEMVs on shifted views of zero-padded buffers rather than ``F.fold``.  The chunks
run on ``torch.get_num_threads()`` threads at once, each single-threaded
(:func:`_run_chunks`; small GEMMs scale poorly inside the BLAS, the pointwise work not
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
in :meth:`FieldsOfExperts.smoothness` and :meth:`FieldsOfExperts.bound_constants`.
"""
from __future__ import annotations

import functools
import itertools
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import torch
import torch.nn.functional as F

from bilevel import BilevelProblem, BoundConstants

from . import datasets

#: sup_t |phi_nu'''(t)| nu^2 = 3 (1/2) (4/5)^{5/2}: phi''' = -3 nu^2 t / r^5, extreme at t = nu/2.
C3 = 1.5 / 1.25 ** 2.5  # 0.858650...
#: Output pixels per chunk of the GEMM backend: the s^2 x L patch matrix of a 7 x 7
#: filter bank is then 49 x 4096 doubles = 1.6 MB, so a chunk's operands stay in cache.
CHUNK_COLUMNS = 4096
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


def patches(images, s):
    """The s x s patches of images (N, H, W) as columns: (N, s^2, (H - s + 1)(W - s + 1)).

    Equal to ``F.unfold(images[:, None], s)``, but built as a strided view and one
    copy, which on the CPU is several times faster than ``F.unfold``'s im2col.
    """
    n, h, w = images.shape
    view = images.unfold(1, s, 1).unfold(2, s, 1)  # (N, H', W', s, s), no copy
    return view.permute(0, 3, 4, 1, 2).reshape(n, s * s, (h - s + 1) * (w - s + 1))


def _autocorrelation(a, s):
    """sum over the batch of R_k(m) = sum_p a_kp a_k(p+m), |m_i| <= s - 1: (K, 2s-1, 2s-1).

    By FFT on images zero-padded by s - 1, so the circular correlation has no
    wrap-around at these lags; in float64.  Index [m1 + s - 1, m2 + s - 1].
    """
    h, w = a.shape[-2:]
    spec = torch.fft.rfft2(a.double(), s=(h + s - 1, w + s - 1))
    corr = torch.fft.irfft2(spec.real ** 2 + spec.imag ** 2, s=(h + s - 1, w + s - 1))
    corr = torch.roll(corr.sum(0), shifts=(s - 1, s - 1), dims=(-2, -1))
    return corr[:, :2 * s - 1, :2 * s - 1]


class Params(NamedTuple):
    """theta unpacked: alpha_k = e^{theta_0 + w_k}, nu_k = e^{l_k}, filters c_k as rows (K, s^2)."""

    alpha: torch.Tensor
    nu: torch.Tensor
    filters: torch.Tensor


class _Flat:
    """The buffers of the flat layout (:class:`_Chunk`) for blocks of one shape.

    Made once per workspace and block shape, with their views, so that a chunk only
    copies its patches and runs its kernels: s^2 x L patch matrices whose last s - 1
    columns (gaps that would read past the block) stay zero; K x L responses and
    temporaries, with the views of their gaps; the zero-padded buffers of the fold
    (the padding is never written) and the strided views that shift them.
    """

    def __init__(self, C, s, nb, rows, w):
        self.to = dict(dtype=C.dtype, device=C.device)
        K, hb = C.shape[0], rows + s - 1
        self.s, self.w, self.K = s, w, K
        self.L = L = ((nb - 1) * hb + rows) * w
        self.pixels = nb * hb * w  # of the block: L + (s - 1) W
        self.inside = L - (s - 1)  # patch columns whose pixels all lie in the block
        self.gap_views = [lambda t: t.view(K, -1, w)[:, :, w - s + 1:]]  # c >= W - s + 1
        if nb > 1:  # and the rows r >= rows between images
            self.gap_views.append(
                lambda t: t[:, :(nb - 1) * hb * w].view(K, nb - 1, hb, w)[:, :, rows:])
        self._patches, self._temps = [], {}
        Lc, Lr, start = L + s - 1, L + 2 * (s - 1) * w, (s - 1) * w
        self.ones = torch.ones(s, 1, s, **self.to)
        cols = torch.zeros(s * s, Lc, **self.to)  # each row: s - 1 zeros, then L columns
        self.cols = cols[:, s - 1:]
        # rowsum[j1, q] = sum_j2 cols[(j1, j2), q - j2]: the rows of cols at stride Lc - 1
        self.cols_shifted = cols.as_strided((s, s, L), (s * Lc, Lc - 1, 1), s - 1)
        rowsum = torch.zeros(s, Lr, **self.to)  # (s - 1) W zeros, L columns, (s - 1) W zeros
        self.rowsum = rowsum[:, start:start + L].unsqueeze(1)
        # block[p] += sum_j1 rowsum[j1, p - j1 W]: the rows of rowsum at stride Lr - W
        self.rowsum_shifted = rowsum.as_strided((s, self.pixels), (Lr - w, 1), start)

    def patches(self, slot):
        """(s^2 x L patch matrix number ``slot``, its first columns as (s, s, inside))."""
        while len(self._patches) <= slot:
            P = torch.zeros(self.s * self.s, self.L, **self.to)
            self._patches.append((P, P.view(self.s, self.s, self.L)[:, :, :self.inside]))
        return self._patches[slot]

    def temp(self, name):
        """(K x L buffer ``name``, the same as (1, K, L), the views of its gaps)."""
        if name not in self._temps:
            t = torch.empty(self.K, self.L, **self.to)
            self._temps[name] = (t, t.unsqueeze(0), [g(t) for g in self.gap_views])
        return self._temps[name]


class _Chunk:
    """One block of output pixels: images ``images`` and output rows [r0, r1).

    Gives the responses K x, the adjoint K^T a (accumulated into an image) and the
    filter correlations corr(x, a) on that block, by ``conv2d`` and its adjoints
    (backend ``conv``) or by im2col + GEMM (``gemm``), the output pixels as columns
    in one of two layouts:

    - compact: (nb, K, L), L = rows (W - s + 1), the output pixels of each image;
      the adjoint folds the (nb, s^2, L) columns back with ``F.fold``.
    - ``flat``: (1, K, L), column q = (n hb + r) W + c for output pixel (n, r, c),
      hb = rows + s - 1: q is where that pixel's patch starts in the block of input
      pixels (nb, hb, W) flattened.  Patch row j = (j1, j2) is that block shifted by
      j1 W + j2 (one strided copy); the columns with c >= W - s + 1, or r >= rows
      between images, are gaps, whose responses are set to zero.  The fold,
      sum_j (cols_j shifted by j1 W + j2), is then a batched GEMV over j2 on a
      strided view of the columns, front-padded with zeros, and one GEMV over j1 on
      a strided view of its zero-padded result, added straight into the image: a
      few times cheaper than ``F.fold``, for (s - 1) / W more columns.  Needs a
      workspace (:class:`_Flat`) and contiguous images.

    Chunks of the same ``phase`` read and write disjoint pixels
    (:meth:`FieldsOfExperts._chunks`).  :func:`_run_chunks` sets ``workspace``.
    """

    def __init__(self, backend, C, s, images, r0, r1, phase=0, flat_width=None):
        self.backend, self.C, self.s = backend, C, s
        self.images, self.r0, self.r1, self.phase = images, r0, r1, phase
        self.flat, self.width = flat_width is not None and backend == "gemm", flat_width
        self.workspace = None
        self._patches = {}

    def buffer(self, name):
        """An ``out=`` tensor (1, K, L) for a temporary of the flat layout; None if compact."""
        return self._layout().temp(name)[1] if self.flat else None

    def _layout(self):
        """The :class:`_Flat` of this block's shape, from the workspace."""
        nb, rows = self.images.stop - self.images.start, self.r1 - self.r0
        key = (self.C.dtype, self.C.device, self.C.shape[0], self.s, nb, rows, self.width)
        flat = self.workspace.get(key)
        if flat is None:
            flat = self.workspace[key] = _Flat(self.C, self.s, nb, rows, self.width)
        return flat

    def view(self, img):
        """The input pixels this block reads: (nb, 1, hb, W), hb = r1 - r0 + s - 1."""
        return img[self.images, self.r0:self.r1 + self.s - 1, :].unsqueeze(1)

    def _offset(self, img):
        """Where the block starts in the storage of img (contiguous, (N, H, W))."""
        return img.storage_offset() + (self.images.start * img.shape[1] + self.r0) * img.shape[2]

    def patches(self, img):
        """(nb, s^2, L) compact, (s^2, L) flat."""
        key = id(img)  # the inputs outlive the chunk, so ids are not reused meanwhile
        if key not in self._patches:
            s, slot = self.s, len(self._patches)
            if self.flat:
                layout = self._layout()
                P, dst = layout.patches(slot)
                dst.copy_(img.as_strided((s, s, layout.inside), (layout.w, 1, 1),
                                         self._offset(img)))
            else:
                P = patches(self.view(img)[:, 0], s)
            self._patches[key] = P
        return self._patches[key]

    def _kernel(self, M):
        return M.view(M.shape[0], 1, self.s, self.s)

    def response(self, img, name="z"):
        """K x on the block, (nb, K, L) or flat (1, K, L); ``name`` tells buffers apart."""
        if self.backend == "conv":
            return F.conv2d(self.view(img), self._kernel(self.C)).flatten(2)
        P = self.patches(img)
        if not self.flat:
            return torch.matmul(self.C, P)
        z, z3, gaps = self._layout().temp(name)
        torch.mm(self.C, P, out=z)
        for g in gaps:
            g.zero_()
        return z3

    def adjoint_into(self, out, a, Cw):
        """out += sum_k K_{Cw_k}^T a_k on the block's pixels; a is a response's shape."""
        s = self.s
        if self.backend == "conv":
            a = a.view(a.shape[0], a.shape[1], self.r1 - self.r0, -1)
            v = self.view(out)
            v += F.conv_transpose2d(a, self._kernel(Cw))
        elif not self.flat:
            cols = torch.matmul(Cw.transpose(0, 1), a)  # (nb, s^2, L)
            v = self.view(out)
            v += F.fold(cols, v.shape[-2:], s)
        else:
            f = self._layout()
            torch.mm(Cw.transpose(0, 1), a[0], out=f.cols)
            torch.bmm(f.ones, f.cols_shifted, out=f.rowsum)
            block = out.as_strided((1, f.pixels), (f.pixels, 1), self._offset(out))
            block.addmm_(f.ones[0], f.rowsum_shifted)

    def correlate(self, img, a):
        """sum over the block of corr(x, a_k), shape (K, s^2); a is a response's shape."""
        if self.backend == "conv":
            a = a.view(a.shape[0], a.shape[1], self.r1 - self.r0, -1)
            grad = torch.nn.grad.conv2d_weight(self.view(img), (self.C.shape[0], 1, self.s, self.s),
                                               a)
            return grad.flatten(1)
        if self.flat:
            return torch.mm(a[0], self.patches(img).transpose(0, 1))
        return torch.matmul(a, self.patches(img).transpose(1, 2)).sum(0)


_POOL = [None, 0]  # a ThreadPoolExecutor shared by all problems, and its size
_POOL_LOCK = threading.Lock()


def _helpers(n):
    """A thread pool with at least n threads, kept for later calls."""
    with _POOL_LOCK:
        pool, size = _POOL
        if pool is None or size < n:
            _POOL[:] = ThreadPoolExecutor(n, thread_name_prefix="foe-chunks"), n
            if pool is not None:
                pool.shutdown(wait=False)
        return _POOL[0]


def _run_chunks(chunks, threads, work, workspaces):
    """``work(chunk)`` for every chunk, phase after phase; the results in chunk order.

    The chunks of one phase touch disjoint pixels, so they run on ``threads``
    threads at once (this one and pool threads), each with intra-op parallelism
    off: small GEMMs (48 x 49 @ 49 x 4096) scale poorly inside the BLAS, and the
    pointwise work not at all.  Each thread keeps its buffers in its workspace,
    ``workspaces[thread id]`` (a dict, kept from call to call).  Every chunk is
    computed by one single-threaded thread whatever ``threads`` is, and pixels
    shared by chunks of different phases add their contributions in phase order,
    so the result does not depend on ``threads``, bit for bit.  Grad and inference
    modes are the caller's (they are per thread).  With ``threads`` = None the
    chunks run here, in phase order, under the caller's settings and without a
    workspace (the 'conv' backend, another device, or autograd recording the
    operations).
    """
    chunks = list(chunks)
    results = [None] * len(chunks)
    phases = {}
    for i, ch in enumerate(chunks):
        phases.setdefault(ch.phase, []).append(i)
    phases = [phases[k] for k in sorted(phases)]
    if threads is None:
        for todo in phases:
            for i in todo:
                results[i] = work(chunks[i])
        return results

    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

    def run(todo, counter):
        torch.set_num_threads(1)
        workspace = workspaces.setdefault(threading.get_ident(), {})
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            for k in counter:
                if k >= len(todo):
                    return
                ch = chunks[todo[k]]
                ch.workspace = workspace
                results[todo[k]] = work(ch)

    before = torch.get_num_threads()
    try:
        for todo in phases:
            counter = itertools.count()  # next() on it is atomic: a shared work queue
            n = min(threads, len(todo))
            futures = [_helpers(threads - 1).submit(run, todo, counter) for _ in range(n - 1)]
            try:
                run(todo, counter)
            finally:
                for f in futures:
                    f.result()
    finally:
        torch.set_num_threads(before)
    return results


class FieldsOfExperts(datasets.DenoisingQuality, BilevelProblem):
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
        (:func:`problems.datasets.load_images`).
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
        if backend not in BACKENDS:
            raise ValueError(f"fields_of_experts: backend must be one of {BACKENDS}, "
                             f"got {backend!r}")
        if int(num_filters) < 1 or int(filter_size) < 2:
            raise ValueError(f"fields_of_experts: need num_filters >= 1 and filter_size >= 2, "
                             f"got {num_filters}, {filter_size}")
        to = dict(dtype=dtype, device=device)
        self.K, self.s = int(num_filters), int(filter_size)
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
        """The blocks of output pixels a closed form sweeps over.

        Whole images, several to a chunk when they are small, or strips of
        ``chunk_columns // (W - s + 1)`` output rows of one image.  A strip reads
        s - 1 rows beyond its own, so strips overlap their neighbours; strip j gets
        phase j mod m, with m the smallest step at which strips are disjoint (2
        unless strips are thinner than s - 1 rows).  ``whole_images`` keeps every
        image in one block (for per-image statistics such as autocorrelations), at
        the price of chunks larger than the cache.  ``flat``: the flat layout of
        :class:`_Chunk` (needs a workspace: within :func:`_run_chunks` only).
        """
        N, H, W = shape
        s, C = self.s, p.filters
        ho, wo = H - s + 1, W - s + 1
        if self.backend == "conv":
            yield _Chunk("conv", C, s, slice(0, N), 0, ho)
        elif ho * wo <= self.chunk_columns or whole_images:
            step = max(1, self.chunk_columns // (ho * wo))
            for n in range(0, N, step):
                yield _Chunk("gemm", C, s, slice(n, min(n + step, N)), 0, ho,
                             flat_width=W if flat else None)
        else:
            rows = max(1, self.chunk_columns // wo)
            m = 1 + -(-(s - 1) // rows)  # strips j and j + m are disjoint
            for n in range(N):
                for j, r0 in enumerate(range(0, ho, rows)):
                    yield _Chunk("gemm", C, s, slice(n, n + 1), r0, min(r0 + rows, ho),
                                 phase=j % m, flat_width=W if flat else None)

    def _sweep(self, p, shape, work, *inputs):
        """``work(chunk)`` for every chunk of images of ``shape``; the results in chunk order.

        The 'gemm' backend on the CPU outside autograd runs :func:`_run_chunks` on
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
        return _run_chunks(self._chunks(p, shape, flat=threads is not None), threads, work,
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

    def _kernel_norms(self, p):
        """(||sum_k (alpha_k / nu_k) a_k||_1, kappa_k) with a_k the autocorrelation of c_k.

        kappa_k = sqrt(||a_k||_1) >= ||K_k||: see :meth:`smoothness`.
        """
        Cimg = p.filters.view(1, self.K, self.s, self.s)
        auto = F.conv2d(Cimg, Cimg.transpose(0, 1), padding=self.s - 1, groups=self.K)[0]
        kappa = torch.sqrt(auto.abs().sum(dim=(1, 2)))
        mixed = torch.sum((p.alpha / p.nu).view(-1, 1, 1) * auto, dim=0).abs().sum()
        return float(mixed), kappa

    def smoothness(self, theta):
        r"""Certified L = 1 + ||sum_k (alpha_k / nu_k) c_k \star c_k||_1.

        The Hessian is I + sum_k alpha_k K_k^T D_k K_k with 0 <= D_k <= 1/nu_k
        (phi'' = nu^2 / r^3 <= 1 / nu), so it is <= I + sum_k (alpha_k / nu_k)
        K_k^T K_k.  K_k is the full convolution C_k on the zero-extended image
        followed by a restriction to the valid window, so K_k^T K_k <= C_k^T C_k,
        and sum_k w_k C_k^T C_k is the convolution with the kernel
        sum_k w_k a_k (a_k = c_k \star c_k the autocorrelation), whose norm is at
        most the l1 norm of that kernel.  This is at most the simpler
        1 + sum_k alpha_k ||c_k||_1^2 / nu_k (Young: ||K_k|| <= ||c_k||_1).
        """
        mixed, _ = self._kernel_norms(self.params(theta))
        return 1.0 + mixed

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

    # ---------------------------------------------------------- bound constants
    def bound_constants(self, theta, x):
        r"""Certified constants of the hypergradient bound, in closed form.

        Notation: alpha_k, nu_k, c_k, P as in the module docstring; z_k = K_k x;
        kappa_k = sqrt(||c_k \star c_k||_1) >= ||K_k|| (:meth:`smoothness`);
        ||K_c|| <= ||c||_1 <= s ||c||_2 for any s x s filter c;
        X(v): c -> K_c v, the patch map of an image v;
        e = ||grad_x h(x)|| / mu >= ||x - x*||.  Two facts used throughout:
        ||a o b|| <= ||a||_inf ||b||, and ||K_k v||_inf <= ||c_k||_2 ||v||.

        - L_g = 1 / N: the Hessian of g is I / N.
        - ||B(x)||: see :meth:`mixed_norm_bound`.
        - L_B, valid on the ball of radius 2e about x.  The [theta_0, w] and [l]
          columns are Lipschitz with e_k = alpha_k kappa_k^2 / nu_k each
          (|phi''| <= 1/nu and |(t phi''(t))'| = nu^2 |nu^2 - 2t^2| / r^5 <= 1/nu),
          which contributes (sum_k e_k)^2 + 2 sum_k e_k^2 to L_B^2 (Frobenius).
          The filter block of filter k, applied to delta_r with dc = P delta_r,
          changes between x1 and x2 by
          alpha_k [K_dc^T (phi'(z1) - phi'(z2)) + K_k^T (phi''(z1) o K_dc (x1 - x2))
          + K_k^T ((phi''(z1) - phi''(z2)) o K_dc x2)], at most
          l_k = alpha_k [2 s kappa_k / nu_k + kappa_k C3 ||c_k||_2 Xbar / nu_k^2]
          times ||x1 - x2|| ||delta_r||, with |phi'''| <= C3 / nu^2 (:data:`C3`)
          and Xbar = ||X(x) P|| + 2 s e >= ||X(x2) P|| on the ball
          (||X(v) P|| <= s ||v||).  This block is linear in x, so only locally
          Lipschitz: hence the ball.  L_B^2 adds sum_k l_k^2.
        - MAID reuses the constants of the first x~ of an iteration for the x~'
          of its refinements; these and x* lie within e of x* (a warm-started
          refinement either stops at once or certifies less than e), so within 2e
          of x, and B_norm = ||B(x)|| bound + 2e L_B covers every such x~'.
        - L_Ainv = L_A / mu^2, L_A = sum_k alpha_k kappa_k^2 C3 ||c_k||_2 / nu_k^2:
          A(x1) - A(x2) = sum_k alpha_k K_k^T diag(phi''(z1) - phi''(z2)) K_k.
          Global in x, and attained up to kappa_k / ||c_k||_2 by a perturbation
          at one pixel whose response is near nu_k / 2: the worst case is real,
          and far larger than the typical (random-direction) change.
        - L_gtheta = 0: g does not read theta.

        Costs one sweep over the images (a gradient's convolutions, the patch
        Gram matrix and FFT autocorrelations): counted as 2 oracle calls.
        """
        theta, x = theta.detach(), x.detach()
        mu = self.strong_convexity(theta)
        B_here, X_norm, grad_norm = self._mixed_bound(theta, x)
        e = grad_norm / mu
        p = self.params(theta)
        s = self.s
        _, kappa = self._kernel_norms(p)
        a, nu = p.alpha.double().cpu(), p.nu.double().cpu()
        kappa = kappa.double().cpu()
        c2 = torch.linalg.vector_norm(p.filters.double(), dim=1).cpu()
        e_k = a * kappa ** 2 / nu
        X_bar = X_norm + 2 * s * e
        l_k = a * (2 * s * kappa / nu + kappa * C3 * c2 * X_bar / nu ** 2)
        L_B = math.sqrt(float(e_k.sum()) ** 2 + 2 * float(torch.sum(e_k ** 2))
                        + float(torch.sum(l_k ** 2)))
        L_A = float(torch.sum(a * kappa ** 2 * C3 * c2 / nu ** 2))
        return BoundConstants(L_g=1.0 / self.n_images, B_norm=B_here + 2 * L_B * e,
                              L_B=L_B, L_Ainv=L_A / mu ** 2, L_gtheta=0.0, certified=True,
                              cost=2)

    def hessian_lipschitz_along(self, theta, x, q, radius):
        r"""M >= ||(A(x1) - A(x2)) q'|| / ||x1 - x2|| for all x1, x2 and ||q' - q|| <= radius.

        (A(x1) - A(x2)) q' = sum_k alpha_k K_k^T [(phi''(z1_k) - phi''(z2_k)) o K_k q'],
        and |phi''(t1) - phi''(t2)| <= C3 / nu_k^2 |t1 - t2| pixel by pixel, so its
        norm is at most sum_k alpha_k kappa_k C3 / nu_k^2 ||K_k (x1 - x2)|| ||K_k q'||_inf
        <= sum_k alpha_k kappa_k^2 C3 / nu_k^2 (||K_k q||_inf + ||c_k||_2 radius).
        L_A of :meth:`bound_constants` has ||c_k||_2 ||q'|| in place of the
        bracket; a response is one s x s patch of q against c_k, so for an adjoint
        spread over many pixels the bracket is smaller by about sqrt(s^2 / #pixels).
        Global in x.  Costs one sweep of responses (one oracle call).
        """
        p = self.params(theta.detach())
        _, kappa = self._kernel_norms(p)
        sup = torch.zeros(self.K, dtype=q.dtype, device=q.device)
        for ch in self._chunks(p, q.shape):
            sup = torch.maximum(sup, ch.response(q.detach()).abs().amax(dim=(0, 2)))
        c2 = torch.linalg.vector_norm(p.filters, dim=1)
        return float(torch.sum(p.alpha * kappa ** 2 * C3 / p.nu ** 2 * (sup + c2 * radius)))

    def mixed_norm_bound(self, theta, x) -> float:
        r"""A certified upper bound on ||B(x)||, B = d/dtheta grad_x h, at x itself.

        B has column blocks [theta_0, w], [l] and [r]; ||B||^2 is at most the sum
        of the blocks' squared norms (B B^T is the sum of the blocks' B_j B_j^T):

        - [theta_0, w]: Frobenius, ||b_0||^2 + sum_k ||alpha_k K_k^T phi'(z_k)||^2,
          with b_0 = grad_x h - (x - y) exact and each other column at most
          alpha_k kappa_k ||phi'(z_k)||;
        - [l]: Frobenius, columns -alpha_k K_k^T (z_k phi''(z_k)), each at most
          alpha_k kappa_k ||z_k phi''(z_k)||;
        - [r]: the blocks of the K filters add in squares; filter k maps
          delta_r to alpha_k [M_k P delta_r + K_k^T (phi''(z_k) o X(x) P delta_r)],
          M_k: dc -> K_dc^T phi'(z_k).  ||M_k P|| is exact: M_k^T M_k is the
          s^2 x s^2 block-Toeplitz matrix of the autocorrelation of phi'(z_k)
          (by FFT).  ||diag(phi''(z_k)) X(x) P|| is bounded by the smaller of
          max phi''(z_k) ||X(x) P|| (exact, from the s^2 x s^2 Gram matrix of
          the mean-removed patches) and the Frobenius norm
          sqrt(sum_p phi''(z_kp)^2 ||P patch_p||^2).

        Returns
        -------
        float
        """
        return self._mixed_bound(theta.detach(), x.detach())[0]

    def _mixed_bound(self, theta, x):
        """(bound on ||B(x)||, ||X(x) P||, ||grad_x h(x)||) in one sweep over the images."""
        p = self.params(theta)
        K, s = self.K, self.s
        nu2 = (p.nu * p.nu).view(-1, 1)
        Ca = p.alpha.view(-1, 1) * p.filters
        stats = torch.zeros(3, K, dtype=torch.float64, device=x.device)
        d2_max = torch.zeros(K, dtype=x.dtype, device=x.device)
        gram_x = torch.zeros(s * s, s * s, dtype=torch.float64, device=x.device)
        auto = torch.zeros(K, 2 * s - 1, 2 * s - 1, dtype=torch.float64, device=x.device)
        grad_reg = torch.zeros_like(x)
        for ch in self._chunks(p, x.shape, whole_images=True):
            z = ch.response(x)
            rs = torch.rsqrt(z * z + nu2)
            d1, d2 = z * rs, nu2 * rs * rs * rs
            ch.adjoint_into(grad_reg, d1, Ca)
            # Patches with their mean removed: the filter directions P delta_r are
            # zero-mean, so X only sees the zero-mean part of each patch.
            cols = ch.patches(x)
            cols = cols - cols.mean(dim=1, keepdim=True)
            gram_x += torch.matmul(cols, cols.transpose(1, 2)).sum(0).double()
            stats += torch.stack([
                torch.sum(d1 * d1, dim=(0, 2)),
                torch.sum((z * d2) ** 2, dim=(0, 2)),
                torch.sum(d2 * d2 * torch.sum(cols * cols, dim=1, keepdim=True),
                          dim=(0, 2))]).double()
            d2_max = torch.maximum(d2_max, d2.amax(dim=(0, 2)))
            auto += _autocorrelation(d1.view(d1.shape[0], K, ch.r1 - ch.r0, -1), s)
        grad_reg_norm = float(torch.linalg.vector_norm(grad_reg.double()))
        grad_norm = float(torch.linalg.vector_norm((x - self.noisy + grad_reg).double()))

        # (1 + 1e-10) absorbs the rounding of the eigenvalues and of the FFT.
        Pm = torch.eye(s * s, dtype=torch.float64, device=x.device) - 1.0 / s ** 2
        X_norm = math.sqrt(max(float(torch.linalg.eigvalsh(Pm @ gram_x @ Pm)[-1]), 0.0)) \
            * (1 + 1e-10)
        lag = torch.arange(s, device=x.device)
        i1 = (lag.view(-1, 1, 1, 1) - lag.view(1, 1, -1, 1) + s - 1).expand(s, s, s, s)
        i2 = (lag.view(1, -1, 1, 1) - lag.view(1, 1, 1, -1) + s - 1).expand(s, s, s, s)
        gram_a = auto[:, i1.reshape(s * s, s * s), i2.reshape(s * s, s * s)]
        M_norm = (torch.linalg.eigvalsh(Pm @ gram_a @ Pm)[:, -1].clamp(min=0).sqrt().cpu()
                  * (1 + 1e-10))

        _, kappa = self._kernel_norms(p)
        a, kappa = p.alpha.double().cpu(), kappa.double().cpu()
        d1_norm, zd2_norm, dX_frob = stats.sqrt().cpu().unbind(0)
        dX = torch.minimum(d2_max.double().cpu() * X_norm, dX_frob * (1 + 1e-10))
        block_w = grad_reg_norm ** 2 + float(torch.sum((a * kappa * d1_norm) ** 2))
        block_l = float(torch.sum((a * kappa * zd2_norm) ** 2))
        block_r = float(torch.sum((a * (M_norm + kappa * dX)) ** 2))
        return math.sqrt(block_w + block_l + block_r) * (1 + 1e-12), X_norm, grad_norm

    # ------------------------------------------------------------------ usage
    def denoise(self, noisy, theta=None, tol=1e-6, max_iter=100_000):
        """Denoise new images (N, H, W) or (H, W) with ``theta`` (default theta0).

        Returns x shaped like ``noisy`` with certified ||x - x*|| <= tol; raises
        ``RuntimeError`` if ``max_iter`` is reached first.
        """
        noisy = torch.as_tensor(noisy, dtype=self.dtype, device=self.device)
        theta = self.initial_theta() if theta is None else theta
        problem = FieldsOfExperts(images=noisy, noisy=noisy, num_filters=self.K,
                                  filter_size=self.s, backend=self.backend,
                                  chunk_columns=self.chunk_columns, dtype=self.dtype,
                                  device=self.device)
        sol = problem.solve_lower(theta, tol, max_iter=max_iter)
        if not sol.converged:
            raise RuntimeError(f"fields_of_experts: denoise reached max_iter={max_iter} at "
                               f"certified accuracy {sol.error_bound:.2e} > tol={tol:g}")
        return sol.x.reshape(noisy.shape)


ENTRY = dict(
    factory=FieldsOfExperts,
    description="Fields of experts denoising: learn K zero-mean s x s filters, their weights "
                "and Charbonnier smoothings (1 + 2K + K s^2 hyperparameters); closed-form "
                "derivatives by convolutions, certified bound constants",
    test_params=dict(n_images=2, size=16, num_filters=3, filter_size=3),
)
