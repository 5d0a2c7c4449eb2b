"""Writing results to disk with their previews: a reconstruction (arrays in the requested
formats, PNGs, summary) and a simulated scan (NPZ plus a PNG preview).

Used by ``ptypinn simulate``, ``infer``, ``reconstruct``, ``compare`` and the demo; the network
package itself never touches files.  The output formats (:data:`OUTPUT_FORMATS`, ``--format``):

``npz``      ``STEM.npz``: object, covered, probe, positions_px, ... and ``metadata_json``.
``product``  ``STEM.product.h5``: a ptychodus product file (:func:`ptypinn.io.write_product`).
``cxi``      ``STEM.cxi``: the scan with the reconstruction as a CXI image
             (:func:`ptypinn.io.write_cxi`).
``tiff``     ``STEM_amplitude.tif`` and ``STEM_phase.tif``: 32-bit float images (NaN outside the
             reconstructed region) with the metadata as JSON in the description.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ptypinn import io
from ptypinn.data import ScanData
from ptypinn.io.hdf5 import wavelength_m
from ptypinn.metrics import evaluate
from ptypinn.physics import data_nll
from ptypinn.pinn.infer import Reconstruction
from ptypinn.refinement import RefineResult

__all__ = ["OUTPUT_FORMATS", "parse_formats", "check_formats", "object_pixel_size_m",
           "file_metadata", "write_result_files", "write_outputs", "refine_summary",
           "write_scan_with_preview"]

OUTPUT_FORMATS: tuple[str, ...] = ("npz", "product", "cxi", "tiff")
"""Formats a reconstruction can be written in (``--format``; see the module docstring)."""

CXI_GEOMETRY = ("photon_energy_eV", "detector_distance_m", "detector_pixel_size_m")


def parse_formats(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"npz,tiff"`` (or a sequence of names) -> ``("npz", "tiff")``, checked against
    :data:`OUTPUT_FORMATS`, duplicates removed, order kept.

    Raises
    ------
    ValueError
        An empty list or an unknown format.
    """
    items = text.split(",") if isinstance(text, str) else list(text)
    out = tuple(dict.fromkeys(str(i).strip().lower() for i in items if str(i).strip()))
    bad = [f for f in out if f not in OUTPUT_FORMATS]
    if not out or bad:
        raise ValueError(f"--format: expected a comma-separated list of "
                         f"{', '.join(OUTPUT_FORMATS)}, got {text!r}")
    return out


def object_pixel_size_m(scan: ScanData) -> float | None:
    """The scan's object pixel size in metres: ``meta['object_pixel_size_m']``, else
    ``wavelength * distance / (N * detector_pixel_size)`` from the meta's geometry, else None
    (simulated scans have no physical scale)."""
    meta = scan.meta
    ps = meta.get("object_pixel_size_m")
    if ps:
        return float(ps)
    if all(meta.get(k) for k in CXI_GEOMETRY):
        return (wavelength_m(float(meta["photon_energy_eV"])) * float(meta["detector_distance_m"])
                / (scan.pattern_size * float(meta["detector_pixel_size_m"])))
    return None


def check_formats(formats: Sequence[str], scan: ScanData) -> None:
    """Raise a one-line ``ValueError`` when ``scan`` lacks what a requested format needs (so a
    command fails before it computes): ``product`` needs the object pixel size, ``cxi`` the
    photon energy, detector distance and detector pixel size (``scan.meta``)."""
    if "product" in formats and object_pixel_size_m(scan) is None:
        raise ValueError("--format product: expected the scan's object pixel size "
                         "(meta object_pixel_size_m, or photon_energy_eV, detector_distance_m and "
                         "detector_pixel_size_m), got none (a simulated scan has no physical "
                         "scale; use npz or tiff)")
    missing = [k for k in CXI_GEOMETRY if not scan.meta.get(k)]
    if "cxi" in formats and missing:
        raise ValueError(f"--format cxi: expected the scan's {', '.join(missing)} (CXI stores SI "
                         "geometry), got none (use npz, product or tiff)")


