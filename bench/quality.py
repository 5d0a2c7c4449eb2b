"""Reconstruction-quality benchmark of the PINN on simulated "lines" objects (the issue's target).

For every cell (gridsize x photons x probe): simulate a training object and a *different* test
object (``simulate_train_test``), train with ``train_model`` (the product's Lightning loop),
reconstruct the test scan with ``reconstruct`` from the returned bundle and
score the stitched object with ``metrics.evaluate`` (registration + global phase removal over the
scanned region).  Prints machine info and a table; writes ``OUTDIR/quality.json``.

Targets: amplitude SSIM >= 0.90 (cpu preset, <= 30 min on 2 cores) / >= 0.96 (full preset, GPU),
amplitude Pearson >= 0.95, phase SSIM >= 0.90, amplitude mean ratio within 5 % of 1.

Probes: ``ideal`` is the simulator's disk (radius 16 px in a 64 px window).  ``experimental`` is
the probe estimate of ``/work/shared/data/siemens-star-small.npz.bz2`` (128 x 128, read with
``ptypinn.io.read_scan``) cropped to its central 64 x 64 pixels (:func:`crop_probe`: 97 % of its
power, second-moment radius 28.8 px); the simulation rescales it to the requested photons.

Stitching uses ``infer``'s default crop, the square inscribed in the probe footprint
(:func:`ptypinn.stitch.default_crop_px`: 24 px for the r = 16 disk, 42 px for the cropped
experimental probe); ``--crop N`` overrides it.

Run::

    .venv/bin/python bench/quality.py --preset cpu --gridsize 2 --photons 1e9 1e6 -o /tmp/q

Every cell runs once per ``--seeds`` entry (simulation and training seed; default 1 2 3) and the
final table gives mean ± std over them, with the truth-free data NLL per pixel and the same minus
the ground truth's own NLL beside the truth-based scores.  ``--object grf`` runs the second object
family (defaults must not be tuned on the test object's truth alone).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ptypinn import data_nll, evaluate, io, reconstruct, simulate_train_test, train_model
from ptypinn.config import (Config, GroupingConfig, InferConfig, ModelConfig, SimulationConfig,
                            TrainConfig)

EXPERIMENTAL_PROBE = "/work/shared/data/siemens-star-small.npz.bz2"
N_PX = 64

PRESETS: dict[str, dict[str, Any]] = {
    # ~8-10 min per cell on 2 quiet CPU cores (train.max_time_s caps the training)
    "cpu": {"object_size_px": 192, "scan_step_px": 5.0, "groups_per_pattern": 1, "width": 16,
            "depth": 3, "epochs": 40, "batch_size": 16, "learning_rate": 2e-3,
            "max_time_s": 480.0},
    # GPU: larger object, twice the groups (oversampling), wider network, more epochs
    "full": {"object_size_px": 392, "scan_step_px": 5.0, "groups_per_pattern": 2, "width": 32,
             "depth": 3, "epochs": 100, "batch_size": 32, "learning_rate": 2e-3,
             "max_time_s": 3600.0},
}


def crop_probe(probe: np.ndarray, n: int) -> np.ndarray:
    """Central ``n x n`` real-space crop of a ``(..., M, M)`` probe (same pixel size); the photon
    scale is set later by the simulation.

    For the siemens-star probe (128 px; a ring with a hot rim, second-moment radius 30.6 px) the
    central 64 x 64 keep 97.1 % of its power (second-moment radius 28.8 px there).  The
    alternative, cropping its far field to 64 x 64 (pixels twice as large), keeps 99.3 % but
    halves the beam's size in pixels, which changes the overlap at a given step.
    """
    m = probe.shape[-1]
    if m < n:
        raise ValueError(f"probe: expected at least {n} x {n} pixels, got {m} x {m}")
    lo = m // 2 - n // 2
    return np.ascontiguousarray(probe[..., lo:lo + n, lo:lo + n]).astype(np.complex64)


def cell_config(preset: dict[str, Any], gridsize: int, photons: float, probe: str,
                seed: int, accelerator: str) -> Config:
    """The full run config of one benchmark cell."""
    sim = SimulationConfig(
        object_kind="lines", object_size_px=preset["object_size_px"],
        probe_kind="disk" if probe == "ideal" else "file",
        probe_file=None if probe == "ideal" else EXPERIMENTAL_PROBE,
        probe_size_px=N_PX, probe_radius_px=16.0, scan_kind="jittered",
        scan_step_px=preset["scan_step_px"], photons_per_pattern=photons, seed=seed)
    return Config(
        simulation=sim,
        grouping=GroupingConfig(gridsize=gridsize, k_neighbors=6),
        model=ModelConfig(width=preset["width"], depth=preset["depth"],
                          generator=preset.get("generator", "unet"),
                          spectral_modes=preset.get("spectral_modes", 16),
                          spectral_blocks=preset.get("spectral_blocks", 2)),
        train=TrainConfig(epochs=preset["epochs"], batch_size=preset["batch_size"],
                          learning_rate=preset["learning_rate"], val_fraction=0.1,
                          max_time_s=preset["max_time_s"], accelerator=accelerator,
                          progress_bar=False),
        infer=InferConfig(),
    )


def run_cell(cfg: Config, probe_file: np.ndarray | None, out: Path,
             groups_per_pattern: int = 1, crop: str = "default") -> dict[str, Any]:
    """Simulate, train, reconstruct and score one cell; returns the JSON row.

    ``groups_per_pattern > 1`` (gridsize > 1 only) draws that many distinct groups per seed
    pattern for training (``grouping.allow_oversampling``): more samples from the same scan.
    """
    t0 = time.perf_counter()
    if cfg.simulation.probe_kind == "file":
        train, test = simulate_train_test(cfg.simulation, probe_from_file=probe_file)
    else:
        train, test = simulate_train_test(cfg.simulation)
    if cfg.grouping.gridsize > 1 and groups_per_pattern > 1:
        cfg = dataclasses.replace(cfg, grouping=dataclasses.replace(
            cfg.grouping, n_groups=groups_per_pattern * train.n_patterns,
            allow_oversampling=True))
    res = train_model(cfg, train, out / "run")
    bundle = res.bundle
    icfg = cfg.infer
    if crop != "default":
        icfg = dataclasses.replace(icfg, crop_px=int(crop))
    recon = reconstruct(bundle, test, icfg)
    m = evaluate(recon.object, test.object_true, mask=recon.covered)
    truth_nll = float(np.mean(data_nll(test.object_true, test)))
    io.save_npz(out / "reconstruction.npz", {"object": recon.object, "covered": recon.covered,
                                             "truth": test.object_true})
    return {
        "gridsize": cfg.grouping.gridsize,
        "photons": cfg.simulation.photons_per_pattern,
        "probe": "ideal" if cfg.simulation.probe_kind == "disk" else "experimental",
        "amp_ssim": m["amplitude"]["ssim"],
        "amp_pearson": m["amplitude"]["pearson"],
        "phase_ssim": m["phase"]["ssim"],
        "phase_pearson": m["phase"]["pearson"],
        "mean_ratio": m["amplitude"]["mean_ratio"],
        "train_s": res.fit_time_s,
        "epochs": res.epochs_run,
        "train_patterns": train.n_patterns,
        "train_groups": res.n_train_groups,
        "test_patterns": test.n_patterns,
        "crop_px": recon.crop_px,
        "nll_per_pixel": float(np.mean(recon.nll_per_pattern)),
        "truth_nll_per_pixel": truth_nll,
        "nll_minus_truth": float(np.mean(recon.nll_per_pattern)) - truth_nll,
        "phase_sync_applied": recon.phase_sync_applied,
        "cell_s": time.perf_counter() - t0,
        "metrics": m,
    }


def machine_info(accelerator: str) -> dict[str, Any]:
    cuda = torch.cuda.is_available() and accelerator != "cpu"
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def _fmt(v: Any, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


AGG_KEYS = [("amp_ssim", "amp SSIM", ".3f"), ("amp_pearson", "amp r", ".3f"),
            ("phase_ssim", "phase SSIM", ".3f"), ("phase_pearson", "phase r", ".3f"),
            ("mean_ratio", "mean ratio", ".3f"), ("nll_per_pixel", "NLL/px", ".3f"),
            ("nll_minus_truth", "NLL-truth", ".4f"), ("train_s", "train s", ".0f"),
            ("epochs", "epochs", ".0f")]


def _mean_std(values: list[float], spec: str) -> str:
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    if v.size == 0:
        return "n/a"
    return f"{format(v.mean(), spec)} ± {format(v.std(), spec)}" if v.size > 1 \
        else format(v.mean(), spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--photons", type=float, nargs="+", default=[1e9, 1e6])
    parser.add_argument("--gridsize", type=int, nargs="+", default=[2])
    parser.add_argument("--probe", choices=["ideal", "experimental"], nargs="+",
                        default=["ideal"])
    parser.add_argument("--object", choices=["lines", "grf"], default="lines",
                        help="object family of the train and test objects")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3],
                        help="each seed sets the simulation (objects, positions, noise) and the "
                             "training seed; tables show mean ± std over seeds")
    parser.add_argument("--accelerator", choices=["auto", "cpu", "gpu"], default="auto")
    parser.add_argument("--epochs", type=int, default=None, help="override the preset")
    parser.add_argument("--max-time-s", type=float, default=None, help="override the preset")
    parser.add_argument("--width", type=int, default=None, help="override the preset")
    parser.add_argument("--depth", type=int, default=None, help="override the preset")
    parser.add_argument("--generator", choices=["unet", "spectral"], default=None,
                        help="model.generator (default: the config default, unet)")
    parser.add_argument("--spectral-modes", type=int, default=None,
                        help="model.spectral_modes (spectral generator)")
    parser.add_argument("--spectral-blocks", type=int, default=None,
                        help="model.spectral_blocks (spectral generator)")
    parser.add_argument("--crop", default="default",
                        help="stitching crop: 'default' (stitch.default_crop_px, the square "
                             "inscribed in the probe footprint) or a number of pixels")
    parser.add_argument("-o", "--outdir", default="bench_quality")
    args = parser.parse_args(argv)
    preset = dict(PRESETS[args.preset])
    for key in ("epochs", "max_time_s", "width", "depth", "generator", "spectral_modes",
                "spectral_blocks"):
        if getattr(args, key) is not None:
            preset[key] = getattr(args, key)
    out = Path(args.outdir)
    info = machine_info(args.accelerator)
    for k, v in info.items():
        print(f"{k:<14}: {v}")
    print(f"preset        : {args.preset} {preset}; object {args.object}; seeds {args.seeds}")
    probe_file = None
    if "experimental" in args.probe:
        probe_file = crop_probe(io.read_scan(EXPERIMENTAL_PROBE).probe, N_PX)
    rows = []
    cells = []
    for probe in args.probe:
        for gs in args.gridsize:
            for ph in args.photons:
                cell_rows = []
                for seed in args.seeds:
                    cfg = cell_config(preset, gs, ph, probe, seed, args.accelerator)
                    cfg = dataclasses.replace(cfg, simulation=dataclasses.replace(
                        cfg.simulation, object_kind=args.object))
                    name = f"{args.object}_gs{gs}_{probe}_{ph:.0e}_s{seed}"
                    row = run_cell(cfg, probe_file, out / name, preset["groups_per_pattern"],
                                   args.crop)
                    row.update(seed=seed, object=args.object,
                               loadavg_after=list(os.getloadavg()))
                    rows.append(row)
                    cell_rows.append(row)
                    print(f"[{name}] amp SSIM {_fmt(row['amp_ssim'], '.3f')} phase SSIM "
                          f"{_fmt(row['phase_ssim'], '.3f')} NLL-truth "
                          f"{_fmt(row['nll_minus_truth'], '.4f')} in {row['cell_s']:.0f} s "
                          f"(load {row['loadavg_after'][0]:.2f})", flush=True)
                    io.write_json(out / "quality.json", {"machine": info, "preset": args.preset,
                                                         "preset_values": preset, "rows": rows})
                cells.append(((gs, ph, probe), cell_rows))
    print(f"\n{args.object} objects, mean ± std over seeds {args.seeds}:")
    print("| gridsize | photons | probe | " + " | ".join(h for _, h, _ in AGG_KEYS) + " |")
    print("|" + "---|" * (3 + len(AGG_KEYS)))
    for (gs, ph, probe), cr in cells:
        print(f"| {gs} | {ph:.0e} | {probe} | "
              + " | ".join(_mean_std([r[k] for r in cr], spec) for k, _, spec in AGG_KEYS)
              + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
