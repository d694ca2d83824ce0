r"""The denoising problems' family: what TV, fields of experts and the ridge regularizer share.

Each learns the theta of a lower level on N training images (docs/problems.md)

    h(x, theta) = sum_i [ 1/2 ||x_i - y_i||^2 + R_theta(x_i) ],   R_theta convex,
    g(x)        = mean_i 1/2 ||x_i - x_i^true||^2,

so mu = 1: the Hessian of h is I plus that of a convex R_theta (positive
semi-definite), and h is a sum over the images, never a mean (a mean would
shrink mu by N).  :class:`DenoisingProblem` holds the training pairs, g and its
derivatives, mu, the start (theta0, x = y), the certified denoiser of new images
and its PSNR / SSIM.  A member keeps its regulariser (``lower_objective``, the
closed forms), its constants, and how it is built on other images
(:meth:`DenoisingProblem.on_images`).
"""
from __future__ import annotations

import torch

from bilevel import BilevelProblem
from bilevel.contract import check_theta

from . import datasets, params


class ImageFit:
    """What denoising and reconstruction share: g = mean_i 1/2 ||x_i - x_i^true||^2 against
    ``self.clean`` (over ``self.n_total`` images), and the energy budget of a data term whose
    Hessian is at least mu I (:mod:`bilevel.local_bounds`)."""

    #: Pixels of mirrored border around each training image that the lower level sees
    #: and g does not (:class:`DenoisingProblem`'s ``border``); 0 elsewhere.
    border = 0

    def _fit_residual(self, x):
        """x restricted to the clean images' pixels, minus them."""
        b = self.border
        return (x[..., b:-b, b:-b] if b else x) - self.clean

    def upper_objective(self, x, theta):
        return 0.5 * torch.sum(self._fit_residual(x) ** 2) / self.n_total

    def upper_grads(self, x, theta):
        r = self._fit_residual(x)
        grad = torch.nn.functional.pad(r, (self.border,) * 4) if self.border else r
        return (0.5 * torch.sum(r * r) / self.n_total, grad / self.n_total,
                torch.zeros_like(theta))

    def energy_budget(self, theta, x_radius, r_norm):
        """C2 = min(eps ||r||, ||r||^2 / (4 mu)) >= sum_p w_p |d_p|^2: on the segment
        [x*, x~] the Hessian is at least mu I + (R_theta's curvature), so
        mu ||e||^2 + sum_p w_p |d_p|^2 <= <e, r> <= ||e|| ||r||."""
        from bilevel import local_bounds

        return local_bounds.energy_budget(x_radius, r_norm, self.strong_convexity(theta))


