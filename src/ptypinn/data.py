"""The one data container, :class:`ScanData`, and where the absolute scale comes from.

The absolute scale (see ``docs/conventions.md``)
------------------------------------------------
Diffraction data are photon counts ``n``.  Predicted counts are ``|F(P * O)|^2`` with the probe
``P`` in photon units, so the object ``O`` is an absolute transmission: the scale of the object
is fixed by the probe's photon calibration and nothing else.  The simulator writes probes in
photon units; probes read from files are brought there by :func:`to_photon_units`.  Networks take
the counts themselves (their fixed physics layer back-propagates ``sqrt(n)`` with that probe), so
there is no separate dataset normalization scalar to keep in step.

Every command brings a scan to photon units with one function, :func:`to_photon_units`, and one
of three explicit rules (:data:`SCALE_RULES`; ``"auto"`` picks one, see there):

* ``file-units``: the file already holds photon counts and a probe in photon units (our NPZ and
  CXI files written by ptypinn, every simulated scan: ``meta['probe_calibrated']``);
* ``training-beam``: a trained bundle is applied to a scan taken with the same beam, so the probe
  gets the power (photons per pattern in free space) of the bundle's training probe;
* ``bright-free-space``: nothing in the file fixes the scale, so it comes from the data: the
  brightest patterns (quantile :data:`BRIGHT_QUANTILE` of the total counts per pattern) are
  assumed to be taken through free space, intensity transmission 1.  This is an assumption:
  when no pattern sees free space the object comes out brighter by ``1/sqrt(T)``, ``T`` the
  true transmission of the brightest patterns (the scale ambiguity ``P -> c P, O -> O / c``
  of the forward model is exact; no rule can avoid an assumption).

Reference PtychoPINN NPZ files hold *normalized* amplitudes, not photon counts; with
``photons_per_pattern`` the counts are first rescaled to that mean total, so that the Poisson
weighting of the likelihood is right.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch

from ptypinn.physics import canvas_shape_px, window_starts

__all__ = ["ScanData", "window_starts", "window_outside", "FRAME_MARGIN_PX", "frame_shift_px",
           "calibrate_probe", "defocused_aperture", "estimate_probe",
           "PROBE_ESTIMATE_SAMPLE", "SCALE_RULES", "BRIGHT_QUANTILE", "probe_power", "pattern_totals",
           "bright_transmission", "to_photon_units", "check_counts", "check_scan_fields",
           "object_shape_px", "CHUNK_PATTERNS", "iter_chunks", "CountStatistics",
           "count_statistics", "ScanSummary", "LazyCounts", "Counts", "counts_rows",
           "count_sums", "torch_counts"]

log = logging.getLogger(__name__)


def _fail(name: str, expected: str, actual: Any) -> None:
    raise ValueError(f"{name}: expected {expected}, got {actual}")


@dataclass(frozen=True, eq=False)
class ScanData:
    """One ptychography scan (measured or simulated).

    Attributes
    ----------
    counts : float32 ``(n, H, W)`` array, or :class:`LazyCounts`
        Photon counts, zero frequency at the array centre, ``>= 0`` and finite.  Large files
        are read lazily (:class:`LazyCounts`: rows on demand, float32); code that needs rows
        reads them with ``counts[rows]`` (both kinds return float32 numpy) or
        :func:`torch_counts`, and code that needs them all uses :func:`count_sums` /
        :func:`iter_chunks`.
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

    counts: "Counts"
    positions_px: np.ndarray
    probe: np.ndarray
    object_true: np.ndarray | None = None
    object_guess: np.ndarray | None = None
    bad_pixels: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        counts = (self.counts.validated() if isinstance(self.counts, LazyCounts)
                  else check_counts(self.counts))
        object.__setattr__(self, "counts", counts)
        fields = check_scan_fields(counts.shape, self.positions_px, self.probe, self.object_true,
                                   self.object_guess, self.bad_pixels, self.meta)
        for k, v in fields.items():
            object.__setattr__(self, k, v)

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
        return object_shape_px(self.positions_px, self.pattern_size, self.object_true,
                               self.object_guess)

    @property
    def photons_per_pattern(self) -> float:
        """Measured mean total counts per pattern (float64 reduction)."""
        return float(count_sums(self.counts).mean())

    def subset(self, index: np.ndarray | slice) -> "ScanData":
        """A scan with only the selected patterns (same object frame, probe and meta); lazy
        counts stay lazy (a view of the selected rows)."""
        counts = (self.counts.view(index) if isinstance(self.counts, LazyCounts)
                  else self.counts[index])
        return dataclasses.replace(self, counts=counts, positions_px=self.positions_px[index])

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


