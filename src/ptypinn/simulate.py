"""Synthetic ptychography scans (SPEC §3): object, probe, scan positions, dose and noise.

Every random choice is drawn from generators spawned from ``np.random.SeedSequence(seed)``:
stream 0 builds the object, stream 1 the scan positions, stream 2 the Poisson noise, so that
changing e.g. the scan kind does not change the object.  The seed is recorded in ``meta``.

Units: object and probe are dimensionless complex transmissions / fields until the dose
calibration; the stored probe is in photon units (``|P|^2`` sums to photons), so
``physics.predicted_intensity(probe, extract_patches_exact(object_true, positions_px, N))`` are the
expected counts of every pattern (to float32 rounding).  Positions are probe-window centres
``(y, x)`` in object pixels (see :mod:`ptypinn.physics`).

Sub-pixel positions are simulated exactly (:func:`extract_patches_exact`: integer crop plus a
Fourier shift of the fractional part), **not** with the bilinear interpolation of
``physics.extract_patches`` that the reconstructions use: simulating with the reconstruction's own
interpolation would favour it ("inverse crime", SPEC lesson 10).  For integer positions both agree
exactly.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from scipy import ndimage, special
from skimage.draw import line_aa
from skimage.transform import resize

from ptypinn.config import SimulationConfig
from ptypinn.data import ScanData, defocused_aperture, window_outside
from ptypinn.physics import predicted_intensity, window_starts

__all__ = [
    "extract_patches_exact",
    "make_object",
    "image_object",
    "make_probe",
    "make_positions",
    "simulate_scan",
    "simulate_train_test",
]

log = logging.getLogger(__name__)

NOMINAL_PHOTONS_PER_PATTERN = 1e9
"""Dose used for noise-free scans (``photons_per_pattern=None``): sets the probe's photon scale."""

_GOLDEN_ANGLE_RAD = math.pi * (3.0 - math.sqrt(5.0))
_CHUNK = 512
_SHIFT_PAD_PX = 16
"""Margin (px) of the crop around each window for the Fourier sub-pixel shift (tapered to zero)."""
_SHIFT_CHUNK_ELEMENTS = 1 << 24
"""At most this many crop pixels per chunk of :func:`_exact_patch_chunks` (128 MiB complex64)."""


# ------------------------------------------------------------------------------------------------
# objects


def _to_complex(pattern: np.ndarray, phase: np.ndarray, cfg: SimulationConfig) -> np.ndarray:
    """Map ``pattern`` in [0, 1] to amplitude in ``object_amplitude_range`` and ``phase`` in [0, 1]
    to ``[0, object_phase_max_rad]``; return complex64."""
    lo, hi = cfg.object_amplitude_range
    amp = lo + (hi - lo) * np.clip(pattern, 0.0, 1.0)
    ph = cfg.object_phase_max_rad * np.clip(phase, 0.0, 1.0)
    return (amp * np.exp(1j * ph)).astype(np.complex64)


def _lines_pattern(size: int, rng: np.random.Generator) -> np.ndarray:
    """Random anti-aliased thin line segments, clipped to 1 and Gaussian-blurred, in [0, 1]."""
    canvas = np.zeros((size, size), dtype=np.float64)
    n_lines = max(20, round(300 * (size / 392) ** 2))
    centres = rng.uniform(0, size - 1, (n_lines, 2))
    angles = rng.uniform(0, math.pi, n_lines)
    half_len = rng.uniform(size / 16, size / 4, n_lines)
    weights = rng.uniform(0.3, 1.0, n_lines)
    d = np.stack([np.sin(angles), np.cos(angles)], axis=1) * half_len[:, None]
    ends = np.clip(np.rint(np.concatenate([centres - d, centres + d], axis=1)), 0, size - 1)
    for (r0, c0, r1, c1), w in zip(ends.astype(int), weights):
        rr, cc, val = line_aa(r0, c0, r1, c1)
        np.add.at(canvas, (rr, cc), w * val)
    pattern = ndimage.gaussian_filter(np.minimum(canvas, 1.0), sigma=1.0)
    return pattern / max(float(pattern.max()), 1e-12)


