"""Parameter studies (SPEC §9): dose, overlap, generalization, probe; config-driven, resumable.

A study config is a YAML mapping with a ``study:`` section plus the usual run sections
(``simulation``, ``grouping``, ``model``, ``train``, ``infer``), which form the *base* config::

    study:
      kind: dose                       # dose | overlap | generalization | probe
      values: [1.0e4, 1.0e6, 1.0e9]    # photons/pattern | scan step (px) | n training patterns
      arms: [pinn, baseline, ptychi]   # any subset (ptychi skipped, with the reason, if absent)
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

:func:`write_report` gathers every finished cell into ``results.csv`` (long format),
``table.md``, ``curves.png``, ``report.md`` and ``report.html`` (figures embedded).
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import io as _text_io
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ptypinn.config import Config, ConfigError, apply_overrides, from_dict, to_dict
from ptypinn.data import ScanData

__all__ = [
    "STUDY_KINDS",
    "ARMS",
    "PROBE_SCENARIOS",
    "StudyConfig",
    "Cell",
    "study_config_from_dict",
    "load_study",
    "plan_cells",
    "experimental_probe",
    "run_study",
    "collect_results",
    "write_report",
    "study_finding",
]

log = logging.getLogger(__name__)

STUDY_KINDS = ("dose", "overlap", "generalization", "probe")
ARMS = ("pinn", "baseline", "ptychi")
PROBE_SCENARIOS = ("ideal_g1", "ideal_g2", "experimental_g1", "experimental_g2")
PTYCHI_ALGORITHMS = ("epie", "rpie", "lsqml", "dm")
_ARM_LABEL = {"pinn": "PINN", "baseline": "Baseline", "ptychi": "PtyChi"}
_GRID_FREE = ("PtyChi",)  # arms whose result does not depend on grouping.gridsize

# (parameter name in the tables, axis label with units)
_PARAMETER = {
    "dose": ("photons_per_pattern", "dose (photons per pattern)"),
    "overlap": ("scan_step_px", "scan step (px)"),
    "generalization": ("n_train_patterns", "training-set size (patterns)"),
    "probe": ("scenario", "scenario (probe, gridsize)"),
}
RESULT_COLUMNS = ["cell", "parameter", "parameter_value", "gridsize", "seed", "model", "quantity",
                  "metric", "value"]
"""Columns of ``results.csv`` (long format; ``value`` is the measured number)."""


# ------------------------------------------------------------------------------------------------
# study configuration


def _bad(key: str, expected: str, actual: Any) -> ConfigError:
    return ConfigError(f"study.{key}: expected {expected}, got {actual!r}")


@dataclass(frozen=True)
class StudyConfig:
    """The ``study:`` section.

    Attributes
    ----------
    kind : {"dose", "overlap", "generalization", "probe"}
    values : tuple
        Photons per pattern (dose, > 0), scan steps in px (overlap, > 0), training-set sizes in
        patterns (generalization, integers >= 1) or scenario names (probe; default all four).
    arms : tuple of {"pinn", "baseline", "ptychi"}
    seeds : tuple of int
        Repeated trials.
    ptychi_iterations : int
        pty-chi epochs.
    ptychi_algorithm : {"epie", "rpie", "lsqml", "dm"}
    test_object_kind : str, optional
        Generalization: object kind of the test scan (out of distribution).
    gridsizes : tuple of int
        Overlap: run every step at each gridsize (default: ``grouping.gridsize`` only).
    experimental_probe_path : str, optional
        Probe study: scan file whose probe is the experimental probe.
    """

    kind: str
    values: tuple = ()
    arms: tuple[str, ...] = ("pinn", "ptychi")
    seeds: tuple[int, ...] = (0,)
    ptychi_iterations: int = 50
    ptychi_algorithm: str = "epie"
    test_object_kind: str | None = None
    gridsizes: tuple[int, ...] = ()
    experimental_probe_path: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in STUDY_KINDS:
            raise _bad("kind", f"one of {list(STUDY_KINDS)}", self.kind)
        if not self.arms or any(a not in ARMS for a in self.arms) or len(set(self.arms)) != len(
                self.arms):
            raise _bad("arms", f"a non-empty list of distinct names from {list(ARMS)}",
                       list(self.arms))
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise _bad("seeds", "a non-empty list of distinct integers", list(self.seeds))
        if self.ptychi_iterations < 1:
            raise _bad("ptychi_iterations", ">= 1", self.ptychi_iterations)
        if self.ptychi_algorithm not in PTYCHI_ALGORITHMS:
            raise _bad("ptychi_algorithm", f"one of {list(PTYCHI_ALGORITHMS)}",
                       self.ptychi_algorithm)
        if any(g not in (1, 2, 3) for g in self.gridsizes):
            raise _bad("gridsizes", "values in {1, 2, 3}", list(self.gridsizes))
        if self.gridsizes and self.kind != "overlap":
            raise _bad("gridsizes", "to be set only for kind 'overlap'", list(self.gridsizes))
        if self.test_object_kind is not None and self.kind != "generalization":
            raise _bad("test_object_kind", "to be set only for kind 'generalization'",
                       self.test_object_kind)
        if self.test_object_kind not in (None, "lines", "grf", "siemens_star"):
            raise _bad("test_object_kind", "None, 'lines', 'grf' or 'siemens_star'",
                       self.test_object_kind)
        v = self.values
        if self.kind == "probe":
            if any(s not in PROBE_SCENARIOS for s in v) or len(set(v)) != len(v):
                raise _bad("values", f"distinct scenario names from {list(PROBE_SCENARIOS)}",
                           list(v))
            return
        if not v or len(set(v)) != len(v):
            raise _bad("values", "a non-empty list of distinct numbers", list(v))
        if any(isinstance(x, (bool, str)) or not isinstance(x, (int, float))
               or not math.isfinite(x) or x <= 0 for x in v):
            raise _bad("values", "finite numbers > 0", list(v))
        if self.kind == "generalization" and any(int(x) != x for x in v):
            raise _bad("values", "integers (training patterns)", list(v))

    @property
    def scenarios(self) -> tuple[str, ...]:
        """Probe study: the scenarios run (all four when ``values`` is empty)."""
        return tuple(self.values) or PROBE_SCENARIOS


def _as_list(data: Mapping[str, Any], key: str) -> list[Any]:
    v = data[key]
    if isinstance(v, (list, tuple)):
        return list(v)
    if isinstance(v, (str, int, float)) and not isinstance(v, bool):
        return [v]
    raise _bad(key, "a list", v)


def _number(x: Any, key: str) -> float:
    if isinstance(x, str):
        try:
            return float(x)
        except ValueError:
            pass
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise _bad(key, "numbers", x)
    return float(x)


def study_config_from_dict(data: Mapping[str, Any] | None) -> StudyConfig:
    """Build and validate a :class:`StudyConfig` from the ``study:`` mapping.

    Raises
    ------
    ptypinn.config.ConfigError (a ValueError)
        Unknown key (the closest valid one suggested), missing ``kind`` or an invalid value.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"study: expected a mapping with at least 'kind', got {data!r}")
    names = [f.name for f in dataclasses.fields(StudyConfig)]
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean 'study.{close[0]}'?" if close else ""
            raise ConfigError(f"unknown config key 'study.{key}'{hint} (valid: "
                              f"{', '.join(names)})")
    if "kind" not in data:
        raise ConfigError(f"study.kind: expected one of {list(STUDY_KINDS)}, got nothing")
    kw: dict[str, Any] = dict(data)
    kind = kw["kind"]
    if "values" in kw:
        vals = _as_list(kw, "values")
        kw["values"] = tuple(vals if kind == "probe" else
                             [_number(x, "values") for x in vals])
        if kind == "generalization":
            kw["values"] = tuple(int(x) if float(x).is_integer() else x for x in kw["values"])
    for key in ("arms",):
        if key in kw:
            kw[key] = tuple(str(a) for a in _as_list(kw, key))
    for key in ("seeds", "gridsizes"):
        if key in kw:
            items = _as_list(kw, key)
            if any(isinstance(s, bool) or not isinstance(s, int) for s in items):
                raise _bad(key, "integers", items)
            kw[key] = tuple(items)
    if "ptychi_iterations" in kw and (isinstance(kw["ptychi_iterations"], bool)
                                      or not isinstance(kw["ptychi_iterations"], int)):
        raise _bad("ptychi_iterations", "an integer", kw["ptychi_iterations"])
    for key in ("test_object_kind", "experimental_probe_path", "ptychi_algorithm"):
        if kw.get(key) is not None and not isinstance(kw[key], str):
            raise _bad(key, "a string", kw[key])
    return StudyConfig(**kw)


