"""Streaming shift-and-add stitching of object patches onto one canvas (SPEC §6).

Each patch (optionally only its central ``crop_px`` × ``crop_px`` pixels) is placed at its window
centre with :func:`ptypinn.physics.place_patches` (the adjoint of patch extraction) and the
canvas is divided by the summed placement weights::

    numerator   += place_patches(patch * mask)
    denominator += place_patches(mask)
    object       = numerator / denominator     where denominator > min_weight * max(denominator)

``mask`` is a centred 0/1 crop mask of the patch (all ones without a crop).  Numerator and
denominator use the *same* mask, positions and bilinear weights, so the result is a weighted
average of the patch values and cannot blow up at patch borders (SPEC lesson 4).  Only the two
canvases are kept, so memory is O(canvas) whatever the number of patches.

Phase synchronization (:func:`synchronize_phases`).  The data fix each pattern's object patch
only up to a constant phase factor (``|F(P O e^{i c})|^2 = |F(P O)|^2``); a network returns that
constant from its prior, with an error that differs from patch to patch and drifts across the
scan.  Averaging such patches blurs the phase: on the "lines" benchmark the per-patch offsets had
a spread of only 0.04 rad, yet they cut the stitched phase SSIM from 0.97 (offsets removed with
the truth) to 0.87.  Before stitching, the offsets ``theta_i`` are therefore chosen to make
overlapping patches agree: for every pair of patches whose crops overlap, the overlap product
``M_ij = sum crop_i conj(crop_j)`` (in the shared pixels) gives the measured phase difference
``arg M_ij``, and the offsets solve the weighted least-squares problem
``min sum |M_ij| wrap(theta_i - theta_j + arg M_ij)^2`` (a graph Laplacian; Gauss-Newton on the
wrapped residuals, conjugate gradients).  The one free constant is fixed by keeping the mean
phase the network's.  This is the least-squares form of the "angular
synchronization" used to merge independently phased tiles.

Frames: positions are window centres ``(y, x)`` in canvas pixels, the frame of the positions
(pixel 0 = frame origin); see the conventions in :mod:`ptypinn.physics`.
"""

from __future__ import annotations

import logging
import math
from typing import Callable, Iterable

import numpy as np
import scipy.sparse as sparse
import scipy.sparse.linalg as sparse_linalg
import torch
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from ptypinn.grouping import probe_radius_px_from_probe
from ptypinn.parallel import all_reduce_sum, process_group
from ptypinn.physics import extract_patches, place_patches, window_starts

__all__ = ["crop_mask", "crop_start_px", "default_crop_px", "Stitcher", "stitch_patches",
           "footprint_mask", "overlap_pairs",
           "pair_overlap_products", "solve_phase_offsets", "synchronize_phases"]

log = logging.getLogger(__name__)


def default_crop_px(probe: np.ndarray) -> int:
    """Central crop for stitching: the square inscribed in the probe footprint (even, <= N).

    The network's output outside the illuminated disc is unconstrained by the data (it tends to
    0), so stitching a larger square drags the amplitude down at its corners (measured: 13-15 %
    low with a ``2r + 4`` square; right to 0.5 % with the inscribed square, r = 16 px).  On a
    second object family (grf) it is also the best crop by amplitude SSIM; the truth-free data
    NLL prefers a slightly larger one (``bench/defaults.py``, docs/benchmarks.md).

    Parameters
    ----------
    probe : complex ``(N, N)`` or ``(modes, N, N)``; its footprint radius is
        :func:`ptypinn.grouping.probe_radius_px_from_probe`.
    """
    n = probe.shape[-1]
    radius = probe_radius_px_from_probe(probe)
    crop = 2 * int(round(radius / math.sqrt(2))) + 2
    return int(min(n, max(crop, 2)))


def crop_start_px(patch_size: int, crop_px: int) -> int:
    """First pixel of the central ``crop_px`` window of an ``N``-patch: ``N//2 - crop_px//2``
    (same centre as the patch, pixel ``N//2``)."""
    return patch_size // 2 - crop_px // 2