SCALE_RULES: tuple[str, ...] = ("file-units", "training-beam", "bright-free-space")
"""The rules of :func:`to_photon_units` (``"auto"`` chooses among them)."""

BRIGHT_QUANTILE = 0.98
"""Quantile of the total counts per pattern taken as "the bright patterns" (robust to a few
outliers such as cosmic rays, while a scan with a few percent of its patterns in free space
still reaches it)."""


def probe_power(probe: np.ndarray) -> float:
    """``sum |P|^2`` over all modes (photons per pattern through free space, in photon units)."""
    return float(np.sum(np.abs(np.asarray(probe)) ** 2, dtype=np.float64))


def defocused_aperture(n: int, pupil_radius_px: float, defocus_rad: float) -> np.ndarray:
    """A defocused circular aperture: a disk pupil in the far field with quadratic phase.

    The pupil (radius ``U = pupil_radius_px`` frequency pixels, edge smoothed by a Gaussian of
    sigma 1 px) carries the phase ``defocus_rad * (u / U)^2`` and is propagated back to real
    space (:func:`ptypinn.physics.inverse_far_field` convention, zero frequency at the centre).
    In geometric optics its edge rays land at ``n * defocus_rad / (pi U)`` pixels from the
    centre: the real-space radius.

    Parameters
    ----------
    n : int
        Window size N (px).
    pupil_radius_px : float
        ``U`` in frequency pixels, in ``(0, n/2]``.
    defocus_rad : float
        Quadratic phase at the pupil's edge (rad); 0 is a focused (Airy) probe.

    Returns
    -------
    complex128 ``(N, N)``, unnormalised (peak far-field amplitude 1).
    """
    from scipy import ndimage

    if not 0 < pupil_radius_px <= n / 2:
        _fail("pupil_radius_px", f"in (0, {n / 2}]", pupil_radius_px)
    ar = np.arange(n) - n // 2
    u = np.hypot(ar[:, None], ar[None, :])
    pupil = ndimage.gaussian_filter((u <= pupil_radius_px).astype(np.float64), sigma=1.0)
    far = pupil * np.exp(1j * defocus_rad * (u / pupil_radius_px) ** 2)
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(far), norm="ortho"))


PROBE_ESTIMATE_SAMPLE = 4096
"""At most this many evenly spaced patterns enter the mean pattern of :func:`estimate_probe`."""


