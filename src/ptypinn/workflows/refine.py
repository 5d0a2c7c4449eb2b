"""Refinement by either engine: ptypinn's own (:mod:`ptypinn.refinement`) or pty-chi.

:func:`refine_scan` is what the CLI (``--refine N [--refine-engine ptychi]``) and the comparison
arms call.  It lives in ``workflows`` because the pty-chi engine is a baseline family, which the
core refinement module may not import.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from ptypinn.baselines.ptychi import ptychi_available, reconstruct_ptychi
from ptypinn.config import IterativeConfig, RefineConfig, require
from ptypinn.data import ScanData
from ptypinn.refinement import RefineResult, refine

log = logging.getLogger(__name__)

__all__ = ["refine_scan"]


def refine_scan(scan: ScanData, cfg: RefineConfig, object_init: np.ndarray | None = None,
                probe_init: np.ndarray | None = None,
                iterative: IterativeConfig | None = None,
                progress: bool = False) -> RefineResult:
    """Refine an object (and optionally the probe) with ``cfg.engine``.

    Parameters
    ----------
    scan : ScanData
        Counts ``(n, H, W)``, positions ``(n, 2)``, probe in photon units, bad pixels.
    cfg : RefineConfig
        ``engine="ptypinn"``: :func:`ptypinn.refinement.refine` with this config.
        ``engine="ptychi"``: pty-chi warm-started from ``object_init`` (and ``probe_init``), run
        until its data NLL stops improving: ``cfg.epochs`` at most, checked every
        ``cfg.check_every_epochs`` with ``cfg.convergence_rel_tol``, the probe refined when
        ``cfg.refine_probe``; engine, batch size, noise model and step from ``iterative``.
    object_init : complex ``(Hy, Wx)``, optional
        Start (e.g. a PINN's stitched object); None: ones.
    probe_init : complex ``(H, W)`` or ``(M, H, W)``, optional
        Starting probe in photon units; None: ``scan.probe``.
    iterative : IterativeConfig, optional
        The pty-chi settings of the ``ptychi`` engine (default: ``IterativeConfig()``).
    progress : bool
        A progress bar of the epochs (either engine).

    Returns
    -------
    RefineResult
        For pty-chi: its lowest-NLL state, the scan's positions, its NLL history (epochs,
        cumulative solver seconds, NLL per pixel) and its solver time.

    Raises
    ------
    ValueError
        When ``engine="ptychi"`` and pty-chi is not importable (the reason is in the message),
        or on a start of the wrong shape.
    """
    if cfg.engine == "ptypinn":
        return refine(scan, cfg, object_init=object_init, probe_init=probe_init,
                      progress=progress)
    ok, why = ptychi_available()
    require(ok, "refine.engine", "an importable pty-chi for engine 'ptychi'", why)
    shape = scan.object_shape_px
    obj0 = np.ones(shape, np.complex64) if object_init is None else np.asarray(object_init)
    require(obj0.shape == shape, "object_init", f"shape {shape} (the scan's object frame)",
            obj0.shape)
    probe0 = scan.probe if probe_init is None else np.asarray(probe_init, dtype=np.complex64)
    it = dataclasses.replace(
        iterative or IterativeConfig(), iterations=cfg.epochs, until_converged=True,
        check_every_epochs=cfg.check_every_epochs, convergence_rel_tol=cfg.convergence_rel_tol,
        optimize_probe=cfg.refine_probe, seed=cfg.seed,
        device="cuda" if cfg.device.startswith("cuda") else cfg.device)
    if cfg.epochs == 0:
        return RefineResult(object=obj0.astype(np.complex64), probe=probe0,
                            positions_px=np.asarray(scan.positions_px, np.float64))
    res = reconstruct_ptychi(scan.replace(object_guess=obj0.astype(np.complex64), probe=probe0),
                             it, progress=progress)
    log.info("refine (pty-chi %s): %d epochs (%s), %.2f s, data NLL %.6g per pixel",
             it.algorithm, res.iterations, res.stop_reason, res.wall_time_s, res.nll_per_pixel)
    return RefineResult(object=res.object, probe=res.probe,
                        positions_px=np.asarray(scan.positions_px, np.float64),
                        nll_history=list(res.nll_history), epochs=res.iterations,
                        wall_time_s=res.wall_time_s, stop_reason=res.stop_reason,
                        nll_check_time_s=res.nll_check_time_s)
