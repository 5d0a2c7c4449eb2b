"""Probe learning in the self-supervised PINN: probe correlation versus epochs from a wrong start.

Usage (one CPU thread; about 1-3 min with the defaults)::

    OMP_NUM_THREADS=1 PYTHONPATH=src python bench/probe_learning.py [--epochs 30] [--error 0.5]
        [--defocus 8] [--start-epochs 50] [--probe-lr 1e-3] [--from-data [--radius R]]

Simulates a 'lines' scan with a defocused-aperture probe (N=32, real-space radius 8 px, defocus
``--defocus`` rad at the pupil edge, 1e6 photons per pattern), replaces its probe by the same
aperture with the defocus off by ``--error`` (0.5: 50 % too small) and the same power, trains
the PINN on it with ``model.learn_probe`` (gridsize 2; first the maximum-likelihood start of
``model.probe_start_epochs``, :func:`ptypinn.pinn.train.start_probe`; ``--from-data`` starts from
:func:`ptypinn.data.estimate_probe` instead) and prints, after every epoch, the
probe correlation :func:`ptypinn.metrics.probe_correlation` with the true probe (global phase
removed; also with a linear phase ramp removed) and the training loss.  Prints the machine first.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import time

import lightning as L
import numpy as np
import torch

from ptypinn.config import (Config, GroupingConfig, ModelConfig, SimulationConfig,
                            TrainConfig)
from ptypinn.data import defocused_aperture, estimate_probe, probe_power
from ptypinn.grouping import group_patterns
from ptypinn.metrics import probe_correlation
from ptypinn.pinn.models import build_model
from ptypinn.pinn.train import GroupDataset, LitPtycho, start_probe
from ptypinn.simulate import simulate_scan


def wrong_defocus_scan(defocus_rad: float, error: float, seed: int = 3, size: int = 32,
                       radius_px: float = 8.0, object_size_px: int = 72, step_px: float = 3.0):
    """The simulated scan and the same scan with its probe's defocus scaled by ``1 - error``."""
    sim = SimulationConfig(object_kind="lines", object_size_px=object_size_px,
                           probe_size_px=size, probe_kind="defocused_disk",
                           probe_radius_px=radius_px, probe_defocus_rad=defocus_rad,
                           scan_kind="raster", scan_step_px=step_px, photons_per_pattern=1e6,
                           seed=seed)
    scan = simulate_scan(sim)
    pupil = size * defocus_rad / (np.pi * radius_px)  # the simulator's pupil radius
    wrong = defocused_aperture(size, pupil, defocus_rad * (1 - error))
    wrong *= np.sqrt(probe_power(scan.probe) / probe_power(wrong))
    return scan, scan.replace(probe=wrong.astype(np.complex64))


class _Record(L.Callback):
    def __init__(self, truth: np.ndarray):
        self.truth = truth
        self.rows: list[tuple[int, float, float, float, float]] = []
        self.t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer, lit) -> None:
        p = lit.model.probe.detach().cpu().numpy()
        loss = float(trainer.callback_metrics.get("train_loss", float("nan")))
        self.rows.append((trainer.current_epoch + 1, probe_correlation(p, self.truth),
                          probe_correlation(p, self.truth, remove_ramp=True), loss,
                          time.perf_counter() - self.t0))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--error", type=float, default=0.5)
    ap.add_argument("--defocus", type=float, default=8.0)
    ap.add_argument("--probe-lr", type=float, default=1e-3)
    ap.add_argument("--start-epochs", type=int, default=50,
                    help="model.probe_start_epochs (0: the network's gradient alone)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--gridsize", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--from-data", action="store_true",
                    help="start from data.estimate_probe (no probe) instead of the wrong defocus")
    ap.add_argument("--radius", type=float, default=None,
                    help="with --from-data: the estimate's real-space radius (default N/4)")
    args = ap.parse_args()
    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}, threads {torch.get_num_threads()}")
    scan, start = wrong_defocus_scan(args.defocus, args.error)
    what = f"defocus {args.defocus * (1 - args.error):.3g} rad"
    if args.from_data:
        est, fit = estimate_probe(scan.counts, radius_px=args.radius)
        what = f"the estimate from the data {fit}"
        start = scan.replace(probe=est)
    print(f"scan: {scan.n_patterns} patterns {scan.pattern_size}x{scan.pattern_size}, defocus "
          f"{args.defocus} rad; start: {what}; start correlation "
          f"{probe_correlation(start.probe, scan.probe):.4f}")
    cfg = Config(grouping=GroupingConfig(gridsize=args.gridsize),
                 model=ModelConfig(width=args.width, depth=2, learn_probe=True,
                                   probe_learning_rate=args.probe_lr,
                                   probe_start_epochs=args.start_epochs),
                 train=TrainConfig(epochs=args.epochs, batch_size=16, learning_rate=args.lr,
                                   val_fraction=0.0, seed=args.seed, accelerator="cpu",
                                   progress_bar=False))
    t0 = time.perf_counter()
    start, summary = start_probe(cfg, start)
    print(f"after the maximum-likelihood start ({summary}): correlation "
          f"{probe_correlation(start.probe, scan.probe):.4f} "
          f"({time.perf_counter() - t0:.1f} s)")
    L.seed_everything(args.seed, verbose=False)
    groups = group_patterns(start.positions_px, cfg.grouping)
    model = build_model(dataclasses.replace(cfg.model, amplitude_max=1.5),
                        torch.from_numpy(start.probe), cfg.grouping.group_size)
    rec = _Record(scan.probe)
    trainer = L.Trainer(max_epochs=args.epochs, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[rec], num_sanity_val_steps=0)
    loader = torch.utils.data.DataLoader(GroupDataset(start, groups), batch_size=16,
                                         shuffle=True)
    trainer.fit(LitPtycho(model, cfg), loader)
    print("epoch  corr   corr(ramp removed)  train_loss  time_s")
    for e, c, cr, loss, t in rec.rows:
        print(f"{e:5d}  {c:.4f}  {cr:.4f}              {loss:.4f}      {t:.1f}")


if __name__ == "__main__":
    main()