class DenoisingProblem(ImageFit, BilevelProblem):
    """Base of the denoising problems (module docstring).

    Its constructor takes the training images, as every member's does:

    Parameters
    ----------
    n_images : int
        Training images (ignored when ``images`` is given).
    size : int or (int, int)
        Image size after an aspect-preserving resize (ignored with ``images``).
    sigma : float
        Standard deviation of the Gaussian noise.
    seed : int
        Seed of the noise.
    source : None or str
        None uses the images bundled with scikit-image; a folder of PNGs otherwise
        (:func:`bilevel_problems.datasets.load_images`).
    images : torch.Tensor, optional
        Clean images (N, H, W) or (H, W), instead of loading them.
    noisy : torch.Tensor, optional
        Noisy observations of ``images``, instead of adding noise here.
    shard : (int, int), optional
        ``(rank, world)``: keep only this rank's block of the images, for
        data-parallel solves (:func:`bilevel.distributed.data_parallel`).  g stays
        the mean over all ``n_total`` images.
    min_size : int
        The smallest side an image may have (a member's filter size).
    border : int
        Train with a mirrored border (default 0): the lower level denoises the noisy
        images mirrored by ``border`` pixels on every side ('reflect'), so that x has
        that larger shape, and g compares only its central crop with the clean images
        (the crop has norm 1: g's constants are unchanged).  As :meth:`denoise` does on
        new images, so that a filter bank is trained as it is used (docs/problems.md,
        "Image borders of filter banks").
    dtype, device
        Of every tensor.

    A member sets ``theta0``; ``n_images`` is the number of images held here.
    """

    upper_convex_in_x = True
    #: The tolerance of :meth:`quality`'s solves (None: :attr:`denoise_tol`, raised
    #: to what the dtype can certify).
    quality_tol = None
    #: The default tolerance of :meth:`denoise`.
    denoise_tol = 1e-6

    def __init__(self, *, n_images, size, sigma, seed, source, images, noisy, shard=None,
                 min_size=1, border=0, dtype=torch.float64, device="cpu"):
        images, noisy = datasets.denoising_pair(self.name, images, noisy, source=source,
                                                n=n_images, size=size, sigma=sigma, seed=seed,
                                                min_size=min_size, dtype=dtype, device=device)
        self.n_total = images.shape[0]  # g is the mean over all images, on every shard
        if shard is not None:
            from bilevel.distributed import shard as shard_indices

            keep = shard_indices(self.n_total, *shard)
            images, noisy = images[keep], noisy[keep]
        self.border = params.integer(self.name, "border", border, 0)
        if self.border:
            if self.border >= min(images.shape[-2:]):
                raise ValueError(f"{self.name}: border={self.border} must be smaller than the "
                                 f"images' sides {tuple(images.shape[-2:])}")
            noisy = torch.nn.functional.pad(noisy[:, None], (self.border,) * 4,
                                            mode="reflect")[:, 0]
        self.clean, self.noisy = images, noisy
        self.sigma, self.n_images = sigma, images.shape[0]

    # ------------------------------------------------------------ the contract
    def strong_convexity(self, theta):
        return 1.0  # the module docstring

    def initial_theta(self):
        return self.theta0.clone()

    def initial_x(self, theta):
        return self.noisy.clone()

    # ------------------------------------------------------------ the data term
    # A member writes h = data term + R_theta through these four hooks, so that a
    # reconstruction (:mod:`bilevel_problems.measurements`) can swap 1/2 ||x - y||^2 for
    # 1/2 ||A x - y||^2 + gamma/2 ||x||^2 and keep the member's regulariser and its
    # certified constants (which read mu, never the identity, for the data term).
    #: A bound on the data term's Hessian (None: not certified).
    data_smoothness = 1.0

    def data_value(self, x):
        """1/2 ||x - y||^2 summed over the images."""
        return 0.5 * torch.sum((x - self.noisy) ** 2)

    def data_grad(self, x):
        """x - y (a new tensor: callers add the regulariser's gradient into it)."""
        return x - self.noisy

    def data_hvp(self, v):
        """The data term's Hessian times v: v itself (a new tensor)."""
        return v.clone()

    # ------------------------------------------------------------------ usage
    def on_images(self, images, theta) -> DenoisingProblem:
        """This problem's model on other images (clean = noisy = ``images``, (N, H, W)).

        ``theta`` is the one they will be denoised with.
        """
        raise NotImplementedError(f"{type(self).__name__} does not say how to denoise new "
                                  "images (on_images)")

    def as_noisy(self, noisy) -> torch.Tensor:
        """Images to denoise as a tensor: in this problem's dtype and on its device."""
        return torch.as_tensor(noisy, dtype=self.dtype, device=self.device)

    #: Mirrored border :meth:`denoise` adds by default.  A filter bank correlates only
    #: where its s x s window fits inside the image, so the outer s - 1 rows and columns
    #: are seen by fewer windows (the learned 16-filter ridge at sigma 25 on 200 patches
    #: 40 x 40: outer 2 pixels MSE 2.68e-3 against 2.06e-3 inside; mirrored 2.47e-3, the
    #: mean loss 1.7446 -> 1.7268); members with filters set s - 1.
    boundary_pad = 0

    def denoise(self, noisy, theta=None, tol=None, max_iter=100_000, pad=None):
        """Denoise new images (N, H, W), (H, W) or (..., H, W) with ``theta`` (default theta0).

        Returns x shaped like ``noisy`` with certified ||x - x*|| <= tol (None:
        :attr:`denoise_tol`, raised to what the dtype can certify); raises
        ``RuntimeError`` if the solve stops short (:meth:`solve_certified`).  With
        ``pad`` > 0 (None: :attr:`boundary_pad`) x* is that of the images mirrored by
        ``pad`` pixels on every side ('reflect', without repeating the edge), cropped
        back: the certificate holds for the crop too.
        """
        noisy = self.as_noisy(noisy)
        theta = self.initial_theta() if theta is None else theta
        pad = self.boundary_pad if pad is None else params.integer(self.name, "pad", pad, 0)
        images = noisy.reshape(-1, *noisy.shape[-2:])
        if pad:
            if pad >= min(images.shape[-2:]):
                raise ValueError(f"{self.name}: pad={pad} must be smaller than the images' "
                                 f"sides {tuple(images.shape[-2:])}")
            images = torch.nn.functional.pad(images[:, None], (pad,) * 4, mode="reflect")[:, 0]
        problem = self.on_images(images, theta)
        x = problem.solve_certified(theta, tol, max_iter, images.shape)
        if pad:
            x = x[..., pad:-pad, pad:-pad]
        return x.reshape(noisy.shape)

    def quality(self, theta, clean=None, noisy=None, tol=None):
        """Mean PSNR / SSIM of the denoised ``noisy`` against ``clean``.

        Defaults to the problem's own (training) images; pass held-out ``clean``
        and ``noisy`` to test.
        """
        clean = self.clean if clean is None else clean
        if noisy is None:  # the training images as they were observed, without the border
            b = self.border
            noisy = self.noisy[..., b:-b, b:-b] if b else self.noisy
        tol = self.quality_tol if tol is None else tol
        return datasets.quality(self.denoise(noisy, theta, tol=tol), clean)

    def solve_certified(self, theta, tol, max_iter, shape):
        """x*(theta) of this problem (built on the images to denoise), shaped ``shape``.

        Certified ||x - x*|| <= tol.  ``tol=None`` takes :attr:`denoise_tol`, raised to
        what the dtype can certify here (:func:`bilevel.lower.rounding_floor`:
        in float32 the default 1e-6 is often below rounding).  An explicit tol
        below :func:`bilevel.lower.reachable_accuracy` is refused at once, naming
        the dtype's reachable accuracy.  ``RuntimeError`` if the solve stops short
        (max_iter, or its certificate stalled at the rounding floor).
        """
        from bilevel.lower import reachable_accuracy, rounding_floor

        theta = check_theta(self, torch.as_tensor(theta, dtype=self.dtype,
                                                 device=self.device).flatten())
        x0 = self.initial_x(theta)
        if tol is None:
            tol = max(self.denoise_tol, 2 * rounding_floor(self, theta, x0))
        else:
            tol = params.number(self.name, "tol", tol, positive=True)
            reachable = reachable_accuracy(self, theta, x0)
            if tol < reachable:
                raise ValueError(f"{self.name}: denoise tol={tol:g} is below what "
                                 f"{x0.dtype} can certify for these images (about "
                                 f"{reachable:.1e} = 4 eps max(1, ||x||) / mu); pass a larger "
                                 "tol, tol=None for a reachable default, or use float64")
        max_iter = params.integer(self.name, "max_iter", max_iter, 1)
        sol = self.solve_lower(theta, tol, max_iter=max_iter)
        if not sol.converged:
            if sol.iterations < max_iter:
                raise RuntimeError(
                    f"{self.name}: denoise stalled at certified accuracy "
                    f"{sol.error_bound:.2e} > tol={tol:g}, the rounding floor of {x0.dtype} "
                    f"at this theta (about {rounding_floor(self, theta, x0):.1e}); pass "
                    "a larger tol, tol=None, or use float64")
            raise RuntimeError(f"{self.name}: denoise reached max_iter={max_iter} at "
                               f"certified accuracy {sol.error_bound:.2e} > tol={tol:g}")
        return sol.x.reshape(shape)

    # ------------------------------------------------------------------ minibatches
    #: The per-image tensors, stacked along dim 0, that :meth:`subset` indexes.  A
    #: member that holds more per-image data (measurements, a start) adds its names.
    sample_fields = ("clean", "noisy")

    @property
    def n_samples(self) -> int:
        """The images held here (this rank's, in a data-parallel run)."""
        return self.n_images

    def subset(self, indices, total=None):
        """This problem on the images ``indices`` (:meth:`bilevel.BilevelProblem.subset`).

        A shallow copy holding those images' rows of :attr:`sample_fields`: no
        loading, no noise drawn again, the member's settings and theta0 shared.  h
        is the sum over the batch (mu = 1 stays true), g the mean over ``total``
        images (default: the batch).  Private attributes are caches (shapes,
        estimated constants) and are not copied, except the convolution
        workspaces (``_workspaces``, keyed by block shape), which are reused.
        """
        import copy

        index = torch.as_tensor(indices, dtype=torch.long, device=self.clean.device).flatten()
        if index.numel() == 0 or int(index.min()) < 0 or int(index.max()) >= self.n_images:
            raise ValueError(f"{self.name}: subset indices must be non-empty and in "
                             f"[0, {self.n_images}), got {index.tolist()[:8]}")
        total = index.numel() if total is None else total
        if not (isinstance(total, int) and total >= index.numel()):
            raise ValueError(f"{self.name}: subset total must be an integer >= the batch "
                             f"size {index.numel()}, got {total!r}")
        stacked = self.clean.ndim
        for key, value in vars(self).items():
            # A per-image tensor subset() does not know of would silently stay whole.
            if (not key.startswith("_") and key not in self.sample_fields
                    and isinstance(value, torch.Tensor) and value.ndim == stacked
                    and value.shape[0] == self.n_images):
                raise TypeError(f"{self.name}: attribute {key!r} looks per-image (shape "
                                f"{tuple(value.shape)}) but is not in sample_fields; "
                                "subset() cannot index it")
        view = copy.copy(self)
        for key in [k for k in vars(view) if k.startswith("_") and k != "_workspaces"]:
            delattr(view, key)
        for key in self.sample_fields:
            setattr(view, key, getattr(self, key)[index])
        view.n_images, view.n_total = index.numel(), total
        return view
