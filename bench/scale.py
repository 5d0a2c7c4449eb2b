"""Absolute scale: the plainest workflow on reference PtychoPINN NPZ files (issue 13, item 3).

A new user's workflow: simulate a training and a test scan (different objects, the same beam),
write both in the reference NPZ format as PtychoPINN does -- amplitudes normalized so that a
pattern holds ``(N/2)^2`` on average, the probe at unit power ``sum |P|^2 = 1`` (not in photon
units), a flat ``objectGuess`` for the frame -- then, with the command line::

    ptypinn train --train ref_train.npz -o RUN --measurement amplitude [--photons-per-pattern P] ...
    ptypinn infer RUN --scan ref_test.npz -o RUN/test --measurement amplitude [--photons-per-pattern P]

and score the test reconstruction against the simulated truth (amplitude and phase Pearson
after registration, mean amplitude ratio) beside its data NLL per pixel (``summary.json``).

Run (``--free-space-px M`` frames both objects with M px of free space, transmission 1, inside
the scanned area, the situation the ``bright-free-space`` rule assumes)::

    .venv/bin/python bench/scale.py --family lines -o runs/scale
    .venv/bin/python bench/scale.py --family grf -o runs/scale --free-space-px 48 --object-px 96

The CLI runs in a subprocess of the same interpreter with the environment's ``PYTHONPATH``, so
the same script measures an older checkout (``PYTHONPATH=/path/to/old/src ... --no-photons
--tag=-before``); ``--no-photons`` leaves out ``--photons-per-pattern`` (an older checkout has no
such option).  Numbers: ``docs/benchmarks.md``, "Absolute scale".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from ptypinn.config import SimulationConfig
from ptypinn.data import ScanData
from ptypinn.io import load_npz
from ptypinn.metrics import evaluate
from ptypinn.simulate import make_object, simulate_scan


def write_reference(path: Path, scan: ScanData) -> None:
    """A reference PtychoPINN NPZ: normalized amplitudes, unit-power probe, flat objectGuess."""
    n = scan.pattern_size
    norm = np.sqrt((n / 2) ** 2 / scan.photons_per_pattern)
    probe = scan.probe / np.sqrt(np.sum(np.abs(scan.probe) ** 2))
    np.savez(path, diffraction=(np.sqrt(scan.counts) * norm).astype(np.float32),
             xcoords=scan.positions_px[:, 1], ycoords=scan.positions_px[:, 0],
             probeGuess=probe.astype(np.complex64),
             objectGuess=np.ones(scan.object_true.shape, dtype=np.complex64))


def simulate_pair(family: str, free_space_px: int, photons: float, seed: int,
                  object_px: int = 160) -> tuple[ScanData, ScanData]:
    """Train and test scans of two objects of ``family``, the same beam; framed by free space."""
    cfg = SimulationConfig(object_kind=family, object_size_px=object_px, probe_size_px=64,
                           probe_radius_px=16.0, scan_step_px=8.0, photons_per_pattern=photons,
                           seed=seed)
    objs = []
    for s in (seed, seed + 1):
        obj = make_object(cfg, np.random.default_rng(s))
        objs.append(np.pad(obj, free_space_px, constant_values=1) if free_space_px else obj)
    train = simulate_scan(cfg, seed=seed, obj=objs[0])
    test = simulate_scan(cfg, seed=seed + 1, obj=objs[1], calibrated_probe=train.probe)
    return train, test


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", choices=["lines", "grf"], default="lines")
    ap.add_argument("-o", "--output", default="runs/scale")
    ap.add_argument("--free-space-px", type=int, default=0,
                    help="free-space frame (px); > N/2 + probe radius = 48 puts the edge "
                    "patterns wholly in free space")
    ap.add_argument("--object-px", type=int, default=160, help="object side before the frame")
    ap.add_argument("--photons", type=float, default=1e6, help="true photons per pattern")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-photons", action="store_true",
                    help="do not pass --photons-per-pattern (older checkouts)")
    ap.add_argument("--tag", default="", help="suffix of the run directory (e.g. 'before')")
    args = ap.parse_args()

    out = Path(args.output) / f"{args.family}-fs{args.free_space_px}{args.tag}"
    out.mkdir(parents=True, exist_ok=True)
    train, test = simulate_pair(args.family, args.free_space_px, args.photons, args.seed,
                                args.object_px)
    write_reference(out / "ref_train.npz", train)
    write_reference(out / "ref_test.npz", test)
    ppp = [] if args.no_photons else ["--photons-per-pattern"]
    sets = ["--set", "grouping.gridsize=2", "--set", f"train.epochs={args.epochs}",
            "--set", "model.width=16", "--set", "train.progress_bar=false",
            "--set", "infer.device=cpu", "--set", "train.accelerator=cpu"]
    cli = [sys.executable, "-m", "ptypinn.cli"]
    commands = [
        cli + ["train", "--train", str(out / "ref_train.npz"), "-o", str(out / "run"),
               "--measurement", "amplitude"] + sets
        + (ppp + [f"{train.photons_per_pattern:.6g}"] if ppp else []),
        cli + ["infer", str(out / "run"), "--scan", str(out / "ref_test.npz"), "-o",
               str(out / "test"), "--measurement", "amplitude", "--set", "infer.device=cpu"]
        + (ppp + [f"{test.photons_per_pattern:.6g}"] if ppp else []),
    ]
    for c in commands:
        print("$", " ".join(c[2:]), flush=True)
        subprocess.run(c, check=True, env=os.environ.copy())
    rec = load_npz(out / "test" / "reconstruction.npz")
    summary = json.loads((out / "test" / "summary.json").read_text())
    covered = rec["covered"] if "covered" in rec else None
    m = evaluate(rec["object"], test.object_true, mask=covered)
    row = {"family": args.family, "free_space_px": args.free_space_px, "tag": args.tag,
           "amplitude_pearson": m["amplitude"]["pearson"], "phase_pearson": m["phase"]["pearson"],
           "amplitude_mean_ratio": m["amplitude"]["mean_ratio"],
           "nll_per_pixel": summary["nll_per_pixel_mean"],
           "amplitude_max_recon": float(np.abs(rec["object"][covered]).max()
                                        if covered is not None else np.abs(rec["object"]).max())}
    (out / "scale.json").write_text(json.dumps(row, indent=1))
    print(json.dumps(row))


if __name__ == "__main__":
    main()
