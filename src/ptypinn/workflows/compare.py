"""Run any subset of {PINN, Baseline, PtyChi} on one test scan and write the comparison (SPEC §8).

Two steps, so arms can also be produced elsewhere (or built by hand in tests):

1. :func:`run_arms` reconstructs the scan with each requested arm -- a PINN bundle, a supervised
   baseline bundle (both through :func:`ptypinn.pinn.infer.reconstruct`) and pty-chi
   (:func:`ptypinn.baselines.ptychi.reconstruct_ptychi`, same probe and positions) -- one after the
   other on the same machine, and times each.
2. :func:`compare` scores them and writes, into one directory::

       metrics.csv      long format: model, quantity, metric, value
       metrics.json     the summary returned by compare (JSON)
       comparison.png   amplitude / phase rows x (ground truth, arm, arm, ...) columns
       frc.csv          model, spatial_frequency (cycles/px), frc, threshold_half_bit
       frc.png          the FRC curves with the 1/2-bit and 1/7 thresholds
       timings.csv      model, wall_time_s, patterns_per_s, speedup_vs_ptychi, end_to_end_s,
                        end_to_end_patterns_per_s, ratio_vs_ptychi
       arms/LABEL.npz   every arm's reconstruction: object, covered, probe, positions_px,
                        metadata_json (plus LABEL.product.h5, LABEL.cxi, LABEL_*.tif on request)

Scored region: the intersection of all arms' ``covered`` masks, so every arm is judged on the
same pixels.  PtyChi has no patch crop; its ``covered`` mask is the region a network arm with the
same crop covers (:func:`ptypinn.stitch.footprint_mask`: the stitcher run on all-ones patches),
so the three arms are scored on identical pixels whichever subset runs.

With ground truth (simulation) each arm is scored against it with :func:`ptypinn.metrics.evaluate`
(registration, global-phase removal, amplitude/phase metrics, FRC) and its FRC curve vs the truth
is kept.  Without ground truth (measured data) the arms are compared with each other: for each
pair ``A vs B`` (A earlier in the list), B is registered onto A and ``evaluate(B, A)`` gives the
agreement (SSIM, Pearson, ... of amplitude and phase, FRC between them).  Both cases report each
arm's data Poisson NLL per pixel (minus the saturated model's; about 0.5 for a perfect object at
high counts), the ground-truth-free measure of fit.

Timings are ``wall_time_s`` of each arm's reconstruction (network: inference + stitching; pty-chi:
building and running its task; "PINN+refine": the PINN's inference + stitching plus the
refinement's updates; "refine from flat": the refinement's updates; the refinement's NLL checks
are excluded, as pty-chi's are) and ``speed-up = PtyChi wall time / arm wall time``.
``end_to_end_s`` is the whole call that produced the arm, timed by :func:`run_arms` on the same
machine in the same run (network: :func:`~ptypinn.pinn.infer.reconstruct` with grouping, phase
synchronization and its data-NLL rule; pty-chi: the chosen engine's
:func:`~ptypinn.baselines.ptychi.reconstruct_ptychi`, including its data-NLL measurement;
refinement arms: their ``wall_time_s``), and ``ratio_vs_ptychi`` is the arm's end-to-end
patterns/s divided by PtyChi's.
"""

from __future__ import annotations

import csv
import io as _text_io
import logging
import math
import os
import re
import time
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ptypinn import io, stitch
from ptypinn.baselines.ptychi import ptychi_available, reconstruct_ptychi
from ptypinn.config import ARM_LABELS, InferConfig, IterativeConfig, RefineConfig, require
from ptypinn.data import ScanData, to_photon_units
from ptypinn.physics import data_nll
from ptypinn.pinn.bundle import Bundle, load_bundle
from ptypinn.pinn.infer import prepare_scan, reconstruct
from ptypinn.metrics import align, evaluate, frc_interior, metrics_long_rows
from ptypinn.refinement import RefineResult
from ptypinn.workflows.outputs import file_metadata, refine_summary, write_result_files
from ptypinn.workflows.refine import refine_scan


__all__ = ["ArmResult", "REFINE_ARM_LABELS", "footprint_mask", "run_arms", "refine_arms",
           "arm_file_stem", "write_arms", "compare", "summary_table"]