def estimate_probe(counts: np.ndarray, bad_pixels: np.ndarray | None = None,
                   radius_px: float | None = None) -> tuple[np.ndarray, dict[str, float]]:
    """A probe estimate from the data alone, for a scan whose file has none.

    A defocused aperture (:func:`defocused_aperture`) is fitted to the mean pattern's extent:

    * the mean of up to :data:`PROBE_ESTIMATE_SAMPLE` evenly spaced patterns, bad pixels filled
      by a normalised Gaussian smoothing (sigma 1.5 px) of the good ones;
    * its bright area ``A`` (pixels at or above half of its 99.5th percentile) gives the pupil
      radius ``U = sqrt(A / pi)``, clipped to ``[2, N/2 - 1]`` -- for a defocused aperture the
      mean pattern is the pupil's flat disk blurred by the object's scattering;
    * the real-space radius ``radius_px`` (default ``N/4``, the simulator's default) fixes the
      defocus ``pi radius U / N`` (geometric optics; the far field alone does not);
    * the result is scaled so that ``sum |P|^2`` is the measured mean photons per pattern (bad
      pixels filled in) and is *not* marked calibrated: :func:`to_photon_units` then applies
      its rule.  It is a starting point for a probe that is learned
      (``model.learn_probe``), not a calibrated probe.

    Parameters
    ----------
    counts : float ``(n, N, N)`` photon counts (or anything proportional).
    bad_pixels : bool ``(N, N)``, optional (True = bad).
    radius_px : float, optional
        Real-space probe radius in pixels, in ``(0, N/2]``; None: ``N/4``.

    Returns
    -------
    probe : complex64 ``(N, N)``
    fit : dict
        ``pupil_radius_px`` (U), ``radius_px``, ``defocus_rad``, ``photons_per_pattern``.
    """
    if not isinstance(counts, LazyCounts):  # a lazy scan is read only at the sampled rows
        counts = np.asarray(counts)
    if len(counts.shape) != 3 or counts.shape[0] == 0 or counts.shape[1] != counts.shape[2]:
        _fail("counts", "patterns (n, N, N) with n >= 1", counts.shape)
    from scipy import ndimage

    n = counts.shape[-1]
    radius = n / 4 if radius_px is None else float(radius_px)
    if not 0 < radius <= n / 2:
        _fail("radius_px", f"in (0, {n / 2}]", radius_px)
    pick = np.unique(np.linspace(0, counts.shape[0] - 1,
                                 min(PROBE_ESTIMATE_SAMPLE, counts.shape[0])).astype(int))
    mean = np.asarray(counts[pick], dtype=np.float64).mean(axis=0)
    good = np.ones((n, n)) if bad_pixels is None else (~np.asarray(bad_pixels, bool)).astype(float)
    smooth = ndimage.gaussian_filter(mean * good, 1.5) / np.maximum(
        ndimage.gaussian_filter(good, 1.5), 1e-12)
    filled = np.where(good > 0, mean, smooth)
    photons = float(filled.sum())
    if not photons > 0:
        _fail("counts", "some photons to estimate a probe from", "all zeros")
    peak = float(np.quantile(filled, 0.995))
    area = float(np.count_nonzero(filled >= 0.5 * peak))
    pupil = float(np.clip(math.sqrt(area / math.pi), 2.0, n / 2 - 1))
    defocus = math.pi * radius * pupil / n
    probe = defocused_aperture(n, pupil, defocus)
    probe *= math.sqrt(photons / probe_power(probe))
    fit = {"pupil_radius_px": pupil, "radius_px": radius, "defocus_rad": defocus,
           "photons_per_pattern": photons}
    return probe.astype(np.complex64), fit


def pattern_totals(scan: ScanData) -> np.ndarray:
    """Total counts per pattern, ``(n,)`` float64, with bad pixels filled in.

    Bad pixels (``scan.bad_pixels``) are left out and the sum is divided by the fraction of the
    probe's own far-field intensity that falls on good pixels, so hot or dead pixels neither
    raise nor lower the totals.  The correction is approximate where the object scatters much
    of the beam away from a masked region (a masked bright centre: the totals come out high).
    """
    if scan.bad_pixels is None or not scan.bad_pixels.any():
        return count_sums(scan.counts)
    good = ~scan.bad_pixels
    far = np.abs(np.fft.fftshift(np.fft.fft2(scan.probe_modes), axes=(-2, -1))) ** 2
    far = far.sum(axis=0, dtype=np.float64)
    fraction = float(far[good].sum() / far.sum())
    if fraction < 1e-3:
        _fail("bad_pixels", "a mask that leaves some of the beam on the detector",
              f"{fraction:.2g} of the probe's far field on good pixels")
    return count_sums(scan.counts, good) / fraction


def bright_transmission(scan: ScanData, quantile: float = BRIGHT_QUANTILE) -> float:
    """Intensity transmission of the bright patterns under the scan's probe as it is:
    ``quantile(totals) / probe_power``; 1 after the ``bright-free-space`` rule, and below 1 for
    a probe in photon units whose brightest patterns do not see free space."""
    return float(np.quantile(pattern_totals(scan), quantile)) / probe_power(scan.probe)


