"""Helpers for measured scans: cut a compact subset, and test the axis conventions of a reader.

A measured scan (e.g. the tike Siemens-star scan, 516 patterns of 128x128 counts) is often too
large for a quick CPU run.  :func:`crop_scan` keeps the ``n`` patterns whose window centres are
nearest to a chosen point and re-frames their positions into the smallest object frame that holds
their windows, so every downstream object (pty-chi's buffer, the stitching canvas) shrinks with it.

Frame convention (``physics``): a window of size ``N`` centred at ``p`` starts at ``p - N/2``.  The
new frame starts at the integer pixel ``shift = floor(min start) - 1`` of the old frame (one pixel
of margin, clipped to the old frame when it has an object array), so ``new = old - shift`` exactly
(an integer shift: sub-pixel parts are untouched) and ``old = new + meta['crop_shift_px']``.

:func:`convention_variants` builds the scans that a wrong reader convention would have produced
(position columns swapped, detector rotated by 180 degrees, ...); reconstructing each and comparing
the data NLL (:func:`ptypinn.pinn.infer.data_nll`) tells which convention the data follow.

Detector binning is deliberately not offered: summing 2x2 detector pixels halves the real-space
window (the object pixel size stays ``lambda z / (N dx)``), which is only valid when the probe fits
in half the window; the zone-plate probe of the Siemens-star scan fills most of its 128-px window.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ptypinn.data import FRAME_MARGIN_PX, ScanData, frame_shift_px, window_starts

__all__ = ["crop_scan", "scan_centre_px", "rotate_detector_180", "convention_variants"]

log = logging.getLogger(__name__)



def _check_center(center_px: Any) -> np.ndarray:
    try:
        c = np.asarray(center_px, dtype=np.float64)
    except (TypeError, ValueError):
        c = None
    if c is None or c.shape != (2,) or not np.isfinite(c).all():
        raise ValueError(f"center_px: expected two finite numbers (y, x) in object pixels, "
                         f"got {center_px!r}")
    return c


def crop_scan(scan: ScanData, center_px: tuple[float, float], n_patterns: int) -> ScanData:
    """The ``n_patterns`` patterns nearest to ``center_px``, in the smallest frame holding them.

    Parameters
    ----------
    scan : ScanData
        Any scan; positions are window centres ``(y, x)`` in its object frame (pixels).
    center_px : (float, float)
        Point ``(y, x)`` in ``scan``'s object frame (pixels) around which to select.
    n_patterns : int
        Number of patterns to keep, ``1 <= n_patterns <= scan.n_patterns``.  Ties in distance are
        broken by pattern index (deterministic).

    Returns
    -------
    ScanData
        The selected patterns in their original order, ``counts (n_patterns, H, W)``, positions
        ``positions_px - shift`` with ``shift = floor(min window start) - 1`` per axis (clipped to
        the old frame if the scan has ``object_true``/``object_guess``, which are cropped to the
        new frame ``[shift, max window end + 1)``).  ``meta['crop_shift_px']`` holds the total
        ``(y, x)`` shift from the original frame (added to an existing one), ``meta['crop']`` the
        centre and count.  Probe and bad pixels are unchanged.

    Raises
    ------
    ValueError
        ``center_px`` not two finite numbers, or ``n_patterns`` not an integer in range.
    """
    c = _check_center(center_px)
    n = scan.n_patterns
    if isinstance(n_patterns, (bool, np.bool_)) or not isinstance(n_patterns, (int, np.integer)) \
            or not 1 <= n_patterns <= n:
        raise ValueError(f"n_patterns: expected an integer in [1, {n}] (the scan's pattern "
                         f"count), got {n_patterns!r}")
    pos = scan.positions_px
    dist = np.hypot(pos[:, 0] - c[0], pos[:, 1] - c[1])
    keep = np.sort(np.argsort(dist, kind="stable")[: int(n_patterns)])

    size = scan.pattern_size
    starts = window_starts(pos[keep], size)
    lo = -frame_shift_px(pos[keep], size)
    hi = np.ceil(starts.max(axis=0) + size) + FRAME_MARGIN_PX  # exclusive end, sub-pixel safe
    has_object = scan.object_true is not None or scan.object_guess is not None
    if has_object:  # the new frame must lie inside the old one to crop the arrays
        lo = np.maximum(lo, 0.0)
        hi = np.minimum(hi, np.asarray(scan.object_shape_px, dtype=np.float64))
    y0, x0 = (int(v) for v in lo)
    y1, x1 = (int(v) for v in hi)

    def cut(obj: np.ndarray | None) -> np.ndarray | None:
        return None if obj is None else np.ascontiguousarray(obj[y0:y1, x0:x1])

    prior = scan.meta.get("crop_shift_px", [0.0, 0.0])
    meta = dict(scan.meta, crop_shift_px=[float(prior[0]) + y0, float(prior[1]) + x0],
                crop={"center_px": [float(c[0]), float(c[1])], "n_patterns": int(n_patterns),
                      "of_n_patterns": n})
    out = scan.replace(counts=scan.counts[keep], positions_px=pos[keep] - lo,
                       object_true=cut(scan.object_true), object_guess=cut(scan.object_guess),
                       meta=meta)
    log.info("cropped %d of %d patterns around (%.1f, %.1f) px: frame %dx%d, shift (%d, %d) px",
             n_patterns, n, c[0], c[1], *out.object_shape_px, y0, x0)
    return out


def scan_centre_px(scan: ScanData) -> tuple[float, float]:
    """Centre ``(y, x)`` (pixels) of the bounding box of the scan's window centres."""
    pos = scan.positions_px
    mid = (pos.min(axis=0) + pos.max(axis=0)) / 2.0
    return float(mid[0]), float(mid[1])