def load_study(source: str | os.PathLike | Mapping[str, Any], overrides: Sequence[str] = ()
               ) -> tuple[StudyConfig, Config]:
    """Parse a study config (YAML path or mapping) plus ``--set section.field=value`` overrides.

    Returns
    -------
    (StudyConfig, Config)
        The study section and the base run config.
    """
    if isinstance(source, Mapping):
        data = dict(source)
    else:
        from ptypinn import io

        data = io.read_yaml(source)
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping of sections at the top level")
    data = apply_overrides(data, overrides)
    if "study" not in data:
        raise ConfigError("study: expected a 'study:' section (kind, values, arms, ...), got none")
    study = study_config_from_dict(data.pop("study"))
    return study, from_dict(Config, data)


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
    parameter = _PARAMETER[kind][0]
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
    half-maximum footprint radius (:func:`ptypinn.grouping.probe_radius_px_from_probe`) becomes
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
    import torch
    from scipy import ndimage

    from ptypinn.grouping import probe_radius_px_from_probe
    from ptypinn.physics import extract_patches

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


def _simulate_cell(cell: Cell, study: StudyConfig, cache: dict[Any, Any]
                   ) -> tuple[ScanData, ScanData, dict[str, Any]]:
    """(train, test, notes) for a cell; simulations and the probe file are cached in ``cache``."""
    from ptypinn import io
    from ptypinn.simulate import simulate_scan, simulate_train_test

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
                cache[tkey] = simulate_scan(dataclasses.replace(
                    sim, object_kind=study.test_object_kind, seed=sim.seed + 1))
            test = cache[tkey]
            notes["test_object_kind"] = study.test_object_kind
    return train, test, notes