def _check_positive(name: str, value: float | None) -> None:
    if value is not None and not (isinstance(value, (int, float)) and not isinstance(value, bool)
                                  and math.isfinite(value) and value > 0):
        _fail(name, "a finite number > 0", value)


def to_photon_units(scan: ScanData, rule: str = "auto", *,
                    photons_per_pattern: float | None = None,
                    beam_power_photons: float | None = None,
                    quantile: float = BRIGHT_QUANTILE,
                    transmission: float = 1.0) -> ScanData:
    """The scan with counts and probe in photon units, by one explicit rule (module docstring).

    Parameters
    ----------
    scan : ScanData
    rule : {"auto", "file-units", "training-beam", "bright-free-space"}
        ``auto``: ``file-units`` when ``meta['probe_calibrated']`` is true, else
        ``training-beam`` when
        ``beam_power_photons`` is given, else ``bright-free-space``.
    photons_per_pattern : float, optional
        Rescale the counts first so that their mean total per pattern is this (files of
        normalized amplitudes, e.g. reference PtychoPINN NPZ); the probe is rescaled with them.
        Must be finite and > 0.
    beam_power_photons : float, optional
        ``sum |P|^2`` of the training probe (photons per pattern through free space), for
        ``training-beam`` (:func:`ptypinn.pinn.infer.prepare_scan` passes the bundle's).
    quantile : float
        Quantile of :func:`pattern_totals` taken as the bright patterns (``bright-free-space``).
    transmission : float
        Assumed intensity transmission of those bright patterns (``bright-free-space``; 1 =
        free space).

    Returns
    -------
    ScanData
        Probe in photon units; ``meta`` records ``probe_calibrated``, ``scale_rule``,
        ``probe_power_photons``, ``probe_calibration_factor`` (amplitude factor applied to the
        probe) and ``counts_scale`` (factor applied to the counts, 1 if none).  A scan that is
        already calibrated by the same rule is returned unchanged.

    Raises
    ------
    ValueError
        An unknown rule, a non-positive or non-finite number, ``training-beam`` without a beam
        power, or a scan without counts.
    """
    _check_positive("photons_per_pattern", photons_per_pattern)
    _check_positive("beam_power_photons", beam_power_photons)
    _check_positive("transmission", transmission)
    if not 0 < quantile <= 1:
        _fail("quantile", "in (0, 1]", quantile)
    calibrated = bool(scan.meta.get("probe_calibrated"))
    if rule == "auto":
        if calibrated:
            rule = "file-units"
        else:
            rule = "training-beam" if beam_power_photons is not None else "bright-free-space"
    if rule not in SCALE_RULES:
        _fail("scale rule", f"'auto' or one of {SCALE_RULES}", rule)
    if rule == "training-beam" and beam_power_photons is None:
        _fail("beam_power_photons", "the training probe's power for rule 'training-beam'", None)
    if rule == "file-units" and photons_per_pattern is None and calibrated:
        return scan

    counts, probe, counts_scale = scan.counts, scan.probe, 1.0
    if photons_per_pattern is not None:
        total = float(pattern_totals(scan).mean())
        if not total > 0:
            _fail("counts", "some photons to rescale to photons_per_pattern", "all zeros")
        counts_scale = photons_per_pattern / total
        counts = (counts.scaled(counts_scale) if isinstance(counts, LazyCounts)
                  else (counts * counts_scale).astype(np.float32))
        probe = (probe * math.sqrt(counts_scale)).astype(np.complex64)  # the pair stays consistent
    rescaled = scan.replace(counts=counts, probe=probe)
    power = probe_power(probe)
    if rule == "file-units":
        target = power
    elif rule == "training-beam":
        target = float(beam_power_photons)  # type: ignore[arg-type]
    else:
        target = float(np.quantile(pattern_totals(rescaled), quantile)) / transmission
        if not target > 0:
            _fail("counts", "bright patterns with photons (rule 'bright-free-space')",
                  f"the {quantile} quantile of the totals is 0")
    factor = math.sqrt(target / power)
    log.info("scale rule %s: probe |P|^2 sum %.4g -> %.4g photons (x%.4g amplitude), counts "
             "x%.4g", rule, power, target, factor, counts_scale)
    meta = dict(scan.meta, probe_calibrated=True, scale_rule=rule, probe_power_photons=target,
                probe_calibration_factor=factor, counts_scale=counts_scale)
    return rescaled.replace(probe=(probe * factor).astype(np.complex64), meta=meta)


