"""Writing results to disk with their previews: a reconstruction (arrays, PNGs, summary) and a
simulated scan (NPZ plus a PNG preview).

Used by ``ptypinn simulate``, ``infer``, ``reconstruct`` and the demo; the network package
itself never touches files.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ptypinn import io
from ptypinn.data import ScanData
from ptypinn.metrics import evaluate
from ptypinn.physics import data_nll
from ptypinn.pinn.infer import Reconstruction
from ptypinn.refinement import RefineResult

__all__ = ["write_outputs", "refine_summary", "write_scan_with_preview"]


def refine_summary(res: RefineResult) -> dict[str, Any]:
    """JSON-friendly record of a refinement (epochs, stop reason, times, NLL history; a
    non-finite NLL is written as null)."""
    fin = lambda v: float(v) if math.isfinite(v) else None  # noqa: E731
    return {"epochs": res.epochs, "stop_reason": res.stop_reason,
            "wall_time_s": res.wall_time_s, "nll_check_time_s": res.nll_check_time_s,
            "nll_per_pixel": fin(res.nll_per_pixel),
            "nll_history": [{"epoch": e, "wall_time_s": t, "nll_per_pixel": fin(v)}
                            for e, t, v in res.nll_history]}


def write_outputs(out_dir: str | Path, recon: Reconstruction, scan: ScanData,
                  extra: dict[str, Any] | None = None,
                  refined: RefineResult | None = None) -> dict[str, Any]:
    """Write ``reconstruction.npz``, ``reconstruction.png`` and ``summary.json``; return the summary.

    With ground truth in ``scan`` the summary holds ``metrics`` (``metrics.evaluate`` over the
    covered region).  With ``refined`` (a refinement started from ``recon``'s object) the
    refined object is the output: ``reconstruction.npz`` holds it as ``object`` (with the
    refined ``probe`` and ``positions_px``) and the network's as ``object_pinn``;
    ``reconstruction_pinn.png`` previews the network's; the summary's ``nll_per_pixel_mean``
    and ``metrics`` are the refined object's, ``nll_per_pixel_pinn`` and ``metrics_pinn`` the
    network's, and ``refine`` records the refinement (:func:`refine_summary`).
    """
    from ptypinn import report  # matplotlib: imported only when figures are drawn

    out = Path(out_dir)
    obj, nll, positions = recon.object, recon.nll_per_pattern, scan.positions_px
    if refined is not None:
        obj, positions = refined.object, refined.positions_px
        nll = data_nll(obj, scan.replace(probe=refined.probe, positions_px=positions))
    summary: dict[str, Any] = {
        "n_patterns": scan.n_patterns,
        "object_shape_px": list(recon.object.shape),
        "frame": "object pixels of the scan's positions_px (window centres, columns y, x)",
        "crop_px": recon.crop_px,
        "wall_time_s": recon.wall_time_s,
        "patterns_per_s": recon.patterns_per_s,
        "nll_per_pixel_mean": float(np.mean(nll)),
        "phase_sync_offsets_std_rad": float(np.std(recon.phase_offsets_rad)),
        "phase_sync_applied": recon.phase_sync_applied,
        "nll_per_pixel_without_sync": recon.nll_without_sync,
        **(extra or {}),
    }
    arrays = {"object": obj, "covered": recon.covered, "positions_px": positions,
              "nll_per_pattern": nll, "phase_offsets_rad": recon.phase_offsets_rad}
    if refined is not None:
        summary["nll_per_pixel_pinn"] = float(np.mean(recon.nll_per_pattern))
        summary["refine"] = refine_summary(refined)
        arrays.update(object_pinn=recon.object, probe=refined.probe,
                      nll_per_pattern_pinn=recon.nll_per_pattern)
    if scan.object_true is not None:
        summary["metrics"] = evaluate(obj, scan.object_true, mask=recon.covered)
        if refined is not None:
            summary["metrics_pinn"] = evaluate(recon.object, scan.object_true,
                                               mask=recon.covered)
    io.save_npz(out / "reconstruction.npz", arrays)
    io.write_bytes(out / "reconstruction.png", report.complex_image_png(
        np.where(recon.covered, obj, 0), "refined reconstruction" if refined else
        "reconstruction"))
    if refined is not None:
        io.write_bytes(out / "reconstruction_pinn.png", report.complex_image_png(
            np.where(recon.covered, recon.object, 0), "network reconstruction"))
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