def _grf_pattern(size: int, corr_px: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian random field (white noise times a Gaussian filter in Fourier space, periodic),
    standardized and mapped through the normal CDF to [0, 1] (uniform marginals)."""
    noise = rng.standard_normal((size, size))
    f = np.fft.fftfreq(size)  # cycles / px
    f2 = f[:, None] ** 2 + f[None, :] ** 2
    field = np.fft.ifft2(np.fft.fft2(noise) * np.exp(-2.0 * math.pi**2 * corr_px**2 * f2)).real
    field = (field - field.mean()) / max(float(field.std()), 1e-12)
    return special.ndtr(field)


def _siemens_star_pattern(size: int, rng: np.random.Generator, n_spokes: int = 36) -> np.ndarray:
    """Material mask of a Siemens star (``n_spokes`` opaque spokes, random rotation) in [0, 1]."""
    c = (size - 1) / 2.0
    yy, xx = np.mgrid[0:size, 0:size] - c
    theta = np.arctan2(yy, xx) + rng.uniform(0, 2 * math.pi / n_spokes)
    radius = np.hypot(yy, xx)
    mask = (np.cos(n_spokes * theta) > 0) & (radius <= 0.45 * size) & (radius >= 2.0)
    return ndimage.gaussian_filter(mask.astype(np.float64), sigma=0.7)


def image_object(img: np.ndarray, cfg: SimulationConfig) -> np.ndarray:
    """Object from a grayscale (or RGB, averaged) image: amplitude and phase both follow the
    image brightness.

    Parameters
    ----------
    img : real ``(H, W)`` or ``(H, W, 3|4)``
        Image (any range); resized (anti-aliased) to ``object_size_px`` squared and scaled to
        [0, 1] by its min/max.
    cfg : SimulationConfig

    Returns
    -------
    complex64 ``(S, S)``
        Amplitude in ``object_amplitude_range``, phase in ``[0, object_phase_max_rad]`` rad.
    """
    a = np.asarray(img)
    if a.ndim == 3 and a.shape[-1] in (3, 4):
        a = a[..., :3].mean(axis=-1)
    if a.ndim != 2 or min(a.shape) < 2 or np.iscomplexobj(a):
        raise ValueError(f"image: expected a real (H, W) or (H, W, 3) array, got shape "
                         f"{a.shape} dtype {a.dtype}")
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise ValueError("image: expected finite values, got NaN/Inf")
    s = cfg.object_size_px
    a = resize(a, (s, s), order=1, anti_aliasing=True, mode="reflect")
    span = float(a.max() - a.min())
    v = (a - a.min()) / span if span > 0 else np.zeros_like(a)
    return _to_complex(v, v, cfg)


def make_object(
    cfg: SimulationConfig, rng: np.random.Generator, image: np.ndarray | None = None
) -> np.ndarray:
    """Build a synthetic complex object.

    Kinds: ``lines`` (random blurred line segments; phase proportional to the amplitude pattern),
    ``grf`` (Gaussian random fields with correlation length ``probe_radius_px / 4``; independent
    fields for amplitude and phase), ``siemens_star`` (36 spokes of radius 0.45 S, random
    rotation; spokes absorb and shift the phase), ``image`` (needs ``image``, see
    :func:`image_object`).

    Parameters
    ----------
    cfg : SimulationConfig
    rng : numpy Generator (the object stream)
    image : real array, optional
        The image for ``object_kind='image'`` (read by ``ptypinn.io``).

    Returns
    -------
    complex64 ``(S, S)``, ``S = object_size_px``
        Amplitude in ``object_amplitude_range``; phase in ``[0, object_phase_max_rad]`` rad.
    """
    s = cfg.object_size_px
    kind = cfg.object_kind
    if kind == "image":
        if image is None:
            raise ValueError("image: expected an image array when object_kind is 'image' "
                             "(read it with ptypinn.io), got None")
        return image_object(image, cfg)
    if kind == "lines":
        p = _lines_pattern(s, rng)
        return _to_complex(p, p, cfg)
    if kind == "grf":
        corr = cfg.probe_radius_px / 4.0
        return _to_complex(_grf_pattern(s, corr, rng), _grf_pattern(s, corr, rng), cfg)
    if kind == "siemens_star":
        m = _siemens_star_pattern(s, rng)
        return _to_complex(1.0 - m, m, cfg)
    raise ValueError(f"simulation.object_kind: expected lines|grf|image|siemens_star, got {kind!r}")


# ------------------------------------------------------------------------------------------------
# probes


def _radius_grid(n: int) -> np.ndarray:
    """Distance (px) of every pixel of an ``n x n`` window from its centre pixel ``(n/2, n/2)``."""
    ar = np.arange(n) - n // 2
    return np.hypot(ar[:, None], ar[None, :])


def _defocused_disk(n: int, radius_px: float, defocus_rad: float) -> np.ndarray:
    """Disk pupil in the far field with a quadratic phase ``defocus_rad * (u/U)^2``, back to real
    space.  The pupil radius ``U = n * defocus / (pi * radius)`` (frequency pixels) is chosen so
    that, in geometric optics, the edge rays land at ``radius_px`` from the centre (a ray at pupil
    frequency ``u`` is displaced by ``n/(2 pi) * dphi/du``)."""
    u_px = n * defocus_rad / (math.pi * radius_px)
    if not 2.0 <= u_px <= n / 2 - 1:
        lo = 2.0 * math.pi * radius_px / n
        hi = (n / 2 - 1) * math.pi * radius_px / n
        raise ValueError(f"simulation.probe_defocus_rad: expected in [{lo:.3g}, {hi:.3g}] for "
                         f"probe_radius_px={radius_px} and N={n}, got {defocus_rad}")
    return defocused_aperture(n, u_px, defocus_rad)


def make_probe(cfg: SimulationConfig, probe_from_file: np.ndarray | None = None) -> np.ndarray:
    """Build the illumination (unit peak amplitude; photon scaling happens in the simulation).

    Kinds (``N = probe_size_px``, ``r = probe_radius_px``, centre pixel ``(N/2, N/2)``):

    * ``disk``: ideal disk of radius ``r`` Gaussian-filtered with sigma 1 px (smooth edge; the
      amplitude half-maximum stays at ``r``); flat phase.
    * ``gaussian``: amplitude ``exp(-rho^2 / r^2)``, i.e. ``r`` is the usual 1/e^2 *intensity*
      beam radius (amplitude half-maximum at ``0.83 r``); flat phase.
    * ``defocused_disk``: see :func:`_defocused_disk` -- a disk pupil with ``probe_defocus_rad``
      of quadratic phase at its edge; the real-space probe has radius ~ ``r`` with Fresnel
      fringes and a curved phase.
    * ``file``: ``probe_from_file`` (``(N, N)`` or ``(modes, N, N)``), kept as given.

    Returns
    -------
    complex64 ``(N, N)`` (or ``(modes, N, N)`` for a multi-mode file probe)
    """
    n = cfg.probe_size_px
    r = float(cfg.probe_radius_px)
    kind = cfg.probe_kind
    if kind == "file":
        if probe_from_file is None:
            raise ValueError("probe_from_file: expected an array when probe_kind is 'file', "
                             "got None")
        p = np.asarray(probe_from_file)
        if p.ndim not in (2, 3) or p.shape[-2:] != (n, n):
            raise ValueError(f"probe_from_file: expected shape ({n}, {n}) or (modes, {n}, {n}) "
                             f"(simulation.probe_size_px={n}), got {p.shape}")
        p = p.astype(np.complex64)
        if not np.isfinite(p).all() or not np.any(p):
            raise ValueError("probe_from_file: expected finite, non-zero values, got "
                             "NaN/Inf or all zeros")
        return p
    rho = _radius_grid(n)
    if kind == "disk":
        p = ndimage.gaussian_filter((rho <= r).astype(np.float64), sigma=1.0).astype(complex)
    elif kind == "gaussian":
        p = np.exp(-(rho**2) / r**2).astype(complex)
    elif kind == "defocused_disk":
        p = _defocused_disk(n, r, float(cfg.probe_defocus_rad))
    else:
        raise ValueError(f"simulation.probe_kind: expected disk|gaussian|defocused_disk|file, "
                         f"got {kind!r}")
    return (p / np.abs(p).max()).astype(np.complex64)


# ------------------------------------------------------------------------------------------------
# scan positions


def _centre_range(object_shape: tuple[int, int], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest allowed window centres ``(y, x)``: the window starts at pixel >= 0 and
    ends (with one extra pixel for bilinear interpolation) inside the object."""
    shape = np.asarray(object_shape, dtype=np.float64)
    lo = np.full(2, n / 2.0)
    hi = shape - n / 2.0 - 1.0
    if np.any(hi < lo):
        raise ValueError(f"object_shape: expected >= probe_size_px + 1 = {n + 1} per axis, got "
                         f"{tuple(object_shape)}")
    return lo, hi


def _raster_axis(lo: float, hi: float, step: float) -> np.ndarray:
    """Grid ``lo + offset + k*step`` inside [lo, hi], centred (offset rounded down to integer)."""
    count = int(math.floor((hi - lo) / step + 1e-9)) + 1
    offset = math.floor((hi - lo - (count - 1) * step) / 2.0)
    return lo + offset + step * np.arange(count)


def make_positions(
    cfg: SimulationConfig, object_shape: tuple[int, int], rng: np.random.Generator
) -> np.ndarray:
    """Probe-window centres for the configured scan.

    ``step = cfg.effective_step_px``.  ``raster``: a grid of that step (integer start, so an
    integer step gives integer positions), centred in the frame; ``jittered``: the raster plus
    uniform noise in ``[-scan_jitter_px, scan_jitter_px]`` per axis (clipped to the frame);
    ``random``: ``n_random_positions`` uniform centres; ``fermat``: the Fermat spiral
    ``rho_k = c sqrt(k)``, ``theta_k = k * golden angle`` around the frame centre with
    ``c = step / sqrt(pi)`` (one position per ``step^2`` of area, the raster density), clipped
    to the frame.

    Parameters
    ----------
    cfg : SimulationConfig
    object_shape : (Hy, Wx)
        Object frame in pixels.
    rng : numpy Generator (the positions stream; unused by ``raster``)

    Returns
    -------
    float64 ``(n, 2)``
        Window centres ``(y, x)`` in object pixels; every window plus one pixel of bilinear margin
        lies inside the frame.
    """
    n = cfg.probe_size_px
    lo, hi = _centre_range(object_shape, n)
    step = float(cfg.effective_step_px)
    kind = cfg.scan_kind
    if kind in ("raster", "jittered"):
        ys = _raster_axis(lo[0], hi[0], step)
        xs = _raster_axis(lo[1], hi[1], step)
        pos = np.stack(np.meshgrid(ys, xs, indexing="ij"), axis=-1).reshape(-1, 2)
        if kind == "jittered":
            j = float(cfg.scan_jitter_px)
            pos = np.clip(pos + rng.uniform(-j, j, pos.shape), lo, hi)
    elif kind == "random":
        pos = rng.uniform(lo, hi, (cfg.n_random_positions, 2))
    elif kind == "fermat":
        centre = (lo + hi) / 2.0
        c = step / math.sqrt(math.pi)
        half_diag = float(np.hypot(*(hi - lo))) / 2.0
        k = np.arange(int(math.ceil((half_diag / c) ** 2)) + 1)
        rho = c * np.sqrt(k)
        theta = k * _GOLDEN_ANGLE_RAD
        pos = centre + np.stack([rho * np.sin(theta), rho * np.cos(theta)], axis=1)
        pos = pos[np.all((pos >= lo) & (pos <= hi), axis=1)]
    else:
        raise ValueError(f"simulation.scan_kind: expected raster|jittered|random|fermat, "
                         f"got {kind!r}")
    return np.ascontiguousarray(pos, dtype=np.float64)


# ------------------------------------------------------------------------------------------------
# scan


def _streams(seed: int) -> tuple[np.random.Generator, np.random.Generator, np.random.Generator]:
    """Independent object / positions / noise generators spawned from ``SeedSequence(seed)``."""
    ss = np.random.SeedSequence(seed)
    obj_ss, pos_ss, noise_ss = ss.spawn(3)
    return (np.random.default_rng(obj_ss), np.random.default_rng(pos_ss),
            np.random.default_rng(noise_ss))


def _smooth_step(t: np.ndarray) -> np.ndarray:
    """C-infinity step from 0 (``t <= 0``) to 1 (``t >= 1``): ``e(t) / (e(t) + e(1 - t))`` with
    ``e(t) = exp(-1/t)`` (the Planck-taper transition); its spectrum decays faster than any
    power, so the taper adds no measurable power near the Nyquist frequency."""
    t = np.clip(np.asarray(t, dtype=np.float64), 0.0, 1.0)
    with np.errstate(divide="ignore", over="ignore"):
        a = np.where(t > 0, np.exp(-1.0 / np.where(t > 0, t, 1.0)), 0.0)
        b = np.where(t < 1, np.exp(-1.0 / np.where(t < 1, 1.0 - t, 1.0)), 0.0)
    return a / (a + b)


def _shift_taper(n: int, pad: int) -> np.ndarray:
    """Periodic taper ``(L,)``, ``L = n + 2 pad``: 1 on crop pixels ``pad - 1 .. pad + n`` (the
    window plus one pixel each side, which covers every point ``j + f``, ``0 <= f < 1``, the shift
    evaluates), falling smoothly to 0 at the periodic junction between pixels ``L - 1`` and 0."""
    length = n + 2 * pad
    j = np.arange(length, dtype=np.float64)
    dist = np.minimum(j + 0.5, length - 0.5 - j)  # distance from the periodic junction
    return _smooth_step(dist / (pad - 0.5))


def _fourier_shift_axis(crop: torch.Tensor, frac: torch.Tensor, dim: int,
                        taper: torch.Tensor) -> torch.Tensor:
    """Band-limited translation along ``dim`` (-2 or -1): ``out[j] = g(j + frac)``.

    ``g`` is the trigonometric interpolant of ``taper * crop`` along ``dim`` (period ``L``), i.e.
    the spectrum is multiplied by ``exp(2 pi i k frac)`` (``k`` in cycles/px).  For even ``L`` the
    Nyquist bin gets ``cos(pi frac)``, the real-preserving (minimum-norm) choice.

    Parameters
    ----------
    crop : complex64 ``(m, A, B)``
    frac : float64 ``(m,)``
        Shift in px (``0 <= frac < 1``).
    dim : -2 or -1
    taper : float64 ``(L,)``, ``L = crop.shape[dim]``

    Returns
    -------
    complex64 ``(m, A, B)``
    """
    length = crop.shape[dim]
    k = torch.fft.fftfreq(length, dtype=torch.float64, device=crop.device)
    phase = (2.0 * math.pi) * frac[:, None] * k[None, :]  # (m, L)
    ramp = torch.polar(torch.ones_like(phase), phase)
    if length % 2 == 0:
        ramp[:, length // 2] = torch.cos(math.pi * frac).to(ramp.dtype)
    ramp = ramp.to(torch.complex64)
    if dim == -2:
        ramp, win = ramp[:, :, None], taper[:, None]
    else:
        ramp, win = ramp[:, None, :], taper[None, :]
    spec = torch.fft.fft(crop * win.to(torch.float32), dim=dim)
    return torch.fft.ifft(spec * ramp, dim=dim)


def _exact_patch_chunks(obj: np.ndarray, positions: np.ndarray, n: int,
                        device: str | torch.device):
    """Yield ``(slice, patches (m, N, N) complex64 on device)`` over the scan in chunks.

    See :func:`extract_patches_exact` for the method.
    """
    pad = _SHIFT_PAD_PX
    length = n + 2 * pad
    starts = window_starts(torch.from_numpy(np.asarray(positions, dtype=np.float64)), n).numpy()
    i0 = np.floor(starts).astype(np.int64)
    frac = starts - i0  # in [0, 1), exactly 0 for integer starts
    # The crops (window + pad on each side) of windows near the object edge leave the object:
    # pad the object by reflection for the crops only (never stored; those few pixels are unknown
    # anyway).  The window itself, plus the one pixel the shift reaches, must lie inside.
    hy, wx = obj.shape
    lo = int(max(0, pad - int(i0.min(initial=pad))))
    hi_y = int(max(0, int(i0[:, 0].max(initial=0)) - pad + length - hy))
    hi_x = int(max(0, int(i0[:, 1].max(initial=0)) - pad + length - wx))
    if lo or hi_y or hi_x:
        obj = np.pad(obj, ((lo, hi_y), (lo, hi_x)), mode="reflect")
    obj_t = torch.from_numpy(np.ascontiguousarray(obj, dtype=np.complex64)).to(device)
    taper = torch.from_numpy(_shift_taper(n, pad)).to(device)
    ar = torch.arange(length, device=device)
    chunk = max(1, min(_CHUNK, _SHIFT_CHUNK_ELEMENTS // (length * length)))
    for start in range(0, positions.shape[0], chunk):
        sl = slice(start, min(start + chunk, positions.shape[0]))
        base = torch.from_numpy(i0[sl] - pad + lo).to(device)  # crop origin in the padded object
        fy = torch.from_numpy(frac[sl, 0]).to(device)
        fx = torch.from_numpy(frac[sl, 1]).to(device)
        rows = base[:, 0, None] + ar
        cols = base[:, 1, None] + ar
        crop = obj_t[rows[:, :, None], cols[:, None, :]]  # (m, L, L)
        # rows: shift only the crops with a fractional part (integer parts stay exact copies)
        out_y = crop[:, pad:pad + n, :].clone()  # (m, N, L)
        sel = torch.nonzero(fy != 0).flatten()
        if sel.numel():
            out_y[sel] = _fourier_shift_axis(crop[sel], fy[sel], -2, taper)[:, pad:pad + n, :]
        # columns
        out = out_y[:, :, pad:pad + n].clone()  # (m, N, N)
        sel = torch.nonzero(fx != 0).flatten()
        if sel.numel():
            out[sel] = _fourier_shift_axis(out_y[sel], fx[sel], -1, taper)[:, :, pad:pad + n]
        yield sl, out


def extract_patches_exact(obj: np.ndarray, positions_px: np.ndarray, size: int,
                          device: str | torch.device = "cpu") -> np.ndarray:
    """Cut ``size x size`` windows out of an object with exact (band-limited) sub-pixel shifts.

    The simulator's translation operator.  For every window the start ``s = p - size/2``
    (:func:`ptypinn.physics.window_starts`) is split into ``i0 = floor(s)`` and ``f = s - i0``;
    a crop of ``size + 2 * 16`` px around the integer window is cut exactly, multiplied by a smooth
    periodic taper that is 1 on the window plus one pixel and falls to 0 over the 16 px margin,
    and translated by ``f`` with a Fourier phase ramp, one axis at a time; the central window is
    kept.  Pixel ``j`` of a window then holds the object's band-limited interpolant at
    ``s + j`` -- the same sampling convention as :func:`ptypinn.physics.extract_patches`, without
    its bilinear smoothing.  An axis with ``f == 0`` is an exact copy (integer positions give
    exactly the plain slice ``obj[i0:i0+size, ...]``).  Accuracy: ~1e-5 relative for objects
    band-limited below ~0.4 cycles/px; content near Nyquist is interpolated from the crop only.
    Near the object edge, where the crop leaves the object, the object is extended by reflection
    for the crop only.

    Parameters
    ----------
    obj : complex ``(Hy, Wx)``
        Object (cast to complex64).
    positions_px : float ``(M, 2)``
        Window centres ``(y, x)`` in object pixels; every window must lie inside the object, with
        one more pixel along an axis where the start is fractional (``0 <= p - size/2`` and
        ``ceil(p - size/2) + size <= shape``, as for ``physics.extract_patches``).
    size : int
        Window size ``N`` (px).
    device : torch device for the FFTs.

    Returns
    -------
    complex64 ``(M, N, N)``
    """
    obj = np.asarray(obj)
    if obj.ndim != 2:
        raise ValueError(f"obj: expected shape (Hy, Wx), got {obj.shape}")
    pos = np.asarray(positions_px, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 2:
        raise ValueError(f"positions_px: expected shape (M, 2), got {pos.shape}")
    n = int(size)
    starts = window_starts(pos, n)
    if pos.shape[0] and window_outside(pos, n, obj.shape, bilinear_margin=True) is not None:
        raise ValueError(f"positions_px: expected windows of {n} px (plus one pixel) inside the "
                         f"object {obj.shape}, got window starts in "
                         f"[{starts.min(axis=0).tolist()}, {starts.max(axis=0).tolist()}]")
    out = np.empty((pos.shape[0], n, n), dtype=np.complex64)
    with torch.no_grad():
        for sl, patches in _exact_patch_chunks(obj, pos, n, device):
            out[sl] = patches.cpu().numpy()
    return out


def _simulate(
    cfg: SimulationConfig,
    seed: int,
    obj: np.ndarray | None,
    probe: np.ndarray,
    probe_is_calibrated: bool,
    image: np.ndarray | None,
    device: str | torch.device,
    meta_extra: dict,
) -> ScanData:
    obj_rng, pos_rng, noise_rng = _streams(seed)
    if obj is None:
        obj = make_object(cfg, obj_rng, image=image)
        object_kind = cfg.object_kind
    else:
        obj = np.asarray(obj)
        if obj.ndim != 2:
            raise ValueError(f"obj: expected shape (Hy, Wx), got {obj.shape}")
        obj = obj.astype(np.complex64)
        object_kind = "given"
    n = cfg.probe_size_px
    positions = make_positions(cfg, obj.shape, pos_rng)
    if positions.shape[0] == 0:
        raise ValueError(f"simulation.scan_step_px: expected a scan with at least one position "
                         f"in a {obj.shape} object, got none")
    photons = cfg.photons_per_pattern
    probe_t = torch.from_numpy(probe).to(device)

    # one pass of the forward model; totals reduced in float64
    counts = np.empty((positions.shape[0], n, n), dtype=np.float32)
    totals = np.empty(positions.shape[0], dtype=np.float64)
    with torch.no_grad():
        for sl, patches in _exact_patch_chunks(obj, positions, n, device):
            intensity = predicted_intensity(probe_t, patches)
            totals[sl] = intensity.to(torch.float64).sum(dim=(-2, -1)).cpu().numpy()
            counts[sl] = intensity.cpu().numpy()

    # dose: one scalar on |P|^2 so that the mean expected total per pattern is the target
    gain = 1.0
    if not probe_is_calibrated:
        if not totals.mean() > 0:
            raise ValueError("object: expected a non-zero transmission under the probe, got 0")
        target = NOMINAL_PHOTONS_PER_PATTERN if photons is None else float(photons)
        gain = target / float(totals.mean())
        probe = (probe * math.sqrt(gain)).astype(np.complex64)
    for start in range(0, counts.shape[0], _CHUNK):
        sl = slice(start, start + _CHUNK)
        expected = counts[sl].astype(np.float64) * gain
        counts[sl] = expected if photons is None else noise_rng.poisson(expected)

    meta = {
        "provenance": "ptypinn.simulate",
        "seed": int(seed),
        "seed_streams": "SeedSequence(seed).spawn(3): object, positions, noise",
        "photons_per_pattern": None if photons is None else float(photons),
        "probe_calibrated": True,
        "noise": "none" if photons is None else "poisson",
        "object_kind": object_kind,
        "probe_kind": cfg.probe_kind,
        "scan_kind": cfg.scan_kind,
        "scan_step_px": float(cfg.effective_step_px),
        "probe_radius_px": float(cfg.probe_radius_px),
        "subpixel_shift": "fourier",
    }
    if photons is None:
        meta["nominal_photons_per_pattern"] = NOMINAL_PHOTONS_PER_PATTERN
    meta.update(meta_extra)
    log.info("simulated %d patterns %dx%d (%s object, %s probe, %s scan, seed %d, noise %s)",
             counts.shape[0], n, n, object_kind, cfg.probe_kind, cfg.scan_kind, seed,
             meta["noise"])
    return ScanData(counts=counts, positions_px=positions, probe=probe, object_true=obj,
                    meta=meta)


def simulate_scan(
    cfg: SimulationConfig,
    *,
    seed: int | None = None,
    obj: np.ndarray | None = None,
    probe_from_file: np.ndarray | None = None,
    image: np.ndarray | None = None,
    calibrated_probe: np.ndarray | None = None,
    device: str | torch.device = "cpu",
) -> ScanData:
    """Simulate one scan: object, probe, positions, expected counts and Poisson noise.

    The probe is scaled (one scalar) so that the mean expected total counts per pattern equal
    ``photons_per_pattern`` (``NOMINAL_PHOTONS_PER_PATTERN`` and no noise when it is None) --
    unless ``calibrated_probe`` is given: that beam is used as it is, so a test scan of another
    object keeps a trained model's probe and flux (SPEC lesson 9).

    Parameters
    ----------
    cfg : SimulationConfig
    seed : int, optional
        Overrides ``cfg.seed``; object, positions and noise streams are spawned from it.
    obj : complex ``(Hy, Wx)``, optional
        Use this object instead of building one (``meta['object_kind'] = 'given'``).
    probe_from_file : complex ``(N, N)``, optional
        The probe for ``probe_kind='file'``.
    image : real ``(H, W)``, optional
        The image for ``object_kind='image'``.
    calibrated_probe : complex ``(N, N)`` or ``(modes, N, N)`` in photon units, optional
        Use this beam unchanged (e.g. the training scan's ``probe``); ``probe_kind`` is ignored.
    device : torch device for the forward model (the noise is drawn on the CPU with numpy).

    Returns
    -------
    ScanData
        ``counts (n, N, N)`` float32 photon counts (integer-valued with noise), ``positions_px``,
        ``probe`` in photon units, ``object_true``, ``meta`` (seed, dose, kinds, provenance).
    """
    seed = cfg.seed if seed is None else int(seed)
    if calibrated_probe is not None:
        probe = np.asarray(calibrated_probe, dtype=np.complex64)
        if probe.shape[-1] != cfg.probe_size_px:
            raise ValueError(f"calibrated_probe: expected size {cfg.probe_size_px} "
                             f"(simulation.probe_size_px), got shape {probe.shape}")
        return _simulate(cfg, seed, obj, probe, True, image, device,
                         {"dose_reference": "given probe"})
    probe = make_probe(cfg, probe_from_file)
    return _simulate(cfg, seed, obj, probe, False, image, device, {})


def simulate_train_test(
    cfg: SimulationConfig,
    *,
    probe_from_file: np.ndarray | None = None,
    image: np.ndarray | None = None,
    device: str | torch.device = "cpu",
) -> tuple[ScanData, ScanData]:
    """Spatially disjoint train/test scans: different objects, the same beam and scan kind.

    The train scan uses ``seed = cfg.seed`` and sets the probe's photon scale; the test scan uses
    ``seed = cfg.seed + 1`` and the **same calibrated probe** (the same beam), so its mean counts
    per pattern differ slightly from ``photons_per_pattern`` as its object transmits differently.
    For ``object_kind='image'`` the train object is built from the top half of the image and the
    test object from the bottom half (split along rows).

    Returns
    -------
    (train, test) : ScanData, ScanData
        ``meta`` holds ``split``, ``train_seed`` and ``test_seed``.
    """
    seeds = {"train_seed": int(cfg.seed), "test_seed": int(cfg.seed) + 1}
    img_train = img_test = None
    if cfg.object_kind == "image":
        if image is None:
            raise ValueError("image: expected an image array when object_kind is 'image', "
                             "got None")
        img = np.asarray(image)
        half = img.shape[0] // 2
        img_train, img_test = img[:half], img[half:]
    probe = make_probe(cfg, probe_from_file)
    train = _simulate(cfg, cfg.seed, None, probe, False, img_train, device,
                      {"split": "train", **seeds})
    test = _simulate(cfg, cfg.seed + 1, None, train.probe, True, img_test, device,
                     {"split": "test", "dose_reference": "train", **seeds})
    return train, test
