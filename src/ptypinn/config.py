"""Run configuration: frozen dataclasses with units in field names, validated at construction.

A run is described by one :class:`Config` made of sections (``simulation``, ``grouping``,
``model``, ``train``, ``infer``, ``iterative``, ``refine``).  Configs are plain values: they are built from YAML or dicts,
modified with ``--set section.field=value`` overrides, passed explicitly to every function that
needs them and written next to every output (:func:`to_dict`).  There is no global state.

Unknown keys are an error naming the key and the closest valid one.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Sequence

import yaml

__all__ = [
    "ARM_LABELS",
    "PTYCHI_ENGINES",
    "PtychiEngine",
    "require",
    "ConfigError",
    "SimulationConfig",
    "GroupingConfig",
    "ModelConfig",
    "TrainConfig",
    "InferConfig",
    "IterativeConfig",
    "RefineConfig",
    "REFINE_ENGINES",
    "REFINE_OPTIMIZERS",
    "Config",
    "from_dict",
    "to_dict",
    "build_config",
    "apply_overrides",
    "FieldDoc",
    "UNIT_SUFFIXES",
    "SECTIONS",
    "field_docs",
    "config_reference",
]


ARM_LABELS = {"pinn": "PINN", "baseline": "Baseline", "ptychi": "PtyChi",
              "pinn_refine": "PINN+refine", "refine_flat": "refine from flat"}
"""Display name of each reconstruction arm (the ``model`` column of every table)."""

PtychiEngine = Literal["lsqml", "epie", "rpie", "dm"]
PTYCHI_ENGINES: tuple[str, ...] = typing.get_args(PtychiEngine)
"""The pty-chi engines the iterative arm can run (``iterative.algorithm``)."""


class ConfigError(ValueError):
    """A configuration value or key is invalid (a user error: one line, names the key)."""


def require(cond: bool, key: str, expected: str, actual: Any) -> None:
    """Raise :class:`ConfigError` ``"{key}: expected {expected}, got {actual!r}"`` unless
    ``cond`` (the one error form of every config check)."""
    if not cond:
        raise ConfigError(f"{key}: expected {expected}, got {actual!r}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_device(d: Any) -> bool:
    return isinstance(d, str) and (d in ("auto", "cpu", "cuda")
                                   or (d.startswith("cuda:") and d[5:].isdigit()))


@dataclass(frozen=True)
class SimulationConfig:
    """Synthetic scan: object, probe, scan pattern and dose (``simulation`` section).

    ``scan_step_px`` or ``overlap_fraction`` sets the scan density; if ``overlap_fraction`` is
    given it wins and the step becomes ``2 * probe_radius_px * (1 - overlap_fraction)``.

    Attributes
    ----------
    object_kind : {"lines", "grf", "image", "siemens_star"}
        Object family.
    object_size_px : int
        Side of the square object (px), >= probe_size_px + 2.
    image_path : str or None
        Grayscale image for ``object_kind: image``.
    object_amplitude_range : (float, float)
        Lowest and highest amplitude transmission of the object.
    object_phase_max_rad : float
        Largest phase of the object (rad).
    probe_kind : {"disk", "gaussian", "defocused_disk", "file"}
        Illumination; ``file`` reads ``probe_file``.
    probe_size_px : int
        Pattern and probe window size N (px): 32, 64, 128 or 256.
    probe_radius_px : float
        Probe radius (px), in (0, N/2].
    probe_defocus_rad : float
        Quadratic phase at the rim of a ``defocused_disk`` probe (rad).
    probe_file : str or None
        Probe source for ``probe_kind: file`` (a ``.npy`` array or any scan file).
    scan_kind : {"raster", "jittered", "random", "fermat"}
        Scan pattern.
    scan_step_px : float
        Scan step (px).
    overlap_fraction : float or None
        Linear overlap of neighbouring probe discs in [0, 1); overrides ``scan_step_px``.
    scan_jitter_px : float
        Standard deviation of the jitter of ``jittered`` scans (px).
    n_random_positions : int
        Number of positions of ``random`` scans.
    photons_per_pattern : float or None
        Mean expected photon count per pattern; None: noise-free at a nominal 1e9.
    seed : int
        Seed of every random choice (object, positions, noise).
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
        require(self.probe_size_px in (32, 64, 128, 256), f"{s}.probe_size_px",
                "one of 32, 64, 128, 256", self.probe_size_px)
        require(self.object_size_px >= self.probe_size_px + 2, f"{s}.object_size_px",
                f">= probe_size_px + 2 ({self.probe_size_px + 2})", self.object_size_px)
        require(0 < self.probe_radius_px <= self.probe_size_px / 2, f"{s}.probe_radius_px",
                f"in (0, {self.probe_size_px / 2}]", self.probe_radius_px)
        require(self.scan_step_px > 0, f"{s}.scan_step_px", "> 0", self.scan_step_px)
        require(self.overlap_fraction is None or 0 <= self.overlap_fraction < 1,
                f"{s}.overlap_fraction", "None or in [0, 1)", self.overlap_fraction)
        require(self.photons_per_pattern is None or self.photons_per_pattern > 0,
                f"{s}.photons_per_pattern", "None (noise-free) or > 0", self.photons_per_pattern)
        lo, hi = self.object_amplitude_range
        require(0 < lo <= hi, f"{s}.object_amplitude_range", "0 < low <= high", (lo, hi))
        require(self.object_kind != "image" or self.image_path, f"{s}.image_path",
                "a file path when object_kind is 'image'", self.image_path)
        require(self.probe_kind != "file" or self.probe_file, f"{s}.probe_file",
                "a file path when probe_kind is 'file'", self.probe_file)
        require(self.scan_jitter_px >= 0, f"{s}.scan_jitter_px", ">= 0", self.scan_jitter_px)
        require(self.n_random_positions > 0, f"{s}.n_random_positions", "> 0",
                self.n_random_positions)

    @property
    def effective_step_px(self) -> float:
        """Scan step in pixels after applying ``overlap_fraction`` if it is set."""
        if self.overlap_fraction is None:
            return float(self.scan_step_px)
        return max(2.0 * self.probe_radius_px * (1.0 - self.overlap_fraction), 0.5)