def file_metadata(scan: ScanData, provenance: dict[str, Any] | None,
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The metadata stored in every output file: ``provenance`` (the run's, see
    :func:`ptypinn.provenance.run_provenance`), ``source`` (the scan's own provenance), the
    frame and the object pixel size (m, None when unknown), plus ``extra``."""
    return {"provenance": provenance,
            "source": scan.meta.get("provenance"),
            "frame": "object pixels of the scan's positions_px (window centres, columns y, x)",
            "object_pixel_size_m": object_pixel_size_m(scan),
            **(extra or {})}


def write_result_files(out_dir: str | Path, stem: str, scan: ScanData, obj: np.ndarray,
                       covered: np.ndarray, probe: np.ndarray, positions_px: np.ndarray,
                       formats: Sequence[str] = ("npz",),
                       arrays: dict[str, Any] | None = None,
                       metadata: dict[str, Any] | None = None,
                       loss: Sequence[tuple[int, float]] = ()) -> list[str]:
    """Write one reconstruction in each of ``formats``; return the file names written.

    Parameters
    ----------
    out_dir : directory
    stem : file name stem (``reconstruction``, ``arms/PINN``, ...)
    scan : ScanData
        The reconstructed scan (geometry, frames for CXI, meta).
    obj : complex ``(Hy, Wx)``
        Object in the scan's frame.
    covered : bool ``(Hy, Wx)``
        Reconstructed pixels (TIFF pixels outside are NaN).
    probe : complex ``(H, W)`` or ``(modes, H, W)``
        The probe of this reconstruction, in photon units.
    positions_px : float ``(n, 2)``
        Window centres ``(y, x)`` of this reconstruction.
    formats : names from :data:`OUTPUT_FORMATS`
    arrays : dict, optional
        Further arrays of the NPZ.
    metadata : dict, optional
        JSON-friendly metadata (provenance) stored in every file.
    loss : sequence of (epoch, value)
        Loss history for the product file.
    """
    out = Path(out_dir)
    metadata = dict(metadata or {})
    written: list[str] = []
    if "npz" in formats:
        io.save_npz(out / f"{stem}.npz", {
            "object": obj, "covered": covered, "probe": probe, "positions_px": positions_px,
            **(arrays or {}),
            "metadata_json": np.array(json.dumps(metadata, default=io.json_default))})
        written.append(f"{stem}.npz")
    if "product" in formats:
        ps = object_pixel_size_m(scan)
        if ps is None:
            check_formats(["product"], scan)
        io.write_product(out / f"{stem}.product.h5", io.Product(
            positions_px=positions_px, probe=probe, object=obj, object_pixel_size_m=ps,
            photon_energy_eV=scan.meta.get("photon_energy_eV") or None,
            detector_distance_m=scan.meta.get("detector_distance_m") or None,
            loss_history=[v for _, v in loss], loss_epochs=[e for e, _ in loss],
            name=Path(stem).name, metadata=metadata))
        written.append(f"{stem}.product.h5")
    if "cxi" in formats:
        check_formats(["cxi"], scan)
        # the object fixes the frame (refined positions would otherwise define another one);
        # stored as the guess, a reader of the CXI can start from it
        framed = scan.replace(probe=probe, positions_px=positions_px,
                              **({} if scan.object_true is not None else {"object_guess": obj}))
        io.write_cxi(out / f"{stem}.cxi", framed, image=obj, metadata=metadata)
        written.append(f"{stem}.cxi")
    if "tiff" in formats:
        mask = np.asarray(covered, dtype=bool)
        for quantity, values, unit in (("amplitude", np.abs(obj), "transmission"),
                                       ("phase", np.angle(obj), "rad")):
            name = f"{stem}_{quantity}.tif"
            io.write_tiff(out / name, np.where(mask, values, np.nan),
                          {**metadata, "quantity": quantity, "unit": unit,
                           "outside_covered": "NaN"}, pixel_size_m=object_pixel_size_m(scan))
            written.append(name)
    return written


def refine_summary(res: RefineResult) -> dict[str, Any]:
    """JSON-friendly record of a refinement (epochs, stop reason, L-BFGS iterations, times, NLL
    history; a non-finite NLL is written as null)."""
    fin = lambda v: float(v) if math.isfinite(v) else None  # noqa: E731
    return {"epochs": res.epochs, "stop_reason": res.stop_reason,
            "lbfgs_iterations": res.lbfgs_iterations,
            "wall_time_s": res.wall_time_s, "nll_check_time_s": res.nll_check_time_s,
            "nll_per_pixel": fin(res.nll_per_pixel),
            "nll_history": [{"epoch": e, "wall_time_s": t, "nll_per_pixel": fin(v)}
                            for e, t, v in res.nll_history]}


def write_outputs(out_dir: str | Path, recon: Reconstruction, scan: ScanData,
                  extra: dict[str, Any] | None = None,
                  refined: RefineResult | None = None, formats: Sequence[str] = ("npz",),
                  provenance: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the reconstruction in ``formats`` (default ``reconstruction.npz``; see
    :func:`write_result_files`), ``reconstruction.png`` and ``summary.json``; return the summary.

    With ground truth in ``scan`` the summary holds ``metrics`` (``metrics.evaluate`` over the
    covered region).  With ``refined`` (a refinement started from ``recon``'s object) the
    refined object is the output: ``reconstruction.npz`` holds it as ``object`` (with the
    refined ``probe`` and ``positions_px``) and the network's as ``object_pinn``;
    ``reconstruction_pinn.png`` previews the network's; the summary's ``nll_per_pixel_mean``
    and ``metrics`` are the refined object's, ``nll_per_pixel_pinn`` and ``metrics_pinn`` the
    network's, and ``refine`` records the refinement (:func:`refine_summary`).
    ``provenance`` (:func:`ptypinn.provenance.run_provenance`) goes into the summary and into
    every file's metadata; the summary's ``files`` lists what was written.
    """
    from ptypinn import report  # matplotlib: imported only when figures are drawn

    out = Path(out_dir)
    obj, nll, positions, probe = recon.object, recon.nll_per_pattern, scan.positions_px, scan.probe
    if refined is not None:
        obj, positions, probe = refined.object, refined.positions_px, refined.probe
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
    arrays = {"nll_per_pattern": nll, "phase_offsets_rad": recon.phase_offsets_rad}
    loss: list[tuple[int, float]] = []
    if refined is not None:
        summary["nll_per_pixel_pinn"] = float(np.mean(recon.nll_per_pattern))
        summary["refine"] = refine_summary(refined)
        arrays.update(object_pinn=recon.object, nll_per_pattern_pinn=recon.nll_per_pattern)
        loss = [(e, v) for e, _, v in refined.nll_history]
    if scan.object_true is not None:
        summary["metrics"] = evaluate(obj, scan.object_true, mask=recon.covered)
        if refined is not None:
            summary["metrics_pinn"] = evaluate(recon.object, scan.object_true,
                                               mask=recon.covered)
    summary["provenance"] = provenance
    summary["files"] = write_result_files(
        out, "reconstruction", scan, obj, recon.covered, probe, positions, formats, arrays,
        file_metadata(scan, provenance, {"nll_per_pixel_mean": summary["nll_per_pixel_mean"]}),
        loss)
    io.write_bytes(out / "reconstruction.png", report.complex_image_png(
        np.where(recon.covered, obj, 0), "refined reconstruction" if refined else
        "reconstruction"))
    if refined is not None:
        io.write_bytes(out / "reconstruction_pinn.png", report.complex_image_png(
            np.where(recon.covered, recon.object, 0), "network reconstruction"))
    summary["files"] += ["reconstruction.png"] + (["reconstruction_pinn.png"] if refined else [])
    if scan.object_true is not None:
        io.write_bytes(out / "ground_truth.png", report.complex_image_png(
            np.where(recon.covered, scan.object_true, 0), "ground truth"))
        summary["files"].append("ground_truth.png")
    summary["files"].append("summary.json")
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
