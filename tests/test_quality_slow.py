"""End-to-end quality of the PINN on a held-out synthetic object (``@pytest.mark.slow``).

A test that can fail: train on one 'lines' object, reconstruct a *different* one from its own
scan, and score it against that object's ground truth.  The bars are those the benchmark meets
with margin (docs/benchmarks.md, "PINN quality"); a regression in the forward model, the
normalization, the stitching or the phase synchronization drops one of them.
"""

from __future__ import annotations

import time

import pytest

import ptypinn
from ptypinn.config import from_dict

# a smaller cousin of bench/quality.py's cpu preset: 256 patterns of 64x64 per scan.  Measured
# (2 shared cores, load ~3): 183 s; amplitude r 0.963, phase r 0.939, mean amplitude ratio 1.001
_CONFIG = {
    "simulation": {"object_kind": "lines", "object_size_px": 160, "probe_kind": "disk",
                   "probe_size_px": 64, "probe_radius_px": 16.0, "scan_kind": "jittered",
                   "scan_step_px": 6.0, "photons_per_pattern": 1e6, "seed": 1},
    "grouping": {"gridsize": 2, "k_neighbors": 6},
    "model": {"width": 16, "depth": 3},
    "train": {"epochs": 30, "batch_size": 16, "learning_rate": 2e-3, "val_fraction": 0.1,
              "accelerator": "cpu", "progress_bar": False},
    "infer": {"device": "cpu"},
}


@pytest.mark.slow
def test_pinn_reconstructs_a_held_out_object(tmp_path):
    """Amplitude and phase Pearson >= 0.9 and the absolute amplitude scale within 5 %."""
    cfg = from_dict(ptypinn.Config, _CONFIG)
    train, test = ptypinn.simulate_train_test(cfg.simulation)
    assert test.object_true is not None
    t0 = time.perf_counter()
    run = ptypinn.train_model(cfg, train, tmp_path / "run")
    recon = ptypinn.reconstruct(run.bundle, test, cfg.infer)
    m = ptypinn.evaluate(recon.object, test.object_true, mask=recon.covered)
    a, p = m["amplitude"], m["phase"]
    print(f"held-out 'lines' ({train.n_patterns} train / {test.n_patterns} test patterns, "
          f"{run.epochs_run} epochs, {time.perf_counter() - t0:.0f} s): amplitude Pearson "
          f"{a['pearson']:.3f}, SSIM {a['ssim']:.3f}, mean ratio {a['mean_ratio']:.4f}; "
          f"phase Pearson {p['pearson']:.3f}, SSIM {p['ssim']:.3f}")
    assert a["pearson"] is not None and a["pearson"] >= 0.9
    assert p["pearson"] is not None and p["pearson"] >= 0.9
    assert a["mean_ratio"] is not None and abs(a["mean_ratio"] - 1.0) <= 0.05