TIMING_COLUMNS = ("wall_time_s", "patterns_per_s", "speedup_vs_ptychi", "end_to_end_s",
                  "end_to_end_patterns_per_s", "ratio_vs_ptychi")
"""Columns of ``timings.csv`` after ``model`` (see the module docstring)."""

log = logging.getLogger(__name__)

REFINE_ARM_LABELS = {k: ARM_LABELS[k] for k in ("pinn_refine", "refine_flat")}
"""Labels of the refinement arms (:func:`run_arms` with ``refine``, :func:`refine_arms`)."""


@dataclass(frozen=True)
class ArmResult:
    """One arm's reconstruction of a scan.

    Attributes
    ----------
    name : str
        Label in the tables and figures (``PINN``, ``Baseline``, ``PtyChi``, ...).
    object : complex64 ``(Hy, Wx)``
        Reconstruction in the scan's object frame (``scan.object_shape_px``).
    covered : bool ``(Hy, Wx)``
        Pixels the arm reconstructed.
    wall_time_s : float
        Reconstruction time in seconds.
    patterns_per_s : float
        ``n_patterns / wall_time_s``.
    nll_per_pixel : float
        Mean over patterns of the data Poisson NLL per pixel minus the saturated model's
        (:func:`ptypinn.physics.data_nll`).
    details : dict
        JSON-friendly extras (bundle path, pty-chi algorithm and iterations, ...).
    probe : complex ``(H, W)`` or ``(modes, H, W)``, optional
        The arm's probe when it refined one; None: the scan's.
    positions_px : float ``(n, 2)``, optional
        The arm's positions when it refined them; None: the scan's.
    loss : list of (int, float)
        ``(epoch, value)`` loss or data-NLL history (for the product file); may be empty.
    end_to_end_s : float, optional
        The whole call that produced the arm (see the module docstring); None: ``wall_time_s``.
    """

    name: str
    object: np.ndarray
    covered: np.ndarray
    wall_time_s: float
    patterns_per_s: float
    nll_per_pixel: float
    details: dict[str, Any] = field(default_factory=dict)
    probe: np.ndarray | None = None
    positions_px: np.ndarray | None = None
    loss: list[tuple[int, float]] = field(default_factory=list)
    end_to_end_s: float | None = None


# ------------------------------------------------------------------------------------------------
# running the arms


def footprint_mask(scan: ScanData, crop_px: int | None = None) -> np.ndarray:
    """Pixels covered by the scan's (cropped) probe windows, as a network arm's ``covered``
    (:func:`ptypinn.stitch.footprint_mask` with the network arms' crop, by default
    :func:`ptypinn.stitch.default_crop_px` of the scan's probe)."""
    return stitch.footprint_mask(scan.positions_px, scan.pattern_size, scan.object_shape_px,
                                 crop_px or stitch.default_crop_px(scan.probe))


def _network(source: str | os.PathLike | Bundle, kind: str) -> tuple[str, Bundle]:
    """``(where it came from, bundle)`` of a bundle given in memory or as a directory."""
    if isinstance(source, Bundle):
        where, bundle = "in memory", source
    else:
        where, bundle = str(source), load_bundle(source)
    got = bundle.config.model.kind
    if got != kind:
        raise ValueError(f"{kind}: expected a bundle with model.kind '{kind}', got '{got}' "
                         f"({where})")
    return where, bundle


