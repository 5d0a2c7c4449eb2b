"""Training on PyTorch Lightning: datasets of groups, the Lightning module, and :func:`train_model`.

Lightning owns the loop, devices (CPU, one GPU, multi-GPU/multi-node DDP), progress bar, CSV and
TensorBoard metrics, checkpoints (written atomically by Lightning through an fsspec transaction),
``--resume`` and early stopping.  We add: a spatially disjoint validation slab, a divergence guard
that stops with a clear message on a NaN/Inf loss or one above ``DIVERGENCE_FACTOR`` times the
first step's (the last good ``last.ckpt`` stays), checks of every input and of the resumed
checkpoint before anything is written (:func:`check_training`), a metrics history that a resume
appends to, keeping the best validation weights in memory, a collapse guard (after each validation
epoch, :func:`amplitude_collapse_stats` compares the predicted amplitude with the physics
estimate; a flat amplitude unrelated to it for ``train.collapse_patience_epochs`` epochs stops
the run with :class:`~ptypinn.pinn.TrainingCollapsed`), a check that DDP ranks end with
identical weights, and the bundle: returned in memory
(:attr:`TrainResult.bundle`, ready for :func:`ptypinn.pinn.infer.reconstruct`) and written to
``out_dir/bundle``.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler

from ptypinn import io, physics
from ptypinn.config import Config, RefineConfig
from ptypinn.data import ScanData, pattern_totals, probe_power, to_photon_units
from ptypinn.grouping import Groups, group_patterns
from ptypinn.pinn import TrainingCollapsed, TrainingDiverged
from ptypinn.pinn.bundle import Bundle, save_bundle
from ptypinn.pinn.models import build_model, derive_amplitude_max, initial_probe_modes
from ptypinn.refinement import refine

__all__ = ["TrainingDiverged", "TrainingCollapsed", "amplitude_collapse_stats", "GroupDataset",
           "LitPtycho", "TrainResult", "train_model", "split_groups", "check_training",
           "DIVERGENCE_FACTOR", "start_probe", "BEST_CHECKPOINT", "load_best_weights",
           "ScanBatchSampler"]

log = logging.getLogger(__name__)

DIVERGENCE_FACTOR = 100.0
"""A training loss above this multiple of the first step's loss stops the run as diverged."""


class GroupDataset(Dataset):
    """Groups of patterns as training samples (data stay on the CPU; batches are streamed).

    Items are dicts: ``counts`` (C,H,W) float32 with the scan's bad pixels zeroed (the network
    input), ``offsets_px`` (C,2) float32, ``bad_pixels`` (H,W) bool when the scan has a mask (the
    loss leaves those pixels out), ``truth`` (C,H,W) complex64 when ``with_truth``, and
    ``probe`` (M,H,W) complex64 (the scan's probe modes, photon units) when ``with_probe``
    (``model.probe_input``).
    """

    def __init__(self, scan: ScanData, groups: Groups, with_truth: bool = False,
                 with_probe: bool = False):
        if with_truth and scan.object_true is None:
            raise ValueError("model.kind='baseline': expected a scan with object_true (ground "
                             "truth; simulation only), got a scan without it")
        self.counts = torch.from_numpy(np.asarray(scan.counts))  # lazy counts: read whole
        self.indices = torch.from_numpy(np.asarray(groups.indices, dtype=np.int64))
        self.offsets = torch.from_numpy(np.asarray(groups.offsets_px, dtype=np.float32))
        self.size = scan.pattern_size
        self.obj = torch.from_numpy(scan.object_true) if with_truth else None
        self.positions = torch.from_numpy(scan.positions_px)
        self.bad = (torch.from_numpy(scan.bad_pixels)
                    if scan.bad_pixels is not None and scan.bad_pixels.any() else None)
        self.probe = (torch.from_numpy(np.asarray(scan.probe_modes, dtype=np.complex64))
                      if with_probe else None)

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        idx = self.indices[i]
        item = {"counts": self.counts[idx], "offsets_px": self.offsets[i]}
        if self.bad is not None:
            item["counts"] = item["counts"].masked_fill(self.bad, 0.0)
            item["bad_pixels"] = self.bad
        if self.probe is not None:
            item["probe"] = self.probe
        if self.obj is not None:
            item["truth"] = physics.extract_patches(self.obj[None], self.positions[idx][None],
                                                    self.size)[0]
        return item


