"""Which update rule should ``refine`` use by default?  NLL reached per second, flat start.

Usage (one CPU thread; ~2-4 min)::

    PYTHONPATH=src python bench/refine_choice.py [--size 32|64] [--epochs 40]

Simulates the 'lines' test scan of ``simulate_train_test`` (1e6 photons per pattern), refines
it from a flat object with each candidate rule for a fixed number of epochs (the convergence
stop disabled, except on NaN) and prints, per candidate: seconds per epoch, the excess data NLL per pixel
after 5, 10, 20 and all epochs, and the seconds until the NLL first came within 0.05 of the
truth's (``t(truth+0.05)``; '-' when never).  The result is quoted in ``ptypinn.refinement``'s
module docstring.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch

from ptypinn.config import RefineConfig, SimulationConfig
from ptypinn.physics import data_nll
from ptypinn import refine as refine_module
from ptypinn.refinement import refine
from ptypinn.simulate import simulate_train_test

# (rule, step, Newton weights of the normalized rule)
CANDIDATES = [
    ("normalized", 0.5, True), ("normalized", 1.0, True), ("normalized", 2.0, True),
    ("normalized", 1.0, False),
    ("adam", 1e-2, False), ("adam", 3e-2, False), ("adam", 1e-1, False),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(1)
    # run every epoch of every candidate: only a non-finite NLL stops a run here
    refine_module._stop_reason = lambda nll, prev, tol: None if math.isfinite(nll) else "diverged"
    n = args.size
    sim = SimulationConfig(object_kind="lines", object_size_px=n * 3, probe_size_px=n,
                           probe_radius_px=n / 4, scan_kind="raster", scan_step_px=n / 8,
                           photons_per_pattern=1e6, seed=3)
    scan = simulate_train_test(sim)[1]
    truth = float(np.mean(data_nll(scan.object_true, scan)))
    print(f"{scan.n_patterns} patterns {n}x{n}, object {scan.object_shape_px}, "
          f"batch {args.batch}, {args.epochs} epochs; truth NLL/px {truth:.4f}")
    print(f"{'rule':<14} {'step':>6} {'s/epoch':>8} {'@5':>8} {'@10':>8} {'@20':>8} "
          f"{'@end':>8} {'t(truth+0.05)':>14}")
    for opt, step, weights in CANDIDATES:
        refine_module.NEWTON_WEIGHTS = weights
        cfg = RefineConfig(epochs=args.epochs, batch_size=args.batch, optimizer=opt, step=step,
                           check_every_epochs=1, convergence_rel_tol=1e-12, device="cpu")
        res = refine(scan, cfg)
        h = {e: v for e, _, v in res.nll_history}
        reach = next((t for _, t, v in res.nll_history if v <= truth + 0.05), None)
        fmt = lambda v: "nan" if v is None or not math.isfinite(v) else f"{v:.4f}"  # noqa: E731
        name = opt + ("+newton" if weights else "")
        print(f"{name:<14} {step:>6g} {res.wall_time_s / max(res.epochs, 1):>8.3f} "
              f"{fmt(h.get(5)):>8} {fmt(h.get(10)):>8} {fmt(h.get(20)):>8} "
              f"{fmt(res.nll_history[-1][2]):>8} "
              f"{'-' if reach is None else f'{reach:.2f}':>14}  ({res.stop_reason})", flush=True)


if __name__ == "__main__":
    main()
