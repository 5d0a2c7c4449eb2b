r"""Forward model of ptychography: pure, batched, differentiable torch functions.

Conventions (normative for the whole package; tested in ``tests/test_physics.py``)
-----------------------------------------------------------------------------------
* Arrays are row-major; images are ``(..., H, W)`` with axis order ``(y, x)``.  Complex fields are
  ``complex64`` (``complex128`` is accepted for tests); intensities are float32 and every
  reduction of intensities is accumulated in float64.
* ``positions_px`` are **probe-window centres** in object pixels, ``(..., 2)`` with columns
  ``(y, x)``, in the frame of the object array they index.  The window of size ``N`` centred at
  ``p`` starts at object pixel ``p - N/2`` (for even ``N`` the centre is the pixel that holds zero
  frequency after ``fftshift``).  A fractional start ``s = i0 + f`` means window pixel ``j`` samples
  the object at ``i0 + j + f``, i.e. bilinear interpolation between ``O[i0+j]`` and ``O[i0+j+1]``
  with weights ``1-f`` and ``f`` (per axis).  Integer positions are exact copies.
* :func:`extract_patches` (``A``) and :func:`place_patches` (``A^T``) are exact adjoints; they are
  the **only** translation code in the package (grouping merges, stitching and simulation all use
  them), so there is one sign convention for offsets.
* Far field: ``F = fftshift(fft2(psi, norm="ortho"))`` -- zero frequency at the array centre and
  Parseval holds: ``sum |F|^2 == sum |psi|^2``.
* Intensity of a (partially coherent) probe with modes ``P_k``:
  ``I = sum_k |F(P_k * O)|^2``; single-mode probes are ``(H, W)`` or ``(1, H, W)``.
* Sub-pixel positions in the **measurement model** (:func:`scan_intensity`, used by
  :func:`data_nll` and the refinement): the integer window ``O[i0 : i0 + N]`` under the probe
  translated by the fraction ``f`` with a Fourier phase ramp, ``P(j - f)``.  The exit wave is
  then the exact one translated by ``f``, which leaves every far-field intensity unchanged, so a
  band-limited probe gives the simulator's exact sub-pixel model without interpolating the object
  (the bilinear ``A`` smooths it: on the 1e6-photon demo scan the truth's excess NLL is 0.480 per
  pixel through ``A`` and 0.252 through the exact model).  pty-chi models sub-pixel positions the
  same way.
* Measurement: counts ``n ~ Poisson(I)``.  Loss: the Poisson negative log-likelihood
  ``sum_pixels (I - n log(I + eps))`` with explicit ``eps``, one value per pattern.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = [
    "probe_modes",
    "far_field",
    "exit_waves",
    "predicted_intensity",
    "poisson_nll",
    "window_starts",
    "canvas_shape_px",
    "inverse_far_field",
    "excess_nll_per_pixel",
    "data_nll",
    "shift_probe",
    "scan_intensity",
    "extract_patches",
    "place_patches",
]


def probe_modes(probe: torch.Tensor) -> torch.Tensor:
    """Return the probe as modes ``(M, H, W)``; a ``(H, W)`` probe becomes ``(1, H, W)``."""
    if probe.ndim == 2:
        return probe.unsqueeze(0)
    if probe.ndim == 3:
        return probe
    raise ValueError(f"probe: expected shape (H, W) or (modes, H, W), got {tuple(probe.shape)}")


def far_field(psi: torch.Tensor) -> torch.Tensor:
    """Far-field wave with zero frequency at the centre.

    Parameters
    ----------
    psi : complex tensor ``(..., H, W)``
        Exit wave.

    Returns
    -------
    complex tensor ``(..., H, W)``
        ``fftshift(fft2(psi, norm="ortho"))`` over the last two axes.
    """
    return torch.fft.fftshift(torch.fft.fft2(psi, norm="ortho"), dim=(-2, -1))


def inverse_far_field(field: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`far_field`: ``ifft2(ifftshift(field), norm="ortho")``, ``(..., H, W)``."""
    return torch.fft.ifft2(torch.fft.ifftshift(field, dim=(-2, -1)), norm="ortho")


