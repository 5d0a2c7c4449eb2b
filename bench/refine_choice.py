"""Which update rule should ``refine`` use by default?  NLL reached per epoch, flat start.

Usage (one CPU thread; ~2-4 min)::

    PYTHONPATH=src python bench/refine_choice.py [--size 32|64] [--epochs 40]

Simulates the 'lines' test scan of ``simulate_train_test`` (1e6 photons per pattern), refines
it from a flat object with each candidate rule, as a user runs it (the default convergence
checks every 5 epochs, step halving from the best state, at most ``--epochs``), and prints, per
candidate: seconds per epoch, the excess data NLL per pixel at the checks after 5, 10, 20 and the
last epoch (the returned state's NLL once the run stopped), the epochs run and the stop reason.
Candidates: the normalized rule with the Newton-weighted gradient in the first ``warm-up``
epochs and the plain Poisson gradient after (``inf``: always weighted), and Adam.  The result is
quoted in ``ptypinn.refinement``'s module docstring.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch

from ptypinn.config import RefineConfig, SimulationConfig
from ptypinn.physics import data_nll
import ptypinn.refinement as refine_module
from ptypinn.refinement import refine
from ptypinn.simulate import simulate_train_test

# (rule, step, epochs with the Newton-weighted gradient)
CANDIDATES = [
    ("normalized", 1.0, 2), ("normalized", 0.5, 2), ("normalized", 2.0, 2),
    ("normalized", 1.0, 0), ("normalized", 1.0, 10**9),
    ("adam", 1e-2, 0), ("adam", 3e-2, 0),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(1)
    n = args.size
    sim = SimulationConfig(object_kind="lines", object_size_px=n * 3, probe_size_px=n,
                           probe_radius_px=n / 4, scan_kind="raster", scan_step_px=n / 8,
                           photons_per_pattern=1e6, seed=3)
    scan = simulate_train_test(sim)[1]
    truth = float(np.mean(data_nll(scan.object_true, scan)))
    print(f"{scan.n_patterns} patterns {n}x{n}, object {scan.object_shape_px}, "
          f"batch {args.batch}, at most {args.epochs} epochs; truth NLL/px {truth:.4f}")
    print(f"{'rule':<11} {'step':>5} {'warm-up':>8} {'s/epoch':>8} {'@5':>8} {'@10':>8} "
          f"{'@20':>8} {'@last':>8} {'epochs':>7}  stop")
    default_warmup = refine_module.NEWTON_WARMUP_EPOCHS
    for opt, step, warmup in CANDIDATES:
        # a benchmark-only switch of the module constant, restored below
        refine_module.NEWTON_WARMUP_EPOCHS = warmup
        cfg = RefineConfig(epochs=args.epochs, batch_size=args.batch, optimizer=opt, step=step,
                           device="cpu")
        res = refine(scan, cfg)
        h = {e: v for e, _, v in res.nll_history}

        def at(e: int) -> float:  # the NLL of the state held after epoch e
            done = [v for k, v in h.items() if k <= e]
            return min(done) if done else math.nan

        fmt = lambda v: "nan" if not math.isfinite(v) else f"{v:.4f}"  # noqa: E731
        wu = "-" if opt == "adam" else ("inf" if warmup > args.epochs else str(warmup))
        print(f"{opt:<11} {step:>5g} {wu:>8} {res.wall_time_s / max(res.epochs, 1):>8.3f} "
              f"{fmt(at(5)):>8} {fmt(at(10)):>8} {fmt(at(20)):>8} {fmt(res.nll_per_pixel):>8} "
              f"{res.epochs:>7}  {res.stop_reason}", flush=True)
    refine_module.NEWTON_WARMUP_EPOCHS = default_warmup


if __name__ == "__main__":
    main()
