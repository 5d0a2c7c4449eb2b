"""``ptypinn info``: a few readable lines about any data file or bundle."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ptypinn import io
from ptypinn.data import ScanData, ScanSummary
from ptypinn.grouping import overlap_metrics, probe_radius_px_from_probe

__all__ = ["describe_scan", "describe_summary", "describe_path"]


def describe_scan(scan: ScanData) -> list[str]:
    """Summary lines of an in-memory scan (see :func:`describe_summary`)."""
    return describe_summary(ScanSummary.from_scan(scan))


def describe_summary(scan: ScanSummary) -> list[str]:
    """Summary lines of a scan: shapes, dtypes, measurement, dose, extent, step and overlap."""
    n, h, w = scan.counts.shape
    totals = scan.counts.totals
    pos = scan.positions_px
    radius = probe_radius_px_from_probe(scan.probe)
    ov = overlap_metrics(pos, radius)
    lines = [
        f"patterns: {n} x {h}x{w} {np.dtype(np.float32)} "
        f"({scan.meta.get('measurement', 'counts')}; "
        f"integer-valued: {scan.counts.integer_valued})",
        f"photons per pattern: {scan.counts.photons_per_pattern:.4g} measured "
        f"(min {totals.min():.4g}, max {totals.max():.4g})"
        + (f", {scan.meta['photons_per_pattern']:.4g} requested"
           if scan.meta.get("photons_per_pattern") else ""),
        f"probe: {scan.probe.shape} {scan.probe.dtype}, footprint radius {radius:.1f} px, "
        f"calibrated: {bool(scan.meta.get('probe_calibrated', False))}",
        f"object frame: {scan.object_shape_px[0]}x{scan.object_shape_px[1]} px; "
        f"ground truth: {'yes' if scan.object_true is not None else 'no'}; "
        f"object guess: {'yes' if scan.object_guess is not None else 'no'}",
        f"scan extent (y, x): [{pos[:, 0].min():.1f}, {pos[:, 0].max():.1f}] x "
        f"[{pos[:, 1].min():.1f}, {pos[:, 1].max():.1f}] px; median step "
        f"{ov['nn_step_px_median']:.2f} px",
        f"overlap (probe-footprint discs, {6} nearest neighbours): {ov['overlap_nn_mean']:.3f}",
    ]
    if scan.bad_pixels is not None:
        lines.append(f"bad pixels: {int(scan.bad_pixels.sum())}")
    keys = [k for k in ("provenance", "seed", "object_kind", "photon_energy_eV",
                        "detector_distance_m", "object_pixel_size_m") if k in scan.meta]
    if keys:
        lines.append("meta: " + ", ".join(f"{k}={scan.meta[k]}" for k in keys))
    return lines


def describe_path(path: str | os.PathLike, measurement: str | None = None) -> list[str]:
    """Describe a scan file (any supported format) or a bundle/run directory."""
    p = Path(path)
    if (p.is_dir() and (p / "diffraction.h5").is_file()
            and io.detect_format(p) == "ptychodus-dir"):
        return ([f"{p}: ptychodus standard layout (diffraction.h5 + product)"]
                + describe_summary(io.read_scan_summary(p, measurement)))
    if p.is_dir():
        bundle = p if (p / "manifest.json").is_file() else p / "bundle"
        if not (bundle / "manifest.json").is_file():
            raise ValueError(f"{p}: a directory that is not a bundle or run (no manifest.json)")
        m = io.read_json_object(bundle / "manifest.json")
        for k in ("format_version", "pattern_size", "kind"):
            if k not in m:
                raise ValueError(f"{bundle / 'manifest.json'}: key '{k}': missing")
        cfg = io.read_yaml(bundle / "config.yaml") if (bundle / "config.yaml").is_file() else {}
        grouping = cfg.get("grouping") if isinstance(cfg, dict) else None
        gridsize = grouping.get("gridsize", 1) if isinstance(grouping, dict) else None
        if not isinstance(gridsize, int) or isinstance(gridsize, bool) or gridsize < 1:
            raise ValueError(f"{bundle / 'config.yaml'}: key 'grouping.gridsize': expected an "
                             f"integer >= 1, got {gridsize!r}")
        training = m.get("training") if isinstance(m.get("training"), dict) else {}
        photons = training.get("photons_per_pattern")
        num = lambda v, f: format(v, f) if isinstance(v, (int, float)) else "not recorded"  # noqa: E731
        return [
            f"{p}: model bundle (format {m.get('format_version')}, ptypinn {m.get('package_version')})",
            f"kind: {m.get('kind')}; gridsize {gridsize} (group size C={gridsize**2}); patterns "
            f"{m.get('pattern_size')}x{m.get('pattern_size')}; probe modes {m.get('probe_modes')}",
            f"intensity scale: {num(m.get('intensity_scale'), '.6g')}; training photons per "
            f"pattern: {num(photons, '.4g')}",
            f"training: {training.get('epochs_run')} epochs, "
            f"{num(training.get('fit_time_s', 0), '.1f')} s, "
            f"{training.get('n_train_groups')} train / {training.get('n_val_groups')} val groups",
        ]
    kind = io.detect_format(p)
    if kind == "hdf5" and io.detect_hdf5_kind(p) == "ptychodus-diffraction":
        return ([f"{p}: ptychodus diffraction file (with its product beside it)"]
                + describe_summary(io.read_scan_summary(p, measurement)))
    if kind == "hdf5":
        return io.describe_hdf5(p)
    # the patterns are streamed, never all in memory (issue 17 item 6)
    return [f"{p}: {kind} scan"] + describe_summary(io.read_scan_summary(p, measurement))
