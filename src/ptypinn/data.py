"""The one data container, :class:`ScanData`, and where the absolute scale comes from.

The absolute scale (see ``docs/conventions.md``)
------------------------------------------------
Diffraction data are photon counts ``n``.  Predicted counts are ``|F(P * O)|^2`` with the probe
``P`` in photon units, so the object ``O`` is an absolute transmission: the scale of the object
is fixed by the probe's photon calibration and nothing else.  The simulator writes probes in
photon units; probes read from files are calibrated by :func:`calibrate_probe`.  Networks take
the counts themselves (their fixed physics layer back-propagates ``sqrt(n)`` with that probe), so
there is no separate dataset normalization scalar to keep in step.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ptypinn.physics import canvas_shape_px, window_starts

__all__ = ["ScanData", "window_starts", "window_outside", "FRAME_MARGIN_PX", "frame_shift_px",
           "calibrate_probe"]

log = logging.getLogger(__name__)


def _fail(name: str, expected: str, actual: Any) -> None:
    raise ValueError(f"{name}: expected {expected}, got {actual}")


@dataclass(frozen=True, eq=False)
class ScanData:
    """One ptychography scan (measured or simulated).

    Attributes
    ----------
    counts : float32 ``(n, H, W)``
        Photon counts, zero frequency at the array centre, ``>= 0`` and finite.
    positions_px : float64 ``(n, 2)``
        Probe-window centres ``(y, x)`` in pixels of the object frame (see ``physics``).
    probe : complex64 ``(H, W)`` or ``(modes, H, W)``
        Illumination; ``|probe|^2`` in photons when ``meta['probe_calibrated']`` is true.
    object_true : complex64 ``(Hy, Wx)``, optional
        Ground truth (simulation only); defines the object frame when present.
    object_guess : complex64 ``(Hy, Wx)``, optional
        Initial object (from a file); defines the object frame when there is no truth.
    bad_pixels : bool ``(H, W)``, optional
        Detector pixels to ignore (True = bad).
    meta : dict
        JSON-serialisable scalars: ``photons_per_pattern``, ``photon_energy_eV``,
        ``detector_distance_m``, ``detector_pixel_size_m``, ``object_pixel_size_m``,
        ``probe_calibrated``, ``seed``/``seeds``, ``provenance``, ...
    """

    counts: np.ndarray
    positions_px: np.ndarray
    probe: np.ndarray
    object_true: np.ndarray | None = None
    object_guess: np.ndarray | None = None
    bad_pixels: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        counts = np.asarray(self.counts)
        if counts.ndim != 3:
            _fail("counts", "shape (n, H, W)", tuple(counts.shape))
        if not np.issubdtype(counts.dtype, np.number) or np.iscomplexobj(counts):
            _fail("counts", "a real numeric array", counts.dtype)
        counts = counts.astype(np.float32, copy=False)
        n, h, w = counts.shape
        if n == 0:
            _fail("counts", "at least one pattern", "0")
        if h != w:
            _fail("counts", "square patterns (H == W)", f"{h}x{w}")
        if not np.isfinite(counts).all():
            bad = int((~np.isfinite(counts)).sum())
            _fail("counts", "finite values", f"{bad} NaN/Inf values")
        if counts.min() < 0:
            _fail("counts", "values >= 0", f"minimum {float(counts.min())}")
        set_("counts", counts)

        pos = np.asarray(self.positions_px, dtype=np.float64)
        if pos.shape != (n, 2):
            _fail("positions_px", f"shape ({n}, 2) (one (y, x) per pattern)", tuple(pos.shape))
        if not np.isfinite(pos).all():
            _fail("positions_px", "finite values", "NaN/Inf")
        set_("positions_px", pos)

        probe = np.asarray(self.probe)
        if probe.ndim not in (2, 3) or probe.shape[-2:] != (h, w):
            _fail("probe", f"shape ({h}, {w}) or (modes, {h}, {w}) matching the patterns",
                  tuple(probe.shape))
        probe = probe.astype(np.complex64, copy=False)
        if not np.isfinite(probe).all():
            _fail("probe", "finite values", "NaN/Inf")
        if not np.any(probe):
            _fail("probe", "a non-zero illumination", "all zeros")
        set_("probe", probe)

        for name in ("object_true", "object_guess"):
            obj = getattr(self, name)
            if obj is None:
                continue
            obj = np.asarray(obj)
            if obj.ndim != 2:
                _fail(name, "shape (Hy, Wx)", tuple(obj.shape))
            obj = obj.astype(np.complex64, copy=False)
            if not np.isfinite(obj).all():
                _fail(name, "finite values", "NaN/Inf")
            set_(name, obj)
        if (self.object_true is not None and self.object_guess is not None
                and self.object_true.shape != self.object_guess.shape):
            _fail("object_guess", f"shape {self.object_true.shape} (as object_true)",
                  self.object_guess.shape)

        if self.bad_pixels is not None:
            bp = np.asarray(self.bad_pixels)
            if bp.shape != (h, w):
                _fail("bad_pixels", f"shape ({h}, {w})", tuple(bp.shape))
            set_("bad_pixels", bp.astype(bool, copy=False))

        meta = dict(self.meta or {})
        try:
            json.dumps(meta)
        except TypeError as e:
            _fail("meta", "JSON-serialisable scalars", str(e))
        set_("meta", meta)

        hy, wx = self.object_shape_px
        hit = window_outside(pos, h, (hy, wx), bilinear_margin=True)
        if hit is not None:
            i = hit[0]
            _fail("positions_px", f"probe windows inside the object frame {hy}x{wx} "
                  f"(centres in [{h / 2}, {hy - h / 2}] x [{w / 2}, {wx - w / 2}])",
                  f"pattern {i} at (y, x) = ({pos[i, 0]:.2f}, {pos[i, 1]:.2f})")

    # ------------------------------------------------------------------------------------------
    @property
    def n_patterns(self) -> int:
        return int(self.counts.shape[0])

    @property
    def pattern_size(self) -> int:
        """``H == W``, the detector/probe window size in pixels."""
        return int(self.counts.shape[-1])

    @property
    def probe_modes(self) -> np.ndarray:
        """The probe as ``(modes, H, W)``."""
        return self.probe[None] if self.probe.ndim == 2 else self.probe

    @property
    def object_shape_px(self) -> tuple[int, int]:
        """Shape of the object frame: the truth's/guess's, else the smallest canvas holding all
        windows (with one pixel of margin for sub-pixel interpolation)."""
        for obj in (self.object_true, self.object_guess):
            if obj is not None:
                return int(obj.shape[0]), int(obj.shape[1])
        return canvas_shape_px(self.positions_px, self.pattern_size)

    @property
    def photons_per_pattern(self) -> float:
        """Measured mean total counts per pattern (float64 reduction)."""
        return float(self.counts.sum(axis=(1, 2), dtype=np.float64).mean())

    def subset(self, index: np.ndarray | slice) -> "ScanData":
        """A scan with only the selected patterns (same object frame, probe and meta)."""
        return dataclasses.replace(
            self, counts=self.counts[index], positions_px=self.positions_px[index]
        )

    def replace(self, **changes: Any) -> "ScanData":
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)


def window_outside(positions_px: np.ndarray, size: int, shape_px: tuple[int, int],
                   bilinear_margin: bool = True, tol_px: float = 0.0) -> tuple[int, int] | None:
    """The first window that leaves an object frame, as ``(pattern, axis)``, or None.

    Parameters
    ----------
    positions_px : float ``(n, 2)``; window centres ``(y, x)``.
    size : int; window size N (windows start at ``centre - N/2``, :func:`window_starts`).
    shape_px : (Hy, Wx); the frame.
    bilinear_margin : bool
        An axis with a fractional start needs one more pixel for the interpolation of
        :func:`ptypinn.physics.extract_patches` (what a scan needs); False checks the window
        alone (what a ptychodus product needs).
    tol_px : float; slack allowed on both sides.
    """
    starts = window_starts(np.asarray(positions_px, dtype=np.float64).reshape(-1, 2), size)
    ends = starts + size
    if bilinear_margin:  # one more pixel on each axis whose start is fractional
        ends = np.floor(starts) + size + (starts != np.floor(starts))
    for axis in (0, 1):
        bad = (starts[:, axis] < -tol_px) | (ends[:, axis] > shape_px[axis] + tol_px)
        if bad.any():
            return int(np.argmax(bad)), axis
    return None


FRAME_MARGIN_PX = 1
"""Pixels kept free before the first window when a reader builds the object frame itself."""


def frame_shift_px(positions_px: np.ndarray, size: int) -> np.ndarray:
    """The one rule for shifting read positions into an object frame of their own.

    Returns the integer ``(y, x)`` shift that, added to ``positions_px`` (window centres), makes
    the first window on each axis start at pixel :data:`FRAME_MARGIN_PX` (readers whose file has
    no object array; crops; re-framed variants).

    Parameters
    ----------
    positions_px : float ``(n, 2)``
    size : int; window size N.

    Returns
    -------
    float64 ``(2,)`` of whole pixels.
    """
    starts = window_starts(np.asarray(positions_px, dtype=np.float64).reshape(-1, 2), size)
    return np.ceil(FRAME_MARGIN_PX - starts.min(axis=0))


def calibrate_probe(scan: ScanData, mean_transmission: float = 1.0) -> ScanData:
    """Rescale an uncalibrated probe to photon units.

    Assumes the object transmits ``mean_transmission`` of the intensity on average, so that
    ``sum |P|^2 * mean_transmission == mean counts per pattern``.  A scan whose
    ``meta['probe_calibrated']`` is already true is returned unchanged.
    """
    if scan.meta.get("probe_calibrated"):
        return scan
    power = float(np.sum(np.abs(scan.probe_modes) ** 2, dtype=np.float64))
    factor = math.sqrt(scan.photons_per_pattern / (power * mean_transmission))
    log.info("calibrating probe: |P|^2 sum %.4g -> %.4g photons (x%.4g amplitude)",
             power, power * factor**2, factor)
    meta = dict(scan.meta, probe_calibrated=True, probe_calibration_factor=factor)
    return scan.replace(probe=(scan.probe * factor).astype(np.complex64), meta=meta)
