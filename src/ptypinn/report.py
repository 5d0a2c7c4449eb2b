"""Figures as PNG bytes (the only module that imports matplotlib; :mod:`ptypinn.io` writes them).

Figures are built on :class:`matplotlib.figure.Figure` with the Agg canvas -- no ``pyplot`` global
state.  Colour maps have monotonic lightness (``gray`` for amplitudes, ``cividis`` for phases,
``magma`` for log intensities) so the figures stay readable when printed in grayscale.
"""

from __future__ import annotations

import io as _bytes_io
from typing import TYPE_CHECKING

import numpy as np

from ptypinn.data import ScanData

if TYPE_CHECKING:  # for type checkers only: matplotlib is imported inside the functions
    from matplotlib.figure import Figure

__all__ = ["scan_preview_png", "complex_image_png", "comparison_png", "comparison_figure",
           "amplitude_panel_ranges", "frc_png"]

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


def _masked_crop(img: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """``img`` (real) on the bounding box of ``mask``, NaN outside the mask (drawn blank)."""
    img = np.asarray(img, dtype=np.float64)
    if mask is None:
        return img
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    return np.where(mask[box], img[box], np.nan)


def _shared_range(images: list[np.ndarray], lo_pct: float = 0.5, hi_pct: float = 99.5
                  ) -> tuple[float, float]:
    """One colour range for several images: the widest of their robust (percentile) ranges."""
    ranges = [_robust_range(a, lo_pct, hi_pct) for a in images]
    return _widen(min(r[0] for r in ranges), max(r[1] for r in ranges))


def _widen(lo: float, hi: float) -> tuple[float, float]:
    """``(lo, hi)``, opened up around a constant image so that ``hi > lo``."""
    if hi > lo:
        return lo, hi
    half = 0.05 * abs(lo) if lo != 0 else 0.5
    return lo - half, hi + half


def _robust_range(img: np.ndarray, lo_pct: float, hi_pct: float) -> tuple[float, float]:
    """The ``lo_pct``-``hi_pct`` percentile span of the finite pixels of ``img`` (NaN = not
    shown); ``(0, 1)`` when there are none."""
    values = np.asarray(img, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(values, [lo_pct, hi_pct])
    return _widen(float(lo), float(hi))


def amplitude_panel_ranges(amplitudes: list[np.ndarray], truth_first: bool,
                           lo_pct: float = 1.0, hi_pct: float = 99.0
                           ) -> list[tuple[float, float]]:
    """The colour range ``(vmin, vmax)`` of each amplitude panel of :func:`comparison_png`.

    Without a ground truth the arms may be on different absolute scales (a PINN at ~1 next to an
    iterative arm at ~45); one shared range would draw the smaller one black.  Each panel then
    gets its own robust range.  With a ground truth (``truth_first``) every panel shares the
    truth's range, so an arm with the wrong scale shows saturated (its mean amplitude goes in its
    title).

    Parameters
    ----------
    amplitudes : list of real ``(H, W)``
        One per panel, NaN where nothing is shown (outside the covered region); with
        ``truth_first`` the first one is the ground truth's.
    truth_first : bool
        Whether ``amplitudes[0]`` is the ground truth's: all panels share its range.
    lo_pct, hi_pct : float
        Percentiles of the finite pixels that set a range (robust to a few outlier pixels); the
        truth's range uses the wider 0.5-99.5 span.

    Returns
    -------
    list of (vmin, vmax)
        One per panel, ``vmax > vmin``; an image without finite pixels gets ``(0, 1)``.
    """
    if not amplitudes:
        raise ValueError("amplitudes: expected at least one image, got none")
    if truth_first:
        common = _robust_range(amplitudes[0], 0.5, 99.5)
        return [common] * len(amplitudes)
    return [_robust_range(a, lo_pct, hi_pct) for a in amplitudes]


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def comparison_figure(truth: np.ndarray | None, recons: dict[str, np.ndarray],
                      mask: np.ndarray | None = None, title: str | None = None) -> Figure:
    """The :class:`matplotlib.figure.Figure` drawn by :func:`comparison_png` (same arguments).

    Returns
    -------
    matplotlib.figure.Figure
        Axes ``2 x k`` (amplitude row, phase row), then the colorbars.
    """
    from matplotlib.figure import Figure

    columns: list[tuple[str, np.ndarray]] = []
    if truth is not None:
        columns.append(("ground truth", np.asarray(truth)))
    columns += [(str(k), np.asarray(v)) for k, v in recons.items()]
    if not recons:
        raise ValueError("recons: expected at least one reconstruction, got none")
    shape = columns[0][1].shape
    for name, img in columns:
        if img.ndim != 2 or img.shape != shape:
            raise ValueError(f"recons[{name!r}]: expected shape {shape} (2-D, as the first image), "
                             f"got {img.shape}")
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != shape:
            raise ValueError(f"mask: expected shape {shape}, got {mask.shape}")
        if not mask.any():
            raise ValueError("mask: expected at least one True pixel, got none")
    amps = [_masked_crop(np.abs(img), mask) for _, img in columns]
    phases = [_masked_crop(np.angle(img), mask) for _, img in columns]
    with_truth = truth is not None
    a_ranges = amplitude_panel_ranges(amps, truth_first=with_truth)
    p_lo, p_hi = _shared_range(phases[:1] if with_truth else phases)
    p_lo, p_hi = max(p_lo, -np.pi), min(p_hi, np.pi)
    k = len(columns)
    fig = Figure(figsize=(2.9 * k + 1.2, 6.0), layout="constrained")
    axes = fig.subplots(2, k, squeeze=False)
    im_a = im_p = None
    for j, (name, _) in enumerate(columns):
        a_lo, a_hi = a_ranges[j]
        finite = amps[j][np.isfinite(amps[j])]
        mean = _fmt(float(finite.mean())) if finite.size else "n/a"
        im_a = axes[0, j].imshow(amps[j], cmap=_AMP_CMAP, vmin=a_lo, vmax=a_hi,
                                 interpolation="nearest")
        im_p = axes[1, j].imshow(phases[j], cmap=_PHASE_CMAP, vmin=p_lo, vmax=p_hi,
                                 interpolation="nearest")
        if with_truth:
            axes[0, j].set_title(f"{name}\nmean amplitude {mean}", fontsize=9)
        else:  # own scale: its range in the title and its own colorbar
            axes[0, j].set_title(f"{name}\nmean {mean}, shown [{_fmt(a_lo)}, {_fmt(a_hi)}]",
                                 fontsize=9)
            cb = fig.colorbar(im_a, ax=axes[0, j], fraction=0.046, pad=0.04, extend="both")
            cb.ax.tick_params(labelsize=7)
        for ax in axes[:, j]:
            ax.set_xlabel("x (px)", fontsize=8)
            ax.tick_params(labelsize=7)
    if with_truth:
        axes[0, 0].set_ylabel("amplitude (truth's scale)\ny (px)", fontsize=8)
        cb = fig.colorbar(im_a, ax=list(axes[0]), fraction=0.03, pad=0.02, extend="both")
        cb.set_label("amplitude (clipped to the truth's range)", fontsize=8)
    else:
        axes[0, 0].set_ylabel("amplitude (each panel on its own scale)\ny (px)", fontsize=8)
    axes[1, 0].set_ylabel("phase (common scale)\ny (px)", fontsize=8)
    cb = fig.colorbar(im_p, ax=list(axes[1]), fraction=0.03, pad=0.02)
    cb.set_label("phase (rad)", fontsize=8)
    scale_note = ("amplitude on the truth's scale" if with_truth
                  else "amplitude: each panel on its own scale")
    fig.suptitle(f"{title}\n({scale_note})" if title else f"({scale_note})", fontsize=10)
    return fig


def comparison_png(truth: np.ndarray | None, recons: dict[str, np.ndarray],
                   mask: np.ndarray | None = None, title: str | None = None) -> bytes:
    """Reconstructions side by side: amplitude (top row) and phase (bottom row), one column each.

    The ground truth (if given) comes first, then one column per entry of ``recons`` in order.
    All images must already be in one frame, registered and with the global phase removed (see
    :func:`ptypinn.metrics.align`).  Each column's title gives its mean amplitude over the shown
    pixels.

    * Amplitude (``gray``), with a ground truth: one colour range for all, the truth's 0.5-99.5
      percentile span; arms are clipped to it (a reconstruction with the wrong scale shows
      saturated, and its mean amplitude in the title gives the size of the error).
    * Amplitude without a ground truth: each panel on its own scale (its own 1-99 percentile
      span over the shown pixels, in its title, with its own colorbar), as arms need not share an
      absolute scale and a shared range would draw the smaller one black
      (:func:`amplitude_panel_ranges`).
    * Phase (``cividis``, radians): one common range, the truth's 0.5-99.5 percentile span, else
      the widest such span over the columns.

    Parameters
    ----------
    truth : complex ``(Hy, Wx)`` or None
    recons : {name: complex ``(Hy, Wx)``}, at least one
    mask : bool ``(Hy, Wx)``, optional
        Region to show (e.g. the scanned region): images are cropped to its bounding box and
        pixels outside it are left blank.
    title : str, optional
        Figure title.

    Returns
    -------
    bytes
        PNG image.
    """
    return _png(comparison_figure(truth, recons, mask, title))


def frc_png(curves: dict[str, dict], title: str | None = None) -> bytes:
    """Fourier ring correlation curves with the 1/2-bit and 1/7 thresholds.

    Parameters
    ----------
    curves : {label: frc result}
        Each value as returned by :func:`ptypinn.metrics.frc` (``spatial_frequency``, ``frc``,
        ``threshold_half_bit``, ``units``); at least one.  The thresholds drawn are the first
        curve's (curves of images of one size share their rings).
    title : str, optional

    Returns
    -------
    bytes
        PNG image.
    """
    from matplotlib.figure import Figure

    if not curves:
        raise ValueError("curves: expected at least one FRC curve, got none")
    for name, c in curves.items():
        missing = {"spatial_frequency", "frc", "threshold_half_bit"} - set(c)
        if missing:
            raise ValueError(f"curves[{name!r}]: expected metrics.frc's keys, missing "
                             f"{sorted(missing)}")
    styles = [("-", "o"), ("--", "s"), ("-.", "^"), (":", "D"), ("-", "v"), ("--", "x")]
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.subplots()
    first = next(iter(curves.values()))
    units = str(first.get("units", "cycles/px"))
    for i, (name, c) in enumerate(curves.items()):
        ls, marker = styles[i % len(styles)]
        ax.plot(c["spatial_frequency"], c["frc"], ls=ls, marker=marker, ms=3, lw=1.4,
                color=f"C{i}", label=str(name))
    f = np.asarray(first["spatial_frequency"])
    ax.plot(f, first["threshold_half_bit"], color="black", lw=1.0, ls="--", label="1/2-bit")
    ax.axhline(1.0 / 7.0, color="gray", lw=1.0, ls=":", label="1/7")
    ax.set_xlim(0, float(f.max()) if f.size else 0.5)
    ax.set_ylim(-0.2, 1.05)
    ax.set_xlabel(f"spatial frequency ({units})")
    ax.set_ylabel("FRC")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return _png(fig)


# ------------------------------------------------------------------------------------------------
# study reports (SPEC §9)

__all__ += ["markdown_table", "study_curves_png", "study_report_md", "study_report_html"]

# (line style, marker, filled?) per series: distinguishable without colour
_SERIES_STYLES = [("-", "o", True), ("--", "s", True), ("-.", "^", True), (":", "D", True),
                  ("-", "o", False), ("--", "s", False), ("-.", "^", False), (":", "D", False)]


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured markdown table (cells as given; ``|`` escaped)."""
    esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(esc(h) for h in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def study_curves_png(curves: dict[str, dict[str, tuple[list[float], list[float], list[float]]]],
                     panels: list[tuple[str, str]], x_label: str, log_x: bool = False,
                     x_tick_labels: dict[float, str] | None = None,
                     title: str | None = None) -> bytes:
    """Quality-vs-parameter curves of a study, one panel per metric, mean ± std error bars.

    Parameters
    ----------
    curves : {series label: {panel key: (x, mean, std)}}
        One series per arm (and gridsize); each panel key maps to equal-length lists.
    panels : list of (panel key, y-axis label with units)
    x_label : str
        x-axis label with units.
    log_x : bool
        Logarithmic x axis (dose).
    x_tick_labels : {x: label}, optional
        Explicit ticks (categorical studies, or annotated values).
    title : str, optional

    Returns
    -------
    bytes
        PNG image; each series has its own line style and marker (readable in grayscale).
    """
    from matplotlib.figure import Figure

    if not panels:
        raise ValueError("panels: expected at least one (key, label), got none")
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig = Figure(figsize=(4.6 * ncols, 3.6 * nrows + 0.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False).ravel())
    for ax, (key, ylabel) in zip(axes, panels):
        for i, (label, series) in enumerate(curves.items()):
            x, mean, std = series.get(key, ([], [], []))
            if len(x) != len(mean) or len(x) != len(std):
                raise ValueError(f"curves[{label!r}][{key!r}]: expected equal-length x, mean, "
                                 f"std, got {len(x)}, {len(mean)}, {len(std)}")
            if not x:
                continue
            ls, marker, filled = _SERIES_STYLES[i % len(_SERIES_STYLES)]
            color = f"C{i % 10}"
            ax.errorbar(x, mean, yerr=std, ls=ls, marker=marker, ms=6, lw=1.5, capsize=3,
                        color=color, mfc=color if filled else "white", mec=color, label=label)
        if log_x:
            ax.set_xscale("log")
        if key.startswith("timing.") or ".frc_" in key:
            ax.set_yscale("log")
        if x_tick_labels:
            ax.set_xticks(list(x_tick_labels), list(x_tick_labels.values()), fontsize=7)
            ax.minorticks_off()
        ax.set_xlabel(x_label, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=9)
        ax.tick_params(which="both", labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[len(panels):]:
        ax.set_axis_off()
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        axes[0].legend(handles, labels, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return _png(fig)


def study_report_md(title: str, finding: str, command: str,
                    tables: list[tuple[str, list[str], list[list[str]]]],
                    figures: list[tuple[str, str]], notes: list[str] | tuple = ()) -> str:
    """A study report in markdown.

    Parameters
    ----------
    title, finding, command : str
        Heading, the one-sentence finding, the command that reproduces the study.
    tables : list of (caption, header, rows)
    figures : list of (caption, relative path of a PNG)
    notes : list of str
        Skipped / failed arms and other caveats.

    Returns
    -------
    str
    """
    parts = [f"# {title}", "", f"**Finding.** {finding}", "", "Reproduce with:", "",
             f"```\n{command}\n```", ""]
    for caption, header, rows in tables:
        parts += [f"## {caption}", "", markdown_table(header, rows), ""]
    if notes:
        parts += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    if figures:
        parts += ["## Figures", ""]
        for caption, path in figures:
            parts += [f"**{caption}**", "", f"![{caption}]({path})", ""]
    return "\n".join(parts)


def study_report_html(title: str, finding: str, command: str,
                      tables: list[tuple[str, list[str], list[list[str]]]],
                      figures: list[tuple[str, bytes]], notes: list[str] | tuple = ()) -> str:
    """The same report as :func:`study_report_md` as one self-contained HTML page.

    ``figures`` are ``(caption, PNG bytes)`` and are embedded as base64 data URIs.
    """
    import base64
    import html

    e = html.escape
    parts = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'>", f"<title>{e(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1200px;margin:auto}"
             "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #999;"
             "padding:3px 6px;text-align:right}th{background:#eee}img{max-width:100%}"
             "pre{background:#f4f4f4;padding:6px}</style></head><body>",
             f"<h1>{e(title)}</h1>", f"<p><b>Finding.</b> {e(finding)}</p>",
             f"<p>Reproduce with:</p><pre>{e(command)}</pre>"]
    for caption, header, rows in tables:
        parts.append(f"<h2>{e(caption)}</h2><table><tr>"
                     + "".join(f"<th>{e(str(h))}</th>" for h in header) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in rows]
        parts.append("</table>")
    if notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{e(n)}</li>" for n in notes)
                     + "</ul>")
    if figures:
        parts.append("<h2>Figures</h2>")
        for caption, png in figures:
            data = base64.b64encode(png).decode("ascii")
            parts.append(f"<figure><img alt='{e(caption)}' src='data:image/png;base64,{data}'>"
                         f"<figcaption>{e(caption)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
