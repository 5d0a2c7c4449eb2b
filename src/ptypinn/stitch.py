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

Frames: positions are window centres ``(y, x)`` in canvas pixels, the frame of the positions
(pixel 0 = frame origin); see the conventions in :mod:`ptypinn.physics`.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import torch

from ptypinn.physics import place_patches, window_starts

__all__ = ["canvas_shape_px", "crop_mask", "Stitcher", "stitch_patches"]


def canvas_shape_px(positions_px: np.ndarray, patch_size: int) -> tuple[int, int]:
    """Smallest canvas holding every window, in the frame of the positions.

    Parameters
    ----------
    positions_px : float ``(n, 2)``
        Window centres ``(y, x)`` in pixels; every window must start at pixel ``>= 0``.
    patch_size : int
        Window size N.

    Returns
    -------
    (Hy, Wx)
        ``ceil(max(start) + N + 1)`` per axis (the extra pixel is the bilinear margin of a
        fractional start).
    """
    pos = np.asarray(positions_px, dtype=np.float64).reshape(-1, 2)
    if pos.shape[0] == 0 or not np.all(np.isfinite(pos)):
        raise ValueError(f"positions_px: expected at least one finite (y, x) row, got {pos.shape}")
    if patch_size < 1:
        raise ValueError(f"patch_size: expected >= 1, got {patch_size}")
    start = pos - patch_size / 2.0
    if start.min() < 0:
        raise ValueError(
            f"positions_px: expected window starts >= 0 (centre >= {patch_size / 2} px), "
            f"got min start {start.min():.3f} px"
        )
    end = start.max(axis=0) + patch_size + 1
    return int(math.ceil(end[0])), int(math.ceil(end[1]))


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
    s = patch_size // 2 - crop_px // 2
    mask[s:s + crop_px, s:s + crop_px] = 1.0
    return mask


class Stitcher:
    """Accumulate patches on a canvas; memory is two canvases whatever the number of patches.

    Parameters
    ----------
    shape : (Hy, Wx)
        Canvas shape in pixels (e.g. :func:`canvas_shape_px` or the scan's object frame).
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
