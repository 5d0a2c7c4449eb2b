"""PINN vs supervised Baseline vs pty-chi on the "lines" benchmark (issue: baselines and comparison).

Run::

    .venv/bin/python bench/compare.py -o runs/bench-compare                 # cpu preset
    .venv/bin/python bench/compare.py -o runs/bench-compare --preset full   # GPU-sized

Two studies through :mod:`ptypinn.workflows.studies` (so every cell is resumable and has its own
comparison figure): a dose study at 1e4 and 1e6 photons per pattern with all three arms on a
*different* test object of the training kind, and a generalization cell whose test object is of a
kind never seen in training (``grf``; out of distribution).  Prints the machine, one table row per
arm and dose (amplitude/phase SSIM, Pearson, FRC 1/2-bit, wall times) and the four goals with
their measured values:

* PINN amplitude SSIM >= pty-chi's at 1e4 photons;
* PINN within 0.02 amplitude SSIM of pty-chi at 1e6;
* PINN inference + stitching >= 50x faster than the pty-chi run (same machine, same run);
* out of distribution, PINN beats the Baseline.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
from collections import defaultdict
from pathlib import Path

import torch

from ptypinn.config import SimulationConfig, from_dict
from ptypinn.workflows.demo import DEMO_SETTINGS
from ptypinn.simulate import simulate_scan
from ptypinn.workflows.studies import run_study
from ptypinn.workflows.study_results import collect_results

PRESETS = {
    # the demo's model and scan, trained a little longer; 30 pty-chi epochs keep it CPU-sized
    "cpu": {"train": {"epochs": 30, "progress_bar": False}, "ptychi_iterations": 100},
    "full": {"simulation": {"object_size_px": 392}, "model": {"width": 32},
             "train": {"epochs": 60, "progress_bar": False}, "ptychi_iterations": 200},
}


def base_config(preset: str) -> dict:
    cfg = copy.deepcopy(DEMO_SETTINGS)
    p = PRESETS[preset]
    for section in ("simulation", "model", "train"):
        cfg[section].update(p.get(section, {}))
    return cfg


def machine() -> str:
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA"
    return (f"{platform.platform()} | {os.cpu_count()} cores | torch {torch.__version__} "
            f"({torch.get_num_threads()} threads) | {dev}")


def table(rows: list[dict]) -> dict:
    """{(parameter_value, model): {(quantity, metric): value}} from long result rows."""
    out: dict = defaultdict(dict)
    for r in rows:
        if r["value"] not in ("", None):
            out[(r["parameter_value"], r["model"])][(r["quantity"], r["metric"])] = float(r["value"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--out", required=True)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    ap.add_argument("--photons", type=float, nargs="+", default=[1e4, 1e6])
    a = ap.parse_args()
    out = Path(a.out)
    cfg = base_config(a.preset)
    iters = PRESETS[a.preset]["ptychi_iterations"]
    dose = {"study": {"kind": "dose", "values": a.photons, "arms": ["pinn", "baseline", "ptychi"],
                      "ptychi_iterations": iters}, **cfg}
    ood_cfg = copy.deepcopy(cfg)
    n_train = simulate_scan(from_dict(SimulationConfig, cfg["simulation"])).n_patterns  # all
    ood = {"study": {"kind": "generalization", "values": [n_train], "arms": ["pinn", "baseline"],
                     "test_object_kind": "grf"}, **ood_cfg}
    print(machine())
    print(f"preset {a.preset}: {cfg}")
    run_study(dose, out / "dose")
    run_study(ood, out / "ood")
    t = table(collect_results(out / "dose"))
    print("\nphotons  model     ampSSIM ampPearson phSSIM phPearson FRC½bit[px] train_s recon_s")
    for (p, m), v in sorted(t.items(), key=lambda kv: (float(kv[0][0]), kv[0][1])):
        print(f"{float(p):8.0e} {m:9s} {v.get(('amplitude', 'ssim'), float('nan')):7.3f} "
              f"{v.get(('amplitude', 'pearson'), float('nan')):10.3f} "
              f"{v.get(('phase', 'ssim'), float('nan')):6.3f} "
              f"{v.get(('phase', 'pearson'), float('nan')):9.3f} "
              f"{v.get(('complex', 'frc_half_bit_px'), float('nan')):11.2f} "
              f"{v.get(('timing', 'train_s'), float('nan')):7.1f} "
              f"{v.get(('timing', 'reconstruction_s'), float('nan')):7.2f}")
    print("\ngoals:")
    for p in a.photons:
        key = next((k for k in {k[0] for k in t} if float(k) == p), None)
        if key is None:
            continue
        pinn = t.get((key, "PINN"), {}).get(("amplitude", "ssim"), float("nan"))
        pty = t.get((key, "PtyChi"), {}).get(("amplitude", "ssim"), float("nan"))
        rt_p = t.get((key, "PINN"), {}).get(("timing", "reconstruction_s"), float("nan"))
        rt_c = t.get((key, "PtyChi"), {}).get(("timing", "reconstruction_s"), float("nan"))
        goal = "PINN >= PtyChi" if p <= 1e4 else "PINN >= PtyChi - 0.02"
        ok = pinn >= pty if p <= 1e4 else pinn >= pty - 0.02
        print(f"  {p:.0e} photons: amp SSIM PINN {pinn:.3f} vs PtyChi {pty:.3f} ({goal}: "
              f"{'met' if ok else 'NOT met'}); speed-up {rt_c / rt_p:.0f}x (goal 50x: "
              f"{'met' if rt_c / rt_p >= 50 else 'NOT met'})")
    o = table(collect_results(out / "ood"))
    pinn = next((v for (p, m), v in o.items() if m == "PINN"), {}).get(("amplitude", "ssim"))
    base = next((v for (p, m), v in o.items() if m == "Baseline"), {}).get(("amplitude", "ssim"))
    if pinn is not None and base is not None:
        print(f"  out of distribution (train lines, test grf): amp SSIM PINN {pinn:.3f} vs "
              f"Baseline {base:.3f} ({'met' if pinn > base else 'NOT met'})")
    print(f"\nreports: {out / 'dose' / 'report.html'}, {out / 'ood' / 'report.html'}")


if __name__ == "__main__":
    main()
