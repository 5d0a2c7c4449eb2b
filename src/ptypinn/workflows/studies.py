"""Parameter studies (SPEC §9): study configuration, cell planning and (resumable) running.

Kinds: dose, overlap, generalization, probe; config-driven.

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

Finished cells are read back and reported by :mod:`ptypinn.workflows.study_results`
(:func:`ptypinn.workflows.study_results.write_report`: ``results.csv``, ``table.md``, ``curves.png``,
``report.md`` and ``report.html``).
"""

from __future__ import annotations

import dataclasses
import difflib
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
]

log = logging.getLogger(__name__)

STUDY_KINDS = ("dose", "overlap", "generalization", "probe")
ARMS = ("pinn", "baseline", "ptychi")
PROBE_SCENARIOS = ("ideal_g1", "ideal_g2", "experimental_g1", "experimental_g2")
PTYCHI_ALGORITHMS = ("epie", "rpie", "lsqml", "dm")
_ARM_LABEL = {"pinn": "PINN", "baseline": "Baseline", "ptychi": "PtyChi"}

# (parameter name in the tables, axis label with units)
_PARAMETER = {
    "dose": ("photons_per_pattern", "dose (photons per pattern)"),
    "overlap": ("scan_step_px", "scan step (px)"),
    "generalization": ("n_train_patterns", "training-set size (patterns)"),
    "probe": ("scenario", "scenario (probe, gridsize)"),
}


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
    from ptypinn.workflows.compare import compare, run_arms
    from ptypinn.baselines.ptychi import ptychi_available
    from ptypinn.pinn.train import TrainingDiverged, train_model

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
        :func:`ptypinn.workflows.study_results.write_report`'s summary plus ``cells_run`` and
        ``cells_skipped`` (names).
    """
    from ptypinn import io
    # lazy: study_results imports this module at load time, so a top-level import would cycle
    from ptypinn.workflows.study_results import write_report

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
