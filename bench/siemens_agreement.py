"""Does the network earn its place on measured data?  Agreement with pty-chi on the full
Siemens-star scan (issue 13, item 4).

Run (CPU; the pty-chi reference is cached in ``OUT/ptychi_reference.npz`` and reused)::

    OMP_NUM_THREADS=1 .venv/bin/python bench/siemens_agreement.py --out /tmp/siemens-agree

The scan (``--file``, default the tike Siemens star of ``../shared/data``: 516 patterns of
128 x 128) is brought to photon units by the rule every command uses
(:func:`ptypinn.data.to_photon_units`); the PINN is **standalone**: it starts from the file's
probe (or, where the config learns the probe, learns it from there), never from pty-chi's.

Arms, each scored against the reference (pty-chi LSQML with the probe refined,
``--ptychi-epochs`` 200, Poisson noise model):

(a) ``untrained``: the model ``train_model`` would build (same config, probe, seed and derived
    amplitude cap) reconstructing without a single step: the physics layer plus the overlap
    constraint;
(b) ``PINN``: ``train_model`` on the scan itself, then ``reconstruct`` (what ``ptypinn
    reconstruct`` does);
(c) ``PINN+refine``: (b) refined by :func:`ptypinn.refine_scan` (object and probe,
    ``--refine`` epochs at most, stopping when the data NLL stops improving).

Printed and written to ``OUT/agreement.json``: amplitude and phase Pearson after sub-pixel
registration and phase-offset removal, and the FRC between each arm and the reference (half-bit
period, px), each arm's data NLL per pixel (with its own probe), the times, and the machine.
Targets for (b): amplitude and phase r >= 0.9 and >= 0.05 above (a).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from ptypinn import data_nll, io, load_config, reconstruct_ptychi, to_dict, train_model
from ptypinn.config import IterativeConfig, RefineConfig
from ptypinn.data import to_photon_units
from ptypinn.pinn.bundle import Bundle, load_bundle
from ptypinn.pinn.models import build_model, derive_amplitude_max
from ptypinn.workflows.compare import ArmResult, compare, footprint_mask, run_arms, refine_arms

DEFAULT_FILE = "/work/shared/data/siemens-star-small.npz.bz2"


def machine() -> str:
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA"
    load = " ".join(f"{v:.1f}" for v in os.getloadavg())
    return (f"{platform.platform()} | {os.cpu_count()} cores, load {load} | torch "
            f"{torch.__version__} ({torch.get_num_threads()} threads) | {dev}")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--file", default=DEFAULT_FILE)
    p.add_argument("--out", default="/tmp/siemens-agree")
    p.add_argument("--ptychi-epochs", type=int, default=200)
    p.add_argument("--epochs", type=int, default=20, help="PINN training epochs")
    p.add_argument("--refine", type=int, default=50, help="refinement epochs (cap) for (c)")
    p.add_argument("--reference-only", action="store_true",
                   help="only compute (and cache) the pty-chi reference")
    p.add_argument("--reuse-bundle", action="store_true",
                   help="reuse OUT/run/bundle from an earlier run instead of training again")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="ptypinn config overrides (after the defaults below)")
    return p.parse_args()


def reference(scan, out: Path, epochs: int) -> tuple[np.ndarray, np.ndarray, float]:
    """pty-chi LSQML with the probe refined: (object, probe, wall s), cached under ``out``."""
    cache = out / "ptychi_reference.npz"
    if cache.exists():
        d = io.load_npz(cache)
        print(f"pty-chi reference read from {cache}")
        return d["object"], d["probe"], float(d["wall_time_s"])
    res = reconstruct_ptychi(scan, IterativeConfig(algorithm="lsqml", iterations=epochs,
                                                   optimize_probe=True, device="cpu"))
    io.save_npz(cache, {"object": res.object, "probe": res.probe,
                        "wall_time_s": np.float64(res.wall_time_s)}, compress=True)
    return res.object, res.probe, res.wall_time_s


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info: dict = {"machine": machine(), "args": vars(args)}
    print(info["machine"])
    scan = to_photon_units(io.read_scan(args.file))
    print(f"scan: {scan.n_patterns} patterns {scan.pattern_size}^2, frame {scan.object_shape_px},"
          f" scale rule {scan.meta.get('scale_rule')}")
    obj_ref, probe_ref, ref_s = reference(scan, out, args.ptychi_epochs)
    nll_ref = float(np.mean(data_nll(obj_ref, scan.replace(probe=probe_ref))))
    print(f"pty-chi LSQML + probe, {args.ptychi_epochs} epochs: {ref_s:.0f} s, data NLL/px "
          f"{nll_ref:.4f} (with its probe)")
    if args.reference_only:
        return

    cfg = load_config(None, ["grouping.gridsize=2", "model.width=8", f"train.epochs={args.epochs}",
                             "train.batch_size=8", "train.accelerator=cpu",
                             "train.progress_bar=false", "infer.device=cpu", *args.set])
    io.write_yaml(out / "pinn_config.yaml", to_dict(cfg))
    if args.reuse_bundle:
        trained, train_s, epochs_run = load_bundle(out / "run" / "bundle"), float("nan"), None
        print(f"PINN bundle reused from {out / 'run' / 'bundle'}")
    else:
        t0 = time.perf_counter()
        run = train_model(cfg, scan, out / "run")
        train_s, trained, epochs_run = time.perf_counter() - t0, run.bundle, run.epochs_run
        print(f"PINN trained {epochs_run} epochs in {train_s:.0f} s")
    # the PINN's own probe (the file's, or the one it learned): stitching, data NLL, refinement
    pinn_scan = scan.replace(probe=trained.model.probe.detach().cpu().numpy())

    # (a) what train_model builds, before its first network step (same seed and derived cap),
    # with the file's probe and, when it learned one, with the PINN's final probe: the physics
    # layer alone
    arms = []
    for label, s in (("untrained", scan), ("untrained, PINN's probe", pinn_scan)):
        if label != "untrained" and not cfg.model.learn_probe:
            continue
        cap = (derive_amplitude_max(s.probe, s.counts, s.bad_pixels)
               if cfg.model.amplitude_max is None else cfg.model.amplitude_max)
        ucfg = dataclasses.replace(cfg, model=dataclasses.replace(
            cfg.model, amplitude_max=cap, learn_probe=False))
        torch.manual_seed(cfg.train.seed)
        untrained = Bundle.create(build_model(ucfg.model, torch.from_numpy(s.probe),
                                              cfg.grouping.group_size), ucfg)
        arms.append(dataclasses.replace(run_arms(s, pinn=untrained, infer_cfg=cfg.infer)[0],
                                        name=label))
    pinn = run_arms(pinn_scan, pinn=trained, infer_cfg=cfg.infer)[0]
    arms.append(pinn)
    arms += refine_arms(pinn_scan, RefineConfig(epochs=args.refine, refine_probe=True,
                                                device="cpu"), pinn_arm=pinn, flat=False)
    ref_arm = ArmResult(name="PtyChi", object=obj_ref, covered=footprint_mask(scan),
                        wall_time_s=ref_s, patterns_per_s=scan.n_patterns / ref_s,
                        nll_per_pixel=nll_ref,
                        details={"algorithm": "lsqml", "iterations": args.ptychi_epochs,
                                 "optimize_probe": True})
    summary = compare(scan, [ref_arm, *arms], out / "compare")
    info.update(train_s=train_s, epochs_run=epochs_run, ptychi_s=ref_s, compare=summary)
    io.write_json(out / "agreement.json", info)
    print("\nagreement with pty-chi     amp r   phase r   FRC 1/2-bit (px)   data NLL/px")
    for a in arms:
        m = summary["agreement"][f"PtyChi vs {a.name}"]
        frc = m["complex"].get("frc_half_bit_px")
        print(f"{a.name:<26} {m['amplitude']['pearson']:.3f}   {m['phase']['pearson']:.3f}"
              f"     {'-' if frc is None else format(frc, '.2f'):>8}          "
              f"{a.nll_per_pixel:.4f}")
    print(f"wrote {out}/agreement.json, {out}/compare/comparison.png")


if __name__ == "__main__":
    main()
