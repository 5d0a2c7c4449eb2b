"""Study configuration: the ``study:`` section, its kinds and parameters, and :func:`load_study`.

Shared by :mod:`ptypinn.workflows.studies` (planning and running cells) and
:mod:`ptypinn.workflows.study_results` (tables and report), so neither imports the other's
internals.  The section format is described in :mod:`ptypinn.workflows.studies`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Sequence

from ptypinn import io
from ptypinn.config import (
    ARM_LABELS,
    PTYCHI_ENGINES,
    Config,
    PtychiEngine,
    ConfigError,
    apply_overrides,
    from_dict,
    require,
)

__all__ = [
    "STUDY_KINDS",
    "ARMS",
    "PARAMETERS",
    "PROBE_SCENARIOS",
    "StudyConfig",
    "study_config_from_dict",
    "load_study",
    "check_cell_name",
]

STUDY_KINDS = ("dose", "overlap", "generalization", "probe")
ARMS = tuple(ARM_LABELS)
PROBE_SCENARIOS = ("ideal_g1", "ideal_g2", "experimental_g1", "experimental_g2")

PARAMETERS = {
    "dose": ("photons_per_pattern", "dose (photons per pattern)"),
    "overlap": ("scan_step_px", "scan step (px)"),
    "generalization": ("n_train_patterns", "training-set size (patterns)"),
    "probe": ("scenario", "scenario (probe, gridsize)"),
}
"""Per study kind: (parameter name in the tables, axis label with units)."""


# ------------------------------------------------------------------------------------------------
# study configuration


@dataclass(frozen=True)
class StudyConfig:
    """The ``study:`` section (parsed by :func:`ptypinn.config.from_dict`, like every section).

    Attributes
    ----------
    kind : {"dose", "overlap", "generalization", "probe"}
    values : tuple
        Photons per pattern (dose, > 0), scan steps in px (overlap, > 0), training-set sizes in
        patterns (generalization, integers >= 1) or scenario names (probe; default all four).
    arms : tuple of {"pinn", "baseline", "ptychi", "pinn_refine", "refine_flat"}
        ``pinn_refine`` (the refinement started from the PINN's object; needs ``pinn``) and
        ``refine_flat`` (the refinement from a flat object) use the base config's ``refine``
        section with ``refine_epochs`` as the cap.
    seeds : tuple of int
        Repeated trials.
    ptychi_iterations : int
        pty-chi epochs (overrides ``iterative.iterations`` of the base config).
    ptychi_algorithm : {"lsqml", "epie", "rpie", "dm"}
        pty-chi engine (overrides ``iterative.algorithm``) when ``ptychi_engines`` is empty.
    ptychi_engines : tuple of engine names
        Run each of these pty-chi engines and keep, per cell, the one with the lowest data NLL
        (a truth-free choice; every engine's NLL, epochs and time are recorded).
    refine_epochs : int
        Cap of the refinement arms' epochs (overrides ``refine.epochs``), ``>= 1``.
    test_object_kind : str, optional
        Generalization: object kind of the test scan (out of distribution).
    gridsizes : tuple of int
        Overlap: run every step at each gridsize (default: ``grouping.gridsize`` only).
    experimental_probe_path : str, optional
        Probe study: scan file whose probe is the experimental probe.
    """

    kind: Literal["dose", "overlap", "generalization", "probe"]
    values: tuple[float | str, ...] = ()
    arms: tuple[str, ...] = ("pinn", "ptychi")
    seeds: tuple[int, ...] = (0,)
    ptychi_iterations: int = 50
    ptychi_algorithm: PtychiEngine = "epie"
    ptychi_engines: tuple[str, ...] = ()
    refine_epochs: int = 200
    test_object_kind: str | None = None
    gridsizes: tuple[int, ...] = ()
    experimental_probe_path: str | None = None

    def __post_init__(self) -> None:
        s = "study"
        require(self.kind in STUDY_KINDS, f"{s}.kind", f"one of {list(STUDY_KINDS)}", self.kind)
        require(bool(self.arms) and all(a in ARMS for a in self.arms)
                and len(set(self.arms)) == len(self.arms), f"{s}.arms",
                f"a non-empty list of distinct names from {list(ARMS)}", list(self.arms))
        require("pinn_refine" not in self.arms or "pinn" in self.arms, f"{s}.arms",
                "'pinn' with 'pinn_refine' (the refinement starts from the PINN's object)",
                list(self.arms))
        require(isinstance(self.refine_epochs, int) and self.refine_epochs >= 1,
                f"{s}.refine_epochs", "an integer >= 1", self.refine_epochs)
        require(bool(self.seeds) and len(set(self.seeds)) == len(self.seeds), f"{s}.seeds",
                "a non-empty list of distinct integers", list(self.seeds))
        require(self.ptychi_iterations >= 1, f"{s}.ptychi_iterations", ">= 1",
                self.ptychi_iterations)
        require(self.ptychi_algorithm in PTYCHI_ENGINES, f"{s}.ptychi_algorithm",
                f"one of {list(PTYCHI_ENGINES)}", self.ptychi_algorithm)
        require(all(e in PTYCHI_ENGINES for e in self.ptychi_engines)
                and len(set(self.ptychi_engines)) == len(self.ptychi_engines),
                f"{s}.ptychi_engines", f"distinct names from {list(PTYCHI_ENGINES)}",
                list(self.ptychi_engines))
        require(all(g in (1, 2, 3) for g in self.gridsizes), f"{s}.gridsizes",
                "values in {1, 2, 3}", list(self.gridsizes))
        require(not self.gridsizes or self.kind == "overlap", f"{s}.gridsizes",
                "to be set only for kind 'overlap'", list(self.gridsizes))
        require(self.test_object_kind is None or self.kind == "generalization",
                f"{s}.test_object_kind", "to be set only for kind 'generalization'",
                self.test_object_kind)
        require(self.test_object_kind in (None, "lines", "grf", "siemens_star"),
                f"{s}.test_object_kind", "None, 'lines', 'grf' or 'siemens_star'",
                self.test_object_kind)
        v = self.values
        if self.kind == "probe":
            require(all(x in PROBE_SCENARIOS for x in v) and len(set(v)) == len(v),
                    f"{s}.values", f"distinct scenario names from {list(PROBE_SCENARIOS)}",
                    list(v))
            return
        require(bool(v) and len(set(v)) == len(v), f"{s}.values",
                "a non-empty list of distinct numbers", list(v))
        require(all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                    and x > 0 for x in v), f"{s}.values", "finite numbers > 0", list(v))
        if self.kind == "generalization":
            require(all(float(x).is_integer() for x in v), f"{s}.values",
                    "integers (training patterns)", list(v))
            object.__setattr__(self, "values", tuple(int(x) for x in v))

    @property
    def engines(self) -> tuple[str, ...]:
        """The pty-chi engines a cell runs (``ptychi_engines``, else ``ptychi_algorithm``)."""
        return tuple(self.ptychi_engines) or (self.ptychi_algorithm,)

    @property
    def scenarios(self) -> tuple[str, ...]:
        """Probe study: the scenarios run (all four when ``values`` is empty)."""
        return tuple(str(x) for x in self.values) or PROBE_SCENARIOS


def study_config_from_dict(data: Mapping[str, Any] | None) -> StudyConfig:
    """Build and validate a :class:`StudyConfig` from the ``study:`` mapping.

    Raises
    ------
    ptypinn.config.ConfigError (a ValueError)
        Unknown key (the closest valid one suggested), missing ``kind`` or an invalid value.
    """
    return from_dict(StudyConfig, data, prefix="study")


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
        data = io.read_yaml(source)
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping of sections at the top level")
    data = apply_overrides(data, overrides)
    if "study" not in data:
        raise ConfigError("study: expected a 'study:' section (kind, values, arms, ...), got none")
    study = study_config_from_dict(data.pop("study"))
    return study, from_dict(Config, data)


def check_cell_name(name: Any, where: str) -> str:
    """A cell name that stays inside ``STUDY/cells/``: a plain, non-empty directory name.

    Raises
    ------
    ValueError
        Naming ``where``, for a name with ``..``, a path separator, an absolute path, a leading
        dot or anything that is not a string.
    """
    ok = (isinstance(name, str) and name not in ("", ".", "..") and ".." not in name
          and "/" not in name and "\\" not in name and not name.startswith(".")
          and not os.path.isabs(name) and "\x00" not in name)
    if not ok:
        raise ValueError(f"{where}: cell name {name!r}: expected a plain directory name (no "
                         "'..', path separators or absolute paths)")
    return name
