"""Parameter studies (SPEC §9): study configuration, cell planning and (resumable) running.

Kinds: dose, overlap, generalization, probe; config-driven.

A study config is a YAML mapping with a ``study:`` section plus the usual run sections
(``simulation``, ``grouping``, ``model``, ``train``, ``infer``), which form the *base* config::

    study:
      kind: dose                       # dose | overlap | generalization | probe
      values: [1.0e4, 1.0e6, 1.0e9]    # photons/pattern | scan step (px) | n training patterns
      arms: [pinn, baseline, ptychi]   # any subset (ptychi skipped, with the reason, if absent);
                                       # also pinn_refine, refine_flat (refine section, refine_epochs)
      seeds: [0]                       # repeated trials: curves show mean +- std over seeds
      ptychi_iterations: 50
    simulation: {...}
    ...

The study is a list of **cells** (one parameter value x gridsize x seed).  Each cell lives in
``STUDY/cells/<name>/``: ``config.resolved.yaml``, one training run per network arm
(``train_pinn/``, ``train_baseline/``), the comparison of the arms on a spatially disjoint test scan
(``compare/``: metrics.csv/json, comparison.png, FRC, timings) and ``done.json``, written last
(atomically).  Re-running a study skips every cell whose ``done.json`` holds the same cell
configuration (resume); a cell whose configuration changed is run again.

Per kind (the cell's base config is changed in one place only):

* ``dose``: ``simulation.photons_per_pattern`` = value.
* ``overlap``: ``simulation.scan_step_px`` = value (``overlap_fraction`` cleared); measured overlap
  metrics (:func:`ptypinn.grouping.overlap_metrics`) are recorded per cell; with
  ``gridsizes: [1, 2]`` every step is run at each gridsize.
* ``generalization``: the first ``value`` patterns of a per-seed random permutation of one larger
  simulated training scan (nested subsets); the test scan is of a different object kind when
  ``test_object_kind`` is set (out of distribution, simulated at the same nominal dose).
* ``probe``: the four ``lines`` scenarios {ideal disk, experimental probe} x {gridsize 1, 2}
  (values: a subset of :data:`PROBE_SCENARIOS`).  The experimental probe is read from
  ``experimental_probe_path`` and resampled so its footprint radius equals
  ``simulation.probe_radius_px``, then cropped to the pattern size (:func:`experimental_probe`);
  if the file is missing a ``defocused_disk`` probe stands in (logged and recorded).

Seed ``s`` of a cell: simulation seed ``simulation.seed + 2 s`` (train; ``+1`` is the test
object), training and grouping seeds ``+ s``.

The ``study:`` section is parsed by :mod:`ptypinn.workflows.study_config`.  Finished cells are
read back and reported by :mod:`ptypinn.workflows.study_results`
(:func:`ptypinn.workflows.study_results.write_report`: ``results.csv``, ``table.md``,
``curves.png``, ``report.md`` and ``report.html``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from scipy import ndimage
from tqdm.auto import tqdm

from ptypinn import io
from ptypinn.baselines.ptychi import ptychi_available
from ptypinn.config import ARM_LABELS, Config, ConfigError, to_dict
from ptypinn.data import ScanData
from ptypinn.grouping import group_patterns, overlap_metrics, probe_radius_px_from_probe
from ptypinn.physics import extract_patches
from ptypinn.pinn import TrainingCollapsed, TrainingDiverged
from ptypinn.simulate import simulate_scan, simulate_train_test
from ptypinn.workflows.compare import compare, refine_arms, run_arms
from ptypinn.workflows.study_config import PARAMETERS, StudyConfig, check_cell_name, load_study
from ptypinn.workflows.study_results import write_report

__all__ = [
    "Cell",
    "plan_cells",
    "experimental_probe",
    "simulate_cell",
    "run_study",
]

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------------
# cells


@dataclass(frozen=True)
class Cell:
    """One point of a study: a resolved run config and how its data are made.

    Attributes
    ----------
    name : str
        Directory name under ``STUDY/cells/``.
    parameter : str
        Study parameter (``photons_per_pattern``, ``scan_step_px``, ``n_train_patterns``,
        ``scenario``).
    value : float, int or str
        Its value in this cell.
    seed : int
        Trial index (from ``study.seeds``).
    gridsize : int
    config : Config
        The resolved run config of the cell.
    n_train : int, optional
        Generalization: number of training patterns drawn from the training scan.
    probe : str, optional
        Probe study: ``"ideal"`` or ``"experimental"``.
    """

    name: str
    parameter: str
    value: Any
    seed: int
    gridsize: int
    config: Config
    n_train: int | None = None
    probe: str | None = None

    def describe(self) -> dict[str, Any]:
        """JSON-friendly description (also the resume key, with the study's arms)."""
        return {"name": self.name, "parameter": self.parameter, "value": self.value,
                "seed": self.seed, "gridsize": self.gridsize, "n_train": self.n_train,
                "probe": self.probe, "config": to_dict(self.config)}


def _value_tag(kind: str, value: Any) -> str:
    if kind == "dose":
        return f"{float(value):.0e}".replace("+", "")
    if kind == "overlap":
        return f"step{float(value):g}".replace(".", "p")
    if kind == "generalization":
        return f"n{int(value)}"
    return str(value)


def _seeded(cfg: Config, seed: int) -> Config:
    return dataclasses.replace(
        cfg,
        simulation=dataclasses.replace(cfg.simulation, seed=cfg.simulation.seed + 2 * seed),
        train=dataclasses.replace(cfg.train, seed=cfg.train.seed + seed),
        grouping=dataclasses.replace(cfg.grouping, seed=cfg.grouping.seed + seed))


def _with_gridsize(cfg: Config, g: int) -> Config:
    k = max(cfg.grouping.k_neighbors, g * g - 1)
    return dataclasses.replace(cfg, grouping=dataclasses.replace(cfg.grouping, gridsize=g,
                                                                 k_neighbors=k))


def plan_cells(study: StudyConfig, base: Config) -> list[Cell]:
    """All cells of a study, in run order (seed-major, then value, then gridsize).

    Raises
    ------
    ValueError
        A cell config that does not validate (e.g. a scan step the config rejects).
    """
    kind = study.kind
    parameter = PARAMETERS[kind][0]
    cells: list[Cell] = []
    for seed in study.seeds:
        cfg_s = _seeded(base, seed)
        if kind == "probe":
            for scen in study.scenarios:
                probe, g = scen.split("_g")
                cfg = _with_gridsize(cfg_s, int(g))
                cells.append(Cell(f"probe_{scen}_s{seed}", parameter, scen, seed, int(g), cfg,
                                  probe=probe))
            continue
        grids = study.gridsizes or (base.grouping.gridsize,)
        for value in study.values:
            for g in grids:
                sim = cfg_s.simulation
                n_train = None
                if kind == "dose":
                    sim = dataclasses.replace(sim, photons_per_pattern=float(value))
                elif kind == "overlap":
                    sim = dataclasses.replace(sim, scan_step_px=float(value),
                                              overlap_fraction=None)
                else:
                    n_train = int(value)
                cfg = _with_gridsize(dataclasses.replace(cfg_s, simulation=sim), g)
                gtag = f"_g{g}" if study.gridsizes else ""
                cells.append(Cell(f"{kind}_{_value_tag(kind, value)}{gtag}_s{seed}", parameter,
                                  value, seed, g, cfg, n_train=n_train))
    return cells


# ------------------------------------------------------------------------------------------------
# data for one cell


def experimental_probe(probe: np.ndarray, size_px: int, radius_px: float) -> np.ndarray:
    """Resample a measured probe to a footprint radius and crop it to ``size_px``.

    The strongest mode is kept; it is zoomed (spline, real and imaginary parts) so that its
    second-moment footprint radius (:func:`ptypinn.grouping.probe_radius_px_from_probe`) becomes
    ``radius_px``, then the ``size_px`` window centred on its intensity centroid (rounded to a
    pixel) is cut out with :func:`ptypinn.physics.extract_patches`.

    Parameters
    ----------
    probe : complex ``(H, W)`` or ``(modes, H, W)``
    size_px : int
        Pattern size ``N``.
    radius_px : float
        Target footprint radius in pixels.

    Returns
    -------
    complex64 ``(N, N)`` with unit peak amplitude.
    """
    p = np.asarray(probe)
    if p.ndim == 3:
        power = (np.abs(p) ** 2).sum(axis=(1, 2))
        p = p[int(np.argmax(power))]
    if p.ndim != 2:
        raise ValueError(f"probe: expected shape (H, W) or (modes, H, W), got {np.shape(probe)}")
    if radius_px <= 0 or size_px < 2:
        raise ValueError(f"radius_px, size_px: expected > 0 and >= 2, got {radius_px}, {size_px}")
    zoom = radius_px / probe_radius_px_from_probe(p)
    p = p.astype(np.complex128)
    z = (ndimage.zoom(p.real, zoom, order=3) + 1j * ndimage.zoom(p.imag, zoom, order=3))
    z = np.pad(z, size_px)
    w = np.abs(z) ** 2
    yy, xx = np.indices(w.shape)
    centre = np.round([(w * yy).sum() / w.sum(), (w * xx).sum() / w.sum()]) + 0.0
    centre = np.clip(centre, size_px / 2, np.array(z.shape) - size_px / 2)
    out = extract_patches(torch.from_numpy(z)[None],
                          torch.from_numpy(centre.reshape(1, 1, 2)), size_px)[0, 0].numpy()
    return (out / np.abs(out).max()).astype(np.complex64)


def simulate_cell(cell: Cell, study: StudyConfig, cache: dict[Any, Any]
                   ) -> tuple[ScanData, ScanData, dict[str, Any]]:
    """(train, test, notes) for a cell; simulations and the probe file are cached in ``cache``."""
    sim = cell.config.simulation
    notes: dict[str, Any] = {}
    probe_arr = None
    if cell.probe == "experimental":
        path = study.experimental_probe_path
        if path and Path(path).is_file():
            key = ("probe", path, sim.probe_size_px, sim.probe_radius_px)
            if key not in cache:
                cache[key] = experimental_probe(io.read_scan(path).probe, sim.probe_size_px,
                                                sim.probe_radius_px)
            probe_arr = cache[key]
            sim = dataclasses.replace(sim, probe_kind="file", probe_file=str(path))
            notes["probe_source"] = str(path)
        else:
            log.warning("experimental probe file %r not found: using a defocused_disk probe "
                        "instead", path)
            # keep the defocus inside the range make_probe accepts for this N and radius
            n, r = sim.probe_size_px, sim.probe_radius_px
            lo, hi = 2.0 * math.pi * r / n, (n / 2 - 1) * math.pi * r / n
            defocus = min(max(sim.probe_defocus_rad, 1.01 * lo), 0.99 * hi)
            sim = dataclasses.replace(sim, probe_kind="defocused_disk",
                                      probe_defocus_rad=defocus)
            notes["probe_source"] = f"defocused_disk stand-in ({path!r} not found)"
    elif cell.probe == "ideal":
        sim = dataclasses.replace(sim, probe_kind="disk")
        notes["probe_source"] = "ideal disk"
    key = ("sim", repr(sim))
    if key not in cache:
        cache[key] = simulate_train_test(sim, probe_from_file=probe_arr)
    train, test = cache[key]
    beam = train.probe  # the full training scan's calibrated beam
    if cell.n_train is not None:
        if cell.n_train > train.n_patterns:
            raise ConfigError(
                f"study.values: expected training-set sizes <= {train.n_patterns} (the simulated "
                f"training scan; enlarge simulation.object_size_px or reduce scan_step_px), got "
                f"{cell.n_train}")
        perm = np.random.default_rng(sim.seed).permutation(train.n_patterns)
        train = train.subset(np.sort(perm[:cell.n_train]))
        if study.test_object_kind:
            tkey = ("test", repr(sim), study.test_object_kind)
            if tkey not in cache:
                # the training beam and flux, not a probe re-calibrated to the new object
                cache[tkey] = simulate_scan(dataclasses.replace(
                    sim, object_kind=study.test_object_kind, seed=sim.seed + 1),
                    calibrated_probe=beam)
            test = cache[tkey]
            notes["test_object_kind"] = study.test_object_kind
    return train, test, notes


def _overlap(scan: ScanData, cfg: Config) -> dict[str, float]:
    groups = None
    if cfg.grouping.gridsize > 1 and scan.n_patterns >= cfg.grouping.group_size:
        groups = group_patterns(scan.positions_px, dataclasses.replace(
            cfg.grouping, n_groups=None, allow_oversampling=False,
            k_neighbors=min(cfg.grouping.k_neighbors, scan.n_patterns - 1)))
    out = overlap_metrics(scan.positions_px, probe_radius_px_from_probe(scan.probe), groups)
    out["probe_radius_px"] = probe_radius_px_from_probe(scan.probe)
    return out


# ------------------------------------------------------------------------------------------------
# running


def _resume_key(cell: Cell, study: StudyConfig) -> dict[str, Any]:
    return {"cell": cell.describe(), "arms": list(study.arms),
            "ptychi_iterations": study.ptychi_iterations,
            "ptychi_algorithm": study.ptychi_algorithm,
            "ptychi_engines": list(study.engines),
            "refine_epochs": study.refine_epochs,
            "test_object_kind": study.test_object_kind,
            "experimental_probe_path": study.experimental_probe_path}


def _is_done(cell_dir: Path, key: dict[str, Any]) -> bool:
    done = cell_dir / "done.json"
    if not done.is_file():
        return False
    try:
        old = io.read_json_object(done)
    except (ValueError, OSError):
        return False
    if old.get("key") == _json_roundtrip(key):
        return True
    log.warning("%s: configuration changed since it was run; running it again", cell_dir.name)
    return False


def _json_roundtrip(obj: Any) -> Any:
    return json.loads(json.dumps(obj))


def _run_cell(cell: Cell, study: StudyConfig, cell_dir: Path, cache: dict[Any, Any],
              key: dict[str, Any]) -> dict[str, Any]:
    """Simulate, train the network arms, compare all arms on the test scan, write done.json."""
    from ptypinn.pinn.train import train_model  # Lightning: imported only when a cell trains

    io.write_yaml(cell_dir / "config.resolved.yaml", to_dict(cell.config))
    train, test, notes = simulate_cell(cell, study, cache)
    record: dict[str, Any] = {
        "key": key, "cell": cell.describe(), "notes": notes, "failed": {}, "skipped": {},
        "train": {}, "scan": {"n_train_patterns": train.n_patterns,
                              "n_test_patterns": test.n_patterns,
                              "test_photons_per_pattern": test.photons_per_pattern,
                              "train_overlap": _overlap(train, cell.config),
                              "test_overlap": _overlap(test, cell.config)}}
    arms = []
    for kind in ("pinn", "baseline"):
        if kind not in study.arms:
            continue
        cfg = dataclasses.replace(cell.config,
                                  model=dataclasses.replace(cell.config.model, kind=kind))
        try:
            res = train_model(cfg, train, cell_dir / f"train_{kind}")
            record["train"][ARM_LABELS[kind]] = {
                "fit_time_s": res.fit_time_s, "epochs_run": res.epochs_run,
                "samples_per_s": res.samples_per_s, "n_train_groups": res.n_train_groups}
            arms += run_arms(test, **{kind: res.bundle}, infer_cfg=cfg.infer)
        except (ValueError, TrainingDiverged, TrainingCollapsed) as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            log.error("%s: %s arm failed: %s", cell.name, ARM_LABELS[kind], msg)
            record["failed"][ARM_LABELS[kind]] = msg
    if "ptychi" in study.arms:
        ok, why = ptychi_available()
        if not ok:
            log.warning("%s: PtyChi arm skipped: %s", cell.name, why)
            record["skipped"]["PtyChi"] = why
        else:
            # the same test scan (e.g. another gridsize of one overlap step): reuse the result
            pkey = ("ptychi", id(test), study.engines, study.ptychi_iterations)
            try:
                if pkey not in cache:
                    it_cfgs = [dataclasses.replace(cell.config.iterative, algorithm=engine,
                                                   iterations=study.ptychi_iterations)
                               for engine in study.engines]
                    cache[pkey] = run_arms(test, ptychi=it_cfgs, infer_cfg=cell.config.infer)
                else:
                    log.info("%s: PtyChi result reused (same test scan)", cell.name)
                arms += cache[pkey]
            except ValueError as e:
                msg = str(e).strip().splitlines()[0]
                log.error("%s: PtyChi arm failed: %s", cell.name, msg)
                record["failed"]["PtyChi"] = msg
    wanted = [k for k in ("pinn_refine", "refine_flat") if k in study.arms]
    pinn_arm = next((a for a in arms if a.name == ARM_LABELS["pinn"]), None)
    if wanted and ("refine_flat" in wanted or pinn_arm is not None):
        ref_cfg = dataclasses.replace(cell.config.refine, epochs=study.refine_epochs)
        try:
            arms += refine_arms(test, ref_cfg, pinn_arm if "pinn_refine" in wanted else None,
                                flat="refine_flat" in wanted, crop_px=cell.config.infer.crop_px)
        except (ValueError, RuntimeError) as e:
            msg = str(e).strip().splitlines()[0]
            log.error("%s: refinement arms failed: %s", cell.name, msg)
            for k in wanted:
                record["failed"][ARM_LABELS[k]] = msg
    record["summary"] = compare(test, arms, cell_dir / "compare") if arms else None
    io.write_json(cell_dir / "done.json", record)  # last: marks the cell finished
    return record


def run_study(source: str | os.PathLike | Mapping[str, Any], out_dir: str | os.PathLike,
              overrides: Sequence[str] = (), progress: bool = False) -> dict[str, Any]:
    """Run (or resume) a study and write its report.

    Parameters
    ----------
    source : path or mapping
        Study config (``study:`` section plus the base run sections).
    out_dir : path
        Study directory: ``study.yaml`` (resolved), ``cells/<name>/``, results and report.
    overrides : sequence of str
        ``section.field=value`` (``study.values=[1e4,1e6]`` works too).
    progress : bool
        A progress bar of the cells on stderr (the command line: only on a terminal).

    Returns
    -------
    dict
        :func:`ptypinn.workflows.study_results.write_report`'s summary plus ``cells_run`` and
        ``cells_skipped`` (names).
    """
    study, base = load_study(source, overrides)
    out = Path(out_dir)
    cells = plan_cells(study, base)
    resolved = {"study": _json_roundtrip(dataclasses.asdict(study)), **to_dict(base)}
    io.write_yaml(out / "study.yaml", resolved)
    io.write_json(out / "study.json", {
        "source": None if isinstance(source, Mapping) else str(source),
        "overrides": list(overrides), "out_dir": str(out), "cells": [c.name for c in cells]})
    cache: dict[Any, Any] = {}
    ran, skipped = [], []
    for i, cell in enumerate(tqdm(cells, desc="study", unit="cell", disable=not progress), 1):
        cell_dir = out / "cells" / check_cell_name(cell.name, "study")
        key = _resume_key(cell, study)
        if _is_done(cell_dir, key):
            log.info("cell %d/%d %s: done already, skipped", i, len(cells), cell.name)
            skipped.append(cell.name)
            continue
        log.info("cell %d/%d %s: %s = %s, gridsize %d, seed %d", i, len(cells), cell.name,
                 cell.parameter, cell.value, cell.gridsize, cell.seed)
        _run_cell(cell, study, cell_dir, cache, key)
        ran.append(cell.name)
    summary = write_report(out)
    summary.update(cells_run=ran, cells_skipped=skipped)
    return summary