def run_arms(scan: ScanData, pinn: str | os.PathLike | Bundle | None = None,
             baseline: str | os.PathLike | Bundle | None = None,
             ptychi: IterativeConfig | Sequence[IterativeConfig] | None = None,
             infer_cfg: InferConfig = InferConfig(),
             refine: RefineConfig | None = None, progress: bool = False) -> list[ArmResult]:
    """Reconstruct ``scan`` with each requested arm, in the order PINN, Baseline, PtyChi,
    PINN+refine, refine from flat.

    Every input is checked (bundles loaded, kinds matched, pty-chi importable) before anything
    runs.

    Parameters
    ----------
    scan : ScanData
        The test scan.  A probe that is not in photon units is brought there first, by the rule
        every command uses (:func:`ptypinn.pinn.infer.prepare_scan` with the first bundle, else
        :func:`ptypinn.data.to_photon_units`), so every arm sees the same probe; a bundle whose
        training beam or flux differs from the scan's is then warned about.
    pinn, baseline : Bundle or path, optional
        Bundles (in memory, or bundle/run directories) whose ``model.kind`` is ``pinn`` /
        ``baseline``.
    ptychi : IterativeConfig or sequence of them, optional
        Run pty-chi with these settings (the ``iterative`` config section).  With several (e.g.
        ePIE and LSQML), each runs and the one with the lowest data NLL -- a truth-free choice --
        is the ``PtyChi`` arm; ``details['candidates']`` keeps every engine's NLL, epochs and
        time.  With ``optimize_probe`` the data NLL is computed with pty-chi's own refined probe
        (recorded in ``details['probe']``); the network arms keep the scan's probe.
    infer_cfg : InferConfig
        Batch size, crop, precision and device of the network arms; the crop also defines
        pty-chi's covered region.
    refine : RefineConfig, optional
        Also run the refinement (:func:`ptypinn.workflows.refine.refine_scan` with
        ``refine.engine``; for ``ptychi`` with the settings of the pty-chi engine that won,
        else the defaults; ``refine.epochs >= 1``):
        "PINN+refine" from the PINN arm's object (uncovered pixels = 1) when there is a PINN
        arm, and "refine from flat" from ones.  Their ``wall_time_s`` is the refinement's
        update time, plus the PINN's inference time for "PINN+refine"; ``nll_per_pixel`` is
        measured with the refined probe and positions when those were refined; ``details``
        hold the epochs, stop reason and NLL history.
    progress : bool
        Progress bars (stderr) for the network arms' inference and the refinements.

    Returns
    -------
    list of ArmResult

    Raises
    ------
    ValueError
        No arm requested, a bundle of the wrong kind, or pty-chi not usable (with the reason).
    """
    if pinn is None and baseline is None and ptychi is None and refine is None:
        raise ValueError("arms: expected at least one of pinn, baseline, ptychi, refine, got "
                         "none")
    if refine is not None and refine.epochs < 1:
        raise ValueError(f"refine.epochs: expected >= 1 for the refinement arms, got "
                         f"{refine.epochs}")
    networks = [(kind, *_network(source, kind))
                for kind, source in (("pinn", pinn), ("baseline", baseline)) if source is not None]
    if ptychi is not None:
        ok, why = ptychi_available()
        if not ok:
            raise ValueError(f"ptychi: expected an importable pty-chi, got: {why}")

    if not scan.meta.get("probe_calibrated"):  # (the CLI has converted and warned already)
        scan = prepare_scan(networks[0][2], scan) if networks else to_photon_units(scan)
    # what a network arm with this crop covers: the scored region of the iterative arms
    footprint = (footprint_mask(scan, infer_cfg.crop_px)
                 if ptychi is not None or refine is not None else None)
    arms: list[ArmResult] = []
    for kind, where, bundle in networks:
        t0 = time.perf_counter()
        rec = reconstruct(bundle, scan, infer_cfg, progress=progress,
                          allocate=io.scratch_array)
        end_to_end = time.perf_counter() - t0
        arms.append(ArmResult(
            name=ARM_LABELS[kind], object=rec.object, covered=rec.covered,
            wall_time_s=rec.wall_time_s, patterns_per_s=rec.patterns_per_s,
            end_to_end_s=end_to_end,
            nll_per_pixel=float(np.mean(rec.nll_per_pattern)),
            details={"bundle": where, "crop_px": rec.crop_px,
                     "phase_sync_applied": rec.phase_sync_applied,
                     "nll_per_pixel_without_sync": rec.nll_without_sync}))
        log.info("%s: %.2f s (%.0f patterns/s)", ARM_LABELS[kind], rec.wall_time_s,
                 rec.patterns_per_s)
    best_ptychi: IterativeConfig | None = None  # the engine the ptychi refinement engine uses
    if ptychi is not None:
        configs = [ptychi] if isinstance(ptychi, IterativeConfig) else list(ptychi)
        candidates = []
        for it_cfg in configs:
            t0 = time.perf_counter()
            res = reconstruct_ptychi(scan, it_cfg, progress=progress)
            res_end_to_end = time.perf_counter() - t0
            nll = res.nll_per_pixel  # measured by the adapter (with its own probe if refined)
            log.info("PtyChi %s: %d epochs, %.1f s, data NLL/px %.4f", res.algorithm,
                     res.iterations, res.wall_time_s, nll)
            candidates.append((nll, it_cfg, res, res_end_to_end))
        nll, it_cfg, res, end_to_end = min(
            candidates, key=lambda c: c[0] if math.isfinite(c[0]) else math.inf)
        best_ptychi = it_cfg
        wall = res.wall_time_s
        arms.append(ArmResult(
            name=ARM_LABELS["ptychi"], object=res.object, probe=res.probe,
            loss=[(i, float(v)) for i, v in enumerate(res.loss_history)],
            covered=footprint, wall_time_s=wall,
            patterns_per_s=scan.n_patterns / wall if wall > 0 else math.nan,
            nll_per_pixel=nll, end_to_end_s=end_to_end,
            details={"algorithm": res.algorithm, "iterations": res.iterations,
                     "probe": "refined" if it_cfg.optimize_probe else "fixed",
                     "final_loss": res.loss_history[-1] if res.loss_history else None,
                     "stop_reason": res.stop_reason, "nll_history": res.nll_history,
                     "candidates": {c[2].algorithm: {"nll_per_pixel": c[0],
                                                     "iterations": c[2].iterations,
                                                     "wall_time_s": c[2].wall_time_s,
                                                     "stop_reason": c[2].stop_reason}
                                    for c in candidates}}))
    if refine is not None:
        pinn_arm = next((a for a in arms if a.name == ARM_LABELS["pinn"]), None)
        arms += refine_arms(scan, refine, pinn_arm, flat=True, covered=footprint,
                            iterative=best_ptychi, progress=progress)
    return arms


