"""The probe as an input (issue 14 item 2): a bundle trained on several probes reconstructs a scan
taken with an unseen probe inside their range.

"lines" objects, disk probes.  Bundle A (``model.probe_input``) is trained on three scans with
disk radii ``--train-radii`` (default 12, 16, 20 px); bundle B (the same settings, also
``probe_input``, so only the training data differ) on one scan with the test radius
``--test-radius`` (default 14 px) alone; both for the same number of epochs.  Both reconstruct
the test scan (radius 14, another object) with its own probe; prints the amplitude SSIM of each
(``metrics.evaluate`` over the covered region), their difference and the target (A within 0.03
of B), the times and the machine::

    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python bench/probe_input.py --epochs 4 --width 8

Every training scan uses the same seed (the same object and scan), so the training sets differ
only in the probe.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from ptypinn.config import (Config, GroupingConfig, InferConfig, ModelConfig, SimulationConfig,
                            TrainConfig)
from ptypinn.metrics import evaluate
from ptypinn.pinn.infer import reconstruct
from ptypinn.pinn.train import train_model
from ptypinn.simulate import simulate_train_test


def scans(radius_px: float, args: argparse.Namespace):
    sim = SimulationConfig(object_kind="lines", object_size_px=args.object_size,
                           probe_size_px=64, probe_kind="disk", probe_radius_px=radius_px,
                           scan_kind="raster", scan_step_px=args.step,
                           photons_per_pattern=args.photons, seed=args.seed)
    return simulate_train_test(sim)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train-radii", type=float, nargs="+", default=[12.0, 16.0, 20.0])
    ap.add_argument("--test-radius", type=float, default=14.0)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--gridsize", type=int, default=1)
    ap.add_argument("--object-size", type=int, default=160)
    ap.add_argument("--step", type=float, default=5.0)
    ap.add_argument("--photons", type=float, default=1e9)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-o", "--output", default=None, help="run directory (default: a temporary one)")
    args = ap.parse_args()
    load = os.getloadavg()
    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, torch "
          f"{torch.__version__}, threads {torch.get_num_threads()}")
    cfg = Config(grouping=GroupingConfig(gridsize=args.gridsize),
                 model=ModelConfig(width=args.width, depth=args.depth, probe_input=True),
                 train=TrainConfig(epochs=args.epochs, batch_size=16, learning_rate=args.lr,
                                   val_fraction=0.1, seed=args.seed, accelerator="cpu",
                                   progress_bar=False),
                 infer=InferConfig(device="cpu"))
    out = Path(args.output or tempfile.mkdtemp(prefix="probe_input_"))
    train_a = [scans(r, args)[0] for r in args.train_radii]
    train_b, test = scans(args.test_radius, args)
    print(f"scans: {train_b.n_patterns} patterns of {train_b.pattern_size}^2 each, "
          f"{args.photons:g} photons, gridsize {args.gridsize}; train radii {args.train_radii} "
          f"px, test radius {args.test_radius} px; width {args.width}, depth {args.depth}, "
          f"{args.epochs} epochs, lr {args.lr:g}")
    rows = {}
    for name, data in (("A (train radii)", train_a), ("B (test radius only)", train_b)):
        t0 = time.perf_counter()
        res = train_model(cfg, data, out / name.split()[0])
        t_train = time.perf_counter() - t0
        recon = reconstruct(res.bundle, test, cfg.infer)
        m = evaluate(recon.object, test.object_true, mask=recon.covered)
        rows[name] = m["amplitude"]["ssim"]
        print(f"{name}: amplitude SSIM {m['amplitude']['ssim']:.4f}, phase SSIM "
              f"{m['phase']['ssim']:.4f}, train {t_train:.0f} s ({res.epochs_run} epochs, "
              f"{res.n_train_groups} groups)")
    a, b = rows.values()
    print(f"difference B - A: {b - a:+.4f} (target: A within 0.03 of B: "
          f"{'met' if b - a <= 0.03 else 'missed'})")


if __name__ == "__main__":
    main()