def rotate_detector_180(counts: np.ndarray) -> np.ndarray:
    """Patterns rotated by 180 degrees about the zero-frequency pixel: ``I'(q) = I(-q)``.

    Parameters
    ----------
    counts : ``(..., N, N)`` with zero frequency at pixel ``(N//2, N//2)`` (our convention).

    Returns
    -------
    ``(..., N, N)``: pixel ``k`` holds old pixel ``(N - k) mod N`` on both axes, so the zero
    frequency stays where it is (a plain ``[::-1, ::-1]`` would move it by one pixel for even N).
    """
    counts = np.asarray(counts)
    return np.roll(counts[..., ::-1, ::-1], 1, axis=(-2, -1))


def _reframed(scan: ScanData, counts: np.ndarray, positions_px: np.ndarray,
              bad_pixels: np.ndarray | None, variant: str) -> ScanData:
    shift = frame_shift_px(positions_px, scan.pattern_size)
    return ScanData(counts=counts, positions_px=positions_px + shift, probe=scan.probe,
                    bad_pixels=bad_pixels, meta=dict(scan.meta, convention_variant=variant))


def convention_variants(scan: ScanData) -> dict[str, ScanData]:
    """The scan as read, and as three wrong reader conventions would have produced it.

    Returns
    -------
    dict
        ``"yx"``: ``scan`` unchanged; ``"xy"``: position columns swapped; ``"detector180"``:
        patterns (and bad pixels) rotated by 180 degrees (:func:`rotate_detector_180`);
        ``"detector180+scan180"``: that and the positions point-inverted, i.e. the whole experiment
        rotated by 180 degrees -- it reproduces the data exactly with the probe rotated by 180
        degrees, so it differs from ``"yx"`` only through the asymmetry of a fixed probe.  The
        variants have no object arrays and their positions are re-framed into the smallest frame
        holding the windows (one pixel of margin); counts are shared, not copied, where unchanged.
    """
    bad = scan.bad_pixels
    bad180 = None if bad is None else rotate_detector_180(bad)
    det180 = rotate_detector_180(scan.counts)
    pos = scan.positions_px
    return {
        "yx": scan,
        "xy": _reframed(scan, scan.counts, pos[:, ::-1].copy(), bad, "xy"),
        "detector180": _reframed(scan, det180, pos, bad180, "detector180"),
        "detector180+scan180": _reframed(scan, det180, -pos, bad180, "detector180+scan180"),
    }