def refine_arms(scan: ScanData, refine: RefineConfig, pinn_arm: ArmResult | None = None,
                flat: bool = True, covered: np.ndarray | None = None,
                crop_px: int | None = None,
                iterative: IterativeConfig | None = None,
                progress: bool = False) -> list[ArmResult]:
    """The refinement arms: "PINN+refine" from ``pinn_arm``'s object (uncovered pixels = 1; its
    time is added) when given, and "refine from flat" from ones when ``flat``.

    Parameters
    ----------
    scan : ScanData
    refine : RefineConfig
        ``epochs >= 1``.
    pinn_arm : ArmResult, optional
        The PINN arm to start from.
    flat : bool
        Also refine from a flat object.
    covered : bool ``(Hy, Wx)``, optional
        Scored region of "refine from flat" (default: :func:`footprint_mask` with ``crop_px``);
        "PINN+refine" keeps the PINN arm's.
    iterative : IterativeConfig, optional
        pty-chi's settings when ``refine.engine`` is ``"ptychi"``.
    progress : bool
        A progress bar (stderr) of each refinement's epochs (own engine).

    Returns
    -------
    list of ArmResult, in the order PINN+refine, refine from flat.
    """
    require(refine.epochs >= 1, "refine.epochs", ">= 1 for the refinement arms", refine.epochs)
    if covered is None:
        covered = footprint_mask(scan, crop_px)
    starts = ([] if pinn_arm is None else [("pinn_refine", pinn_arm)])
    if flat:
        starts.append(("refine_flat", None))
    out = []
    for key, base in starts:
        res = refine_scan(scan, refine, object_init=None if base is None else base.object,
                          iterative=iterative, progress=progress)
        out.append(_refine_arm(scan, REFINE_ARM_LABELS[key], res, base, refine, covered))
    return out


def _refine_arm(scan: ScanData, name: str, res: RefineResult, base: ArmResult | None,
                cfg: RefineConfig, covered: np.ndarray) -> ArmResult:
    """An arm from a refinement; ``base`` is the arm it started from (its time is added)."""
    wall = res.wall_time_s + (base.wall_time_s if base is not None else 0.0)
    log.info("%s: %d epochs (%s), %.2f s%s, data NLL/px %.4f", name, res.epochs,
             res.stop_reason, wall, f" (incl. {base.name} {base.wall_time_s:.2f} s)"
             if base is not None else "", res.nll_per_pixel)
    details = {**refine_summary(res), "refine_wall_time_s": res.wall_time_s,
               "start": base.name if base is not None else "flat (ones)",
               "start_wall_time_s": base.wall_time_s if base is not None else 0.0,
               "engine": cfg.engine, "optimizer": cfg.optimizer, "step": cfg.step,
               "probe": "refined" if cfg.refine_probe else "fixed",
               "positions": "refined" if cfg.refine_positions else "fixed"}
    details["wall_time_s"] = wall
    return ArmResult(name=name, object=res.object, probe=res.probe,
                     positions_px=res.positions_px,
                     loss=[(e, v) for e, _, v in res.nll_history],
                     covered=base.covered if base is not None else covered, wall_time_s=wall,
                     patterns_per_s=scan.n_patterns / wall if wall > 0 else math.nan,
                     nll_per_pixel=res.nll_per_pixel, details=details)