def check_counts(counts: Any) -> np.ndarray:
    """Validate photon counts ``(n, H, W)`` (all patterns, or a chunk of them) as
    :class:`ScanData` does, and return them as float32; ``ValueError`` names the field."""
    counts = np.asarray(counts)
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
    return counts


def check_scan_fields(shape: tuple[int, ...], positions_px: Any, probe: Any,
                      object_true: Any = None, object_guess: Any = None, bad_pixels: Any = None,
                      meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Validate every :class:`ScanData` field but the counts, for counts of ``shape``
    ``(n, H, W)``; return the fields converted to their documented dtypes."""
    n, h, w = shape
    out: dict[str, Any] = {"object_true": object_true, "object_guess": object_guess,
                           "bad_pixels": bad_pixels}
    set_ = out.__setitem__
    pos = np.asarray(positions_px, dtype=np.float64)
    if pos.shape != (n, 2):
        _fail("positions_px", f"shape ({n}, 2) (one (y, x) per pattern)", tuple(pos.shape))
    if not np.isfinite(pos).all():
        _fail("positions_px", "finite values", "NaN/Inf")
    set_("positions_px", pos)

    probe = np.asarray(probe)
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
        obj = out[name]
        if obj is None:
            continue
        obj = np.asarray(obj)
        if obj.ndim != 2:
            _fail(name, "shape (Hy, Wx)", tuple(obj.shape))
        obj = obj.astype(np.complex64, copy=False)
        if not np.isfinite(obj).all():
            _fail(name, "finite values", "NaN/Inf")
        set_(name, obj)
    truth, guess = out["object_true"], out["object_guess"]
    if truth is not None and guess is not None and truth.shape != guess.shape:
        _fail("object_guess", f"shape {truth.shape} (as object_true)", guess.shape)

    if bad_pixels is not None:
        bp = np.asarray(bad_pixels)
        if bp.shape != (h, w):
            _fail("bad_pixels", f"shape ({h}, {w})", tuple(bp.shape))
        set_("bad_pixels", bp.astype(bool, copy=False))

    meta = dict(meta or {})
    try:
        json.dumps(meta)
    except TypeError as e:
        _fail("meta", "JSON-serialisable scalars", str(e))
    set_("meta", meta)

    hy, wx = object_shape_px(pos, h, truth, guess)
    hit = window_outside(pos, h, (hy, wx), bilinear_margin=True)
    if hit is not None:
        i = hit[0]
        _fail("positions_px", f"probe windows inside the object frame {hy}x{wx} "
              f"(centres in [{h / 2}, {hy - h / 2}] x [{w / 2}, {wx - w / 2}])",
              f"pattern {i} at (y, x) = ({pos[i, 0]:.2f}, {pos[i, 1]:.2f})")
    return out


def object_shape_px(positions_px: np.ndarray, size: int, object_true: np.ndarray | None = None,
                    object_guess: np.ndarray | None = None) -> tuple[int, int]:
    """Shape of the object frame: the truth's/guess's, else the smallest canvas holding all
    windows of ``size`` px centred at ``positions_px`` (one pixel of margin for interpolation)."""
    for obj in (object_true, object_guess):
        if obj is not None:
            return int(obj.shape[0]), int(obj.shape[1])
    return canvas_shape_px(positions_px, size)


CHUNK_PATTERNS = 256
INTEGER_CHECK_PATTERNS = 64


def iter_chunks(counts: "Counts", patterns: int = CHUNK_PATTERNS) -> Iterator[np.ndarray]:
    """The patterns of ``(n, H, W)`` counts, ``patterns`` at a time (views of an in-memory
    array; float32 copies read from the file for :class:`LazyCounts`)."""
    for start in range(0, counts.shape[0], patterns):
        yield counts[start:start + patterns]


def count_sums(counts: "Counts", weight: np.ndarray | None = None,
               patterns: int = CHUNK_PATTERNS) -> np.ndarray:
    """Total counts of each pattern, ``(n,)`` float64, read ``patterns`` at a time.

    ``weight`` ``(H, W)``: sum ``counts * weight`` instead (e.g. a good-pixel mask).  Lazy
    counts keep the plain totals of their validation pass, so that sum is free.
    """
    if weight is None and isinstance(counts, LazyCounts):
        return counts.totals()
    out = np.empty(counts.shape[0], dtype=np.float64)
    start = 0
    for chunk in iter_chunks(counts, patterns):
        c = chunk if weight is None else chunk * weight
        out[start:start + len(chunk)] = c.sum(axis=(1, 2), dtype=np.float64)
        start += len(chunk)
    return out


RowReader = Callable[[np.ndarray], np.ndarray]
"""``read(rows)``: the source rows ``rows`` (sorted, unique int64 indices) as a numeric
``(len(rows), H, W)`` array, already converted to counts (e.g. amplitudes squared)."""


class LazyCounts:
    """Read-only photon counts ``(n, H, W)`` that stay in their file until rows are asked for.

    Indexing (an integer, a slice, an integer array or a boolean mask) returns float32 numpy
    arrays, as indexing an in-memory counts array does: ``counts[rows]``.  The rows are read
    through ``read`` (a function of sorted, unique source rows supplied by :mod:`ptypinn.io`,
    e.g. HDF5 slices), in the order asked for.  :class:`ScanData` validates lazy counts in one
    chunked pass (:meth:`validated`), which also keeps each pattern's total counts.

    Parameters
    ----------
    shape : ``(n, H, W)`` of the source
    read : :data:`RowReader`
    source : str; where the rows come from (for error messages), e.g. ``"file.cxi: /entry_1/..."``
    scale : float; every value read is multiplied by it (:func:`to_photon_units`)
    rows : int64 ``(m,)``, optional; this view's rows of the source (:meth:`view`)
    """

    def __init__(self, shape: tuple[int, int, int], read: RowReader, source: str = "",
                 scale: float = 1.0, rows: np.ndarray | None = None) -> None:
        if len(shape) != 3:
            _fail("counts", "shape (n, H, W)", tuple(shape))
        self._source_shape = tuple(int(v) for v in shape)
        self._read = read
        self.source = source
        self.scale = float(scale)
        self._rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        self._totals: np.ndarray | None = None

    # array-like surface ----------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        n = self._source_shape[0] if self._rows is None else int(self._rows.size)
        return (n, *self._source_shape[1:])  # type: ignore[return-value]

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float32)

    @property
    def ndim(self) -> int:
        return 3

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"LazyCounts(shape={self.shape}, source={self.source!r}, scale={self.scale:g})"

    def _local_rows(self, key: Any) -> tuple[np.ndarray, bool]:
        """This view's rows selected by ``key`` (int64) and whether the key was a scalar."""
        n = len(self)
        if isinstance(key, torch.Tensor):
            key = key.cpu().numpy()
        if isinstance(key, slice):
            return np.arange(*key.indices(n), dtype=np.int64), False
        arr = np.asarray(key)
        if arr.dtype == bool:
            if arr.shape != (n,):
                _fail("counts index", f"a boolean mask of shape ({n},)", arr.shape)
            return np.flatnonzero(arr), False
        if not np.issubdtype(arr.dtype, np.integer):
            _fail("counts index", "an integer, slice, integer array or boolean mask", arr.dtype)
        idx = arr.astype(np.int64).reshape(-1)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"counts index: expected rows in [-{n}, {n}), got "
                             f"{int(idx.min())}..{int(idx.max())}")
        return np.where(idx < 0, idx + n, idx), arr.ndim == 0

    def _source_rows(self, key: Any) -> tuple[np.ndarray, bool]:
        idx, scalar = self._local_rows(key)
        return (idx if self._rows is None else self._rows[idx]), scalar

    def __getitem__(self, key: Any) -> np.ndarray:
        """float32 ``(k, H, W)`` (or ``(H, W)`` for an integer key) in the order asked for; a
        tuple key selects rows by its first entry and indexes the rows read with the rest."""
        if isinstance(key, tuple):
            block = self[key[0]] if key else self[:]
            rest = key[1:]
            return block[rest] if block.ndim == 2 else block[(slice(None), *rest)]
        idx, scalar = self._source_rows(key)
        h, w = self._source_shape[1:]
        if idx.size == 0:
            return np.zeros((0, h, w), np.float32)
        unique, inverse = np.unique(idx, return_inverse=True)
        block = np.asarray(self._read(unique))
        if block.shape != (unique.size, h, w):
            raise ValueError(f"{self.source}: expected rows of shape ({unique.size}, {h}, {w}), "
                             f"read {block.shape}")
        block = block.astype(np.float32, copy=False)
        if self.scale != 1.0:
            block = block * np.float32(self.scale)
        out = block if unique.size == idx.size and np.array_equal(unique, idx) else block[inverse]
        return out[0] if scalar else out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        """All rows in memory (what code that is not streamed gets; avoid on big scans)."""
        out = self[:]
        return out if dtype is None else out.astype(dtype, copy=False)

    # views ------------------------------------------------------------------------------------
    def _derived(self, scale: float, rows: np.ndarray | None) -> "LazyCounts":
        return LazyCounts(self._source_shape, self._read, self.source, scale, rows)

    def scaled(self, factor: float) -> "LazyCounts":
        """The same rows multiplied by ``factor`` (finite, > 0); validation carries over."""
        if not (math.isfinite(factor) and factor > 0):
            _fail("counts scale", "a finite number > 0", factor)
        out = self._derived(self.scale * factor, self._rows)
        if self._totals is not None:
            out._totals = self._totals * factor
        return out

    def view(self, index: Any) -> "LazyCounts":
        """The selected rows as lazy counts (nothing is read); validation carries over."""
        local, _ = self._local_rows(index)
        out = self._derived(self.scale, local if self._rows is None else self._rows[local])
        if self._totals is not None:
            out._totals = self._totals[local]
        return out

    # validation and totals ------------------------------------------------------------------
    def validated(self, patterns: int = CHUNK_PATTERNS) -> "LazyCounts":
        """``self`` after one chunked pass that checks what :func:`check_counts` checks
        (finite, ``>= 0``, square, at least one pattern) and keeps each pattern's total;
        ``ValueError`` names the first bad pattern.  Repeated calls are free."""
        if self._totals is not None:
            return self
        n, h, w = self.shape
        if n == 0:
            _fail("counts", "at least one pattern", "0")
        if h != w:
            _fail("counts", "square patterns (H == W)", f"{h}x{w}")
        totals = np.empty(n, dtype=np.float64)
        for start in range(0, n, patterns):
            chunk = self[start:start + patterns]
            finite = np.isfinite(chunk).all(axis=(1, 2))
            if not finite.all():
                i = start + int(np.argmin(finite))
                _fail("counts", "finite values", f"NaN/Inf in pattern {i} ({self.source})")
            low = chunk.min(axis=(1, 2))
            if (low < 0).any():
                i = start + int(np.argmax(low < 0))
                _fail("counts", "values >= 0",
                      f"minimum {float(low.min())} in pattern {i} ({self.source})")
            totals[start:start + len(chunk)] = chunk.sum(axis=(1, 2), dtype=np.float64)
        self._totals = totals
        return self

    def totals(self) -> np.ndarray:
        """Total counts of each pattern, float64 ``(n,)`` (from :meth:`validated`)."""
        return self.validated()._totals.copy()  # type: ignore[union-attr]


