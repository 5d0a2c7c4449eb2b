"""Figures as PNG bytes (the only module that imports matplotlib; :mod:`ptypinn.io` writes them).

Figures are built on :class:`matplotlib.figure.Figure` with the Agg canvas -- no ``pyplot`` global
state.  Colour maps have monotonic lightness (``gray`` for amplitudes, ``cividis`` for phases,
``magma`` for log intensities) so the figures stay readable when printed in grayscale.
"""

from __future__ import annotations

import io as _bytes_io

import numpy as np

from ptypinn.data import ScanData

__all__ = ["scan_preview_png", "complex_image_png"]

_AMP_CMAP = "gray"
_PHASE_CMAP = "cividis"
_LOG_CMAP = "magma"


def _png(fig) -> bytes:
    """Render a Figure with the Agg canvas and return PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = _bytes_io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _show(fig, ax, img: np.ndarray, title: str, cmap: str, label: str, **kw) -> None:
    im = ax.imshow(img, cmap=cmap, interpolation="nearest", **kw)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("x (px)", fontsize=8)
    ax.set_ylabel("y (px)", fontsize=8)
    ax.tick_params(labelsize=7)
    cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    cb.set_label(label, fontsize=8)
    cb.ax.tick_params(labelsize=7)


def complex_image_png(obj: np.ndarray, title: str) -> bytes:
    """Amplitude and phase (radians, wrapped to [-pi, pi]) of a complex image side by side.

    Parameters
    ----------
    obj : complex ``(H, W)``
    title : str
        Figure title.

    Returns
    -------
    bytes
        PNG image.
    """
    from matplotlib.figure import Figure

    obj = np.asarray(obj)
    if obj.ndim != 2:
        raise ValueError(f"obj: expected shape (H, W), got {obj.shape}")
    fig = Figure(figsize=(9, 4), layout="constrained")
    ax_a, ax_p = fig.subplots(1, 2)
    _show(fig, ax_a, np.abs(obj), "amplitude", _AMP_CMAP, "amplitude (transmission)")
    _show(fig, ax_p, np.angle(obj), "phase", _PHASE_CMAP, "phase (rad)")
    fig.suptitle(title)
    return _png(fig)


def scan_preview_png(scan: ScanData) -> bytes:
    """Overview of one scan: object amplitude/phase (when the truth is known), probe amplitude and
    phase, scan positions over the object frame, and the first diffraction pattern (log scale).

    Returns
    -------
    bytes
        PNG image.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Circle, Rectangle

    probe = scan.probe_modes[0]
    n = scan.pattern_size
    hy, wx = scan.object_shape_px
    obj = scan.object_true if scan.object_true is not None else scan.object_guess
    fig = Figure(figsize=(13, 8), layout="constrained")
    axes = fig.subplots(2, 3)
    if obj is not None:
        _show(fig, axes[0, 0], np.abs(obj), "object amplitude", _AMP_CMAP, "transmission")
        _show(fig, axes[0, 1], np.angle(obj), "object phase", _PHASE_CMAP, "phase (rad)")
    else:
        for ax in axes[0, :2]:
            ax.text(0.5, 0.5, "no object", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
    _show(fig, axes[0, 2], np.abs(probe), "probe amplitude", _AMP_CMAP, "sqrt(photons)")
    _show(fig, axes[1, 0], np.angle(probe), "probe phase", _PHASE_CMAP, "phase (rad)")

    ax = axes[1, 1]
    if obj is not None:
        ax.imshow(np.abs(obj), cmap=_AMP_CMAP, interpolation="nearest", alpha=0.6)
    pos = scan.positions_px
    ax.plot(pos[:, 1], pos[:, 0], ".", ms=2, color="black")
    ax.add_patch(Rectangle((pos[0, 1] - n / 2 - 0.5, pos[0, 0] - n / 2 - 0.5), n, n,
                           fill=False, lw=1.2, ls="--", color="black"))
    radius = scan.meta.get("probe_radius_px")
    if radius:
        ax.add_patch(Circle((pos[0, 1], pos[0, 0]), radius, fill=False, lw=1.2, color="black"))
    ax.set_xlim(-0.5, wx - 0.5)
    ax.set_ylim(hy - 0.5, -0.5)
    ax.set_aspect("equal")
    ax.set_title(f"{scan.n_patterns} scan positions (window {n} px)", fontsize=9)
    ax.set_xlabel("x (px)", fontsize=8)
    ax.set_ylabel("y (px)", fontsize=8)
    ax.tick_params(labelsize=7)

    pattern = scan.counts[0].astype(np.float64)
    _show(fig, axes[1, 2], np.log10(pattern + 1.0), "pattern 0 (log scale)", _LOG_CMAP,
          "log10(counts + 1)")
    dose = scan.photons_per_pattern
    fig.suptitle(f"{scan.meta.get('provenance', 'scan')}: {scan.n_patterns} patterns {n}x{n}, "
                 f"mean {dose:.3g} photons/pattern")
    return _png(fig)