@dataclass(frozen=True)
class GroupingConfig:
    """How patterns are grouped for the overlap constraint (``grouping`` section, SPEC §4).

    Attributes
    ----------
    gridsize : int
        g: C = g**2 patterns per group (1, 2 or 3).
    k_neighbors : int
        Nearest neighbours (KD-tree) a group's other members are drawn from, >= C - 1.
    n_groups : int or None
        Training groups; None: one per pattern.
    allow_oversampling : bool
        Allow more groups than patterns (several draws per seed pattern).
    seed : int
        Seed of the member draws.
    """

    gridsize: int = 1
    k_neighbors: int = 6
    n_groups: int | None = None
    allow_oversampling: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        s = "grouping"
        require(self.gridsize in (1, 2, 3), f"{s}.gridsize", "1, 2 or 3", self.gridsize)
        require(self.k_neighbors >= self.gridsize**2 - 1, f"{s}.k_neighbors",
                f">= gridsize**2 - 1 ({self.gridsize**2 - 1})", self.k_neighbors)
        require(self.n_groups is None or self.n_groups > 0, f"{s}.n_groups", "None or > 0",
                self.n_groups)

    @property
    def group_size(self) -> int:
        """Number of patterns per group, C = gridsize**2."""
        return self.gridsize**2


@dataclass(frozen=True)
class ModelConfig:
    """Generator and loss (``model`` section).

    Attributes
    ----------
    kind : {"pinn", "baseline"}
        ``pinn`` trains through the physics (no ground truth); ``baseline`` is supervised (L1 on
        the true object, simulation only).
    generator : {"unet", "spectral"}
        Generator architecture: ``unet`` (:class:`ptypinn.pinn.networks.UNetGenerator`) or
        ``spectral``, a residual encoder-decoder with spectral-convolution blocks
        (:class:`ptypinn.pinn.spectral.SpectralResNetGenerator`); both start from the same
        physics layer.
    width : int
        Channels of the first level (level k has ``width * 2**k``).
    depth : int
        Down-sampling levels (1-5; N must be divisible by 2**depth).
    spectral_modes : int
        ``spectral`` only: Fourier modes kept per axis by each spectral convolution, >= 1
        (clipped to each level's size: ``min(m, n_level // 2)`` rows of each sign,
        ``min(m, n_level // 2 + 1)`` columns).
    spectral_blocks : int
        ``spectral`` only: spectral residual blocks at the bottleneck, >= 0.
    amplitude_max : float or None
        Upper bound of the predicted amplitude (transmission).  None (the default): derived from
        the training data when training starts (:func:`ptypinn.pinn.models.derive_amplitude_max`:
        ``max(1.5, 2 x`` the 99.9th percentile of the physics layer's amplitude inside the
        probe``)``) and stored, resolved, in the bundle's config.
    trainable_intensity_scale : bool
        Learn one scalar factor on the predicted counts.
    tv_weight : float
        Weight of a total-variation term on the patches (0: off).
    poisson_eps : float
        ``eps`` inside the Poisson log-likelihood, >= 1e-12.
    learn_probe : bool
        Learn the probe jointly with the network (``pinn`` only): the probe becomes a trained
        complex parameter, starting from the scan's probe (or the estimate from the data when
        the file has none), its total power ``sum |P|^2`` kept at the start value (photons per
        pattern in free space: this pins the object/probe scale), its modes re-orthogonalised
        after every step; the bundle saves the learned probe.  Default False (``train``: the
        probe of a simulated or calibrated scan is known); ``ptypinn reconstruct`` turns it on
        for a scan without a probe (see ``--learn-probe``).
    probe_modes : int or None
        Incoherent probe modes to learn, 1-8 (``learn_probe`` only); None: as many as the scan's
        probe has.  Modes added to the scan's are initialised orthogonal, with 5 % of the power
        each.
    probe_learning_rate : float
        Adam's step on the probe relative to its peak amplitude at the start (dimensionless,
        > 0; the schedule of ``train.lr_schedule`` applies).
    probe_start_epochs : int
        With ``learn_probe``: epochs (a cap, ``>= 0``) of Poisson maximum-likelihood refinement
        of a flat object and the probe over the whole scan (:func:`ptypinn.refinement.refine`
        with ``refine_probe``, default step and checks) before the network trains; its probe,
        rescaled to the start power, is the network's starting probe.  The network's own
        gradient moves a badly wrong probe little (measured, docs/benchmarks.md), one global
        object does.  0: off.
    probe_input : bool
        The probe is a runtime input (``pinn`` only; not with ``learn_probe``): the physics
        layer and the loss use each batch's own probe, and the generator also sees it as three
        extra input channels (zero-initialised weights; see
        :func:`ptypinn.pinn.spectral.probe_features`).  Training may then draw from several
        scans with different probes (``ptypinn train --scan A --scan B``) and inference uses the
        scan's probe, not the bundle's.  Default False: the training probe is fixed in the
        bundle (old bundles behave as before).
    """

    kind: Literal["pinn", "baseline"] = "pinn"
    generator: Literal["unet", "spectral"] = "unet"
    width: int = 32
    depth: int = 3
    spectral_modes: int = 16
    spectral_blocks: int = 2
    amplitude_max: float | None = None
    trainable_intensity_scale: bool = False
    tv_weight: float = 0.0
    poisson_eps: float = 1e-6
    learn_probe: bool = False
    probe_modes: int | None = None
    probe_learning_rate: float = 1e-3
    probe_start_epochs: int = 50
    probe_input: bool = False

    def __post_init__(self) -> None:
        s = "model"
        require(self.kind in ("pinn", "baseline"), f"{s}.kind", "'pinn' or 'baseline'", self.kind)
        require(self.generator in ("unet", "spectral"), f"{s}.generator",
                "'unet' or 'spectral'", self.generator)
        require(_is_int(self.spectral_modes) and self.spectral_modes >= 1,
                f"{s}.spectral_modes", "an integer >= 1", self.spectral_modes)
        require(_is_int(self.spectral_blocks) and self.spectral_blocks >= 0,
                f"{s}.spectral_blocks", "an integer >= 0", self.spectral_blocks)
        require(self.width >= 4, f"{s}.width", ">= 4", self.width)
        require(1 <= self.depth <= 5, f"{s}.depth", "in [1, 5]", self.depth)
        require(self.amplitude_max is None or (math.isfinite(self.amplitude_max)
                                               and self.amplitude_max > 0),
                f"{s}.amplitude_max", "None (from the data) or a finite number > 0",
                self.amplitude_max)
        require(self.tv_weight >= 0, f"{s}.tv_weight", ">= 0", self.tv_weight)
        require(self.poisson_eps >= 1e-12, f"{s}.poisson_eps", ">= 1e-12", self.poisson_eps)
        require(not self.learn_probe or self.kind == "pinn", f"{s}.learn_probe",
                "false for kind 'baseline' (only the PINN learns a probe)", self.learn_probe)
        require(not self.probe_input or (self.kind == "pinn" and not self.learn_probe),
                f"{s}.probe_input", "false for kind 'baseline' or with learn_probe",
                self.probe_input)
        require(self.probe_modes is None or 1 <= self.probe_modes <= 8, f"{s}.probe_modes",
                "None or in [1, 8]", self.probe_modes)
        require(math.isfinite(self.probe_learning_rate) and self.probe_learning_rate > 0,
                f"{s}.probe_learning_rate", "a finite number > 0", self.probe_learning_rate)
        require(_is_int(self.probe_start_epochs) and self.probe_start_epochs >= 0,
                f"{s}.probe_start_epochs", "an integer >= 0", self.probe_start_epochs)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and hardware (``train`` section; Lightning).

    Attributes
    ----------
    epochs : int
        Passes over the training groups.
    batch_size : int
        Groups per optimisation step (per device).
    learning_rate : float
        Adam's learning rate.
    lr_schedule : {"cosine", "constant"}
        Cosine decay to 2 % over ``epochs``, or constant.
    val_fraction : float
        Fraction of groups (a spatial slab) held out for validation, in [0, 1).
    early_stopping_patience : int or None
        Stop after this many epochs without a better validation loss, ``>= 0``; None or 0: off.
    seed : int
        Seed of weights, shuffling and Lightning.
    accelerator : {"auto", "cpu", "gpu"}
        Lightning accelerator; ``auto`` picks a GPU when there is one.
    devices : int
        Devices per node.
    num_nodes : int
        Nodes (multi-node DDP).
    strategy : {"auto", "ddp"}
        Lightning strategy; ``ddp`` for data-parallel training on several devices.
    precision : {"32", "bf16-mixed", "16-mixed"}
        Lightning numerical precision of training.
    max_time_s : float or None
        Wall-time cap of the fit (s), ``> 0``; None: no cap.
    tensorboard : bool
        Also log to TensorBoard.
    progress_bar : bool
        Show Lightning's progress bar (the command line turns it off when its output does not
        go to a terminal).
    collapse_check : bool
        The collapse guard (needs a validation split, ``val_fraction > 0``): after every
        validation epoch, compare the predicted amplitude ``|O|`` with the physics estimate
        ``|O0|`` inside the probe core (``|P|^2 >= 0.5 max``).  The epoch is *flagged* when both
        the spread ratio (mean per-patch std of ``|O|`` over that of ``|O0|``) is below
        ``collapse_min_spread_ratio`` and the mean per-patch Pearson correlation of ``|O|`` with
        ``|O0|`` is below ``collapse_min_correlation``; after ``collapse_patience_epochs``
        flagged epochs in a row training stops with
        :class:`ptypinn.pinn.TrainingCollapsed`.  An object with no amplitude contrast at all
        (a pure phase object), correctly reconstructed, also has a flat amplitude: turn the
        check off for such objects.
    collapse_min_spread_ratio : float
        In [0, 1]; below it the amplitude counts as flat (0.05: 20x less structure than
        ``|O0|``).
    collapse_min_correlation : float
        In [-1, 1]; below it the amplitude counts as unrelated to the physics estimate (at the
        start of training it is 1: the generators start from ``O0``).
    collapse_patience_epochs : int
        Consecutive flagged validation epochs before stopping, ``>= 1``.
    """

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
    collapse_check: bool = True
    collapse_min_spread_ratio: float = 0.05
    collapse_min_correlation: float = 0.2
    collapse_patience_epochs: int = 2

    def __post_init__(self) -> None:
        s = "train"
        require(self.epochs >= 1, f"{s}.epochs", ">= 1", self.epochs)
        require(self.batch_size >= 1, f"{s}.batch_size", ">= 1", self.batch_size)
        require(self.learning_rate > 0, f"{s}.learning_rate", "> 0", self.learning_rate)
        require(0 <= self.val_fraction < 1, f"{s}.val_fraction", "in [0, 1)", self.val_fraction)
        require(self.devices >= 1, f"{s}.devices", ">= 1", self.devices)
        require(self.num_nodes >= 1, f"{s}.num_nodes", ">= 1", self.num_nodes)
        require(self.early_stopping_patience is None or self.early_stopping_patience >= 0,
                f"{s}.early_stopping_patience", "None (off) or an integer >= 0",
                self.early_stopping_patience)
        require(self.max_time_s is None or (math.isfinite(self.max_time_s)
                                            and self.max_time_s > 0),
                f"{s}.max_time_s", "None (no cap) or a finite number > 0", self.max_time_s)
        require(0 <= self.collapse_min_spread_ratio <= 1, f"{s}.collapse_min_spread_ratio",
                "in [0, 1]", self.collapse_min_spread_ratio)
        require(-1 <= self.collapse_min_correlation <= 1, f"{s}.collapse_min_correlation",
                "in [-1, 1]", self.collapse_min_correlation)
        require(_is_int(self.collapse_patience_epochs) and self.collapse_patience_epochs >= 1,
                f"{s}.collapse_patience_epochs", "an integer >= 1",
                self.collapse_patience_epochs)


@dataclass(frozen=True)
class InferConfig:
    """Streaming inference and stitching (``infer`` section).

    Attributes
    ----------
    batch_size : int or None
        Patterns per network batch; None: automatic (:func:`ptypinn.pinn.infer.batch_size_for`:
        64 on a CPU, where cache-sized batches are fastest, 256 on CUDA).
    crop_px : int or None
        Central crop (px) of every patch used for stitching; None: the square inscribed in the
        probe footprint (:func:`ptypinn.stitch.default_crop_px`).
    mixed_precision : bool
        bf16 autocast for the network.
    device : str
        ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:k``.
    phase_sync : bool
        Synchronize the patches' constant phases before stitching, and keep the result only
        when it lowers the data NLL (the same truth-free rule for every network arm).
    phase_sync_reg : float or None
        Relative Tikhonov weight of the phase solve; None: 0 for gridsize > 1, 0.01 for
        gridsize 1 (:func:`ptypinn.pinn.infer.phase_sync_reg`).
    channels_last : bool
        On a CPU device, run the network's convolutions in the channels-last memory format (same
        results; faster with oneDNN, measured in docs/benchmarks.md).  Ignored on CUDA.
    """

    batch_size: int | None = None
    crop_px: int | None = None
    mixed_precision: bool = False
    device: str = "auto"
    phase_sync: bool = True
    phase_sync_reg: float | None = None
    channels_last: bool = True

    def __post_init__(self) -> None:
        require(self.batch_size is None or self.batch_size >= 1, "infer.batch_size",
                "None or >= 1", self.batch_size)
        require(self.phase_sync_reg is None or self.phase_sync_reg >= 0,
                "infer.phase_sync_reg", "None or >= 0", self.phase_sync_reg)
        require(self.crop_px is None or self.crop_px >= 1, "infer.crop_px", "None or >= 1",
                self.crop_px)
        require(_is_device(self.device), "infer.device", "'auto', 'cpu', 'cuda' or 'cuda:k'",
                self.device)


@dataclass(frozen=True)
class IterativeConfig:
    """The pty-chi arm (``iterative`` section; :mod:`ptypinn.baselines.ptychi`).

    Attributes
    ----------
    algorithm : {"lsqml", "epie", "rpie", "dm"}
        pty-chi engine (:data:`PTYCHI_ENGINES`).
    iterations : int
        Epochs (passes over all patterns), ``>= 1``.
    batch_size : int
        Patterns per minibatch update, ``>= 1`` (DM updates all patterns per epoch).
    optimize_probe : bool
        Refine the probe too (default: keep the scan's probe fixed, as the PINN does).
    device : {"auto", "cpu", "cuda"}
        ``auto`` picks CUDA when available.
    seed : int
        Seed of pty-chi's minibatch shuffling (global RNGs are restored afterwards).
    noise_model : {"poisson", "gaussian"}
        Likelihood used by LSQML (ignored by the other engines).
    step_size : float or None
        Update step of object (and probe): ``gamma`` for ePIE/rPIE/DM, the optimal-step scaler for
        LSQML.  ``None`` keeps pty-chi's defaults, except rPIE: ``min(1, 2 / batch_size)``.
    until_converged : bool
        Run in chunks of ``check_every_epochs`` and stop when the data NLL stops improving;
        ``iterations`` is then the cap (most epochs run).
    check_every_epochs : int
        Epochs per chunk between two data-NLL checks when ``until_converged``, ``>= 1``.
    convergence_rel_tol : float
        Stop when the excess data NLL per pixel (:func:`ptypinn.physics.data_nll`, measured from
        the saturated model, so ``>= 0`` and ~0.5 at the noise floor, never ~0) improved over the
        last chunk by less than this fraction of the previous check's value, or got worse;
        finite, ``> 0`` (1e-3 near the floor: < ~5e-4 nats per pixel per chunk).
    """

    algorithm: PtychiEngine = "epie"
    iterations: int = 100
    batch_size: int = 32
    optimize_probe: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0
    noise_model: Literal["poisson", "gaussian"] = "poisson"
    step_size: float | None = None
    until_converged: bool = False
    check_every_epochs: int = 10
    convergence_rel_tol: float = 1e-3

    def __post_init__(self) -> None:
        s = "iterative"
        require(self.algorithm in PTYCHI_ENGINES, f"{s}.algorithm", f"one of {PTYCHI_ENGINES}",
                self.algorithm)
        for name in ("iterations", "batch_size"):
            v = getattr(self, name)
            require(_is_int(v) and v >= 1, f"{s}.{name}", "an integer >= 1", v)
        require(isinstance(self.optimize_probe, bool), f"{s}.optimize_probe", "true/false",
                self.optimize_probe)
        require(self.device in ("auto", "cpu", "cuda"), f"{s}.device",
                "one of ('auto', 'cpu', 'cuda')", self.device)
        require(_is_int(self.seed) and self.seed >= 0, f"{s}.seed", "an integer >= 0", self.seed)
        require(self.noise_model in ("poisson", "gaussian"), f"{s}.noise_model",
                "one of ('poisson', 'gaussian')", self.noise_model)
        st = self.step_size
        require(st is None or (isinstance(st, (int, float)) and not isinstance(st, bool)
                               and math.isfinite(st) and st > 0),
                f"{s}.step_size", "None or a finite number > 0", st)
        require(isinstance(self.until_converged, bool), f"{s}.until_converged", "true/false",
                self.until_converged)
        require(_is_int(self.check_every_epochs) and self.check_every_epochs >= 1,
                f"{s}.check_every_epochs", "an integer >= 1", self.check_every_epochs)
        tol = self.convergence_rel_tol
        require(isinstance(tol, (int, float)) and not isinstance(tol, bool) and math.isfinite(tol)
                and tol > 0, f"{s}.convergence_rel_tol", "a finite number > 0", tol)


RefineOptimizer = Literal["normalized", "adam"]
REFINE_OPTIMIZERS: tuple[str, ...] = typing.get_args(RefineOptimizer)
RefineEngine = Literal["ptypinn", "ptychi"]
REFINE_ENGINES: tuple[str, ...] = typing.get_args(RefineEngine)
"""Update rules of the refinement (``refine.optimizer``; :mod:`ptypinn.refinement`)."""


@dataclass(frozen=True)
class RefineConfig:
    """Poisson maximum-likelihood refinement on the forward model (``refine`` section;
    :func:`ptypinn.refinement.refine`).

    Attributes
    ----------
    engine : {"ptypinn", "ptychi"}
        ``ptypinn``: our own refinement (:func:`ptypinn.refinement.refine`). ``ptychi``: pty-chi
        warm-started from the same object and probe (:func:`ptypinn.workflows.refine.refine_scan`;
        optional extra), with the ``iterative`` section's engine, batch size, noise model and
        step, run until converged with this section's ``epochs``, ``check_every_epochs``,
        ``convergence_rel_tol``, ``refine_probe`` and ``device``; no position correction.
    epochs : int
        Most passes over all patterns (the cap); 0 turns refinement off.
    batch_size : int
        Patterns per update (memory is O(canvas + batch)), ``>= 1``.
    optimizer : {"normalized", "adam"}
        ``normalized``: the likelihood gradient divided by a diagonal bound of its curvature
        (ePIE/LSQML-like, step in units of that Gauss-Newton step); ``adam``: Adam on object
        and probe (step = learning rate relative to their initial largest amplitude).
    step : float
        Step size of object and probe updates (dimensionless), finite, ``> 0``.
    refine_probe : bool
        Also refine the probe (all modes; kept orthogonal after every update).
    refine_positions : bool
        Also refine per-pattern position offsets (position correction).
    max_position_shift_px : float
        Largest correction of each position coordinate (px), ``>= 0``.
    check_every_epochs : int
        Epochs between two data-NLL checks, ``>= 1``.
    convergence_rel_tol : float
        A check whose excess data NLL per pixel improved by less than this fraction of the
        previous check's value (or got worse) halves the step, from the best state so far; finite,
        ``> 0``.
    step_halvings : int
        Halvings of the step before such a check stops the run, ``>= 0`` (0: the first one stops
        it).  Minibatch updates at a fixed step stall at a noise level set by the step.
    lbfgs_iterations : int or None
        After the minibatch run stops, at most this many full-batch L-BFGS iterations on the
        same unknowns, preconditioned by the curvature bounds, checked every 10 iterations with
        ``convergence_rel_tol`` (``>= 0``; 0: none; never when ``epochs`` is 0).  None: 200 when ``refine_positions``, else
        0 -- the slowly converging global and border modes of position correction need it
        (``ptypinn.refinement``).
    device : str
        ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:k``.
    seed : int
        Seed of the minibatch order, ``>= 0``.
    """

    engine: RefineEngine = "ptypinn"
    epochs: int = 0
    batch_size: int = 64
    optimizer: RefineOptimizer = "normalized"
    step: float = 1.0
    refine_probe: bool = False
    refine_positions: bool = False
    max_position_shift_px: float = 2.0
    check_every_epochs: int = 5
    convergence_rel_tol: float = 1e-3
    step_halvings: int = 3
    lbfgs_iterations: int | None = None
    device: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        s = "refine"
        for name in ("epochs", "step_halvings"):
            v = getattr(self, name)
            require(_is_int(v) and v >= 0, f"{s}.{name}", "an integer >= 0", v)
        for name in ("batch_size", "check_every_epochs"):
            v = getattr(self, name)
            require(_is_int(v) and v >= 1, f"{s}.{name}", "an integer >= 1", v)
        require(self.optimizer in REFINE_OPTIMIZERS, f"{s}.optimizer",
                f"one of {REFINE_OPTIMIZERS}", self.optimizer)
        require(self.engine in REFINE_ENGINES, f"{s}.engine", f"one of {REFINE_ENGINES}",
                self.engine)
        for name, lo in (("step", "> 0"), ("convergence_rel_tol", "> 0"),
                         ("max_position_shift_px", ">= 0")):
            v = getattr(self, name)
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            require(ok and (v >= 0 if lo == ">= 0" else v > 0), f"{s}.{name}",
                    f"a finite number {lo}", v)
        for name in ("refine_probe", "refine_positions"):
            v = getattr(self, name)
            require(isinstance(v, bool), f"{s}.{name}", "true/false", v)
        require(_is_device(self.device), f"{s}.device", "'auto', 'cpu', 'cuda' or 'cuda:k'",
                self.device)
        require(_is_int(self.seed) and self.seed >= 0, f"{s}.seed", "an integer >= 0", self.seed)
        require(self.lbfgs_iterations is None or (_is_int(self.lbfgs_iterations)
                                                  and self.lbfgs_iterations >= 0),
                f"{s}.lbfgs_iterations", "None (automatic) or an integer >= 0",
                self.lbfgs_iterations)
        require(not (self.engine == "ptychi" and self.refine_positions),
                f"{s}.refine_positions", "false with refine.engine=ptychi (pty-chi's position "
                "correction is not wired up; use refine.engine=ptypinn)", True)

    @property
    def lbfgs_iterations_resolved(self) -> int:
        """``lbfgs_iterations``, or its automatic value (200 with position correction, else 0)."""
        if self.lbfgs_iterations is not None:
            return int(self.lbfgs_iterations)
        return 200 if self.refine_positions else 0


@dataclass(frozen=True)
class Config:
    """A whole run: one section per stage."""

    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    grouping: GroupingConfig = field(default_factory=GroupingConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    infer: InferConfig = field(default_factory=InferConfig)
    iterative: IterativeConfig = field(default_factory=IterativeConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)


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
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:  # tuple[T, ...]
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]  # one value where a list is expected: a list of one
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return tuple(_coerce(v, args[0], key) for v in value)
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
    if data is not None and not isinstance(data, Mapping):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping of fields, got {data!r}")
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    names = [f.name for f in fields]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise _unknown_key(str(key), names, prefix)
        full = f"{prefix}.{key}" if prefix else key
        kwargs[key] = _coerce(value, hints[key], full)
    for f in fields:
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and f.name not in kwargs:
            raise ConfigError(f"{prefix + '.' if prefix else ''}{f.name}: expected a value, "
                              "got nothing")
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


def build_config(data: Mapping[str, Any] | None = None, overrides: Sequence[str] = ()) -> Config:
    """A validated :class:`Config` from a mapping of sections plus ``--set`` overrides.

    Parameters
    ----------
    data : mapping of sections (``{"train": {"epochs": 5}}``), or None for the defaults.
    overrides : ``section.field=value`` strings, applied last.

    Files are read by :func:`ptypinn.io.load_config`, which calls this.
    """
    return from_dict(Config, apply_overrides(dict(data or {}), overrides))


# ------------------------------------------------------------------------------------------------
# self-description (``ptypinn config show``)

UNIT_SUFFIXES: tuple[tuple[str, str], ...] = (
    ("_px", "px"), ("_rad", "rad"), ("_deg", "deg"), ("_eV", "eV"), ("_m", "m"), ("_s", "s"))
"""Field-name suffix -> unit; a field without one of these suffixes is dimensionless."""

SECTIONS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Config))
"""The config sections, in file order."""


@dataclass(frozen=True)
class FieldDoc:
    """One config field as ``ptypinn config show`` prints it.

    Attributes
    ----------
    section : str
    name : str
    default : Any
        The default value (as YAML would hold it: tuples become lists).
    unit : str
        From the name's suffix (:data:`UNIT_SUFFIXES`); ``""`` when dimensionless.
    type : str
        The type line of the class docstring (e.g. ``int or None``).
    description : str
        One line: the first sentence of the docstring's description of the field.
    """

    section: str
    name: str
    default: Any
    unit: str
    type: str
    description: str


def _unit(name: str) -> str:
    return next((u for suffix, u in UNIT_SUFFIXES if name.endswith(suffix)), "")


def _plain(text: str) -> str:
    """RST markup (roles, double back-quotes) removed; whitespace collapsed."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", text)
    text = text.replace("``", "")
    return " ".join(text.split())


