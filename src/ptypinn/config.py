"""Run configuration: frozen dataclasses with units in field names, validated at construction.

A run is described by one :class:`Config` made of sections (``simulation``, ``grouping``,
``model``, ``train``, ``infer``).  Configs are plain values: they are built from YAML or dicts,
modified with ``--set section.field=value`` overrides, passed explicitly to every function that
needs them and written next to every output (:func:`to_dict`).  There is no global state.

Unknown keys are an error naming the key and the closest valid one.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Sequence

import yaml

__all__ = [
    "ConfigError",
    "SimulationConfig",
    "GroupingConfig",
    "ModelConfig",
    "TrainConfig",
    "InferConfig",
    "Config",
    "from_dict",
    "to_dict",
    "load_config",
    "apply_overrides",
]


class ConfigError(ValueError):
    """A configuration value or key is invalid (a user error: one line, names the key)."""


def _require(cond: bool, key: str, expected: str, actual: Any) -> None:
    if not cond:
        raise ConfigError(f"{key}: expected {expected}, got {actual!r}")


@dataclass(frozen=True)
class SimulationConfig:
    """Synthetic scan: object, probe, scan pattern and dose.

    ``scan_step_px`` or ``overlap_fraction`` sets the scan density; if ``overlap_fraction`` is
    given it wins and the step becomes ``2 * probe_radius_px * (1 - overlap_fraction)``.
    """

    object_kind: Literal["lines", "grf", "image", "siemens_star"] = "lines"
    object_size_px: int = 392
    image_path: str | None = None
    object_amplitude_range: tuple[float, float] = (0.3, 1.0)
    object_phase_max_rad: float = 1.0
    probe_kind: Literal["disk", "gaussian", "defocused_disk", "file"] = "disk"
    probe_size_px: int = 64
    probe_radius_px: float = 16.0
    probe_defocus_rad: float = 20.0
    probe_file: str | None = None
    scan_kind: Literal["raster", "jittered", "random", "fermat"] = "raster"
    scan_step_px: float = 8.0
    overlap_fraction: float | None = None
    scan_jitter_px: float = 1.0
    n_random_positions: int = 1024
    photons_per_pattern: float | None = 1e9
    seed: int = 0

    def __post_init__(self) -> None:
        s = "simulation"
        _require(self.probe_size_px in (32, 64, 128, 256), f"{s}.probe_size_px",
                 "one of 32, 64, 128, 256", self.probe_size_px)
        _require(self.object_size_px >= self.probe_size_px + 2, f"{s}.object_size_px",
                 f">= probe_size_px + 2 ({self.probe_size_px + 2})", self.object_size_px)
        _require(0 < self.probe_radius_px <= self.probe_size_px / 2, f"{s}.probe_radius_px",
                 f"in (0, {self.probe_size_px / 2}]", self.probe_radius_px)
        _require(self.scan_step_px > 0, f"{s}.scan_step_px", "> 0", self.scan_step_px)
        _require(self.overlap_fraction is None or 0 <= self.overlap_fraction < 1,
                 f"{s}.overlap_fraction", "None or in [0, 1)", self.overlap_fraction)
        _require(self.photons_per_pattern is None or self.photons_per_pattern > 0,
                 f"{s}.photons_per_pattern", "None (noise-free) or > 0", self.photons_per_pattern)
        lo, hi = self.object_amplitude_range
        _require(0 < lo <= hi, f"{s}.object_amplitude_range", "0 < low <= high", (lo, hi))
        _require(self.object_kind != "image" or self.image_path, f"{s}.image_path",
                 "a file path when object_kind is 'image'", self.image_path)
        _require(self.probe_kind != "file" or self.probe_file, f"{s}.probe_file",
                 "a file path when probe_kind is 'file'", self.probe_file)
        _require(self.scan_jitter_px >= 0, f"{s}.scan_jitter_px", ">= 0", self.scan_jitter_px)
        _require(self.n_random_positions > 0, f"{s}.n_random_positions", "> 0",
                 self.n_random_positions)

    @property
    def effective_step_px(self) -> float:
        """Scan step in pixels after applying ``overlap_fraction`` if it is set."""
        if self.overlap_fraction is None:
            return float(self.scan_step_px)
        return max(2.0 * self.probe_radius_px * (1.0 - self.overlap_fraction), 0.5)


@dataclass(frozen=True)
class GroupingConfig:
    """How patterns are grouped for the overlap constraint (SPEC §4)."""

    gridsize: int = 1
    k_neighbors: int = 6
    n_groups: int | None = None
    allow_oversampling: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        s = "grouping"
        _require(self.gridsize in (1, 2, 3), f"{s}.gridsize", "1, 2 or 3", self.gridsize)
        _require(self.k_neighbors >= self.gridsize**2 - 1, f"{s}.k_neighbors",
                 f">= gridsize**2 - 1 ({self.gridsize**2 - 1})", self.k_neighbors)
        _require(self.n_groups is None or self.n_groups > 0, f"{s}.n_groups", "None or > 0",
                 self.n_groups)

    @property
    def group_size(self) -> int:
        """Number of patterns per group, C = gridsize**2."""
        return self.gridsize**2


@dataclass(frozen=True)
class ModelConfig:
    """Generator and loss.  ``kind='pinn'`` trains through physics; ``'baseline'`` is supervised."""

    kind: Literal["pinn", "baseline"] = "pinn"
    generator: Literal["unet"] = "unet"
    width: int = 32
    depth: int = 3
    amplitude_max: float = 1.5
    trainable_intensity_scale: bool = False
    tv_weight: float = 0.0
    poisson_eps: float = 1e-6
    object_big: bool = True

    def __post_init__(self) -> None:
        s = "model"
        _require(self.kind in ("pinn", "baseline"), f"{s}.kind", "'pinn' or 'baseline'", self.kind)
        _require(self.generator == "unet", f"{s}.generator", "'unet'", self.generator)
        _require(self.width >= 4, f"{s}.width", ">= 4", self.width)
        _require(1 <= self.depth <= 5, f"{s}.depth", "in [1, 5]", self.depth)
        _require(self.amplitude_max > 0, f"{s}.amplitude_max", "> 0", self.amplitude_max)
        _require(self.tv_weight >= 0, f"{s}.tv_weight", ">= 0", self.tv_weight)
        _require(self.poisson_eps >= 1e-12, f"{s}.poisson_eps", ">= 1e-12", self.poisson_eps)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and hardware (Lightning)."""

    epochs: int = 30
    batch_size: int = 16
    learning_rate: float = 1e-3
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    val_fraction: float = 0.1
    early_stopping_patience: int | None = None
    seed: int = 0
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"
    devices: int = 1
    num_nodes: int = 1
    strategy: Literal["auto", "ddp"] = "auto"
    precision: Literal["32", "bf16-mixed", "16-mixed"] = "32"
    max_time_s: float | None = None
    tensorboard: bool = False
    progress_bar: bool = True

    def __post_init__(self) -> None:
        s = "train"
        _require(self.epochs >= 1, f"{s}.epochs", ">= 1", self.epochs)
        _require(self.batch_size >= 1, f"{s}.batch_size", ">= 1", self.batch_size)
        _require(self.learning_rate > 0, f"{s}.learning_rate", "> 0", self.learning_rate)
        _require(0 <= self.val_fraction < 1, f"{s}.val_fraction", "in [0, 1)", self.val_fraction)
        _require(self.devices >= 1, f"{s}.devices", ">= 1", self.devices)
        _require(self.num_nodes >= 1, f"{s}.num_nodes", ">= 1", self.num_nodes)


