"""The measured Siemens-star scan end to end: pty-chi, self-supervised PINN, comparison.

Run (CPU; a 100-pattern crop takes a few minutes on a loaded 2-core machine)::

    OMP_NUM_THREADS=1 .venv/bin/python bench/siemens.py --out /tmp/siemens
    OMP_NUM_THREADS=1 .venv/bin/python bench/siemens.py --n-patterns 0 --epochs 20   # full scan
    OMP_NUM_THREADS=1 .venv/bin/python bench/siemens.py --check-conventions --skip-pinn

Steps (all numbers are printed and written to ``OUT/bench.json``):

1. Read the tike scan (``ptypinn.io.read_scan``), calibrate its probe to photon units
   (``data.calibrate_probe``, on the full scan), optionally crop ``--n-patterns`` around
   ``--center`` (``experimental.crop_scan``).
2. Optionally (``--check-conventions``): reconstruct the convention variants of the crop
   (``experimental.convention_variants``: columns as read ``(y, x)``, swapped, detector rotated by
   180 degrees, detector and scan rotated) with pty-chi and print each one's data NLL per pixel.
3. pty-chi (ePIE by default) on the (cropped) scan.  The probe shipped with the file is only a
   rough estimate: by default pty-chi also refines it (``--fixed-probe`` keeps it), and the
   refined probe is then given to the PINN and to every NLL, so both arms use the same probe.
4. ``ptypinn reconstruct`` equivalent: ``train_model`` on the scan itself, then inference
   (through ``compare.run_arms``).
5. ``compare.compare``: agreement PtyChi vs PINN (SSIM, Pearson, FRC after registration), each
   arm's data NLL, ``comparison.png``; pty-chi's object and probe are written as PNGs too.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from ptypinn import (ScanData, calibrate_probe, data_nll, io, load_config, reconstruct_ptychi,
                     report, to_dict, train_model)
from ptypinn.config import IterativeConfig
from ptypinn.experimental import convention_variants, crop_scan, scan_centre_px
from ptypinn.workflows.compare import ArmResult, compare, footprint_mask, run_arms, summary_table

DEFAULT_FILE = "/work/shared/data/siemens-star-small.npz.bz2"


def machine() -> str:
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA"
    load = " ".join(f"{v:.1f}" for v in os.getloadavg())
    return (f"{platform.platform()} | {platform.processor() or platform.machine()} | "
            f"{os.cpu_count()} cores, load {load} | torch {torch.__version__} "
            f"({torch.get_num_threads()} threads) | {dev}")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--file", default=DEFAULT_FILE)
    p.add_argument("--out", default="/tmp/siemens-bench")
    p.add_argument("--n-patterns", type=int, default=100, help="crop size; 0 = the full scan")
    p.add_argument("--center", default=None, help="crop centre 'y,x' in px (default: scan centre)")
    p.add_argument("--ptychi-algorithm", default="epie", choices=("epie", "rpie", "lsqml", "dm"))
    p.add_argument("--ptychi-iterations", type=int, default=100)
    p.add_argument("--fixed-probe", action="store_true", help="do not let pty-chi refine the probe")
    p.add_argument("--check-conventions", action="store_true")
    p.add_argument("--convention-iterations", type=int, default=30)
    p.add_argument("--skip-pinn", action="store_true")
    p.add_argument("--gridsize", type=int, default=1)
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="further ptypinn config overrides (after the options above)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    return p.parse_args()


def load_scan(args: argparse.Namespace) -> ScanData:
    scan = calibrate_probe(io.read_scan(args.file))
    if args.n_patterns and args.n_patterns < scan.n_patterns:
        centre = (tuple(float(v) for v in args.center.split(",")) if args.center
                  else scan_centre_px(scan))
        scan = crop_scan(scan, centre, args.n_patterns)
    return scan


def check_conventions(scan: ScanData, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """pty-chi on each convention variant; data NLL per pixel with the fixed and refined probe."""
    out = {}
    print(f"\nconvention check: pty-chi {args.ptychi_algorithm}, {args.convention_iterations} "
          "epochs per variant (NLL per pixel; lower is better)")
    for name, variant in convention_variants(scan).items():
        row = {}
        for refine in (False, True):
            res = reconstruct_ptychi(variant, IterativeConfig(
                algorithm=args.ptychi_algorithm, iterations=args.convention_iterations,
                optimize_probe=refine, device=args.device))
            row["refined_probe" if refine else "fixed_probe"] = float(np.mean(
                data_nll(res.object, variant.replace(probe=res.probe))))
        out[name] = row
        print(f"  {name:<22} fixed probe {row['fixed_probe']:7.3f}   "
              f"refined probe {row['refined_probe']:7.3f}", flush=True)
    return out


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info: dict = {"machine": machine(), "args": vars(args)}
    print(info["machine"])

    scan = load_scan(args)
    info["scan"] = {"n_patterns": scan.n_patterns, "pattern_px": scan.pattern_size,
                    "object_shape_px": list(scan.object_shape_px),
                    "photons_per_pattern": scan.photons_per_pattern,
                    "crop_shift_px": scan.meta.get("crop_shift_px")}
    print(f"scan: {scan.n_patterns} patterns {scan.pattern_size}^2, object frame "
          f"{scan.object_shape_px}, {scan.photons_per_pattern:.3g} photons/pattern")
    ones = np.ones(scan.object_shape_px, np.complex64)
    info["nll_unit_object_given_probe"] = float(np.mean(data_nll(ones, scan)))

    if args.check_conventions:
        info["conventions"] = check_conventions(scan, args)

    # ---- pty-chi
    it_cfg = IterativeConfig(algorithm=args.ptychi_algorithm, iterations=args.ptychi_iterations,
                             optimize_probe=not args.fixed_probe, device=args.device)
    res = reconstruct_ptychi(scan, it_cfg)
    info["nll_ptychi_given_probe"] = float(np.mean(data_nll(res.object, scan)))
    if not args.fixed_probe:
        scan = scan.replace(probe=res.probe, meta=dict(scan.meta, probe_refined_by="pty-chi "
                                                       f"{args.ptychi_algorithm}"))
    nll_pc = float(np.mean(data_nll(res.object, scan)))
    info["nll_unit_object"] = float(np.mean(data_nll(ones, scan)))
    print(f"pty-chi {args.ptychi_algorithm} {args.ptychi_iterations} epochs "
          f"({'fixed' if args.fixed_probe else 'refined'} probe): {res.wall_time_s:.1f} s, "
          f"NLL/px {nll_pc:.3f} (unit object: {info['nll_unit_object']:.3f})")
    io.write_bytes(out / "ptychi_object.png", report.complex_image_png(
        res.object, f"pty-chi {args.ptychi_algorithm}, {args.ptychi_iterations} epochs"))
    io.write_bytes(out / "probe.png", report.complex_image_png(
        scan.probe if scan.probe.ndim == 2 else scan.probe[0], "probe used by both arms"))
    io.save_npz(out / "ptychi.npz", {"object": res.object, "probe": res.probe,
                                      "positions_px": scan.positions_px}, compress=True)

    # ---- PINN (what `ptypinn reconstruct` does) and the comparison
    arms: list[ArmResult] = []
    if not args.skip_pinn:
        cfg = load_config(None, [
            f"grouping.gridsize={args.gridsize}", f"model.width={args.width}",
            f"model.depth={args.depth}", f"train.epochs={args.epochs}",
            f"train.batch_size={args.batch_size}", f"train.learning_rate={args.learning_rate}",
            f"train.accelerator={'gpu' if args.device == 'cuda' else args.device}",
            "train.progress_bar=false", f"infer.device={args.device}", *args.set])
        io.write_yaml(out / "pinn_config.yaml", to_dict(cfg))
        t0 = time.perf_counter()
        tr = train_model(cfg, scan, out / "pinn" / "run")
        info["pinn_train_s"] = time.perf_counter() - t0
        info["pinn_epochs_run"] = tr.epochs_run
        print(f"PINN trained {tr.epochs_run} epochs in {info['pinn_train_s']:.1f} s")
        arms += run_arms(scan, pinn=tr.bundle, infer_cfg=cfg.infer)
    arms.append(ArmResult(
        name="PtyChi", object=res.object,
        covered=footprint_mask(scan, arms[0].details.get("crop_px") if arms else None),
        wall_time_s=res.wall_time_s, patterns_per_s=scan.n_patterns / res.wall_time_s,
        nll_per_pixel=nll_pc,
        details={"algorithm": res.algorithm, "iterations": res.iterations,
                 "optimize_probe": not args.fixed_probe}))
    arms = arms[-1:] + arms[:-1]  # PtyChi first: agreement is "PtyChi vs PINN"
    # A stitched network object is 0 outside its (cropped) footprint, where the probe's tails still
    # illuminate, which inflates its data NLL.  Fair variant: every arm on the pixels all arms
    # cover, unit transmission (free space) elsewhere.
    common = np.logical_and.reduce([a.covered for a in arms])
    info["nll_common_region_unit_elsewhere"] = {
        a.name: float(np.mean(data_nll(np.where(common, a.object, 1), scan))) for a in arms}
    summary = compare(scan, arms, out / "compare")
    info["compare"] = summary
    print(summary_table(summary))
    print("NLL/px with every arm's object kept on the common covered region and 1 elsewhere: "
          + ", ".join(f"{k} {v:.3f}" for k, v in info["nll_common_region_unit_elsewhere"].items())
          + f" (unit object everywhere: {info['nll_unit_object']:.3f})")
    io.write_json(out / "bench.json", info)
    print(f"wrote {out}/bench.json, {out}/compare/comparison.png, {out}/ptychi_object.png")


if __name__ == "__main__":
    main()