def _first_sentence(text: str) -> str:
    m = re.search(r"(?<!e\.g)(?<!i\.e)(?<=[A-Za-z0-9)\]])\.(\s|$)", text)
    return text[: m.start() + 1] if m else text


def _attributes(cls: type) -> dict[str, tuple[str, str]]:
    """``{name: (type line, description)}`` from the numpydoc Attributes section of ``cls``."""
    lines = inspect.cleandoc(cls.__doc__ or "").splitlines()
    out: dict[str, tuple[str, str]] = {}
    try:
        i = lines.index("Attributes") + 2  # skip the underline
    except ValueError:
        return out
    name = None
    for line in lines[i:]:
        if line and not line[0].isspace():
            if set(line) == {"-"}:  # the next section's underline
                break
            head, _, tp = line.partition(" : ")
            name = head.strip()
            out[name] = (tp.strip(), "")
        elif name is not None and line.strip():
            tp, desc = out[name]
            out[name] = (tp, f"{desc} {line.strip()}")
    return out


def field_docs(section: str | None = None) -> list[FieldDoc]:
    """Every field of every config section (or of one), with default, unit and description.

    Parameters
    ----------
    section : str, optional
        One of :data:`SECTIONS`; None: all of them.

    Raises
    ------
    ConfigError
        An unknown section (with the closest valid one).
    """
    if section is not None and section not in SECTIONS:
        close = difflib.get_close_matches(str(section), list(SECTIONS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"config section '{section}': unknown{hint} (valid: "
                          f"{', '.join(SECTIONS)})")
    defaults = to_dict(Config())
    hints = typing.get_type_hints(Config)
    out = []
    for sect in SECTIONS if section is None else (section,):
        cls = hints[sect]
        attrs = _attributes(cls)
        for f in dataclasses.fields(cls):
            tp, desc = attrs.get(f.name, ("", ""))
            out.append(FieldDoc(section=sect, name=f.name, default=defaults[sect][f.name],
                                unit=_unit(f.name), type=_plain(tp),
                                description=_first_sentence(_plain(desc))))
    return out


def config_reference(section: str | None = None) -> str:
    """Every field of the config (or of one section) as commented YAML: the defaults, each with
    ``# [unit] description``.  The text loads as a config that equals the defaults.

    Parameters
    ----------
    section : str, optional
        One of :data:`SECTIONS`; None: all of them.
    """
    docs = field_docs(section)
    hints = typing.get_type_hints(Config)
    lines: list[str] = []
    width = max(len(d.name) + len(_yaml_value(d.default)) for d in docs) + 6
    for sect in dict.fromkeys(d.section for d in docs):
        summary = _plain(inspect.cleandoc(hints[sect].__doc__ or "").split("\n\n")[0])
        if lines:
            lines.append("")
        lines += [f"# {summary}", f"{sect}:"]
        for d in (d for d in docs if d.section == sect):
            entry = f"  {d.name}: {_yaml_value(d.default)}"
            unit = f"[{d.unit}] " if d.unit else ""
            choices = (f" (one of {d.type[1:-1].replace(chr(34), '')})"
                       if d.type.startswith("{") and d.type.endswith("}") else "")
            lines.append(f"{entry:<{width}}# {unit}{d.description}{choices}")
    return "\n".join(lines) + "\n"


def _yaml_value(v: Any) -> str:
    """One-line YAML of a default value (flow style for lists)."""
    return yaml.safe_dump({"v": v}, default_flow_style=True, sort_keys=False).strip()[4:-1]