@dataclass(frozen=True)
class InferConfig:
    """Streaming inference and stitching."""

    batch_size: int = 256
    crop_px: int | None = None
    mixed_precision: bool = False
    device: str = "auto"
    phase_sync: bool = True
    phase_sync_reg: float | None = None

    def __post_init__(self) -> None:
        _require(self.batch_size >= 1, "infer.batch_size", ">= 1", self.batch_size)
        _require(self.phase_sync_reg is None or self.phase_sync_reg >= 0,
                 "infer.phase_sync_reg", "None or >= 0", self.phase_sync_reg)
        _require(self.crop_px is None or self.crop_px >= 1, "infer.crop_px", "None or >= 1",
                 self.crop_px)


@dataclass(frozen=True)
class Config:
    """A whole run: one section per stage."""

    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    grouping: GroupingConfig = field(default_factory=GroupingConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    infer: InferConfig = field(default_factory=InferConfig)


# ------------------------------------------------------------------------------------------------
# dict / YAML conversion


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert ``value`` (from YAML or an override) to annotation ``tp``; raise ConfigError."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return from_dict(tp, value, prefix=key)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if origin is Literal:
        if value in args:
            return value
        if isinstance(value, (int, float)) and str(value) in args:
            return str(value)
        raise ConfigError(f"{key}: expected one of {list(args)}, got {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    return value


def _unknown_key(key: str, valid: Sequence[str], prefix: str) -> ConfigError:
    full = f"{prefix}.{key}" if prefix else key
    close = difflib.get_close_matches(key, list(valid), n=1)
    hint = f"; did you mean '{(prefix + '.') if prefix else ''}{close[0]}'?" if close else ""
    return ConfigError(f"unknown config key '{full}'{hint} (valid: {', '.join(valid)})")


def from_dict(cls: type, data: Mapping[str, Any] | None, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a (nested) mapping, checking keys and types.

    Raises
    ------
    ConfigError
        On an unknown key (with the closest valid key suggested) or a value of the wrong type.
    """
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise _unknown_key(str(key), names, prefix)
        full = f"{prefix}.{key}" if prefix else key
        kwargs[key] = _coerce(value, hints[key], full)
    try:
        return cls(**kwargs)
    except TypeError as e:  # pragma: no cover - guarded by the key check above
        raise ConfigError(str(e)) from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of a config (tuples become lists), ready for YAML/JSON."""

    def conv(v: Any) -> Any:
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return conv(dataclasses.asdict(cfg))


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``section.field=value`` strings to a nested dict (values parsed as YAML scalars).

    The result still has to go through :func:`from_dict`, which validates keys and types.
    """
    out: dict[str, Any] = {k: dict(v) if isinstance(v, Mapping) else v for k, v in data.items()}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected section.field=value")
        path, raw = item.split("=", 1)
        parts = path.strip().split(".")
        if len(parts) != 2 or not all(parts):
            raise ConfigError(f"--set {item!r}: expected section.field=value")
        section, name = parts
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        sect = out.setdefault(section, {})
        if not isinstance(sect, dict):
            raise ConfigError(f"--set {item!r}: '{section}' is not a section")
        sect[name] = value
    return out


def load_config(path: str | None = None, overrides: Sequence[str] = ()) -> Config:
    """Load a :class:`Config` from an optional YAML file plus ``--set`` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        from ptypinn import io  # only io touches files

        data = io.read_yaml(path)
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    data = apply_overrides(data, overrides)
    return from_dict(Config, data)