def _overlap(scan: ScanData, cfg: Config) -> dict[str, float]:
    from ptypinn.grouping import group_patterns, overlap_metrics, probe_radius_px_from_probe

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
            "test_object_kind": study.test_object_kind,
            "experimental_probe_path": study.experimental_probe_path}


def _is_done(cell_dir: Path, key: dict[str, Any]) -> bool:
    from ptypinn import io

    done = cell_dir / "done.json"
    if not done.is_file():
        return False
    try:
        old = io.read_json(done)
    except (ValueError, OSError):
        return False
    if old.get("key") == _json_roundtrip(key):
        return True
    log.warning("%s: configuration changed since it was run; running it again", cell_dir.name)
    return False


def _json_roundtrip(obj: Any) -> Any:
    import json

    return json.loads(json.dumps(obj))


def _run_cell(cell: Cell, study: StudyConfig, cell_dir: Path, cache: dict[Any, Any],
              key: dict[str, Any]) -> dict[str, Any]:
    """Simulate, train the network arms, compare all arms on the test scan, write done.json."""
    from ptypinn import io
    from ptypinn.compare import compare, run_arms
    from ptypinn.iterative import ptychi_available
    from ptypinn.train import TrainingDiverged, train_model

    io.write_yaml(cell_dir / "config.resolved.yaml", to_dict(cell.config))
    train, test, notes = _simulate_cell(cell, study, cache)
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
            record["train"][_ARM_LABEL[kind]] = {
                "fit_time_s": res.fit_time_s, "epochs_run": res.epochs_run,
                "samples_per_s": res.samples_per_s, "n_train_groups": res.n_train_groups}
            arms += run_arms(test, **{kind: res.bundle_dir}, infer_cfg=cfg.infer)
        except (ValueError, TrainingDiverged) as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            log.error("%s: %s arm failed: %s", cell.name, _ARM_LABEL[kind], msg)
            record["failed"][_ARM_LABEL[kind]] = msg
    if "ptychi" in study.arms:
        ok, why = ptychi_available()
        if not ok:
            log.warning("%s: PtyChi arm skipped: %s", cell.name, why)
            record["skipped"]["PtyChi"] = why
        else:
            # the same test scan (e.g. another gridsize of one overlap step): reuse the result
            pkey = ("ptychi", id(test), study.ptychi_algorithm, study.ptychi_iterations)
            try:
                if pkey not in cache:
                    cache[pkey] = run_arms(test, ptychi=study.ptychi_algorithm,
                                           ptychi_iterations=study.ptychi_iterations,
                                           infer_cfg=cell.config.infer)
                else:
                    log.info("%s: PtyChi result reused (same test scan)", cell.name)
                arms += cache[pkey]
            except ValueError as e:
                msg = str(e).strip().splitlines()[0]
                log.error("%s: PtyChi arm failed: %s", cell.name, msg)
                record["failed"]["PtyChi"] = msg
    record["summary"] = compare(test, arms, cell_dir / "compare") if arms else None
    io.write_json(cell_dir / "done.json", record)  # last: marks the cell finished
    return record