# ------------------------------------------------------------------------------------------------
# scoring and writing


def _check_arms(scan: ScanData, arms: list[ArmResult]) -> np.ndarray:
    """Validate the arms against the scan; return the common covered mask."""
    if not arms:
        raise ValueError("arms: expected at least one ArmResult, got none")
    names = [a.name for a in arms]
    if len(set(names)) != len(names):
        raise ValueError(f"arms: expected unique names, got {names}")
    shape = scan.object_shape_px
    common = np.ones(shape, dtype=bool)
    for a in arms:
        for what, arr in (("object", a.object), ("covered", a.covered)):
            if np.shape(arr) != shape:
                raise ValueError(f"{a.name}.{what}: expected shape {shape} (the scan's object "
                                 f"frame), got {np.shape(arr)}")
        common &= np.asarray(a.covered, dtype=bool)
    if not common.any():
        raise ValueError(f"covered: expected pixels covered by every arm ({names}), got none")
    return common


def _cell(v: Any) -> str:
    """CSV cell: empty for None, shortest round-tripping text for floats."""
    if v is None:
        return ""
    return repr(float(v)) if isinstance(v, float) else str(v)


def _csv(header: list[str], rows: list[dict[str, Any]]) -> str:
    buf = _text_io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        w.writerow([_cell(r[k]) for k in header])
    return buf.getvalue()


