r"""Evaluation metrics: alignment to ground truth, image-quality scores and Fourier ring correlation.

SPEC §8.  Everything here is numpy in, numpy / plain Python out; nothing touches files and no input
array is ever modified (evaluation never changes stored results, SPEC §1).

Pipeline used by :func:`evaluate`
---------------------------------
1. :func:`align` -- centre-crop both images to a common shape, register the reconstruction onto the
   ground truth with sub-pixel cross-correlation (:func:`register_subpixel`), remove the global phase
   offset (:func:`remove_global_phase`) and, if asked, a linear phase ramp (:func:`remove_phase_ramp`),
   and shrink the scoring mask so that pixels touched by the shift's wrap-around are never scored.
2. Amplitude ``|O|`` and phase are scored separately over the mask with :func:`mae`, :func:`mse`,
   :func:`nrmse`, :func:`psnr`, :func:`ssim`, :func:`ms_ssim`, :func:`pearson`.  PSNR, SSIM and
   MS-SSIM use the **truth's** range over the mask as ``data_range`` for both quantities
   (:func:`truth_data_range`), never an assumed 2 pi for the phase (SPEC lesson 11).
3. The complex images are compared with :func:`frc` on the illuminated interior
   (:func:`frc_interior`): the mask eroded by :data:`FRC_INTERIOR_MARGIN_PX`, the largest
   rectangle inside it, mean-free and apodized, so no hard mask edge enters the spectrum.

Conventions
-----------
* Images are ``(H, W)`` with axes ``(y, x)``; shifts are ``(dy, dx)`` in pixels.
* ``shift_px`` returned by :func:`register_subpixel` is the translation that must be **applied to
  ``moving``** to make it coincide with ``reference``: ``moved(r) = moving(r - shift_px)``.  Hence if
  ``moving(r) = reference(r - t)`` (``moving`` is ``reference`` displaced by ``+t``) the result is
  ``shift_px = -t`` (scikit-image's ``phase_cross_correlation`` convention).
* PSNR and SSIM always take an explicit ``data_range`` (never an assumed 255, SPEC lesson 7).
* SSIM uses scikit-image's defaults: a 7x7 uniform window, sample covariance, ``K1 = 0.01``,
  ``K2 = 0.03``.  MS-SSIM uses the same window at 5 scales.

Translation code note: the Fourier shift here is an *evaluation-only* resampling of a whole image
for registration; the model, grouping and stitching use ``physics.extract_patches`` /
``physics.place_patches`` exclusively, and the simulator its exact
``simulate.extract_patches_exact`` (no inverse crime).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.signal import windows
from skimage.metrics import structural_similarity
from skimage.registration import phase_cross_correlation

__all__ = [
    "register_subpixel",
    "remove_global_phase",
    "remove_phase_ramp",
    "probe_correlation",
    "AlignedPair",
    "align",
    "mae",
    "mse",
    "nrmse",
    "psnr",
    "ssim",
    "ms_ssim",
    "pearson",
    "frc",
    "frc_interior",
    "half_bit_threshold",
    "truth_data_range",
    "assert_not_degenerate",
    "evaluate",
    "metrics_long_rows",
    "convergence_stop",
    "SSIM_WIN_SIZE",
    "MS_SSIM_WEIGHTS",
    "PHASE_RANGE_FLOOR_RAD",
    "FRC_INTERIOR_MARGIN_PX",
    "FRC_MAX_ASPECT",
    "FRC_MIN_SIDE_PX",
]

log = logging.getLogger(__name__)

SSIM_WIN_SIZE = 7
"""Side of the uniform SSIM window (scikit-image's default)."""

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
"""Per-scale exponents of MS-SSIM (Wang, Simoncelli & Bovik 2003), finest scale first."""

PHASE_RANGE_FLOOR_RAD = 0.1
"""Smallest phase ``data_range`` (rad): a truth whose phase varies by less over the mask (e.g. a
pure amplitude object) is scored as if it spanned 0.1 rad, so PSNR/SSIM stay finite and their
constants do not vanish."""

FRC_INTERIOR_MARGIN_PX = 4
"""Erosion (px, square structuring element) of the scoring mask before the FRC rectangle is
chosen, so the poorly constrained rim of the scanned region stays out of the FRC."""

FRC_MAX_ASPECT = 2.0
"""Longest / shortest side of the FRC rectangle (a thin strip has too few rings)."""

FRC_MIN_SIDE_PX = 8
"""Smallest side (px) of the FRC rectangle; below it no FRC is reported."""

_FRC_TUKEY_ALPHA = 0.25
_REGISTER_MAX_ITER = 8


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------

def _check_2d(name: str, a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D image (H, W), got shape {a.shape}")
    return a


def _check_pair(truth: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    truth = np.asarray(truth)
    test = np.asarray(test)
    if truth.shape != test.shape:
        raise ValueError(f"test: expected shape {truth.shape} (truth's), got {test.shape}")
    return truth, test


def _check_obj_ref(obj: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    obj = _check_2d("obj", obj)
    reference = _check_2d("reference", reference)
    if reference.shape != obj.shape:
        raise ValueError(f"reference: expected shape {obj.shape} (obj's), got {reference.shape}")
    return obj, reference


def _check_mask(mask: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    if mask is None:
        return np.ones(shape, dtype=bool)
    mask = np.asarray(mask)
    if mask.shape != shape:
        raise ValueError(f"mask: expected shape {shape}, got {mask.shape}")
    mask = mask.astype(bool, copy=False)
    if not mask.any():
        raise ValueError("mask: expected at least one True pixel, got none")
    return mask


def _check_data_range(data_range: float) -> float:
    dr = float(data_range)
    if not (math.isfinite(dr) and dr > 0):
        raise ValueError(f"data_range: expected a finite value > 0, got {data_range!r}")
    return dr


def _bbox(mask: np.ndarray) -> tuple[slice, slice]:
    """Bounding box of the True pixels of a 2-D mask as a pair of slices."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def _masked_zero_mean(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``(img - mean_mask(img)) * mask`` on the mask's bounding box (a new array)."""
    box = _bbox(mask)
    sub = np.asarray(img)[box]
    m = mask[box]
    out = sub - sub[m].mean()
    out[~m] = 0
    return out


def _shrink(mask: np.ndarray, r_px: int) -> np.ndarray:
    """Erode ``mask`` by a ``(2r+1)``-square; pixels within ``r_px`` of the image edge become False."""
    if r_px <= 0:
        return mask
    return ndimage.minimum_filter(mask.astype(np.uint8), size=2 * r_px + 1, mode="constant",
                                  cval=0).astype(bool)


def _largest_rectangle(mask: np.ndarray, max_aspect: float = FRC_MAX_ASPECT
                       ) -> tuple[slice, slice] | None:
    """Largest-area axis-aligned rectangle of True pixels whose sides differ by at most
    ``max_aspect`` (ties: the first found, scanning rows downwards).

    Every maximal all-True rectangle is visited with the row-histogram / stack method
    (``O(H W)``); a maximal rectangle that is too elongated is trimmed symmetrically along its
    long side to ``floor(max_aspect * short)``, which gives its largest admissible sub-rectangle.

    Returns
    -------
    ``(rows, cols)`` slices, or None if ``mask`` has no True pixel.
    """
    h, w = mask.shape
    rows_any = mask.any(axis=1)
    if not rows_any.any():
        return None
    best: list[Any] = [None, -1]

    def consider(y0: int, y1: int, x0: int, x1: int) -> None:
        hh, ww = y1 - y0, x1 - x0
        if ww > max_aspect * hh:
            new = int(math.floor(max_aspect * hh))
            x0 += (ww - new) // 2
            x1 = x0 + new
        elif hh > max_aspect * ww:
            new = int(math.floor(max_aspect * ww))
            y0 += (hh - new) // 2
            y1 = y0 + new
        area = (y1 - y0) * (x1 - x0)
        if area > best[1]:
            best[0], best[1] = (slice(y0, y1), slice(x0, x1)), area

    box = _bbox(mask)
    if mask[box].all():  # a filled rectangle: the scan below would find only it
        consider(box[0].start, box[0].stop, box[1].start, box[1].stop)
        return best[0]
    heights = np.zeros(w + 1, dtype=np.int64)  # the trailing 0 flushes the stack at every row
    for r in range(h):
        heights[:w] = np.where(mask[r], heights[:w] + 1, 0)
        if not rows_any[r]:
            continue
        hl = heights.tolist()
        stack: list[int] = []
        for c in range(w + 1):
            while stack and hl[stack[-1]] >= hl[c]:
                ht = hl[stack.pop()]
                if ht:
                    consider(r - ht + 1, r + 1, stack[-1] + 1 if stack else 0, c)
            stack.append(c)
    return best[0]


def _center_crop(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    y0 = (a.shape[0] - shape[0]) // 2
    x0 = (a.shape[1] - shape[1]) // 2
    return a[y0:y0 + shape[0], x0:x0 + shape[1]]


def _fourier_shift_image(img: np.ndarray, shift_px: np.ndarray) -> np.ndarray:
    """Translate ``img`` by ``shift_px`` (``out(r) = img(r - shift)``) with a Fourier shift.

    The image is first padded by symmetric reflection (``ceil(max|shift|) + 8`` px per side) so the
    periodic boundary of the FFT joins continuous values; this keeps ringing from the wrap-around
    out of the interior.  Real input gives real output.
    """
    pad = int(math.ceil(float(np.max(np.abs(shift_px))))) + 8
    padded = np.pad(img, pad, mode="symmetric")
    spec = ndimage.fourier_shift(np.fft.fft2(padded), shift_px)
    out = np.fft.ifft2(spec)[pad:pad + img.shape[0], pad:pad + img.shape[1]]
    if not np.iscomplexobj(img):
        out = out.real
    return out.astype(np.result_type(img.dtype, np.float32), copy=False)


# --------------------------------------------------------------------------------------------------
# registration and phase alignment
# --------------------------------------------------------------------------------------------------

def register_subpixel(reference: np.ndarray, moving: np.ndarray, upsample_factor: int = 100,
                      mask: np.ndarray | None = None, on: str = "complex",
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Sub-pixel registration of ``moving`` onto ``reference``.

    Uses ``skimage.registration.phase_cross_correlation`` with plain (un-whitened) cross-correlation
    (``normalization=None``, robust to noise) and the upsampled-DFT refinement.  Inside the bounding
    box of ``mask``, each image has its mean over the mask subtracted and is zeroed outside the mask
    before correlating.  Because the mask border is common to both images it pulls a one-shot
    estimate towards zero shift (by ~0.1-0.2 px on smooth objects), so the estimate is refined
    iteratively: ``moving`` is Fourier-shifted by the current estimate and the residual shift is
    measured again on the mask eroded by ``ceil(max|shift|)`` px (so shifted-in border data never
    enters), until the residual is below half the upsampled grid step (at most 8 rounds).

    Parameters
    ----------
    reference, moving : ``(H, W)`` real or complex
        Images in the same frame (complex: correlated as complex fields, insensitive to a global
        phase offset between them).
    upsample_factor : int
        Precision of the estimate is ``1 / upsample_factor`` px.
    mask : ``(H, W)`` bool, optional
        Region used for the estimate (default: the whole image).
    on : {"complex", "amplitude"}
        Correlate the images themselves or their moduli.

    Returns
    -------
    shift_px : float64 ``(2,)``
        ``(dy, dx)`` to apply to ``moving`` so it coincides with ``reference``:
        ``moved(r) = moving(r - shift_px)``.  If ``moving`` is ``reference`` displaced by ``+t``
        the result is ``-t``.
    moved : ``(H, W)``, dtype of ``moving`` (promoted to at least float32)
        The whole of ``moving`` translated by ``shift_px`` with a Fourier shift (after symmetric
        padding); pixels within ``ceil(|shift|)`` of the border hold reflected data.
    """
    reference = _check_2d("reference", reference)
    moving = _check_2d("moving", moving)
    if moving.shape != reference.shape:
        raise ValueError(f"moving: expected shape {reference.shape} (reference's), got {moving.shape}")
    if on not in ("complex", "amplitude"):
        raise ValueError(f"on: expected 'complex' or 'amplitude', got {on!r}")
    if int(upsample_factor) < 1:
        raise ValueError(f"upsample_factor: expected an integer >= 1, got {upsample_factor!r}")
    m = _check_mask(mask, reference.shape)
    ref_img = np.abs(reference) if on == "amplitude" else reference
    ref_img = ref_img.astype(np.result_type(ref_img.dtype, np.float64))
    shift_px = np.zeros(2)
    moved = moving
    region = m
    mov_img = np.abs(moving) if on == "amplitude" else moving
    mov_var = np.abs(_masked_zero_mean(mov_img.astype(np.result_type(mov_img.dtype, np.float64)), m))
    mov_scale = float(np.max(np.abs(mov_img[m])))
    if not float(np.max(mov_var)) > 1e-9 * mov_scale:
        log.warning("register_subpixel: moving image is constant over the mask; shift set to 0")
        return shift_px, _fourier_shift_image(moving, shift_px)
    for _round in range(_REGISTER_MAX_ITER):
        cur = np.abs(moved) if on == "amplitude" else moved
        cur = _masked_zero_mean(cur.astype(np.result_type(cur.dtype, np.float64)), region)
        ref = _masked_zero_mean(ref_img, region)
        step, _err, _phase = phase_cross_correlation(ref, cur, upsample_factor=int(upsample_factor),
                                                     normalization=None)
        step = np.asarray(step, dtype=np.float64)
        shift_px = shift_px + step
        moved = _fourier_shift_image(moving, shift_px)
        if float(np.max(np.abs(step))) < 0.5 / int(upsample_factor):
            break
        region = _shrink(m, int(math.ceil(float(np.max(np.abs(shift_px))))))
        if not region.any():
            log.warning("register_subpixel: shift %s px leaves no mask pixels; stopping refinement",
                        shift_px.tolist())
            break
    return shift_px, moved


def remove_global_phase(obj: np.ndarray, reference: np.ndarray,
                        mask: np.ndarray | None = None) -> np.ndarray:
    """Remove the constant phase offset of ``obj`` relative to ``reference``.

    Returns ``obj * exp(-i * angle(sum_mask(conj(reference) * obj)))`` -- the least-squares optimal
    constant phase.  ``obj`` is not modified; if the sum is zero ``obj`` is returned as a copy.

    Parameters
    ----------
    obj, reference : complex ``(H, W)``
    mask : bool ``(H, W)``, optional
        Pixels used to estimate the offset (default: all).

    Returns
    -------
    complex ``(H, W)`` (complex64 stays complex64)
    """
    obj, reference = _check_obj_ref(obj, reference)
    m = _check_mask(mask, obj.shape)
    c = np.sum(np.conj(reference[m]).astype(np.complex128) * obj[m])
    dtype = np.result_type(obj.dtype, np.complex64)
    if c == 0:
        return obj.astype(dtype, copy=True)
    return (obj * np.exp(-1j * np.angle(c)).astype(dtype)).astype(dtype, copy=False)


def remove_phase_ramp(obj: np.ndarray, reference: np.ndarray,
                      mask: np.ndarray | None = None) -> np.ndarray:
    """Remove a linear phase ramp ``a + b*y + c*x`` (radians; ``y, x`` in px) of ``obj`` vs ``reference``.

    The phase difference ``angle(obj * conj(reference))`` is fitted by weighted least squares with
    weights ``|obj| * |reference|`` over the mask.  To be immune to phase wrapping the slopes are
    first estimated from the mean neighbour-to-neighbour phase increment of
    ``z = obj * conj(reference)`` (valid for ramps below pi rad/px), that estimate is removed, and the
    small residual is fitted.  The fitted ramp (offset included) is divided out.  ``obj`` is not
    modified.

    Parameters
    ----------
    obj, reference : complex ``(H, W)``
    mask : bool ``(H, W)``, optional

    Returns
    -------
    complex ``(H, W)``
    """
    obj, reference = _check_obj_ref(obj, reference)
    m = _check_mask(mask, obj.shape)
    z = obj.astype(np.complex128) * np.conj(reference)
    zm = np.where(m, z, 0)
    b0 = np.angle(np.sum(zm[1:, :] * np.conj(zm[:-1, :])))
    c0 = np.angle(np.sum(zm[:, 1:] * np.conj(zm[:, :-1])))
    yy, xx = np.indices(obj.shape, dtype=np.float64)
    coarse = b0 * yy + c0 * xx
    resid = np.angle(z * np.exp(-1j * coarse))
    w = np.sqrt(np.abs(z[m]))  # sqrt so that the squared residuals carry weight |obj||ref|
    design = np.stack([np.ones(int(m.sum())), yy[m], xx[m]], axis=1)
    coef, *_ = np.linalg.lstsq(design * w[:, None], resid[m] * w, rcond=None)
    ramp = coarse + coef[0] + coef[1] * yy + coef[2] * xx
    dtype = np.result_type(obj.dtype, np.complex64)
    return (obj * np.exp(-1j * ramp)).astype(dtype, copy=False)


@dataclass(frozen=True)
class AlignedPair:
    """Ground truth and reconstruction in one frame, ready for scoring.

    Attributes
    ----------
    truth, recon : complex ``(H, W)``
        Ground truth (unchanged apart from cropping) and the registered, phase-aligned
        reconstruction.
    mask : bool ``(H, W)``
        Pixels to score: the caller's mask shrunk by the registration border.
    shift_px : float64 ``(2,)``
        ``(dy, dx)`` applied to the reconstruction (see :func:`register_subpixel`).
    """

    truth: np.ndarray
    recon: np.ndarray
    mask: np.ndarray
    shift_px: np.ndarray


def align(recon: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None,
          remove_ramp: bool = False, register: bool = True, upsample_factor: int = 100,
          border_px: int = 2) -> AlignedPair:
    """Put a reconstruction into the ground truth's frame for scoring.

    Steps: centre-crop both to their common shape (``mask`` is in ``recon``'s frame and is cropped
    with it); if ``remove_ramp``, remove a phase ramp first so it cannot bias registration;
    register sub-pixel on the mask region and shift ``recon`` onto ``truth``; shrink the mask by
    ``ceil(max|shift|) + border_px`` pixels (binary erosion; image edges count as outside) so that
    neither the shifted-in region nor wrap-around enters scoring; remove the global phase (and the
    ramp again) over the shrunk mask.  Inputs are not modified.

    Parameters
    ----------
    recon, truth : complex ``(H, W)`` (shapes may differ; both are centre-cropped to the minimum)
    mask : bool, same shape as ``recon``, optional
        Scanned / covered region (default: all pixels).
    remove_ramp : bool
        Also remove a linear phase ramp.
    register : bool
        If False no shift is applied and the mask is not shrunk.
    upsample_factor : int
        Registration precision ``1/upsample_factor`` px.
    border_px : int
        Extra erosion beyond the shift magnitude.

    Returns
    -------
    AlignedPair
    """
    recon = _check_2d("recon", recon)
    truth = _check_2d("truth", truth)
    mask = _check_mask(mask, recon.shape)
    if recon.shape != truth.shape:
        common = (min(recon.shape[0], truth.shape[0]), min(recon.shape[1], truth.shape[1]))
        log.info("align: cropping recon %s and truth %s to common shape %s",
                 recon.shape, truth.shape, common)
        recon, mask = _center_crop(recon, common), _center_crop(mask, common)
        truth = _center_crop(truth, common)
        if not mask.any():
            raise ValueError("mask: expected True pixels inside the common crop, got none")
    ctype = np.result_type(recon.dtype, truth.dtype, np.complex64)
    recon = recon.astype(ctype, copy=True)
    truth = truth.astype(ctype, copy=True)
    shift = np.zeros(2)
    if remove_ramp:
        recon = remove_phase_ramp(recon, truth, mask)
    if register:
        shift, recon = register_subpixel(truth, recon, upsample_factor, mask=mask)
        r = int(math.ceil(float(np.max(np.abs(shift))))) + int(border_px)
        mask = _shrink(mask, r)
        if not mask.any():
            raise ValueError(f"mask: expected pixels left after shrinking by {r} px "
                             f"(shift {shift.tolist()} px), got none")
    recon = remove_global_phase(recon, truth, mask)
    if remove_ramp:
        recon = remove_phase_ramp(recon, truth, mask)
    return AlignedPair(truth=truth, recon=recon.astype(ctype, copy=False), mask=mask,
                       shift_px=np.asarray(shift, dtype=np.float64))


# --------------------------------------------------------------------------------------------------
# scalar metrics on real images
# --------------------------------------------------------------------------------------------------

def _masked_values(truth: np.ndarray, test: np.ndarray, mask: np.ndarray | None
                   ) -> tuple[np.ndarray, np.ndarray]:
    truth, test = _check_pair(truth, test)
    m = _check_mask(mask, truth.shape)
    return truth[m].astype(np.float64), test[m].astype(np.float64)


def mae(truth: np.ndarray, test: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean absolute error ``mean|test - truth|`` over the mask (units of the images)."""
    t, x = _masked_values(truth, test, mask)
    return float(np.mean(np.abs(x - t)))


def mse(truth: np.ndarray, test: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean squared error ``mean (test - truth)^2`` over the mask (units of the images squared)."""
    t, x = _masked_values(truth, test, mask)
    return float(np.mean((x - t) ** 2))


def nrmse(truth: np.ndarray, test: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Normalized RMS error ``sqrt(mean (test-truth)^2) / sqrt(mean truth^2)`` over the mask.

    Normalized by the truth's RMS (not its range or mean), i.e. ``||test - truth|| / ||truth||``
    (scikit-image's "euclidean" normalization).  Dimensionless; ``inf`` if the truth is all zero and
    the test is not (``0.0`` if both are).
    """
    t, x = _masked_values(truth, test, mask)
    num = math.sqrt(float(np.mean((x - t) ** 2)))
    den = math.sqrt(float(np.mean(t ** 2)))
    if den == 0:
        return 0.0 if num == 0 else math.inf
    return num / den


def psnr(truth: np.ndarray, test: np.ndarray, data_range: float,
         mask: np.ndarray | None = None) -> float:
    """Peak signal-to-noise ratio ``10 log10(data_range^2 / MSE)`` in dB over the mask.

    ``data_range`` is required (no default: an assumed 255 scores garbage at "70 dB", SPEC lesson
    7).  Returns ``inf`` for identical images.
    """
    dr = _check_data_range(data_range)
    err = mse(truth, test, mask)
    if err == 0:
        return math.inf
    return float(10.0 * math.log10(dr * dr / err))


def ssim(truth: np.ndarray, test: np.ndarray, data_range: float,
         mask: np.ndarray | None = None) -> float | None:
    """Structural similarity (``skimage.metrics.structural_similarity``) over a mask.

    Computed on the bounding box of ``mask`` with scikit-image's defaults (7x7 uniform window,
    sample covariance, K1 = 0.01, K2 = 0.03) and the explicit ``data_range``.  The SSIM map is
    averaged over the mask pixels that lie at least 3 px (half a window) inside the box -- for a
    rectangular mask exactly scikit-image's mean SSIM of the crop.  Returns None (logged) when the
    box is smaller than the window (7 px).
    """
    dr = _check_data_range(data_range)
    truth, test = _check_pair(_check_2d("truth", truth), test)
    m = _check_mask(mask, truth.shape)
    box = _bbox(m)
    t = truth[box].astype(np.float64)
    x = test[box].astype(np.float64)
    if min(t.shape) < SSIM_WIN_SIZE:
        log.info("ssim: region %s smaller than the %d px window; not computed", t.shape, SSIM_WIN_SIZE)
        return None
    mean_ssim, smap = structural_similarity(t, x, data_range=dr, win_size=SSIM_WIN_SIZE, full=True)
    mb = m[box]
    if mb.all():
        return float(mean_ssim)
    pad = (SSIM_WIN_SIZE - 1) // 2
    inner = np.zeros_like(mb)
    inner[pad:mb.shape[0] - pad, pad:mb.shape[1] - pad] = True
    sel = mb & inner
    if not sel.any():
        sel = mb
    return float(np.mean(smap[sel]))


def _ssim_terms(x: np.ndarray, y: np.ndarray, data_range: float) -> tuple[float, float]:
    """Mean luminance*contrast-structure (SSIM) and mean contrast-structure term of two images.

    Same window, constants and border crop as ``skimage.metrics.structural_similarity`` defaults
    (tested to agree with it); scikit-image does not expose the contrast-structure term that
    MS-SSIM needs.
    """
    win = SSIM_WIN_SIZE
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    cov_norm = win * win / (win * win - 1.0)
    ux = ndimage.uniform_filter(x, size=win)
    uy = ndimage.uniform_filter(y, size=win)
    vx = cov_norm * (ndimage.uniform_filter(x * x, size=win) - ux * ux)
    vy = cov_norm * (ndimage.uniform_filter(y * y, size=win) - uy * uy)
    vxy = cov_norm * (ndimage.uniform_filter(x * y, size=win) - ux * uy)
    lum = (2 * ux * uy + c1) / (ux * ux + uy * uy + c1)
    cs = (2 * vxy + c2) / (vx + vy + c2)
    pad = (win - 1) // 2
    crop = (slice(pad, x.shape[0] - pad), slice(pad, x.shape[1] - pad))
    return float(np.mean((lum * cs)[crop])), float(np.mean(cs[crop]))


def _downsample2(a: np.ndarray) -> np.ndarray:
    """2x2 block mean (odd trailing row/column dropped)."""
    h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
    return a[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))


def ms_ssim(truth: np.ndarray, test: np.ndarray, data_range: float,
            mask: np.ndarray | None = None) -> float | None:
    """Multi-scale SSIM (Wang, Simoncelli & Bovik 2003).

    ``MS-SSIM = prod_{j=1..4} cs_j^{w_j} * ssim_5^{w_5}`` with weights :data:`MS_SSIM_WEIGHTS`,
    where ``cs_j`` is the mean contrast-structure term at scale ``j`` and ``ssim_5`` the mean SSIM at
    the coarsest scale; each scale is the previous one 2x2-block-averaged.  Window and constants as
    in :func:`ssim` (same ``data_range`` at every scale).  Negative per-scale terms are clipped to 0
    (anti-correlated images score 0).  With ``mask`` the images are cropped to its bounding box.

    Size rule: the coarsest scale must still hold one 7 px window, so the (cropped) image's shorter
    side must be ``>= 7 * 2**4 = 112`` px; otherwise None is returned and the reason logged.
    """
    dr = _check_data_range(data_range)
    truth, test = _check_pair(_check_2d("truth", truth), test)
    m = _check_mask(mask, truth.shape)
    box = _bbox(m)
    x = truth[box].astype(np.float64)
    y = test[box].astype(np.float64)
    n_scales = len(MS_SSIM_WEIGHTS)
    min_side = SSIM_WIN_SIZE * 2 ** (n_scales - 1)
    if min(x.shape) < min_side:
        log.info("ms_ssim: image %s has a side < %d px (7 px window at scale 2^%d); not computed",
                 x.shape, min_side, n_scales - 1)
        return None
    result = 1.0
    for j, w in enumerate(MS_SSIM_WEIGHTS):
        full, cs = _ssim_terms(x, y, dr)
        term = full if j == n_scales - 1 else cs
        result *= max(term, 0.0) ** w
        x, y = _downsample2(x), _downsample2(y)
    return float(result)


def pearson(truth: np.ndarray, test: np.ndarray, mask: np.ndarray | None = None) -> float | None:
    """Pearson correlation coefficient of the masked pixel values, in [-1, 1].

    A constant ``test`` against a non-constant truth scores 0.0 (it carries no correlation; SPEC
    lesson 7).  If the truth itself is constant the coefficient is undefined: None (logged).
    """
    t, x = _masked_values(truth, test, mask)
    if np.all(t == t[0]):
        log.info("pearson: truth is constant over the mask; correlation undefined")
        return None
    if np.all(x == x[0]):
        return 0.0
    t = t - t.mean()
    x = x - x.mean()
    st = float(np.sqrt(np.sum(t * t)))
    sx = float(np.sqrt(np.sum(x * x)))
    return float(np.clip(np.sum(t * x) / (st * sx), -1.0, 1.0))


# --------------------------------------------------------------------------------------------------
# Fourier ring correlation
# --------------------------------------------------------------------------------------------------

def half_bit_threshold(n_in_ring: np.ndarray) -> np.ndarray:
    """Half-bit FRC threshold of van Heel & Schatz (2005) for rings of ``n_in_ring`` pixels.

    ``T(n) = (0.2071 + 1.9102/sqrt(n)) / (1.2071 + 0.9102/sqrt(n))``.
    """
    s = np.sqrt(np.maximum(np.asarray(n_in_ring, dtype=np.float64), 1.0))
    return (0.2071 + 1.9102 / s) / (1.2071 + 0.9102 / s)


def _first_crossing(freq: np.ndarray, curve: np.ndarray, thresh: np.ndarray
                    ) -> dict[str, float] | None:
    """First frequency (ring >= 1) where ``curve`` drops below ``thresh``, linearly interpolated."""
    d = curve - thresh
    for k in range(1, len(d)):
        if np.isfinite(d[k]) and d[k] < 0:
            f = freq[k]
            if k >= 2 and np.isfinite(d[k - 1]) and d[k - 1] > 0:  # never interpolate from DC
                f = freq[k - 1] + (freq[k] - freq[k - 1]) * d[k - 1] / (d[k - 1] - d[k])
            f = float(f)
            return {"frequency": f, "period": (1.0 / f) if f > 0 else math.inf}
    return None


def frc(a: np.ndarray, b: np.ndarray, pixel_size_m: float | None = None) -> dict[str, Any]:
    """Fourier ring correlation of two images (real or complex) of the same shape.

    Both images are multiplied by the same separable Tukey window (alpha = 0.25: flat centre,
    cosine taper over the outer 12.5 % of each side) before the FFT so that the periodic-boundary
    discontinuity does not put spurious correlated power at high frequencies.  Ring ``k`` holds the
    frequencies with ``round(N * sqrt(fy^2 + fx^2)) == k`` (``N = min(H, W)``, ``f`` in cycles/px),
    for ``k = 0 .. N // 2`` (up to Nyquist along the shorter side)::

        FRC_k = Re sum_ring F_a conj(F_b) / sqrt(sum_ring |F_a|^2 * sum_ring |F_b|^2)

    The real part is used, so complex images must be phase-aligned first (:func:`align`); rings
    where either image has no power are NaN.  Note: the thresholds were derived for two independent
    half-data sets; against ground truth they are a conventional yardstick only.

    Parameters
    ----------
    a, b : ``(H, W)``
    pixel_size_m : float, optional
        If given, frequencies are in 1/m and periods in m; otherwise cycles/px and px.

    Returns
    -------
    dict with
        ``spatial_frequency`` (K,), ``frc`` (K,), ``n_in_ring`` (K,) int, ``threshold_half_bit``
        (K,), ``threshold_one_seventh`` (K,), ``resolution_half_bit`` and
        ``resolution_one_seventh`` -- each ``{"frequency", "period"}`` at the first ring (after
        the DC ring) where the curve drops below the threshold, linearly interpolated from the
        previous ring (not from the DC ring), or None if it never does -- and ``units`` (``"cycles/px"`` or ``"1/m"``).
    """
    a = _check_2d("a", a)
    b = _check_2d("b", b)
    if a.shape != b.shape:
        raise ValueError(f"b: expected shape {a.shape} (a's), got {b.shape}")
    if pixel_size_m is not None and not (math.isfinite(pixel_size_m) and pixel_size_m > 0):
        raise ValueError(f"pixel_size_m: expected a finite value > 0 or None, got {pixel_size_m!r}")
    h, w = a.shape
    if min(h, w) < 4:
        raise ValueError(f"a: expected both sides >= 4 px, got shape {a.shape}")
    win = np.outer(windows.tukey(h, _FRC_TUKEY_ALPHA), windows.tukey(w, _FRC_TUKEY_ALPHA))
    fa = np.fft.fft2(a.astype(np.complex128) * win)
    fb = np.fft.fft2(b.astype(np.complex128) * win)
    n = min(h, w)
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.fftfreq(w)[None, :]
    ring = np.rint(n * np.sqrt(fy ** 2 + fx ** 2)).astype(np.int64).ravel()
    n_rings = n // 2 + 1
    keep = ring < n_rings
    ring = ring[keep]
    cross = np.bincount(ring, (fa * np.conj(fb)).real.ravel()[keep], minlength=n_rings)
    pa = np.bincount(ring, (np.abs(fa) ** 2).ravel()[keep], minlength=n_rings)
    pb = np.bincount(ring, (np.abs(fb) ** 2).ravel()[keep], minlength=n_rings)
    count = np.bincount(ring, minlength=n_rings)
    denom = np.sqrt(pa * pb)
    with np.errstate(invalid="ignore", divide="ignore"):
        curve = np.where(denom > 0, cross / np.where(denom > 0, denom, 1.0), np.nan)
    freq = np.arange(n_rings) / n
    if pixel_size_m is not None:
        freq = freq / pixel_size_m
    t_half = half_bit_threshold(count)
    t_7 = np.full(n_rings, 1.0 / 7.0)
    return {
        "spatial_frequency": freq,
        "frc": curve,
        "n_in_ring": count,
        "threshold_half_bit": t_half,
        "threshold_one_seventh": t_7,
        "resolution_half_bit": _first_crossing(freq, curve, t_half),
        "resolution_one_seventh": _first_crossing(freq, curve, t_7),
        "units": "1/m" if pixel_size_m is not None else "cycles/px",
    }


def frc_interior(recon: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None,
                 margin_px: int = FRC_INTERIOR_MARGIN_PX, pixel_size_m: float | None = None,
                 ) -> dict[str, Any] | None:
    """FRC of two aligned images on the illuminated interior of their scoring mask.

    The region: ``mask`` eroded by ``margin_px`` (square structuring element; the image edge counts
    as outside), then the largest axis-aligned rectangle inside it with sides within
    :data:`FRC_MAX_ASPECT` of each other (for a filled rectangular mask: the eroded rectangle,
    trimmed if too elongated).  Each image is cropped to that rectangle, has its mean over it
    subtracted, and is passed to :func:`frc`, which apodizes both with the same Tukey window
    (alpha 0.25) -- so neither a hard mask edge nor the crop border enters the spectrum.  (The
    previous preparation, mask bounding box with off-mask pixels zeroed, put the mask's common
    hard edge into both spectra, and that edge dominated the high-frequency rings.)

    Parameters
    ----------
    recon, truth : ``(H, W)`` real or complex
        Images already in one frame, phase aligned (e.g. ``AlignedPair.recon`` / ``.truth``).
    mask : bool ``(H, W)``, optional
        Scoring mask (e.g. ``AlignedPair.mask``; default: the whole image).
    margin_px : int
        Erosion of the mask in px (>= 0).
    pixel_size_m : float, optional
        Passed to :func:`frc` (frequencies in 1/m, periods in m).

    Returns
    -------
    dict or None
        :func:`frc`'s dict plus ``region`` = ``(y0, y1, x0, x1)`` (the rectangle, half-open, in
        pixels of the inputs) and ``margin_px``; None (logged) if no rectangle with both sides
        ``>=`` :data:`FRC_MIN_SIDE_PX` fits.
    """
    recon = _check_2d("recon", recon)
    truth = _check_2d("truth", truth)
    if recon.shape != truth.shape:
        raise ValueError(f"truth: expected shape {recon.shape} (recon's), got {truth.shape}")
    if int(margin_px) != margin_px or margin_px < 0:
        raise ValueError(f"margin_px: expected an integer >= 0, got {margin_px!r}")
    m = _check_mask(mask, recon.shape)
    interior = _shrink(m, int(margin_px))
    rect = _largest_rectangle(interior) if interior.any() else None
    if rect is None or min(rect[0].stop - rect[0].start,
                           rect[1].stop - rect[1].start) < FRC_MIN_SIDE_PX:
        log.info("frc_interior: no rectangle of >= %d px per side inside the mask eroded by %d px "
                 "(got %s); FRC not computed", FRC_MIN_SIDE_PX, margin_px, rect)
        return None

    def prep(img: np.ndarray) -> np.ndarray:
        sub = img[rect].astype(np.complex128 if np.iscomplexobj(img) else np.float64)
        return sub - sub.mean()

    out = frc(prep(recon), prep(truth), pixel_size_m=pixel_size_m)
    out["region"] = (rect[0].start, rect[0].stop, rect[1].start, rect[1].stop)
    out["margin_px"] = int(margin_px)
    return out


# --------------------------------------------------------------------------------------------------
# sanity check, evaluation, tabulation
# --------------------------------------------------------------------------------------------------

def assert_not_degenerate(obj: np.ndarray, name: str = "reconstruction", rel_tol: float = 1e-3) -> None:
    """Ground-truth-free sanity check of a reconstruction (SPEC lesson 7).

    Raises ValueError if ``obj`` is empty, has any non-finite value, its amplitude ``|obj|`` is all
    zero, or the amplitude is constant (``std / mean < rel_tol``).  Any shape is accepted (e.g. the
    covered pixels as a 1-D array).
    """
    a = np.asarray(obj)
    if a.size == 0:
        raise ValueError(f"{name}: expected a non-empty array, got shape {a.shape}")
    finite = np.isfinite(a)
    if not finite.all():
        raise ValueError(f"{name}: expected finite values, got {int(a.size - finite.sum())} "
                         f"non-finite of {a.size}")
    amp = np.abs(a).astype(np.float64)
    mean = float(amp.mean())
    if mean == 0:
        raise ValueError(f"{name}: expected a non-zero amplitude, got all zeros")
    ratio = float(amp.std()) / mean
    if ratio < rel_tol:
        raise ValueError(f"{name}: expected a structured amplitude (std/mean >= {rel_tol:g}), "
                         f"got a constant one (std/mean = {ratio:.3g})")


def _finite_or_none(v: float | None, what: str) -> float | None:
    if v is None:
        return None
    v = float(v)
    if not math.isfinite(v):
        log.info("evaluate: %s = %s reported as None", what, v)
        return None
    return v


def _period_px(res: dict[str, float] | None) -> float | None:
    return None if res is None else float(res["period"])


def truth_data_range(truth: np.ndarray, mask: np.ndarray | None = None,
                     quantity: str = "amplitude") -> float:
    """``data_range`` for PSNR / SSIM / MS-SSIM: the truth's own range over the mask.

    * ``"amplitude"``: ``max - min`` of ``truth`` over the mask; if that is 0 (a constant truth,
      e.g. the amplitude of a pure phase object) its ``max``; 0 only for an all-zero truth.
    * ``"phase"``: ``max - min`` of ``truth`` (phase in rad, as scored) over the mask, floored at
      :data:`PHASE_RANGE_FLOOR_RAD`; a constant truth phase (pure amplitude object) gets the floor.

    Parameters
    ----------
    truth : real ``(H, W)``
        Truth amplitude, or truth phase in radians (the values that are scored).
    mask : bool ``(H, W)``, optional
    quantity : {"amplitude", "phase"}

    Returns
    -------
    float (units of ``truth``)
    """
    t, _ = _masked_values(truth, truth, mask)
    span = float(t.max() - t.min())
    if quantity == "amplitude":
        return span if span > 0 else float(t.max())
    if quantity == "phase":
        return max(span, PHASE_RANGE_FLOOR_RAD)
    raise ValueError(f"quantity: expected 'amplitude' or 'phase', got {quantity!r}")


def _truth_phase(truth: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Truth phase (rad) unwrapped around its own mean phase over the mask:
    ``c + angle(truth * exp(-i c))`` with ``c = angle(sum_mask truth)``.  Equal to
    ``angle(truth)`` unless the truth's phases straddle the +-pi cut, where it avoids a spurious
    2 pi jump (and a 2 pi range)."""
    c = float(np.angle(np.sum(truth[mask].astype(np.complex128))))
    return c + np.angle(truth.astype(np.complex128) * np.exp(-1j * c))


def evaluate(recon: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None,
             remove_ramp: bool = False) -> dict[str, dict[str, float | None]]:
    """Score a complex reconstruction against the ground truth (SPEC §8).

    :func:`align` first (registration, global phase, optional ramp, mask shrink), then over the
    aligned mask, for ``"amplitude"`` (``|O|``) and ``"phase"`` (radians): ``mae``, ``mse``,
    ``nrmse``, ``psnr``, ``ssim``, ``ms_ssim``, ``pearson``.

    * Phase of the truth is ``angle(truth)`` taken around its own mean phase over the mask (no
      2 pi jump inside the truth); the reconstruction's is that plus ``angle(recon * conj(truth))``
      (after the global phase removal of :func:`align`), so errors are the wrapped (shortest)
      phase differences.
    * ``data_range`` (reported as ``amplitude.data_range`` / ``phase.data_range``): the truth's
      ``max - min`` over the mask for both quantities (:func:`truth_data_range`: the amplitude's
      ``max`` if the truth amplitude is constant; the phase range floored at
      :data:`PHASE_RANGE_FLOOR_RAD` rad).  Never ``2 pi``: against a ~1 rad truth that would rank
      a flat phase at SSIM ~0.5 (SPEC lesson 11).
    * ``amplitude.mean_ratio`` = mean |recon| / mean |truth| over the mask (absolute-scale check,
      SPEC lesson 2; 1 is right).
    * ``complex``: FRC of the aligned complex images on the illuminated interior
      (:func:`frc_interior`: mask eroded by :data:`FRC_INTERIOR_MARGIN_PX` px, largest rectangle
      inside, mean-free, Tukey-apodized): ``frc_half_bit_px`` / ``frc_one_seventh_px`` resolution
      periods in px (None: never crossed, or no rectangle of :data:`FRC_MIN_SIDE_PX` px fits), plus
      ``shift_y_px`` / ``shift_x_px`` of the registration.

    Only truth-based scores are computed here; the truth-free data NLL is computed elsewhere.

    Returns
    -------
    ``{"amplitude": {...}, "phase": {...}, "complex": {...}}`` of plain floats or None (JSON
    friendly: non-finite values such as the PSNR of a perfect match are reported as None).
    """
    pair = align(recon, truth, mask=mask, remove_ramp=remove_ramp)
    m = pair.mask
    amp_t = np.abs(pair.truth).astype(np.float64)
    amp_r = np.abs(pair.recon).astype(np.float64)
    ph_t = _truth_phase(pair.truth, m)
    ph_r = ph_t + np.angle(pair.recon.astype(np.complex128) * np.conj(pair.truth))
    amp_range = truth_data_range(amp_t, m, "amplitude")
    ph_range = truth_data_range(ph_t, m, "phase")
    if ph_range == PHASE_RANGE_FLOOR_RAD:
        log.info("evaluate: truth phase varies by < %g rad over the mask; phase data_range "
                 "floored at %g rad", PHASE_RANGE_FLOOR_RAD, PHASE_RANGE_FLOOR_RAD)
    out: dict[str, dict[str, float | None]] = {}
    for quantity, t, x, dr in (("amplitude", amp_t, amp_r, amp_range),
                               ("phase", ph_t, ph_r, ph_range)):
        scores: dict[str, float | None] = {
            "mae": mae(t, x, m),
            "mse": mse(t, x, m),
            "nrmse": nrmse(t, x, m),
        }
        if dr > 0:
            scores["psnr"] = psnr(t, x, dr, m)
            scores["ssim"] = ssim(t, x, dr, m)
            scores["ms_ssim"] = ms_ssim(t, x, dr, m)
        else:
            log.info("evaluate: %s truth is zero over the mask; psnr/ssim not computed", quantity)
            scores.update(psnr=None, ssim=None, ms_ssim=None)
        scores["pearson"] = pearson(t, x, m)
        scores["data_range"] = dr
        out[quantity] = {k: _finite_or_none(v, f"{quantity}.{k}") for k, v in scores.items()}
    mean_t = float(amp_t[m].mean())
    out["amplitude"]["mean_ratio"] = _finite_or_none(
        float(amp_r[m].mean()) / mean_t if mean_t > 0 else math.inf, "amplitude.mean_ratio")
    curve = frc_interior(pair.recon, pair.truth, m)
    out["complex"] = {
        "frc_half_bit_px": None if curve is None else _finite_or_none(
            _period_px(curve["resolution_half_bit"]), "complex.frc_half_bit_px"),
        "frc_one_seventh_px": None if curve is None else _finite_or_none(
            _period_px(curve["resolution_one_seventh"]), "complex.frc_one_seventh_px"),
        "shift_y_px": float(pair.shift_px[0]),
        "shift_x_px": float(pair.shift_px[1]),
    }
    return out


def metrics_long_rows(model: str, metrics: dict[str, dict[str, float | None]]) -> list[dict[str, Any]]:
    """Flatten :func:`evaluate`'s result to long-format rows for ``metrics.csv``.

    Returns ``[{"model", "quantity", "metric", "value"}, ...]`` in the dict's order; ``value`` is a
    float or None.
    """
    rows: list[dict[str, Any]] = []
    for quantity, scores in metrics.items():
        for metric, value in scores.items():
            rows.append({"model": str(model), "quantity": str(quantity), "metric": str(metric),
                         "value": None if value is None else float(value)})
    return rows


def probe_correlation(estimate: np.ndarray, truth: np.ndarray, remove_ramp: bool = False
                      ) -> float:
    """Normalised overlap of two probes, ``|<P_est, P_true>| / (||P_est|| ||P_true||)`` in [0, 1].

    The absolute value removes the global phase, and the normalisation the scale (the two
    ambiguities every ptychographic reconstruction has; a learned probe's scale is pinned by its
    power constraint anyway).  Neither translation nor a linear phase ramp is removed unless
    ``remove_ramp``: then the ramp of ``estimate`` against ``truth`` is fitted over the truth's
    bright region (``|P|^2 >= 1e-3 max``) by :func:`remove_phase_ramp` and divided out first
    (the ramp ambiguity ``P e^{ikr}, O e^{-ikr}``).  With several modes (``(M, H, W)``) the
    strongest mode of each is compared.

    Parameters
    ----------
    estimate, truth : complex ``(H, W)`` or ``(M, H, W)``, the same ``(H, W)``.

    Returns
    -------
    float
    """
    def strongest(p: np.ndarray, name: str) -> np.ndarray:
        p = np.asarray(p)
        if p.ndim == 3:
            p = p[int(np.argmax((np.abs(p) ** 2).sum(axis=(-2, -1))))]
        if p.ndim != 2:
            raise ValueError(f"{name}: expected a probe (H, W) or (M, H, W), got {p.shape}")
        return p.astype(np.complex128)

    a, b = strongest(estimate, "estimate"), strongest(truth, "truth")
    if a.shape != b.shape:
        raise ValueError(f"estimate: expected shape {b.shape} (the truth's), got {a.shape}")
    if remove_ramp:
        i2 = np.abs(b) ** 2
        a = remove_phase_ramp(a, b, mask=i2 >= 1e-3 * i2.max())
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    if not norm > 0:
        raise ValueError("probe_correlation: expected non-zero probes, got an all-zero one")
    return float(abs(np.vdot(a, b)) / norm)


def convergence_stop(nll: float, previous: float | None, rel_tol: float) -> str | None:
    """Why an iterative run (pty-chi to convergence, refinement) stops after a check with data NLL ``nll``, or ``None``.

    ``previous`` is the NLL of the previous check (``None`` at the first).  The improvement is
    relative to ``previous``, the excess NLL over the saturated model: it is ``>= 0`` and settles
    near the noise floor (about 0.5 per pixel at high counts), not near 0, so the ratio stays well
    defined and ``rel_tol`` acts as about ``0.5 * rel_tol`` nats per pixel per chunk close to
    convergence.  Measuring from the noise floor instead (``previous - 0.5``) would divide by
    ~0, or by a negative number once the solver fits the noise, and the floor is 0.5 only at
    high counts.
    """
    if not math.isfinite(nll):
        return "diverged"
    if previous is None:
        return None
    if nll > previous:
        return "worse"
    if previous - nll <= rel_tol * previous:
        return "tolerance"
    return None
