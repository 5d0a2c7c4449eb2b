"""``ptypinn demo``: the whole pipeline on built-in synthetic data, in a few minutes on a CPU.

simulate a training object and a *different* test object ("lines", 64x64 patterns, ideal disk
probe, gridsize 2) -> train the PINN on the training scan -> reconstruct the test scan with the
bundle -> score it against the truth -> PNGs, ``summary.json`` and a one-screen summary.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Sequence

from ptypinn import io
from ptypinn.config import Config, apply_overrides, from_dict, to_dict
from ptypinn.pinn.infer import reconstruct
from ptypinn.workflows.outputs import write_outputs
from ptypinn.simulate import simulate_train_test

__all__ = ["DEMO_SETTINGS", "demo_config", "run_demo"]

DEMO_SETTINGS = {
    "simulation": {"object_kind": "lines", "object_size_px": 192, "probe_kind": "disk",
                   "probe_size_px": 64, "probe_radius_px": 16.0, "scan_kind": "jittered",
                   "scan_step_px": 6.0, "photons_per_pattern": 1e9, "seed": 1},
    "grouping": {"gridsize": 2, "k_neighbors": 6},
    "model": {"width": 16, "depth": 3},
    # ~6 s per epoch on 2 quiet cores; max_time_s keeps the demo under 5 min on a loaded machine
    "train": {"epochs": 30, "batch_size": 16, "learning_rate": 2e-3, "val_fraction": 0.1,
              "max_time_s": 200.0},
    "infer": {"batch_size": None},  # automatic: 64 on a CPU (measured faster than 256)
}
_QUICK = {
    "simulation": {"object_size_px": 112, "scan_step_px": 8.0},
    "model": {"width": 8, "depth": 2},
    "train": {"epochs": 2, "progress_bar": False},
}


def demo_config(quick: bool = False, overrides: Sequence[str] = ()) -> Config:
    """The demo's config (``quick`` shrinks it to a seconds-long smoke run)."""
    data: dict[str, Any] = {k: dict(v) for k, v in DEMO_SETTINGS.items()}
    if quick:
        for k, v in _QUICK.items():
            data[k].update(v)
    return from_dict(Config, apply_overrides(data, overrides))


def run_demo(out_dir: str | os.PathLike, quick: bool = False,
             overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Run the demo into ``out_dir``; returns the summary (with a printable ``text``)."""
    from ptypinn.pinn.train import train_model  # Lightning: imported only when the demo runs

    out = Path(out_dir)
    cfg = demo_config(quick, overrides)
    io.write_yaml(out / "config.resolved.yaml", to_dict(cfg))
    t0 = time.perf_counter()
    train, test = simulate_train_test(cfg.simulation)
    io.write_scan(out / "train.npz", train)
    io.write_scan(out / "test.npz", test)
    t_sim = time.perf_counter() - t0
    res = train_model(cfg, train, out / "run")
    recon = reconstruct(res.bundle, test, cfg.infer, allocate=io.scratch_array)
    summary = write_outputs(out, recon, test, {
        "simulate_s": t_sim, "train_s": res.fit_time_s, "train_epochs": res.epochs_run,
        "train_samples_per_s": res.samples_per_s, "total_s": time.perf_counter() - t0,
    })
    m = summary["metrics"]
    a, p = m["amplitude"], m["phase"]
    summary["text"] = "\n".join([
        f"ptypinn demo -> {out}",
        f"  simulated: {train.n_patterns} train / {test.n_patterns} test patterns "
        f"({train.pattern_size}x{train.pattern_size}, 'lines' objects, different train/test "
        f"objects) in {t_sim:.1f} s",
        f"  trained PINN (gridsize {cfg.grouping.gridsize}): {res.epochs_run} epochs in "
        f"{res.fit_time_s:.0f} s ({res.samples_per_s:.0f} groups/s)",
        f"  inference + stitching: {recon.wall_time_s:.2f} s ({recon.patterns_per_s:.0f} patterns/s)",
        f"  test amplitude: SSIM {a['ssim']:.3f}, Pearson {a['pearson']:.3f}, "
        f"mean ratio {a['mean_ratio']:.3f} (1 = absolute scale right)",
        f"  test phase:     SSIM {p['ssim']:.3f}, Pearson {p['pearson']:.3f}",
        "  files: reconstruction.png, ground_truth.png, reconstruction.npz, summary.json",
        f"  total {summary['total_s']:.0f} s",
    ])
    return summary