def _finite(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def arm_file_stem(name: str) -> str:
    """File-name stem of an arm label: ``"PINN+refine"`` -> ``"PINN_refine"``,
    ``"refine from flat"`` -> ``"refine_from_flat"``."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", name).strip("_") or "arm"


def write_arms(scan: ScanData, arms: Sequence[ArmResult], out_dir: str | os.PathLike,
               formats: Sequence[str] = ("npz",),
               provenance: dict[str, Any] | None = None) -> list[str]:
    """Write every arm's reconstruction into ``out_dir/arms/`` (always NPZ, plus ``formats``);
    return the paths written, relative to ``out_dir``.

    Each file holds the arm's object, covered region, probe and positions (its own when it
    refined them, the scan's otherwise) and the metadata of
    :func:`ptypinn.workflows.outputs.file_metadata` with the arm's name and details.
    """
    stems = [arm_file_stem(a.name) for a in arms]
    if len(set(stems)) != len(stems):
        raise ValueError(f"arms: expected names that give distinct file names, got "
                         f"{[a.name for a in arms]}")
    formats = tuple(dict.fromkeys(("npz", *formats)))
    files: list[str] = []
    for a, stem in zip(arms, stems):
        probe = scan.probe if a.probe is None else a.probe
        positions = scan.positions_px if a.positions_px is None else a.positions_px
        meta = file_metadata(scan, provenance, {"arm": a.name, "details": a.details,
                                                "nll_per_pixel": _finite(a.nll_per_pixel)})
        files += write_result_files(out_dir, f"arms/{stem}", scan, a.object, a.covered, probe,
                                    positions, formats, metadata=meta, loss=a.loss)
    return files


def compare(scan: ScanData, arms: list[ArmResult], out_dir: str | os.PathLike,
            formats: Sequence[str] = ("npz",),
            provenance: dict[str, Any] | None = None) -> dict[str, Any]:
    """Score the arms on ``scan`` and write the comparison files into ``out_dir``.

    Parameters
    ----------
    scan : ScanData
        The scan all arms reconstructed (``object_true`` decides: scoring vs ground truth, or
        agreement between arms).
    arms : list of ArmResult
        Objects in the scan's object frame; names unique.
    out_dir : path
    formats : names from :data:`ptypinn.workflows.outputs.OUTPUT_FORMATS`
        Formats of each arm's reconstruction under ``arms/`` (:func:`write_arms`; NPZ always).
    provenance : dict, optional
        :func:`ptypinn.provenance.run_provenance`'s record, kept in ``metrics.json`` and in every
        arm file.

    Returns
    -------
    dict
        JSON-friendly summary (also written as ``metrics.json``): ``ground_truth``,
        ``scored_pixels``, ``arms`` (per arm: timings, ``speedup_vs_ptychi``, ``nll_per_pixel``,
        ``details`` and, with truth, ``metrics``), ``agreement`` (without truth:
        ``{"A vs B": metrics}``), ``truth_nll_per_pixel`` (with truth), ``frc_units``, ``files``.
    """
    from ptypinn import report  # matplotlib: imported only when figures are drawn

    out = Path(out_dir)
    common = _check_arms(scan, arms)
    truth = scan.object_true
    ptychi = next((a for a in arms if a.name == ARM_LABELS["ptychi"]), None)
    rows: list[dict[str, Any]] = []
    curves: dict[str, dict[str, Any]] = {}
    shown: dict[str, np.ndarray] = {}
    summary: dict[str, Any] = {
        "n_patterns": scan.n_patterns,
        "object_shape_px": list(scan.object_shape_px),
        "ground_truth": truth is not None,
        "scored_pixels": int(common.sum()),
        "scored_region": "pixels covered by every arm",
        "arms": {},
        "frc_units": "cycles/px",
    }
    if scan.meta.get("object_pixel_size_m"):
        summary["object_pixel_size_m"] = float(scan.meta["object_pixel_size_m"])
    def end_to_end(a: ArmResult) -> float:
        return float(a.wall_time_s if a.end_to_end_s is None else a.end_to_end_s)

    for a in arms:
        speedup = (ptychi.wall_time_s / a.wall_time_s
                   if ptychi is not None and a.wall_time_s > 0 else None)
        e2e = end_to_end(a)
        ratio = (end_to_end(ptychi) / e2e if ptychi is not None and e2e > 0 else None)
        summary["arms"][a.name] = {
            "wall_time_s": float(a.wall_time_s), "patterns_per_s": _finite(a.patterns_per_s),
            "speedup_vs_ptychi": _finite(speedup), "end_to_end_s": e2e,
            "end_to_end_patterns_per_s": _finite(scan.n_patterns / e2e if e2e > 0 else None),
            "ratio_vs_ptychi": _finite(ratio), "nll_per_pixel": _finite(a.nll_per_pixel),
            "details": dict(a.details)}

    if truth is not None:
        summary["truth_nll_per_pixel"] = float(np.mean(data_nll(truth, scan)))
        for a in arms:
            m = evaluate(a.object, truth, mask=common)
            summary["arms"][a.name]["metrics"] = m
            rows += metrics_long_rows(a.name, m)
            pair = align(a.object, truth, mask=common)
            shown[a.name] = pair.recon
            curve = frc_interior(pair.recon, pair.truth, pair.mask)
            if curve is not None:
                curves[a.name] = curve
    else:
        summary["agreement"] = {}
        ref = arms[0]
        shown[ref.name] = ref.object
        for a, b in combinations(arms, 2):
            label = f"{a.name} vs {b.name}"
            m = evaluate(b.object, a.object, mask=common)
            summary["agreement"][label] = m
            rows += metrics_long_rows(label, m)
            pair = align(b.object, a.object, mask=common)
            curve = frc_interior(pair.recon, pair.truth, pair.mask)
            if curve is not None:
                curves[label] = curve
            if a is ref:  # every other arm registered onto the first one for the figure
                shown[b.name] = pair.recon
    for a in arms:
        rows.append({"model": a.name, "quantity": "data", "metric": "nll_per_pixel",
                     "value": _finite(a.nll_per_pixel)})

    frc_rows = [{"model": label, "spatial_frequency": float(f), "frc": _finite(float(v)),
                 "threshold_half_bit": float(t)}
                for label, c in curves.items()
                for f, v, t in zip(c["spatial_frequency"], c["frc"], c["threshold_half_bit"])]
    timing_rows = [{"model": a.name, **{k: summary["arms"][a.name][k] for k in TIMING_COLUMNS}}
                   for a in arms]
    title = (f"{scan.n_patterns} patterns, scored on {int(common.sum())} px covered by all arms"
             + ("" if truth is not None else f" (no ground truth; aligned to {arms[0].name})"))
    files = ["metrics.csv", "metrics.json", "comparison.png", "frc.csv", "frc.png", "timings.csv"]
    files += write_arms(scan, arms, out, formats, provenance)
    summary["files"] = files
    summary["provenance"] = provenance
    io.write_text(out / "metrics.csv", _csv(["model", "quantity", "metric", "value"], rows))
    io.write_text(out / "frc.csv", _csv(["model", "spatial_frequency", "frc",
                                         "threshold_half_bit"], frc_rows))
    io.write_text(out / "timings.csv", _csv(["model", *TIMING_COLUMNS], timing_rows))
    io.write_bytes(out / "comparison.png", report.comparison_png(truth, shown, common, title))
    if curves:
        io.write_bytes(out / "frc.png", report.frc_png(
            curves, "FRC vs ground truth" if truth is not None else "FRC between arms"))
    else:
        files.remove("frc.png")
        log.warning("scored region too small for an FRC curve; frc.png not written")
    io.write_json(out / "metrics.json", summary)
    log.info("comparison of %s written to %s", ", ".join(a.name for a in arms), out)
    return summary


# ------------------------------------------------------------------------------------------------
# console


def _fmt(v: Any, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def summary_table(summary: dict[str, Any]) -> str:
    """A few readable lines of :func:`compare`'s summary for the console (per arm: time,
    patterns/s, speed-up, end-to-end patterns/s and its ratio to PtyChi's, data NLL, scores)."""
    lines = [f"{'model':<16} {'time (s)':>9} {'patt/s':>8} {'speed-up':>9} {'e2e patt/s':>10} "
             f"{'vs PtyChi':>9} {'NLL/px':>7}"
             + ("  amp SSIM  amp r  phase SSIM  phase r  FRC1/2 (px)"
                if summary["ground_truth"] else "")]
    for name, a in summary["arms"].items():
        su, ratio = a["speedup_vs_ptychi"], a.get("ratio_vs_ptychi")
        line = (f"{name:<16} {a['wall_time_s']:>9.3g} {_fmt(a['patterns_per_s'], '.0f'):>8} "
                f"{(_fmt(su, '.1f') + 'x') if su is not None else '-':>9} "
                f"{_fmt(a.get('end_to_end_patterns_per_s'), '.1f'):>10} "
                f"{(_fmt(ratio, '.2f') + 'x') if ratio is not None else '-':>9} "
                f"{_fmt(a['nll_per_pixel']):>7}")
        m = a.get("metrics")
        if m:
            line += (f"  {_fmt(m['amplitude']['ssim']):>8}  {_fmt(m['amplitude']['pearson']):>5}"
                     f"  {_fmt(m['phase']['ssim']):>10}  {_fmt(m['phase']['pearson']):>7}"
                     f"  {_fmt(m['complex']['frc_half_bit_px'], '.2f'):>11}")
        lines.append(line)
    if summary["ground_truth"]:
        lines.append(f"ground truth NLL/px: {summary['truth_nll_per_pixel']:.3f}")
    for name, a in summary["arms"].items():
        cands = a["details"].get("candidates")
        if cands:
            lines.append(f"{name}: best engine by data NLL: {a['details']['algorithm']} ("
                         + "; ".join(f"{e} {c['iterations']} epochs {c['wall_time_s']:.1f} s "
                                     f"NLL/px {_fmt(c['nll_per_pixel'])}"
                                     for e, c in cands.items()) + ")")
    for label, m in summary.get("agreement", {}).items():
        lines.append(f"{label}: amplitude SSIM {_fmt(m['amplitude']['ssim'])} r "
                     f"{_fmt(m['amplitude']['pearson'])}; phase SSIM {_fmt(m['phase']['ssim'])} r "
                     f"{_fmt(m['phase']['pearson'])}; FRC 1/2-bit period "
                     f"{_fmt(m['complex']['frc_half_bit_px'], '.2f')} px")
    lines.append(f"scored on {summary['scored_pixels']} px covered by every arm")
    return "\n".join(lines)