class ScanBatchSampler(Sampler[list[int]]):
    """Batches of a :class:`~torch.utils.data.ConcatDataset` of several scans' groups, each
    batch from one scan only (so one probe and one bad-pixel mask per batch, as
    :meth:`ptypinn.pinn.models.PINN.loss` expects).

    Every epoch the groups of each scan are shuffled (with ``shuffle``), cut into batches of
    ``batch_size`` (the last of a scan may be smaller), and the batches of all scans are
    shuffled together, from a generator seeded with ``seed`` (reproducible).

    Parameters
    ----------
    lengths : the number of groups of each scan, in the ConcatDataset's order.
    batch_size : int, groups per batch.
    shuffle : bool
    seed : int
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, shuffle: bool, seed: int = 0):
        self.lengths = [int(n) for n in lengths]
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.generator = torch.Generator().manual_seed(int(seed))

    def _batches(self) -> list[list[int]]:
        out, start = [], 0
        for n in self.lengths:
            order = (torch.randperm(n, generator=self.generator) if self.shuffle
                     else torch.arange(n)) + start
            out += [order[i:i + self.batch_size].tolist() for i in range(0, n, self.batch_size)]
            start += n
        if self.shuffle:
            out = [out[i] for i in torch.randperm(len(out), generator=self.generator).tolist()]
        return out

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        return sum(math.ceil(n / self.batch_size) for n in self.lengths)


def split_groups(groups: Groups, positions_px: np.ndarray, val_fraction: float
                 ) -> tuple[Groups, Groups | None]:
    """Split groups into train/validation by a spatial slab (largest group-centroid y).

    Validation groups are those whose centroid lies in the last ``val_fraction`` of the scan's
    y extent, so validation is (nearly) spatially disjoint from training.
    """
    if val_fraction <= 0 or groups.n_groups < 10:
        return groups, None
    cy = positions_px[groups.indices, 0].mean(axis=1)
    cut = np.quantile(cy, 1 - val_fraction)
    val = cy > cut
    if val.sum() == 0 or (~val).sum() == 0:
        return groups, None
    pick = lambda m: Groups(indices=groups.indices[m], offsets_px=groups.offsets_px[m])  # noqa: E731
    return pick(~val), pick(val)


def amplitude_collapse_stats(amplitude: torch.Tensor, reference: torch.Tensor,
                             core: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                          torch.Tensor]:
    """Per-patch amplitude spread and correlation with a reference, inside a core mask.

    Parameters
    ----------
    amplitude : float ``(B, C, H, W)``, the predicted ``|O|``.
    reference : float ``(B, C, H, W)``, the physics estimate ``|O0|``.
    core : bool ``(H, W)``, the pixels scored (the probe's core).

    Returns
    -------
    spread, reference_spread, correlation : float ``(B*C,)`` each: the population std of
        ``amplitude`` and of ``reference`` over the core of each patch, and their Pearson
        correlation there (0 where either is constant; ``amplitude`` counts as constant when its
        std is below 1e-5 of its mean, the float32 rounding of a flat patch).
    """
    a = amplitude.reshape(-1, *amplitude.shape[-2:])[:, core].double()
    r = reference.reshape(-1, *reference.shape[-2:])[:, core].double()
    level = a.mean(dim=1, keepdim=True)
    a = a - level
    r = r - r.mean(dim=1, keepdim=True)
    sa = a.square().mean(dim=1).sqrt()
    sr = r.square().mean(dim=1).sqrt()
    cov = (a * r).mean(dim=1)
    # constant up to float32 rounding (e.g. after the overlap constraint): no correlation
    ok = (sa > 1e-5 * level[:, 0].abs() + 1e-12) & (sr > 0)
    corr = torch.where(ok, cov / (sa * sr).clamp_min(1e-300), torch.zeros_like(cov))
    return sa, sr, corr


class LitPtycho(L.LightningModule):
    """Lightning wrapper: Adam + (cosine) schedule around a model exposing ``loss(batch)``."""

    def __init__(self, model: torch.nn.Module, cfg: Config):
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_val = math.inf
        self.ranks_identical: bool | None = None
        self.first_loss: float | None = None
        self.collapse_flags = 0
        probe = getattr(model, "probe", None)
        core = None
        if probe is not None:
            i2 = physics.probe_modes(probe).abs().square().sum(0)
            core = i2 >= 0.5 * i2.max()
        self.register_buffer("collapse_core", core, persistent=False)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, logs = self.model.loss(batch)
        value = float(loss.detach())
        if self.first_loss is None and math.isfinite(value):
            self.first_loss = value
        first = self.first_loss
        exploded = first is not None and first > 0 and value > DIVERGENCE_FACTOR * first
        if not math.isfinite(value) or exploded:
            ckpt = Path(self.trainer.default_root_dir) / "checkpoints" / "last.ckpt"
            what = (f"{value:.4g}, {value / first:.3g}x the first step's {first:.4g}"
                    if exploded else f"{value}")
            raise TrainingDiverged(
                f"training loss became {what} at epoch {self.current_epoch}, step "
                f"{self.global_step}; stopped. Last good checkpoint: "
                f"{ckpt if ckpt.exists() else 'none yet'} (lower train.learning_rate?)"
            )
        b = batch["counts"].shape[0]
        self.log("train_loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=b,
                 sync_dist=True)
        for k, v in logs.items():
            self.log(f"train_{k}", v, on_step=False, on_epoch=True, batch_size=b, sync_dist=True)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss, _ = self.model.loss(batch)
        b = batch["counts"].shape[0]
        self.log("val_loss", loss, prog_bar=True, on_epoch=True, batch_size=b, sync_dist=True)
        backprop = getattr(getattr(self.model, "generator", None), "backprop", None)
        core = self.collapse_core
        probe = batch.get("probe")
        if probe is not None:  # model.probe_input: this batch's scan's probe
            probe = probe.reshape(-1, *probe.shape[-3:])[0]
            i2 = probe.abs().square().sum(0)
            core = i2 >= 0.5 * i2.max()
        if self.cfg.train.collapse_check and backprop is not None \
                and core is not None and bool(core.any()):
            patches = (self.model(batch["counts"], batch["offsets_px"]) if probe is None else
                       self.model(batch["counts"], batch["offsets_px"], probe))
            # the physics estimate under the model's current probe (a learned one included)
            if probe is None and getattr(self.model, "learns_probe", False):
                probe = self.model.probe
            o0 = backprop(batch["counts"], probe)
            spread, spread0, corr = amplitude_collapse_stats(patches.abs(), o0.abs(), core)
            n = spread.numel()
            self.log("val_amp_spread", spread.mean().float(), on_epoch=True, batch_size=n,
                     sync_dist=True)
            self.log("val_o0_spread", spread0.mean().float(), on_epoch=True, batch_size=n,
                     sync_dist=True)
            self.log("val_amp_corr", corr.mean().float(), on_epoch=True, batch_size=n,
                     sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        val = self.trainer.callback_metrics.get("val_loss")
        if val is not None and torch.isfinite(val) and float(val) < self.best_val:
            self.best_val = float(val)
            self.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in
                                             self.model.state_dict().items()})
        self._check_collapse()

    def _check_collapse(self) -> None:
        """Count validation epochs with a flat amplitude unrelated to ``|O0|``; stop after
        ``train.collapse_patience_epochs`` in a row (see :class:`ptypinn.config.TrainConfig`)."""
        m = self.trainer.callback_metrics
        if not self.cfg.train.collapse_check or "val_amp_corr" not in m:
            return
        tc = self.cfg.train
        spread, spread0, corr = (float(m[k]) for k in ("val_amp_spread", "val_o0_spread",
                                                        "val_amp_corr"))
        ratio = spread / spread0 if spread0 > 0 else math.inf
        flagged = ratio < tc.collapse_min_spread_ratio and corr < tc.collapse_min_correlation
        self.collapse_flags = self.collapse_flags + 1 if flagged else 0
        if not flagged:
            return
        what = (f"the predicted amplitude inside the probe is flat and unrelated to the physics "
                f"estimate |O0| at epoch {self.current_epoch}: per-patch spread {spread:.3g} "
                f"= {ratio:.3g} x that of |O0| ({spread0:.3g}; threshold "
                f"train.collapse_min_spread_ratio={tc.collapse_min_spread_ratio:g}), correlation "
                f"with |O0| {corr:.3f} (threshold train.collapse_min_correlation="
                f"{tc.collapse_min_correlation:g})")
        log.warning("collapse check: %s (%d of %d epochs in a row)", what, self.collapse_flags,
                    tc.collapse_patience_epochs)
        if self.collapse_flags >= tc.collapse_patience_epochs:
            raise TrainingCollapsed(
                f"{what}, for {self.collapse_flags} validation epochs in a row; stopped. Try a "
                "lower train.learning_rate, another train.seed or another model.generator; for "
                "an object without amplitude contrast (a pure phase object) set "
                "train.collapse_check=false")

    def on_train_end(self) -> None:
        if self.trainer.world_size > 1:
            vec = torch.cat([(torch.view_as_real(p.detach()) if p.is_complex() else p.detach())
                             .double().flatten() for p in self.model.parameters()])
            sig = torch.stack([vec.sum(), (vec * torch.arange(vec.numel(), dtype=vec.dtype,
                                                              device=vec.device)).sum()])
            gathered = self.trainer.strategy.all_gather(sig)
            self.ranks_identical = bool(torch.all(gathered == gathered[0]))

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        constrain = getattr(self.model, "constrain_probe", None)
        if constrain is not None:
            constrain()  # a learned probe: orthogonal modes, fixed total power

    def configure_optimizers(self) -> Any:
        lr = self.cfg.train.learning_rate
        if getattr(self.model, "learns_probe", False):
            probe = self.model.probe
            rest = [p for n, p in self.model.named_parameters() if n != "probe"]
            probe_lr = self.cfg.model.probe_learning_rate * float(probe.detach().abs().max())
            opt = torch.optim.Adam([{"params": rest, "lr": lr},
                                    {"params": [probe], "lr": probe_lr}])
        else:
            opt = torch.optim.Adam(self.model.parameters(), lr=lr)
        if self.cfg.train.lr_schedule == "constant":
            return opt
        epochs = self.cfg.train.epochs
        if len(opt.param_groups) > 1:  # the same cosine to 2 %, relative to each group's rate
            sched: Any = torch.optim.lr_scheduler.LambdaLR(
                opt, lambda e: 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(e, epochs)
                                                                 / epochs)))
        else:
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(
                opt, T_max=epochs, eta_min=self.cfg.train.learning_rate * 0.02)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced: the bundle in memory, and where it was written."""

    bundle: Bundle
    bundle_dir: Path
    epochs_run: int
    fit_time_s: float
    samples_per_s: float
    n_train_groups: int
    n_val_groups: int
    final_metrics: dict[str, float] = field(default_factory=dict)
    ranks_identical: bool | None = None
    is_global_zero: bool = True


def _loader(ds: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=0,
                      drop_last=False)


def _check_devices(cfg: Config) -> None:
    acc = cfg.train.accelerator
    if acc == "gpu":
        have = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if have < cfg.train.devices:
            raise ValueError(f"train.accelerator: expected an available device, got '{acc}' "
                             f"with train.devices={cfg.train.devices} ({have} CUDA GPU(s) "
                             "available)")


def _check_checkpoint(path: Path, lit: LitPtycho) -> None:
    """Refuse a checkpoint that is unreadable, truncated, holds arbitrary pickled objects or
    weights of another shape than this run's model, before Lightning restores it."""
    ckpt = io.read_checkpoint(path)
    state = ckpt.get("state_dict")
    if not isinstance(state, dict):
        raise ValueError(f"{path}: key 'state_dict': missing; not a ptypinn training checkpoint")
    want = lit.state_dict()
    for k, v in want.items():
        got = state.get(k)
        if not isinstance(got, torch.Tensor):
            raise ValueError(f"{path}: key 'state_dict.{k}': missing; the checkpoint is of "
                             "another model (check model.* and grouping.gridsize)")
        if tuple(got.shape) != tuple(v.shape):
            raise ValueError(f"{path}: key 'state_dict.{k}': expected shape {tuple(v.shape)}, "
                             f"got {tuple(got.shape)} (another model.* or grouping.gridsize?)")
    extra = sorted(set(state) - set(want))
    if extra:
        raise ValueError(f"{path}: key 'state_dict.{extra[0]}': not a tensor of this run's "
                         "model")


BEST_CHECKPOINT = "best"
"""``checkpoints/best.ckpt``: the weights of the lowest validation loss (over resumed runs)."""


def load_best_weights(path: str | os.PathLike) -> dict[str, torch.Tensor] | None:
    """The model weights of a Lightning checkpoint (``state_dict`` entries of ``model.``, the
    prefix removed), or None when ``path`` is empty or no file."""
    if not path or not Path(path).is_file():
        return None
    state = io.read_checkpoint(path).get("state_dict", {})
    return {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}


def _scan_list(scan: ScanData | Sequence[ScanData]) -> list[ScanData]:
    return [scan] if isinstance(scan, ScanData) else list(scan)


def check_training(cfg: Config, scan: ScanData | Sequence[ScanData],
                   out_dir: str | os.PathLike, resume: bool = False) -> None:
    """Every check :func:`train_model` makes before training, without writing anything.

    ``scan``: one scan, or several (``model.probe_input`` only), each checked.

    Raises
    ------
    ValueError
        A baseline without ground truth, a probe estimated from the data (a file without
        probe) that is not learned, fewer patterns than a group, an unavailable
        accelerator, several scans without ``model.probe_input`` (or of different pattern
        sizes, or with more than one device), or (``resume``) a missing, unreadable or
        mismatched ``out_dir/checkpoints/last.ckpt``.
    """
    scans = _scan_list(scan)
    if not scans:
        raise ValueError("scan: expected at least one training scan, got none")
    if len(scans) > 1:
        if not cfg.model.probe_input:
            raise ValueError(f"scan: expected one training scan, got {len(scans)}; training on "
                             "several scans (several probes) needs model.probe_input=true")
        sizes = sorted({s.pattern_size for s in scans})
        if len(sizes) > 1:
            raise ValueError(f"scan: expected one pattern size for all training scans, got "
                             f"{sizes}")
        if cfg.train.devices * cfg.train.num_nodes > 1:
            raise ValueError("train.devices: expected 1 device when training on several scans, "
                             f"got {cfg.train.devices * cfg.train.num_nodes} (not supported yet)")
        for i, s in enumerate(scans):
            check_training(cfg, s, out_dir, resume and i == 0)
        return
    scan = scans[0]
    if cfg.model.kind == "baseline" and scan.object_true is None:
        raise ValueError("model.kind='baseline' needs ground truth (object_true): the scan has "
                         "none; use model.kind=pinn for measured data")
    if "probe_estimated" in scan.meta and not cfg.model.learn_probe:
        raise ValueError("scan: expected a probe, got a file without one (estimated from the "
                         "data, a rough start only); set model.learn_probe=true to learn it")
    if scan.counts.shape[0] < cfg.grouping.group_size:
        raise ValueError(f"scan: expected at least {cfg.grouping.group_size} patterns for "
                         f"gridsize {cfg.grouping.gridsize}, got {scan.counts.shape[0]}")
    _check_devices(cfg)
    if resume:
        last = Path(out_dir) / "checkpoints" / "last.ckpt"
        if not last.is_file():
            raise ValueError(f"--resume: expected a checkpoint at {last}, found none")
        model = build_model(cfg.model, torch.from_numpy(scan.probe), cfg.grouping.group_size)
        _check_checkpoint(last, LitPtycho(model, cfg))


def start_probe(cfg: Config, scan: ScanData) -> tuple[ScanData, dict[str, Any]]:
    """The scan with the starting probe of a learned probe (``model.learn_probe``).

    The scan's probe (in photon units) becomes ``model.probe_modes`` orthogonal modes
    (:func:`~ptypinn.pinn.models.initial_probe_modes`); then, with
    ``model.probe_start_epochs > 0``, object and probe are refined from a flat object by Poisson
    maximum likelihood over the whole scan (:func:`ptypinn.refinement.refine`, ``refine_probe``,
    on ``train.accelerator``'s device) and the refined probe, rescaled to the starting total
    power (the scale rule's photons: the object/probe scale stays pinned), replaces it.

    Returns
    -------
    (ScanData, dict)
        The scan with that probe, and a summary for the bundle's manifest (epochs, NLL per
        pixel before and after).
    """
    modes = initial_probe_modes(torch.from_numpy(scan.probe_modes), cfg.model.probe_modes)
    probe = modes.numpy()
    power = probe_power(probe)
    summary: dict[str, Any] = {"start_epochs": 0}
    if cfg.model.probe_start_epochs > 0:
        device = "cpu" if cfg.train.accelerator == "cpu" else "auto"
        res = refine(scan, RefineConfig(epochs=cfg.model.probe_start_epochs, refine_probe=True,
                                        device=device, seed=cfg.train.seed), probe_init=probe)
        refined = np.asarray(res.probe, dtype=np.complex64).reshape(probe.shape)
        probe = refined * np.float32(math.sqrt(power / probe_power(refined)))
        nll0, nll1 = res.nll_history[0][2], res.nll_history[-1][2]
        log.info("probe: %d epochs of maximum-likelihood refinement from a flat object "
                 "(%s), data NLL %.4g -> %.4g per pixel; the network starts from that probe",
                 res.epochs, res.stop_reason, nll0, nll1)
        summary = {"start_epochs": int(res.epochs), "start_nll_before": float(nll0),
                   "start_nll_after": float(nll1)}
    return scan.replace(probe=probe.astype(np.complex64)), summary


def train_model(cfg: Config, scan: ScanData | Sequence[ScanData], out_dir: str | os.PathLike,
                resume: bool = False) -> TrainResult:
    """Train a PINN or baseline on one (training) scan, or on several with
    ``model.probe_input``; return the bundle, also written to ``out_dir/bundle``.

    Parameters
    ----------
    cfg : Config
        Uses ``grouping``, ``model`` and ``train``.
    scan : ScanData or sequence of ScanData
        The training split(s).  Each is brought to photon units first by
        :func:`ptypinn.data.to_photon_units` (rule ``auto``: unchanged when
        ``meta['probe_calibrated']``, else ``bright-free-space``); the bundle keeps the (first
        scan's) probe.  Several scans (``model.probe_input`` only; one pattern size, one
        device): groups are formed and split per scan, and every batch holds groups of one scan
        (:class:`ScanBatchSampler`), so it carries one probe and one bad-pixel mask;
        ``model.amplitude_max`` None is the largest of the scans' derived caps.
    out_dir : path
        Run directory: ``checkpoints/``, ``logs/metrics.csv``, ``bundle/``.
    resume : bool
        Continue from ``out_dir/checkpoints/last.ckpt`` (checked first: see
        :func:`check_training`); the rows of ``logs/metrics.csv`` are kept and the new ones
        appended.
    """
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    out_dir = Path(out_dir)
    with_truth = cfg.model.kind == "baseline"
    with_probe = cfg.model.probe_input
    check_training(cfg, scan, out_dir, resume)
    scans = [to_photon_units(s) for s in _scan_list(scan)]
    probe_start: dict[str, Any] = {}
    if cfg.model.learn_probe:
        scans[0], probe_start = start_probe(cfg, scans[0])
    if cfg.model.amplitude_max is None:
        cap = max(derive_amplitude_max(s.probe, s.counts, s.bad_pixels) for s in scans)
        log.info("model.amplitude_max from the data: %.4g", cap)
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, amplitude_max=cap))
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    splits = [split_groups(group_patterns(s.positions_px, cfg.grouping), s.positions_px,
                           cfg.train.val_fraction) for s in scans]
    scan = scans[0]
    model = build_model(cfg.model, torch.from_numpy(scan.probe), cfg.grouping.group_size)
    lit = LitPtycho(model, cfg)

    train_sets = [GroupDataset(s, tg, with_truth, with_probe) for s, (tg, _) in zip(scans, splits)]
    val_sets = [GroupDataset(s, vg, with_truth, with_probe)
                for s, (_, vg) in zip(scans, splits) if vg is not None]
    n_train = sum(len(d) for d in train_sets)
    n_val = sum(len(d) for d in val_sets)
    if len(scans) == 1:
        train_dl = _loader(train_sets[0], cfg.train.batch_size, shuffle=True)
        val_dl = (_loader(val_sets[0], cfg.train.batch_size, shuffle=False)
                  if val_sets else None)
    else:
        # one scan per batch: one probe and one bad-pixel mask per batch (see PINN.loss)
        train_dl = DataLoader(ConcatDataset(train_sets), num_workers=0, batch_sampler=(
            ScanBatchSampler([len(d) for d in train_sets], cfg.train.batch_size, True,
                             cfg.train.seed)))
        val_dl = (DataLoader(ConcatDataset(val_sets), num_workers=0, batch_sampler=(
            ScanBatchSampler([len(d) for d in val_sets], cfg.train.batch_size, False)))
            if val_sets else None)
        log.info("training on %d scans (%s groups), one scan per batch", len(scans),
                 "+".join(str(len(d)) for d in train_sets))
    ckpt_dir = out_dir / "checkpoints"
    # With validation, one checkpoint callback keeps the best validation weights in
    # checkpoints/best.ckpt and then writes last.ckpt with the record of that score, so a
    # resumed run still returns them (without validation: the last epoch, kept in memory).
    best_cb = (ModelCheckpoint(dirpath=ckpt_dir, filename=BEST_CHECKPOINT, monitor="val_loss",
                               mode="min", save_top_k=1, save_last=True,
                               enable_version_counter=False)
               if val_dl is not None else None)
    callbacks: list[Any] = [best_cb if best_cb is not None else
                            ModelCheckpoint(dirpath=ckpt_dir, filename="latest", save_last=True,
                                            save_top_k=1, save_on_train_epoch_end=True)]
    if cfg.train.early_stopping_patience and val_dl is not None:
        callbacks.append(EarlyStopping("val_loss", patience=cfg.train.early_stopping_patience))
    loggers: list[Any] = [CSVLogger(out_dir, name="logs", version="")]
    if cfg.train.tensorboard:
        loggers.append(TensorBoardLogger(out_dir, name="tensorboard", version=""))
    strategy: Any = cfg.train.strategy
    if strategy == "ddp" and cfg.train.accelerator == "cpu":
        from lightning.pytorch.strategies import DDPStrategy

        strategy = DDPStrategy(process_group_backend="gloo")
    trainer = L.Trainer(
        max_epochs=cfg.train.epochs,
        accelerator=cfg.train.accelerator,
        devices=cfg.train.devices,
        num_nodes=cfg.train.num_nodes,
        strategy=strategy,
        precision=cfg.train.precision,
        logger=loggers,
        callbacks=callbacks,
        default_root_dir=out_dir,
        enable_progress_bar=cfg.train.progress_bar,
        enable_model_summary=False,
        max_time={"seconds": cfg.train.max_time_s} if cfg.train.max_time_s else None,
        log_every_n_steps=10,
        num_sanity_val_steps=0,
    )
    ckpt_path = str(ckpt_dir / "last.ckpt") if resume else None
    metrics_csv = out_dir / "logs" / "metrics.csv"
    earlier = io.read_text(metrics_csv) if resume and metrics_csv.is_file() else None
    t0 = time.perf_counter()
    try:
        trainer.fit(lit, train_dl, val_dl, ckpt_path=ckpt_path)
    finally:
        if earlier is not None and trainer.is_global_zero:
            io.append_csv_history(metrics_csv, earlier)  # a resume appends to the history
    fit_time = time.perf_counter() - t0
    best = load_best_weights(best_cb.best_model_path if best_cb is not None else "")
    if best is not None:
        model.load_state_dict(best)
        log.info("best validation weights: %s (val_loss %.6g)", best_cb.best_model_path,
                 float(best_cb.best_model_score))
    elif lit.best_state is not None:
        model.load_state_dict(lit.best_state)
    epochs_run = int(trainer.current_epoch)
    n_samples = n_train * max(epochs_run, 1)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    model = model.cpu()
    fields = dict(
        bundle_dir=out_dir / "bundle",
        epochs_run=epochs_run,
        fit_time_s=fit_time,
        samples_per_s=n_samples / fit_time if fit_time > 0 else float("nan"),
        n_train_groups=n_train,
        n_val_groups=n_val,
        final_metrics=metrics,
        ranks_identical=lit.ranks_identical,
        is_global_zero=trainer.is_global_zero,
    )
    training = {k: (str(v) if isinstance(v, Path) else v) for k, v in fields.items()}
    # bad pixels filled in; over all training scans
    training["photons_per_pattern"] = float(np.mean(np.concatenate(
        [pattern_totals(s) for s in scans])))
    training["probe_power_photons"] = probe_power(scan.probe)
    if len(scans) > 1:
        training["scans"] = len(scans)
        training["probe_powers_photons"] = [probe_power(s.probe) for s in scans]
    training["scale_rule"] = scan.meta.get("scale_rule", "file-units")
    if cfg.model.learn_probe:
        training["probe_learned"] = {**probe_start, "modes": int(model.probe.shape[0])}
    bundle = Bundle.create(model, cfg, extra={"training": training})
    if trainer.is_global_zero:
        save_bundle(fields["bundle_dir"], bundle)
    return TrainResult(bundle=bundle, **fields)  # type: ignore[arg-type]