def exit_waves(probe: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
    """Exit waves ``P_k * O`` for every probe mode.

    Parameters
    ----------
    probe : complex ``(H, W)`` or ``(M, H, W)``
    patches : complex ``(..., H, W)``

    Returns
    -------
    complex ``(..., M, H, W)``
    """
    modes = probe_modes(probe)
    if modes.shape[-2:] != patches.shape[-2:]:
        raise ValueError(
            f"probe: expected spatial shape {tuple(patches.shape[-2:])} (the patch size), "
            f"got {tuple(modes.shape[-2:])}"
        )
    return patches.unsqueeze(-3) * modes


def predicted_intensity(probe: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
    """Far-field intensity ``sum_k |F(P_k * O)|^2``.

    Parameters
    ----------
    probe : complex ``(H, W)`` or ``(M, H, W)``
    patches : complex ``(..., H, W)``
        Object patches under the probe windows.

    Returns
    -------
    real ``(..., H, W)``
        Expected counts per detector pixel (in the units of ``|probe|^2``).
    """
    field = far_field(exit_waves(probe, patches))
    return (field.real.square() + field.imag.square()).sum(dim=-3)


def poisson_nll(
    intensity: torch.Tensor,
    counts: torch.Tensor,
    eps: float = 1e-6,
    bad_pixels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Poisson negative log-likelihood per pattern, ``sum(I - n log(I + eps))``.

    Parameters
    ----------
    intensity : real ``(..., H, W)``
        Predicted counts ``I >= 0``.
    counts : real ``(..., H, W)``
        Measured counts ``n >= 0``.
    eps : float
        Regulariser inside the log (``>= 1e-12``).
    bad_pixels : bool ``(H, W)``, optional
        Pixels to exclude (True = bad).

    Returns
    -------
    float64 ``(...,)``
        One value per pattern (constant ``log n!`` omitted), reduced in float64.
    """
    if eps < 1e-12:
        raise ValueError(f"eps: expected >= 1e-12, got {eps}")
    term = intensity - counts * torch.log(intensity + eps)
    if bad_pixels is not None:
        term = term.masked_fill(bad_pixels.to(torch.bool), 0.0)
    return term.to(torch.float64).sum(dim=(-2, -1))


def excess_nll_per_pixel(
    intensity: torch.Tensor,
    counts: torch.Tensor,
    eps: float = 1e-6,
    bad_pixels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Poisson NLL minus the saturated model's (``I = n``), per valid pixel, one per pattern.

    ``(poisson_nll(I, n) - poisson_nll(n, n)) / n_valid_pixels``: 0 for a perfect fit without
    noise, about 0.5 for the true intensities at high counts (half a unit of chi-square per
    pixel).  The offset is a constant of the data, so it changes no gradient.

    Parameters
    ----------
    intensity, counts : real ``(..., H, W)``
    eps : float
    bad_pixels : bool ``(H, W)``, optional (True = excluded)

    Returns
    -------
    float64 ``(...,)``
    """
    npix = counts.shape[-1] * counts.shape[-2]
    if bad_pixels is not None:
        npix -= int(bad_pixels.sum())
    nll = poisson_nll(intensity, counts, eps, bad_pixels)
    saturated = poisson_nll(counts, counts, eps, bad_pixels)
    return (nll - saturated) / max(npix, 1)


def data_nll(obj: np.ndarray, scan: Any, batch_size: int = 512,
             device: str | torch.device = "cpu", eps: float = 1e-6) -> np.ndarray:
    """Truth-free fit of an object to measured data: :func:`excess_nll_per_pixel` per pattern.

    Parameters
    ----------
    obj : complex ``(Hy, Wx)`` in the scan's object frame.
    scan : ``ScanData`` (or anything with ``counts (n, H, W)``, ``positions_px (n, 2)``,
        ``probe`` and ``bad_pixels``); the predicted counts use ``scan.probe`` as given.
    batch_size : int
        Patterns per chunk (memory is O(batch)).

    Returns
    -------
    float64 ``(n,)``; about 0.5 per pixel is the expectation for the true object at high counts.

    Notes
    -----
    The prediction is :func:`scan_intensity` (exact sub-pixel positions), not the bilinear
    :func:`extract_patches`, whose smoothing would charge the true object an interpolation error
    that grows with the dose.
    """
    device = torch.device(device)
    o = torch.from_numpy(np.ascontiguousarray(obj, dtype=np.complex64)).to(device)
    probe = torch.from_numpy(np.asarray(scan.probe)).to(device)
    bad = (torch.from_numpy(np.asarray(scan.bad_pixels)).to(device)
           if scan.bad_pixels is not None else None)
    n = scan.counts.shape[-1]
    out = []
    with torch.no_grad():
        for s in range(0, scan.counts.shape[0], batch_size):
            pos = torch.from_numpy(np.asarray(scan.positions_px[s:s + batch_size])).to(device)
            counts = torch.from_numpy(np.asarray(scan.counts[s:s + batch_size])).to(device)
            pred = scan_intensity(o, probe, pos, n)
            out.append(excess_nll_per_pixel(pred, counts, eps, bad).cpu().numpy())
    return np.concatenate(out)


def shift_probe(probe: torch.Tensor, shift_px: torch.Tensor) -> torch.Tensor:
    """Probe modes translated by sub-pixel amounts with a Fourier phase ramp: ``P(r - shift)``.

    Band-limited and periodic on the ``N x N`` grid (exact for a probe that is band-limited and
    negligible at the grid's edge, as a focused or apertured probe with its far field on the
    detector is).

    Parameters
    ----------
    probe : complex ``(H, W)`` or ``(M, H, W)``
    shift_px : float ``(B, 2)``
        Translation ``(y, x)`` in pixels of each output, typically in ``[0, 1)``.

    Returns
    -------
    complex ``(B, M, H, W)``
    """
    modes = probe_modes(probe)
    h, w = modes.shape[-2:]
    real = torch.float64 if modes.dtype == torch.complex128 else torch.float32
    sh = shift_px.to(real)
    ky = torch.fft.fftfreq(h, device=modes.device, dtype=real)
    kx = torch.fft.fftfreq(w, device=modes.device, dtype=real)
    ramp = torch.polar(torch.ones((), dtype=real, device=modes.device),
                       -2 * torch.pi * (sh[:, 0, None, None] * ky[:, None]
                                        + sh[:, 1, None, None] * kx[None, :]))  # (B, H, W)
    return torch.fft.ifft2(torch.fft.fft2(modes)[None] * ramp[:, None])


def scan_intensity(obj: torch.Tensor, probe: torch.Tensor, positions_px: torch.Tensor,
                   size: int) -> torch.Tensor:
    """Expected counts of a scan with exact sub-pixel positions (the measurement model).

    For the window of centre ``p`` (start ``s = p - N/2 = i0 + f``, ``i0 = floor(s)``) the
    integer window ``O[i0 : i0 + N]`` is lit by the probe translated by ``f``
    (:func:`shift_probe`): ``I = sum_k |F(P_k(j - f) O(i0 + j))|^2``, the far-field intensity of
    ``P(j) O(s + j)`` (a translation of the exit wave changes no intensity).  Differentiable in
    object, probe and positions (through ``f``); the object's adjoint is an exact scatter-add.

    Parameters
    ----------
    obj : complex ``(Hy, Wx)``
    probe : complex ``(N, N)`` or ``(M, N, N)``, in photon units
    positions_px : float ``(B, 2)``
        Window centres ``(y, x)``; every integer window ``[i0, i0 + N)`` must lie inside ``obj``
        (indices outside are clamped).
    size : int
        Window size ``N`` (the probe's).

    Returns
    -------
    real ``(B, N, N)``
    """
    if obj.ndim != 2:
        raise ValueError(f"obj: expected shape (Hy, Wx), got {tuple(obj.shape)}")
    if positions_px.ndim != 2 or positions_px.shape[-1] != 2:
        raise ValueError(f"positions_px: expected shape (B, 2), got {tuple(positions_px.shape)}")
    start = window_starts(positions_px.to(torch.float64), size)
    i0 = torch.floor(start)
    frac = start - i0
    i0 = i0.to(torch.int64)
    ar = torch.arange(size, device=obj.device)
    rows = (i0[:, 0, None] + ar).clamp_(0, obj.shape[0] - 1)  # (B, N)
    cols = (i0[:, 1, None] + ar).clamp_(0, obj.shape[1] - 1)
    patches = obj[rows[:, :, None], cols[:, None, :]]  # (B, N, N)
    field = far_field(shift_probe(probe, frac) * patches[:, None])
    return (field.real.square() + field.imag.square()).sum(dim=-3)


def window_starts(positions_px: Any, size: int) -> Any:
    """First object pixel (fractional) of the window of ``size`` centred at ``positions_px``.

    The one place the window-start rule ``start = centre - N/2`` is written; works on numpy
    arrays and torch tensors ``(..., 2)`` alike.
    """
    return positions_px - size / 2.0


def canvas_shape_px(positions_px: np.ndarray, size: int) -> tuple[int, int]:
    """Smallest canvas holding every window, in the frame of the positions.

    Parameters
    ----------
    positions_px : float ``(n, 2)``
        Window centres ``(y, x)`` in pixels; every window must start at pixel ``>= 0``.
    size : int
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
    if size < 1:
        raise ValueError(f"size: expected >= 1, got {size}")
    start = window_starts(pos, size)
    if start.min() < 0:
        raise ValueError(
            f"positions_px: expected window starts >= 0 (centre >= {size / 2} px), "
            f"got min start {start.min():.3f} px")
    hy, wx = np.ceil(start.max(axis=0) + size + 1).astype(int)
    return int(hy), int(wx)


def _gather_setup(positions_px: torch.Tensor, size: int, shape: tuple[int, int]):
    """Flat indices of the ``(size+1)^2`` integer windows and the bilinear weights.

    Returns ``flat (B, M, size+1, size+1)`` int64 indices into an object flattened over
    ``(B, Hy, Wx)`` and the four weights ``(B, M, 1, 1)``.
    """
    hy, wx = shape
    start = window_starts(positions_px.to(torch.float64), size)
    i0 = torch.floor(start)
    frac = (start - i0).to(torch.float32 if positions_px.dtype != torch.float64 else torch.float64)
    i0 = i0.to(torch.int64)
    ar = torch.arange(size + 1, device=positions_px.device)
    rows = (i0[..., 0, None] + ar).clamp_(0, hy - 1)  # (B, M, N+1)
    cols = (i0[..., 1, None] + ar).clamp_(0, wx - 1)
    b = torch.arange(positions_px.shape[0], device=positions_px.device).view(-1, 1, 1, 1)
    flat = b * (hy * wx) + rows[..., :, None] * wx + cols[..., None, :]
    fy = frac[..., 0, None, None]
    fx = frac[..., 1, None, None]
    weights = ((1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx)
    return flat, weights


def _check_batched(positions_px: torch.Tensor, batch: int, name: str) -> None:
    if positions_px.ndim != 3 or positions_px.shape[-1] != 2 or positions_px.shape[0] != batch:
        raise ValueError(
            f"{name}: expected positions of shape ({batch}, M, 2), got {tuple(positions_px.shape)}"
        )


def extract_patches(obj: torch.Tensor, positions_px: torch.Tensor, size: int) -> torch.Tensor:
    """Cut ``size x size`` windows out of objects at sub-pixel positions (operator ``A``).

    Parameters
    ----------
    obj : ``(B, Hy, Wx)`` real or complex
        Objects (one per batch element).
    positions_px : float ``(B, M, 2)``
        Window centres ``(y, x)`` in pixels of the matching object.  Windows must lie inside the
        object: ``0 <= p - size/2`` and ``p - size/2 + size + (1 if fractional) <= shape``;
        indices outside are clamped (harmless only for exactly integer positions at the edge).
    size : int
        Window size ``N``.

    Returns
    -------
    ``(B, M, N, N)``, same dtype as ``obj``.
    """
    if obj.ndim != 3:
        raise ValueError(f"obj: expected shape (B, Hy, Wx), got {tuple(obj.shape)}")
    _check_batched(positions_px, obj.shape[0], "positions_px")
    flat, (w00, w01, w10, w11) = _gather_setup(positions_px, size, tuple(obj.shape[-2:]))
    v = obj.reshape(-1)[flat]
    w00, w01, w10, w11 = (w.to(v.real.dtype) for w in (w00, w01, w10, w11))
    return (
        w00 * v[..., :-1, :-1] + w01 * v[..., :-1, 1:] + w10 * v[..., 1:, :-1] + w11 * v[..., 1:, 1:]
    )


def place_patches(
    patches: torch.Tensor, positions_px: torch.Tensor, shape: tuple[int, int]
) -> torch.Tensor:
    """Add windows into zero canvases at sub-pixel positions: the exact adjoint ``A^T``.

    Parameters
    ----------
    patches : ``(B, M, N, N)`` real or complex
    positions_px : float ``(B, M, 2)``
        Window centres ``(y, x)`` in canvas pixels (same convention as :func:`extract_patches`).
    shape : (Hy, Wx)
        Canvas shape.

    Returns
    -------
    ``(B, Hy, Wx)``: ``sum_m`` of each patch spread with the bilinear weights.
    """
    if patches.ndim != 4 or patches.shape[-1] != patches.shape[-2]:
        raise ValueError(f"patches: expected shape (B, M, N, N), got {tuple(patches.shape)}")
    batch, size = patches.shape[0], patches.shape[-1]
    _check_batched(positions_px, batch, "positions_px")
    hy, wx = int(shape[0]), int(shape[1])
    start = window_starts(positions_px.to(torch.float64), size)
    i0 = torch.floor(start)
    frac = (start - i0).to(patches.real.dtype)
    i0 = i0.to(torch.int64)
    fy, fx = frac[..., 0, None, None], frac[..., 1, None, None]
    ar = torch.arange(size, device=patches.device)
    b = torch.arange(batch, device=patches.device).view(-1, 1)
    base = (b * (hy * wx) + i0[..., 0] * wx + i0[..., 1])[..., None, None]
    idx = (base + ar[:, None] * wx + ar[None, :]).reshape(-1)
    # Four scatter-adds at shifted flat indices (2x faster than padding a (N+1)^2 window).  A
    # neighbour index can step past the last row/column only where its weight is exactly 0
    # (integer position at the canvas edge); the spare tail keeps such zero-adds in bounds.
    out = torch.zeros(batch * hy * wx + wx + 2, dtype=patches.dtype, device=patches.device)
    for shift, w in ((0, (1 - fy) * (1 - fx)), (1, (1 - fy) * fx), (wx, fy * (1 - fx)),
                     (wx + 1, fy * fx)):
        out.index_add_(0, idx + shift, (w * patches).reshape(-1))
    out = out[: batch * hy * wx]
    return out.view(batch, hy, wx)