Counts = np.ndarray | LazyCounts
"""Counts as :class:`ScanData` holds them: an in-memory float32 array or :class:`LazyCounts`."""


def counts_rows(counts: Counts, rows: Any) -> np.ndarray:
    """Rows of in-memory or lazy counts as a float32 array of shape ``rows.shape + (H, W)``
    (``rows``: integer indices of any shape, numpy or torch)."""
    idx = rows.cpu().numpy() if isinstance(rows, torch.Tensor) else np.asarray(rows)
    flat = idx.reshape(-1)
    block = counts[flat] if isinstance(counts, LazyCounts) else np.asarray(counts)[flat]
    return np.asarray(block, dtype=np.float32).reshape(*idx.shape, *counts.shape[1:])


class _TorchRows:
    """Lazy counts indexed like a CPU tensor (see :func:`torch_counts`)."""

    def __init__(self, counts: LazyCounts) -> None:
        self.counts = counts
        self.shape = torch.Size(counts.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> torch.Tensor:
        if isinstance(key, slice):
            return torch.from_numpy(self.counts[key])
        return torch.from_numpy(counts_rows(self.counts, key))


def torch_counts(counts: Counts) -> Any:
    """Counts to index like a CPU tensor, one batch at a time: ``torch.from_numpy`` of an
    in-memory array (no copy), or an adapter that reads the rows of lazy counts on demand
    (``t[slice]``, ``t[index tensor of any shape]`` -> float32 CPU tensor)."""
    if isinstance(counts, LazyCounts):
        return _TorchRows(counts)
    return torch.from_numpy(np.asarray(counts))


@dataclass(frozen=True)
class CountStatistics:
    """What ``ptypinn info`` reports about the counts, gathered one chunk at a time.

    Attributes
    ----------
    shape : ``(n, H, W)`` of all patterns
    totals : float64 ``(n,)``, total counts (photons) of each pattern
    integer_valued : whether the first :data:`INTEGER_CHECK_PATTERNS` patterns hold integers
    """

    shape: tuple[int, int, int]
    totals: np.ndarray
    integer_valued: bool

    @property
    def photons_per_pattern(self) -> float:
        """Mean total counts per pattern (as :attr:`ScanData.photons_per_pattern`)."""
        return float(self.totals.mean())


def count_statistics(chunks: Iterable[np.ndarray]) -> CountStatistics:
    """Statistics of photon counts given as consecutive chunks ``(k, H, W)`` of patterns.

    Every chunk is validated as :class:`ScanData` validates its counts (:func:`check_counts`),
    so only one chunk is in memory at a time; ``ValueError`` names the field.
    """
    totals: list[np.ndarray] = []
    hw: tuple[int, int] | None = None
    n = 0
    integer = True
    for chunk in chunks:
        c = check_counts(chunk)
        if hw is not None and c.shape[1:] != hw:
            _fail("counts", f"patterns of one shape {hw}", c.shape[1:])
        hw = (int(c.shape[1]), int(c.shape[2]))
        head = c[: max(0, INTEGER_CHECK_PATTERNS - n)]
        integer = integer and bool(np.all(head == np.round(head)))
        totals.append(c.sum(axis=(1, 2), dtype=np.float64))
        n += c.shape[0]
    if hw is None:
        _fail("counts", "at least one pattern", "0")
    return CountStatistics(shape=(n, *hw), totals=np.concatenate(totals),  # type: ignore[misc]
                           integer_valued=integer)


@dataclass(frozen=True, eq=False)
class ScanSummary:
    """A scan's statistics without its patterns: every :class:`ScanData` field but the counts
    (validated by :func:`check_scan_fields`) and the :class:`CountStatistics` of the counts."""

    counts: CountStatistics
    positions_px: np.ndarray
    probe: np.ndarray
    object_true: np.ndarray | None = None
    object_guess: np.ndarray | None = None
    bad_pixels: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def object_shape_px(self) -> tuple[int, int]:
        return object_shape_px(self.positions_px, self.counts.shape[-1], self.object_true,
                               self.object_guess)

    @classmethod
    def from_scan(cls, scan: ScanData, patterns: int = CHUNK_PATTERNS) -> "ScanSummary":
        """The summary of an in-memory scan (its counts read ``patterns`` at a time)."""
        return cls(counts=count_statistics(iter_chunks(scan.counts, patterns)),
                   positions_px=scan.positions_px, probe=scan.probe,
                   object_true=scan.object_true, object_guess=scan.object_guess,
                   bad_pixels=scan.bad_pixels, meta=scan.meta)
