"""The convolution engine of fields of experts on the CPU: im2col + GEMM in cache-sized chunks.

A bank of K filters of size s x s acts on images (N, H, W) as one 'valid'
correlation with K output channels.  The output pixels are cut into chunks
(:func:`plan_chunks`) of about ``chunk_columns`` pixels: a strip of rows of one
image, or several small images.  A :class:`Chunk` gives the responses K x, the
adjoint K^T a and the filter correlations corr(x, a) on its block, by ``conv2d``
and its adjoints (backend ``conv``) or by patches and GEMMs (``gemm``), and
:func:`run_chunks` runs them on several threads, each single-threaded, with a
result that does not depend on the number of threads.
"""
from __future__ import annotations

import itertools
import threading
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F

from ..filter_bank import patches

#: Output pixels per chunk of the GEMM backend: the s^2 x L patch matrix of a 7 x 7
#: filter bank is then 49 x 4096 doubles = 1.6 MB, so a chunk's operands stay in cache.
CHUNK_COLUMNS = 4096


class FlatLayout:
    """The buffers of the flat layout (:class:`Chunk`) for blocks of one shape.

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


class Chunk:
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
      workspace (:class:`FlatLayout`) and contiguous images.

    Chunks of the same ``phase`` read and write disjoint pixels
    (:func:`plan_chunks`).  :func:`run_chunks` sets ``workspace``.
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
        """The :class:`FlatLayout` of this block's shape, from the workspace."""
        nb, rows = self.images.stop - self.images.start, self.r1 - self.r0
        key = (self.C.dtype, self.C.device, self.C.shape[0], self.s, nb, rows, self.width)
        flat = self.workspace.get(key)
        if flat is None:
            flat = self.workspace[key] = FlatLayout(self.C, self.s, nb, rows, self.width)
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


def run_chunks(chunks, threads, work, workspaces):
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


def plan_chunks(backend, C, s, shape, chunk_columns, whole_images=False, flat=False):
    """The blocks of output pixels a closed form sweeps over, for filters C (K, s^2).

    Whole images, several to a chunk when they are small, or strips of
    ``chunk_columns // (W - s + 1)`` output rows of one image.  A strip reads
    s - 1 rows beyond its own, so strips overlap their neighbours; strip j gets
    phase j mod m, with m the smallest step at which strips are disjoint (2
    unless strips are thinner than s - 1 rows).  ``whole_images`` keeps every
    image in one block (for per-image statistics such as autocorrelations), at
    the price of chunks larger than the cache.  ``flat``: the flat layout of
    :class:`Chunk` (needs a workspace: within :func:`run_chunks` only).
    """
    N, H, W = shape
    ho, wo = H - s + 1, W - s + 1
    if backend == "conv":
        yield Chunk("conv", C, s, slice(0, N), 0, ho)
    elif ho * wo <= chunk_columns or whole_images:
        step = max(1, chunk_columns // (ho * wo))
        for n in range(0, N, step):
            yield Chunk("gemm", C, s, slice(n, min(n + step, N)), 0, ho,
                        flat_width=W if flat else None)
    else:
        rows = max(1, chunk_columns // wo)
        m = 1 + -(-(s - 1) // rows)  # strips j and j + m are disjoint
        for n in range(N):
            for j, r0 in enumerate(range(0, ho, rows)):
                yield Chunk("gemm", C, s, slice(n, n + 1), r0, min(r0 + rows, ho),
                            phase=j % m, flat_width=W if flat else None)