def crop_mask(patch_size: int, crop_px: int | None) -> np.ndarray:
    """Centred 0/1 mask ``(N, N)`` float32 of the central ``crop_px`` × ``crop_px`` pixels.

    The crop window has the same centre as the patch (pixel ``N//2`` for the window convention
    of :mod:`ptypinn.physics`): it starts at ``N//2 - crop_px//2``.  ``None`` gives all ones.
    """
    mask = np.zeros((patch_size, patch_size), dtype=np.float32)
    if crop_px is None:
        mask[:] = 1.0
        return mask
    if not 1 <= crop_px <= patch_size:
        raise ValueError(f"crop_px: expected in [1, {patch_size}] (the patch size), got {crop_px}")
    s = crop_start_px(patch_size, crop_px)
    mask[s:s + crop_px, s:s + crop_px] = 1.0
    return mask


class Stitcher:
    """Accumulate patches on a canvas; memory is two canvases whatever the number of patches.

    Parameters
    ----------
    shape : (Hy, Wx)
        Canvas shape in pixels (e.g. :func:`ptypinn.physics.canvas_shape_px` or the scan's
        object frame).
    patch_size : int
        Patch size N.
    crop_px : int, optional
        Use only the central ``crop_px`` × ``crop_px`` pixels of each patch.
    device : str or torch.device
        Where the canvases live (patches are moved there).
    dtype : torch complex dtype
        Numerator dtype; the denominator uses the matching real dtype.
    """

    def __init__(
        self,
        shape: tuple[int, int],
        patch_size: int,
        crop_px: int | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.complex64,
    ) -> None:
        hy, wx = (int(v) for v in shape)
        if hy < 1 or wx < 1:
            raise ValueError(f"shape: expected two positive sizes, got {tuple(shape)}")
        if not dtype.is_complex:
            raise ValueError(f"dtype: expected a complex torch dtype, got {dtype}")
        self.shape = (hy, wx)
        self.patch_size = int(patch_size)
        self.crop_px = crop_px
        self.device = torch.device(device)
        self.dtype = dtype
        real = torch.empty((), dtype=dtype).real.dtype
        self._mask = torch.from_numpy(crop_mask(self.patch_size, crop_px)).to(self.device, real)
        self._num = torch.zeros((1, hy, wx), dtype=dtype, device=self.device)
        self._den = torch.zeros((1, hy, wx), dtype=real, device=self.device)
        self.n_added = 0

    def add(self, patches: torch.Tensor, positions_px: torch.Tensor) -> None:
        """Place a batch of patches.

        Parameters
        ----------
        patches : complex ``(M, N, N)``
            Object patches.
        positions_px : float ``(M, 2)``
            Window centres ``(y, x)`` in canvas pixels; windows (with their bilinear margin)
            must lie inside the canvas.
        """
        n = self.patch_size
        if patches.ndim != 3 or tuple(patches.shape[-2:]) != (n, n):
            raise ValueError(f"patches: expected shape (M, {n}, {n}), got {tuple(patches.shape)}")
        m = patches.shape[0]
        if tuple(positions_px.shape) != (m, 2):
            raise ValueError(
                f"positions_px: expected shape ({m}, 2), got {tuple(positions_px.shape)}"
            )
        if m == 0:
            return
        pos = positions_px.to(self.device, torch.float64)
        start = window_starts(pos, n)
        lo = float(start.min())
        hi_y, hi_x = (float(v) for v in start.amax(0))
        # A fractional start needs one more pixel for the bilinear weight (zero when integer).
        if lo < 0 or math.ceil(hi_y) + n > self.shape[0] or math.ceil(hi_x) + n > self.shape[1]:
            raise ValueError(
                f"positions_px: expected windows inside the {self.shape[0]}x{self.shape[1]} "
                f"canvas (starts in [0, size - {n}]), got starts in "
                f"[{lo:.3f}, ({hi_y:.3f}, {hi_x:.3f})]"
            )
        pos = pos.unsqueeze(0)
        mask = self._mask.expand(1, m, n, n)
        patches = patches.to(self.device, self.dtype).unsqueeze(0)
        self._num += place_patches(patches * mask, pos, self.shape)
        self._den += place_patches(mask, pos, self.shape)
        self.n_added += m

    def all_reduce(self) -> None:
        """Sum the canvases of every rank of the default ``torch.distributed`` process group
        into each rank's (stitching is additive: ranks that stitched disjoint sets of patches
        then hold the stitch of all of them).  A no-op outside a process group."""
        all_reduce_sum(self._num, self._den)

    def result(self, min_weight: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
        """Overlap-normalized object.

        Parameters
        ----------
        min_weight : float
            Pixels whose summed weight is ``<= min_weight * max(weight)`` are not covered.

        Returns
        -------
        object : complex64 ``(Hy, Wx)``
            ``numerator / denominator`` on covered pixels, 0 elsewhere.
        covered : bool ``(Hy, Wx)``
        """
        if not 0 <= min_weight < 1:
            raise ValueError(f"min_weight: expected in [0, 1), got {min_weight}")
        den = self._den[0]
        peak = float(den.max())
        covered = den > min_weight * peak if peak > 0 else torch.zeros_like(den, dtype=torch.bool)
        obj = torch.where(covered, self._num[0] / torch.where(covered, den, 1.0), 0.0)
        return obj.to(torch.complex64).cpu().numpy(), covered.cpu().numpy()


def stitch_patches(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    shape: tuple[int, int],
    patch_size: int,
    crop_px: int | None = None,
    device: str | torch.device = "cpu",
    min_weight: float = 1e-3,
) -> tuple[np.ndarray, np.ndarray]:
    """Stitch a stream of ``(patches (M, N, N), positions_px (M, 2))`` batches.

    Returns
    -------
    object : complex64 ``(Hy, Wx)``; covered : bool ``(Hy, Wx)`` (see :meth:`Stitcher.result`).
    """
    stitcher = Stitcher(shape, patch_size, crop_px=crop_px, device=device)
    for patches, positions_px in batches:
        stitcher.add(patches, positions_px)
    return stitcher.result(min_weight=min_weight)


def footprint_mask(positions_px: np.ndarray, patch_size: int, shape: tuple[int, int],
                   crop_px: int, batch: int = 1024) -> np.ndarray:
    """Pixels a network arm with this crop covers: the stitcher run on all-ones patches.

    Parameters
    ----------
    positions_px : float ``(n, 2)``; window centres ``(y, x)`` in the frame of ``shape``.
    patch_size : int; N.
    shape : (Hy, Wx); the object frame.
    crop_px : int; central crop of every patch (e.g. :func:`default_crop_px`).
    batch : int; patches per streamed batch (memory O(canvas + batch)).

    Returns
    -------
    bool ``(Hy, Wx)``
    """
    stitcher = Stitcher(shape, patch_size, crop_px=crop_px)
    positions = torch.from_numpy(np.asarray(positions_px, dtype=np.float64))
    for s in range(0, positions.shape[0], batch):
        pos = positions[s:s + batch]
        stitcher.add(torch.ones((pos.shape[0], patch_size, patch_size), dtype=torch.complex64),
                     pos)
    return stitcher.result()[1]


# ------------------------------------------------------------------------------------------------
# phase synchronization


def overlap_pairs(positions_px: np.ndarray, max_sep_px: float) -> np.ndarray:
    """Pairs of windows whose centres differ by at most ``max_sep_px`` along both axes.

    Parameters
    ----------
    positions_px : float ``(n, 2)``; window centres ``(y, x)``.
    max_sep_px : float; Chebyshev distance limit in pixels.

    Returns
    -------
    int64 ``(P, 2)``; each unordered pair once, ``i < j``.
    """
    pos = np.asarray(positions_px, dtype=np.float64).reshape(-1, 2)
    if not max_sep_px > 0:
        raise ValueError(f"max_sep_px: expected > 0, got {max_sep_px}")
    if pos.shape[0] < 2:
        return np.zeros((0, 2), dtype=np.int64)
    # scipy's KD-tree with the L-infinity metric gives exactly the square neighbourhood
    pairs = cKDTree(pos).query_pairs(float(max_sep_px), p=np.inf, output_type="ndarray")
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


def pair_overlap_products(crops_i: torch.Tensor, crops_j: torch.Tensor,
                          delta_px: torch.Tensor) -> torch.Tensor:
    """Overlap products ``M_ij = sum crop_i conj(crop_j)`` over the pixels two crops share.

    Parameters
    ----------
    crops_i, crops_j : complex ``(P, K, K)``
        The central crops of the two patches of each pair.
    delta_px : float ``(P, 2)``
        ``position_j - position_i`` (y, x) in pixels, ``|delta| < K``.  Crop ``j`` is resampled
        into crop ``i``'s pixels with the bilinear interpolation of
        :func:`ptypinn.physics.extract_patches` (zero outside crop ``j``).

    Returns
    -------
    complex ``(P,)``; ``arg M_ij`` is the phase of patch i relative to patch j where they overlap.
    """
    k = crops_i.shape[-1]
    pad = int(math.ceil(float(delta_px.abs().max()))) + 1 if delta_px.numel() else 1
    padded = torch.nn.functional.pad(crops_j, (pad, pad, pad, pad))
    # crop i's first pixel lies at (pad - delta) in padded crop-j pixels
    centre = (pad + k / 2.0 - delta_px.to(torch.float64)).unsqueeze(1)
    shifted = extract_patches(padded, centre, k)[:, 0]
    return (crops_i * shifted.conj()).sum(dim=(-2, -1))


def solve_phase_offsets(pairs: np.ndarray, products: np.ndarray, n: int,
                        iterations: int = 3, reg: float = 0.0) -> np.ndarray:
    """Per-patch phase offsets that make overlapping patches agree (see the module docstring).

    Parameters
    ----------
    pairs : int ``(P, 2)``; products : complex ``(P,)`` (:func:`pair_overlap_products`).
    n : int; number of patches.
    iterations : int; Gauss-Newton steps on the wrapped residuals.
    reg : float
        Optional Tikhonov weight relative to the mean weighted degree: offset patterns that vary
        more slowly than ``~ pi / sqrt(reg)`` patches are left (mostly) as the network gave them.

    Returns
    -------
    float64 ``(n,)``: multiply patch ``i`` by ``exp(1j * theta_i)`` before stitching.  Each
    connected group of patches keeps its mean phase (the minimum-norm solution); a patch without
    neighbours gets 0.

    Notes
    -----
    With ``reg = 0`` no Tikhonov term pins the free constant: any fixed weight outweighs the
    smallest Laplacian eigenvalues of a large scan (``~ degree (pi / L)^2`` for ``L`` patches
    across) and leaves the slow phase drift in place, which is what ``reg > 0`` is for.  The
    normal equations are then singular but consistent (each component's right-hand side sums to
    0), so conjugate gradients from 0 (Jacobi-preconditioned) converge to the minimum-norm step.
    """
    theta = np.zeros(n)
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    products = np.asarray(products).reshape(-1)
    if pairs.shape[0] != products.shape[0]:
        raise ValueError(f"products: expected {pairs.shape[0]} values (one per pair), got "
                         f"{products.shape[0]}")
    w = np.abs(products).astype(np.float64)
    ok = np.isfinite(w) & (w > 0)
    if n < 2 or not ok.any():
        return theta
    i, j, w, delta = pairs[ok, 0], pairs[ok, 1], w[ok], np.angle(products[ok])
    w = w / w.mean()
    lap = sparse.coo_matrix((np.concatenate([w, w, -w, -w]),
                             (np.concatenate([i, j, i, j]), np.concatenate([i, j, j, i]))),
                            shape=(n, n)).tocsr()
    lam = reg * float(lap.diagonal().mean())
    if lam > 0:
        lap = (lap + lam * sparse.identity(n, format="csr")).tocsr()
    else:  # the minimum-norm step has zero mean on every connected component
        _, labels = connected_components(lap, directed=False)
        sizes = np.bincount(labels)
    deg = lap.diagonal()
    precond = sparse.diags(np.where(deg > 0, 1.0 / np.where(deg > 0, deg, 1.0), 0.0))
    for it in range(iterations):
        raw = theta[i] - theta[j] + delta
        if it > 0 and np.all(np.abs(raw) <= math.pi):
            break  # no residual wraps: the last (linear least-squares) step was exact
        r = np.angle(np.exp(1j * raw))  # wrapped residuals
        grad = lam * theta
        np.add.at(grad, i, w * r)
        np.add.at(grad, j, -w * r)
        step, info = sparse_linalg.cg(lap, -grad, rtol=1e-6, maxiter=20 * n, M=precond)
        if info != 0:
            log.warning("phase synchronization: CG did not converge (info %d)", info)
        if lam == 0:
            step -= (np.bincount(labels, weights=step) / sizes)[labels]
        theta = theta + step
    return theta


def synchronize_phases(
    patches_of: Callable[[np.ndarray], torch.Tensor],
    positions_px: np.ndarray,
    patch_size: int,
    crop_px: int,
    max_sep_px: float | None = None,
    chunk: int = 1024,
    device: str | torch.device = "cpu",
    reg: float = 0.0,
    distributed: bool = False,
) -> np.ndarray:
    """Phase offsets of a stream of patches, computed with bounded memory.

    Parameters
    ----------
    patches_of : callable
        ``patches_of(rows)`` returns the complex patches ``(len(rows), N, N)`` of the patterns
        ``rows`` (int array); called once per chunk, so a network can recompute them instead of
        keeping all patches.
    positions_px : float ``(n, 2)``; window centres.
    patch_size, crop_px : int; N and the stitching crop (only the crops are compared).
    max_sep_px : float, optional
        Pairs whose centres differ by at most this along both axes are compared (default
        ``crop_px / 2``: crops that share at least a quarter of their area).
    chunk : int
        Patterns owning pairs per chunk.  Patterns are visited strip by strip (strips of
        ``4 max_sep_px``), each pair owned by its earlier member; a chunk needs its owners'
        patches and their partners', so memory is O(chunk), not O(n).
    device : where the overlap products are computed.
    reg : float; see :func:`solve_phase_offsets`.
    distributed : bool
        In an initialized ``torch.distributed`` process group, rank ``r`` computes the products
        of chunks ``r, r + world, ...`` only (``patches_of`` must serve them) and one
        all-reduce gathers them; every rank then solves the same problem.  Ignored outside a
        process group.

    Returns
    -------
    float64 ``(n,)``; see :func:`solve_phase_offsets`.
    """
    pos = np.asarray(positions_px, dtype=np.float64).reshape(-1, 2)
    n = pos.shape[0]
    sep = float(max_sep_px) if max_sep_px is not None else crop_px / 2.0
    if not 1 <= crop_px <= patch_size:
        raise ValueError(f"crop_px: expected in [1, {patch_size}], got {crop_px}")
    pairs = overlap_pairs(pos, sep)
    if pairs.shape[0] == 0:
        return np.zeros(n)
    strip = np.floor(pos[:, 0] / (4.0 * sep))
    order = np.lexsort((pos[:, 1], strip))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    first = rank[pairs[:, 0]] <= rank[pairs[:, 1]]
    owner = np.where(first, pairs[:, 0], pairs[:, 1])
    partner = np.where(first, pairs[:, 1], pairs[:, 0])
    by_owner = np.argsort(rank[owner], kind="stable")
    owner, partner = owner[by_owner], partner[by_owner]
    bounds = np.searchsorted(rank[owner], np.arange(0, n + chunk, chunk))
    s = crop_start_px(patch_size, crop_px)
    device = torch.device(device)
    products = np.zeros(owner.shape[0], dtype=np.complex128)
    rank, world = process_group() if distributed else (0, 1)
    for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        if a == b or k % world != rank:
            continue
        need = np.unique(np.concatenate([owner[a:b], partner[a:b]]))
        crops = patches_of(need)[..., s:s + crop_px, s:s + crop_px].to(device, torch.complex64)
        ci = torch.from_numpy(np.searchsorted(need, owner[a:b])).to(device)
        cj = torch.from_numpy(np.searchsorted(need, partner[a:b])).to(device)
        delta = torch.from_numpy(pos[partner[a:b]] - pos[owner[a:b]]).to(device)
        products[a:b] = pair_overlap_products(crops[ci], crops[cj], delta).cpu().numpy()
    if world > 1:  # each pair was computed by exactly one rank: the sum gathers them
        gathered = torch.from_numpy(products).to(device)
        all_reduce_sum(gathered)
        products = gathered.cpu().numpy()
    # the solver expects (i, j) with products M_ij: owner/partner order is consistent
    return solve_phase_offsets(np.stack([owner, partner], axis=1), products, n, reg=reg)
