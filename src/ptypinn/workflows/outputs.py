"""Writing results to disk with their previews: a reconstruction (arrays, PNGs, summary) and a
simulated scan (NPZ plus a PNG preview).

Used by ``ptypinn simulate``, ``infer``, ``reconstruct`` and the demo; the network package
itself never touches files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ptypinn import io
from ptypinn.data import ScanData
from ptypinn.metrics import evaluate
from ptypinn.pinn.infer import Reconstruction

__all__ = ["write_outputs", "write_scan_with_preview"]


def write_outputs(out_dir: str | Path, recon: Reconstruction, scan: ScanData,
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``reconstruction.npz``, ``reconstruction.png`` and ``summary.json``; return the summary.

    With ground truth in ``scan`` the summary holds ``metrics`` (``metrics.evaluate`` over the
    covered region).
    """
    from ptypinn import report  # matplotlib: imported only when figures are drawn

    out = Path(out_dir)
    summary: dict[str, Any] = {
        "n_patterns": scan.n_patterns,
        "object_shape_px": list(recon.object.shape),
        "frame": "object pixels of the scan's positions_px (window centres, columns y, x)",
        "crop_px": recon.crop_px,
        "wall_time_s": recon.wall_time_s,
        "patterns_per_s": recon.patterns_per_s,
        "nll_per_pixel_mean": float(np.mean(recon.nll_per_pattern)),
        "phase_sync_offsets_std_rad": float(np.std(recon.phase_offsets_rad)),
        "phase_sync_applied": recon.phase_sync_applied,
        "nll_per_pixel_without_sync": recon.nll_without_sync,
        **(extra or {}),
    }
    if scan.object_true is not None:
        summary["metrics"] = evaluate(recon.object, scan.object_true, mask=recon.covered)
    io.save_npz(out / "reconstruction.npz", {
        "object": recon.object, "covered": recon.covered, "positions_px": scan.positions_px,
        "nll_per_pattern": recon.nll_per_pattern, "phase_offsets_rad": recon.phase_offsets_rad,
    })
    shown = np.where(recon.covered, recon.object, 0)
    io.write_bytes(out / "reconstruction.png", report.complex_image_png(shown, "reconstruction"))
    if scan.object_true is not None:
        io.write_bytes(out / "ground_truth.png", report.complex_image_png(
            np.where(recon.covered, scan.object_true, 0), "ground truth"))
    io.write_json(out / "summary.json", summary)
    return summary


def write_scan_with_preview(path: str | Path, scan: ScanData) -> Path:
    """Write ``scan`` as canonical NPZ at ``path`` and its PNG preview beside it; return the
    preview's path."""
    from ptypinn import report  # matplotlib: imported only when figures are drawn

    path = Path(path)
    io.write_scan(path, scan)
    preview = path.with_suffix(".png")
    io.write_bytes(preview, report.scan_preview_png(scan))
    return preview