def run_study(source: str | os.PathLike | Mapping[str, Any], out_dir: str | os.PathLike,
              overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Run (or resume) a study and write its report.

    Parameters
    ----------
    source : path or mapping
        Study config (``study:`` section plus the base run sections).
    out_dir : path
        Study directory: ``study.yaml`` (resolved), ``cells/<name>/``, results and report.
    overrides : sequence of str
        ``section.field=value`` (``study.values=[1e4,1e6]`` works too).

    Returns
    -------
    dict
        :func:`write_report`'s summary plus ``cells_run`` and ``cells_skipped`` (names).
    """
    from ptypinn import io

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
    for i, cell in enumerate(cells, 1):
        cell_dir = out / "cells" / cell.name
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


# ------------------------------------------------------------------------------------------------
# collecting and reporting


def _finished_cells(out: Path) -> list[tuple[Path, dict[str, Any]]]:
    """``(cell_dir, done.json record)`` of every finished cell, in the study's planned order
    (``study.json``; directory order if it is missing)."""
    from ptypinn import io

    if (out / "study.json").is_file():
        dirs = [out / "cells" / name for name in io.read_json(out / "study.json")["cells"]]
    else:
        dirs = sorted(p.parent for p in (out / "cells").glob("*/done.json"))
    return [(d, io.read_json(d / "done.json")) for d in dirs if (d / "done.json").is_file()]


def collect_results(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Long-format rows (:data:`RESULT_COLUMNS`) of every finished cell of a study directory.

    Per arm: every metric of :func:`ptypinn.metrics.evaluate` (quantities ``amplitude``,
    ``phase``, ``complex``), ``data/nll_per_pixel``, ``timing/{reconstruction_s,
    patterns_per_s, speedup_vs_ptychi, train_s}``; per cell (model ``scan``):
    ``test_overlap/*``, ``train_overlap/*`` and ``scan/{n_train_patterns, n_test_patterns,
    test_photons_per_pattern}``.
    """

    rows: list[dict[str, Any]] = []
    for _, rec in _finished_cells(Path(out_dir)):
        c = rec["cell"]
        head = {"cell": c["name"], "parameter": c["parameter"], "parameter_value": c["value"],
                "gridsize": c["gridsize"], "seed": c["seed"]}

        def add(model: str, quantity: str, metric: str, value: Any) -> None:
            v = None if value is None else float(value)
            rows.append({**head, "model": model, "quantity": quantity, "metric": metric,
                         "value": v if v is None or math.isfinite(v) else None})

        for name, a in ((rec.get("summary") or {}).get("arms") or {}).items():
            for quantity, scores in (a.get("metrics") or {}).items():
                for metric, value in scores.items():
                    add(name, quantity, metric, value)
            add(name, "data", "nll_per_pixel", a.get("nll_per_pixel"))
            add(name, "timing", "reconstruction_s", a.get("wall_time_s"))
            add(name, "timing", "patterns_per_s", a.get("patterns_per_s"))
            add(name, "timing", "speedup_vs_ptychi", a.get("speedup_vs_ptychi"))
            if name in rec.get("train", {}):
                add(name, "timing", "train_s", rec["train"][name]["fit_time_s"])
        scan = rec.get("scan", {})
        for which in ("test_overlap", "train_overlap"):
            for metric, value in scan.get(which, {}).items():
                add("scan", which, metric, value)
        for metric in ("n_train_patterns", "n_test_patterns", "test_photons_per_pattern"):
            if metric in scan:
                add("scan", "scan", metric, scan[metric])
    return rows


def _csv_text(rows: list[dict[str, Any]]) -> str:
    buf = _text_io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(RESULT_COLUMNS)
    for r in rows:
        w.writerow(["" if r[k] is None else (repr(r[k]) if isinstance(r[k], float) else r[k])
                    for k in RESULT_COLUMNS])
    return buf.getvalue()


def _stats(values: list[float]) -> tuple[float, float, int]:
    v = [x for x in values if x is not None and math.isfinite(x)]
    if not v:
        return math.nan, math.nan, 0
    return float(np.mean(v)), float(np.std(v)) if len(v) > 1 else 0.0, len(v)


def _aggregate(rows: list[dict[str, Any]]) -> dict[tuple, tuple[float, float, int]]:
    """(model, gridsize, parameter_value, quantity, metric) -> (mean, std, n) over seeds."""
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        k = (r["model"], r["gridsize"], r["parameter_value"], r["quantity"], r["metric"])
        groups.setdefault(k, []).append(r["value"])
    return {k: _stats(v) for k, v in groups.items()}


def _fmt_value(kind: str, v: Any) -> str:
    if kind == "dose":
        return f"{float(v):.0e}".replace("e+0", "e").replace("e+", "e")
    if kind == "overlap":
        return f"{float(v):g} px"
    return str(v)


def _series(models: list[str], grids: list[int]) -> list[tuple[str, int, str]]:
    """(model, gridsize, label) per curve; PtyChi does not group patterns: one curve."""
    multi = len(grids) > 1
    return [(m, g, f"{m} (gridsize {g})" if multi and m not in _GRID_FREE else m)
            for m in models for g in (grids[:1] if m in _GRID_FREE else grids)]


_TABLE_METRICS = [
    ("amplitude", "ssim", "amp SSIM", ".3f"),
    ("phase", "ssim", "phase SSIM", ".3f"),
    ("amplitude", "pearson", "amp r", ".3f"),
    ("phase", "pearson", "phase r", ".3f"),
    ("complex", "frc_half_bit_px", "FRC 1/2-bit (px)", ".2f"),
    ("amplitude", "mean_ratio", "mean ratio", ".3f"),
    ("timing", "train_s", "train (s)", ".1f"),
    ("timing", "reconstruction_s", "recon (s)", ".3g"),
]
_NYQUIST_PERIOD_PX = 2.0
_TABLE_NOTE = ("amplitude/phase scored against the ground truth after registration and "
               "global-phase removal; an FRC 1/2-bit period of 2 px means the FRC never fell "
               "below the threshold (resolved to Nyquist)")
_CURVE_PANELS = [
    ("amplitude", "ssim", "amplitude SSIM"),
    ("phase", "ssim", "phase SSIM"),
    ("amplitude", "pearson", "amplitude Pearson r"),
    ("phase", "pearson", "phase Pearson r"),
    ("complex", "frc_half_bit_px", "FRC 1/2-bit period (px)"),
    ("timing", "reconstruction_s", "reconstruction time (s)"),
]


def _mean_pm(stat: tuple[float, float, int] | None, spec: str) -> str:
    if stat is None or stat[2] == 0:
        return "-"
    mean, std, n = stat
    return format(mean, spec) + (f" ± {format(std, spec)}" if n > 1 else "")


def study_finding(kind: str, rows: list[dict[str, Any]]) -> str:
    """One sentence summarising a study, computed from its results.

    The hardest setting (lowest dose, largest scan step, smallest training set; the experimental
    probe at the smallest gridsize for the probe study) and the easiest one are compared: which
    arm has the best mean amplitude SSIM there and by how much it leads the runner-up.
    """
    agg = _aggregate(rows)
    ssim = {(m, g, v): s for (m, g, v, q, k), s in agg.items()
            if q == "amplitude" and k == "ssim" and s[2] > 0}
    if not ssim:
        return "No arm produced a scored reconstruction, so there is no finding."
    grids = sorted({g for _, g, _ in ssim})
    values = sorted({v for _, _, v in ssim}, key=lambda v: (PROBE_SCENARIOS.index(v)
                                                            if kind == "probe" else float(v)))
    if kind == "probe":
        exp = [v for v in values if v.startswith("experimental")] or values
        hard, easy = exp[0], (["ideal_g2"] if "ideal_g2" in values else values)[-1]
        describe = lambda v: f"with the {v.replace('_g', ' probe at gridsize ')}"  # noqa: E731
    else:
        hard, easy = ((values[0], values[-1]) if kind in ("dose", "generalization")
                      else (values[-1], values[0]))
        unit = {"dose": " photons per pattern", "overlap": " px scan step",
                "generalization": " training patterns"}[kind]
        describe = lambda v: (  # noqa: E731
            f"at {_fmt_value(kind, v).replace(' px', '')}{unit}")

    def ranking(v: Any) -> list[tuple[float, str]]:
        out: dict[str, float] = {}
        for (m, g, vv), s in sorted(ssim.items(), key=lambda kv: kv[0][1]):
            if vv != v:
                continue
            label = (f"{m} (gridsize {g})" if len(grids) > 1 and kind != "probe"
                     and m not in _GRID_FREE else m)
            out.setdefault(label, s[0])  # a gridsize-free arm counts once
        return sorted(((s, m) for m, s in out.items()), reverse=True)

    def clause(v: Any) -> str:
        r = ranking(v)
        if len(r) == 1:
            return f"{r[0][1]} reaches amplitude SSIM {r[0][0]:.3f}"
        (s1, a1), (s2, a2) = r[0], r[1]
        return (f"{a1} has the best amplitude SSIM ({s1:.3f} vs {s2:.3f} for {a2}, "
                f"ahead by {s1 - s2:.3f})")

    first = describe(hard)
    first = first[0].upper() + first[1:]
    if hard == easy:
        return f"{first}, {clause(hard)}."
    return f"{first}, {clause(hard)}; {describe(easy)}, {clause(easy)}."


def write_report(out_dir: str | os.PathLike) -> dict[str, Any]:
    """Collect every finished cell of a study directory and write the results and the report.

    Writes ``results.csv``, ``table.md``, ``curves.png``, ``report.md`` and ``report.html``.

    Returns
    -------
    dict
        ``kind``, ``n_cells``, ``finding``, ``table`` (markdown), ``files``.
    """
    from ptypinn import io, report

    out = Path(out_dir)
    if not (out / "study.yaml").is_file():
        raise FileNotFoundError(f"{out}: no study.yaml (not a study directory)")
    study = study_config_from_dict(io.read_yaml(out / "study.yaml")["study"])
    meta = io.read_json(out / "study.json") if (out / "study.json").is_file() else {}
    kind = study.kind
    rows = collect_results(out)
    io.write_text(out / "results.csv", _csv_text(rows))
    # an FRC that never drops below the threshold resolves down to the Nyquist period (2 px)
    agg = _aggregate([dict(r, value=_NYQUIST_PERIOD_PX) if r["quantity"] == "complex"
                      and r["metric"].startswith("frc_") and r["value"] is None else r
                      for r in rows])
    arm_order = [_ARM_LABEL[a] for a in ARMS]
    models = sorted({r["model"] for r in rows if r["model"] != "scan"},
                    key=lambda m: arm_order.index(m) if m in arm_order else 99)
    grids = sorted({int(r["gridsize"]) for r in rows})
    values = sorted({r["parameter_value"] for r in rows},
                    key=lambda v: PROBE_SCENARIOS.index(v) if kind == "probe" else float(v))
    n_cells = len({r["cell"] for r in rows})
    seeds = sorted({int(r["seed"]) for r in rows})
    finding = study_finding(kind, rows)

    # metrics table: one row per (value, gridsize, arm), mean ± std over seeds
    pname, xlabel = _PARAMETER[kind]
    header = [pname, "gridsize", "model"]
    if kind == "overlap":
        header.append("overlap (test)")
    header += [t[2] for t in _TABLE_METRICS]
    table_rows: list[list[str]] = []
    for v in values:
        for g in grids:
            for m in models:
                if (m, g, v, "timing", "reconstruction_s") not in agg:
                    continue
                line = [_fmt_value(kind, v), str(g), m]
                if kind == "overlap":
                    line.append(_mean_pm(agg.get(("scan", g, v, "test_overlap",
                                                  "overlap_nn_mean")), ".2f"))
                line += [_mean_pm(agg.get((m, g, v, q, k)), spec) for q, k, _, spec in
                         _TABLE_METRICS]
                table_rows.append(line)
    table_md = report.markdown_table(header, table_rows)
    seed_note = (f"mean ± std over {len(seeds)} seeds" if len(seeds) > 1 else "one seed")
    io.write_text(out / "table.md", f"{table_md}\n\n({seed_note}; {_TABLE_NOTE})\n")

    # timings table: per arm, averaged over all cells
    t_header = ["model", "train (s)", "reconstruction (s)", "patterns/s", "speed-up vs PtyChi"]
    t_rows = []
    for m in models:
        def over_cells(metric: str) -> tuple[float, float, int]:
            return _stats([r["value"] for r in rows if r["model"] == m
                           and r["quantity"] == "timing" and r["metric"] == metric])
        t_rows.append([m, _mean_pm(over_cells("train_s"), ".1f"),
                       _mean_pm(over_cells("reconstruction_s"), ".3g"),
                       _mean_pm(over_cells("patterns_per_s"), ".0f"),
                       _mean_pm(over_cells("speedup_vs_ptychi"), ".1f")])

    # curves
    numeric_x = kind != "probe"
    curves: dict[str, dict[str, tuple[list[float], list[float], list[float]]]] = {}
    for m, g, label in _series(models, grids if kind != "probe" else [0]):
        series: dict[str, tuple[list[float], list[float], list[float]]] = {}
        for q, k, _ in _CURVE_PANELS:
            xs, ms, ss = [], [], []
            for i, v in enumerate(values):
                gg = g if kind != "probe" else int(str(v)[-1])
                s = agg.get((m, gg, v, q, k))
                if s is None or s[2] == 0:
                    continue
                xs.append(float(v) if numeric_x else float(i))
                ms.append(s[0])
                ss.append(s[1])
            series[f"{q}.{k}"] = (xs, ms, ss)
        curves[label] = series
    tick_labels = None
    if kind == "probe":
        tick_labels = {float(i): v.replace("_g", "\ngridsize ") for i, v in enumerate(values)}
    elif kind == "overlap":
        g0 = grids[0]
        tick_labels = {}
        for v in values:
            ov = agg.get(("scan", g0, v, "test_overlap", "overlap_nn_mean"))
            tick_labels[float(v)] = f"{float(v):g}" + (f"\n({ov[0]:.2f})" if ov and ov[2] else "")
        xlabel = "scan step (px)  [mean disc overlap with nearest neighbours]"
    files = ["results.csv", "table.md", "report.md", "report.html"]
    figures_md: list[tuple[str, str]] = []
    figures_png: list[tuple[str, bytes]] = []
    if models and values:
        png = report.study_curves_png(
            curves, [(f"{q}.{k}", label) for q, k, label in _CURVE_PANELS], xlabel,
            log_x=kind == "dose", x_tick_labels=tick_labels,
            title=f"{kind} study: quality vs {xlabel.split('  [')[0]} ({seed_note}; error bars "
                  f"± 1 std)")
        io.write_bytes(out / "curves.png", png)
        files.append("curves.png")
        caption = "Quality and reconstruction time vs the study parameter"
        figures_md.append((caption, "curves.png"))
        figures_png.append((caption, png))
    first_seed = seeds[0] if seeds else None
    finished = _finished_cells(out)
    for cell_dir, rec in finished:
        if rec["cell"]["seed"] != first_seed:
            continue
        img = cell_dir / "compare" / "comparison.png"
        if img.is_file():
            c = rec["cell"]
            cap = (f"{c['name']}: {pname} = {_fmt_value(kind, c['value'])}, gridsize "
                   f"{c['gridsize']}, seed {c['seed']}")
            figures_md.append((cap, img.relative_to(out).as_posix()))
            figures_png.append((cap, io.read_bytes(img)))
    notes = []
    for _, rec in finished:
        for arm, why in rec.get("skipped", {}).items():
            notes.append(f"{rec['cell']['name']}: {arm} skipped ({why})")
        for arm, why in rec.get("failed", {}).items():
            notes.append(f"{rec['cell']['name']}: {arm} failed ({why})")
        src = rec.get("notes", {}).get("probe_source")
        if src and "stand-in" in src:
            notes.append(f"{rec['cell']['name']}: experimental probe = {src}")
    command = f"ptypinn study {out / 'study.yaml'} -o {out}"
    if meta.get("source"):
        sets = "".join(f" --set {s}" for s in meta.get("overrides", []))
        command = f"ptypinn study {meta['source']} -o {meta.get('out_dir', out)}{sets}"
    notes.insert(0, _TABLE_NOTE[0].upper() + _TABLE_NOTE[1:] + ".")
    tables = [("Metrics (" + seed_note + ")", header, table_rows),
              ("Timings (mean ± std over cells)", t_header, t_rows)]
    title = f"ptypinn {kind} study ({n_cells} cells, arms: {', '.join(models) or 'none'})"
    io.write_text(out / "report.md", report.study_report_md(
        title, finding, command, tables, figures_md, notes))
    io.write_text(out / "report.html", report.study_report_html(
        title, finding, command, tables, figures_png, notes))
    log.info("study report written to %s (%d cells): %s", out, n_cells, finding)
    return {"kind": kind, "n_cells": n_cells, "finding": finding, "table": table_md,
            "files": files}
