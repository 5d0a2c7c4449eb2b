"""PINN vs supervised Baseline vs pty-chi on the "lines" benchmark, >= 3 seeds, pty-chi at full
strength.

Run::

    .venv/bin/python bench/compare.py -o runs/bench-compare                 # cpu preset
    .venv/bin/python bench/compare.py -o runs/bench-compare --preset full   # GPU-sized

Two studies through :mod:`ptypinn.workflows.studies` (every cell is resumable and has its own
comparison figure):

* a dose study at 1e4 and 1e6 photons per pattern with all three arms on a *different* test
  object of the training kind ("lines"), one cell per seed (``--seeds``, default 0 1 2: each
  seed changes the simulated objects, positions and noise, and the training seed);
* a generalization study whose test object is of a kind never seen in training (``grf``; out of
  distribution), PINN and Baseline, same seeds; its test scan uses the training beam and flux.

Arms: the PINN and the Baseline are trained on the cell's training scan (the demo's model and
scan; ``train.epochs`` from the preset) and phase synchronization is kept for either only when it
lowers that arm's data NLL.  pty-chi runs **ePIE and LSQML** (Poisson noise model), each until its
data NLL stops improving (``iterative.until_converged``: checked every 10 epochs, relative
tolerance 1e-3, cap ``ptychi_iterations`` epochs: 500 cpu, 1000 full), and the engine with the
lower data NLL is the PtyChi arm of that cell (its epochs and solver time are in the table).

The dose study also runs the refinement arms (:func:`ptypinn.refinement.refine`, the default
``refine`` section, cap ``refine_epochs``): "PINN+refine" starts from the PINN's stitched object
(its time includes the PINN's inference), "refine from flat" from ones.  **Time to quality**: for
each cell, pty-chi's final data NLL is the target; pty-chi's time is its solver time at the first
check that reached it, and the refinement arms' time is the first refinement check at or below
it (plus the PINN's inference for PINN+refine; plus the PINN's training in the second ratio).

Prints the machine, a speed table (:func:`speed_table`: per dose and arm, end-to-end patterns/s
measured on this machine in this run and its ratio to pty-chi's), the study tables (mean ± std over seeds; truth-based scores beside the
truth-free data NLL per pixel and the same minus the ground truth's own NLL), pty-chi's engine per
cell, and the goals with their measured means.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from ptypinn.config import SimulationConfig, from_dict
from ptypinn.workflows.demo import DEMO_SETTINGS
from ptypinn.simulate import simulate_scan
from ptypinn.workflows.studies import run_study
from ptypinn.workflows.study_results import collect_results

PRESETS = {
    # the demo's model and scan, trained a little longer; pty-chi runs to convergence (capped)
    # (no training time cap: the demo's max_time_s would make the epochs depend on the load)
    "cpu": {"train": {"epochs": 30, "progress_bar": False, "max_time_s": None},
            "ptychi_iterations": 500},
    "full": {"simulation": {"object_size_px": 392}, "model": {"width": 32},
             "train": {"epochs": 60, "progress_bar": False, "max_time_s": None},
             "ptychi_iterations": 1000},
}
ENGINES = ["epie", "lsqml"]
REFINE_EPOCHS = 500
ITERATIVE = {"until_converged": True, "check_every_epochs": 10, "convergence_rel_tol": 1e-3,
             "noise_model": "poisson"}


def base_config(preset: str) -> dict:
    cfg = copy.deepcopy(DEMO_SETTINGS)
    p = PRESETS[preset]
    for section in ("simulation", "model", "train"):
        cfg[section].update(p.get(section, {}))
    cfg["iterative"] = dict(ITERATIVE)
    return cfg


def machine() -> str:
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA"
    return (f"{platform.platform()} | {os.cpu_count()} cores | torch {torch.__version__} "
            f"({torch.get_num_threads()} threads) | {dev}")


def warm_up_ptychi() -> None:
    """One tiny pty-chi run before anything is timed: the first run in a process pays one-off
    import and initialisation costs (measured: 5 s instead of 0.4 s on a 32x32 test scan) that
    would otherwise be charged to the first cell's pty-chi time."""
    from ptypinn import reconstruct_ptychi
    from ptypinn.baselines.ptychi import ptychi_available
    from ptypinn.config import IterativeConfig

    if not ptychi_available()[0]:
        return
    tiny = simulate_scan(SimulationConfig(object_size_px=48, probe_size_px=32,
                                          probe_radius_px=8.0, scan_step_px=8.0))
    for engine in ENGINES:
        reconstruct_ptychi(tiny, IterativeConfig(algorithm=engine, iterations=2))


def means(rows: list[dict]) -> dict:
    """{(parameter_value, model): {(quantity, metric): mean over seeds}} from long result rows."""
    acc: dict = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["value"] not in ("", None):
            acc[(float(r["parameter_value"]), r["model"])][(r["quantity"], r["metric"])].append(
                float(r["value"]))
    return {k: {m: sum(v) / len(v) for m, v in d.items()} for k, d in acc.items()}


def speed_table(rows: list[dict]) -> str:
    """Per (photons, arm): end-to-end patterns/s and its ratio to PtyChi's, mean ± std over
    seeds, from :func:`~ptypinn.workflows.study_results.collect_results` rows (every arm of a
    cell ran on this machine in this run; see :mod:`ptypinn.workflows.compare`)."""
    acc: dict = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["quantity"] == "timing" and r["value"] not in ("", None):
            acc[(float(r["parameter_value"]), r["model"])][r["metric"]].append(float(r["value"]))
    lines = [f"{'photons':>8} {'arm':<17} {'end-to-end patterns/s':>22} "
             f"{'ratio vs PtyChi':>27}"]
    for (p, model), d in sorted(acc.items()):
        rate, ratio = d.get("end_to_end_patterns_per_s", []), d.get("ratio_vs_ptychi", [])
        fmt = lambda xs, f: (f"{np.mean(xs):{f}} ± {np.std(xs):{f}}" if xs else "-")  # noqa: E731
        lines.append(f"{p:8.0e} {model:<17} {fmt(rate, '.1f'):>22} {fmt(ratio, '.3f'):>27}")
    return "\n".join(lines)


def time_to_target(history: list, target: float, start_s: float = 0.0) -> float:
    """Seconds to the first check with NLL <= target (``start_s`` added); inf if never.

    ``history``: pty-chi's ``[epochs, seconds, nll]`` triples or the refinement's
    ``{"epoch", "wall_time_s", "nll_per_pixel"}`` records."""
    for h in history:
        t, v = (h["wall_time_s"], h["nll_per_pixel"]) if isinstance(h, dict) else (h[1], h[2])
        if v is not None and v <= target * (1 + 1e-9):
            return start_s + t
    return float("inf")


def time_to_quality(study_dir: Path) -> list[dict]:
    """Per finished cell: pty-chi's target NLL and the times of pty-chi and the refinement arms
    to reach it (see the module docstring)."""
    out = []
    for done in sorted((study_dir / "cells").glob("*/done.json")):
        rec = json.loads(done.read_text())
        arms = (rec.get("summary") or {}).get("arms") or {}
        pty = arms.get("PtyChi")
        if not pty:
            continue
        target = pty["nll_per_pixel"]
        t_pty = time_to_target(pty["details"]["nll_history"], target)
        fit = (rec.get("train", {}).get("PINN") or {}).get("fit_time_s", float("nan"))
        row = {"cell": rec["cell"]["name"], "value": rec["cell"]["value"], "target": target,
               "engine": pty["details"].get("algorithm"), "ptychi_s": t_pty, "fit_s": fit}
        for label in ("PINN+refine", "refine from flat"):
            arm = arms.get(label)
            if arm:
                d = arm["details"]
                row[label] = time_to_target(d["nll_history"], target, d["start_wall_time_s"])
        out.append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--out", required=True)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    ap.add_argument("--photons", type=float, nargs="+", default=[1e4, 1e6])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--refine-only", action="store_true",
                    help="issue 12's run: the dose study with the arms PINN, PtyChi, PINN+refine "
                    "and refine from flat only (no Baseline, no out-of-distribution study)")
    a = ap.parse_args()
    out = Path(a.out)
    cfg = base_config(a.preset)
    iters = PRESETS[a.preset]["ptychi_iterations"]
    dose = {"study": {"kind": "dose", "values": a.photons,
                      "arms": ["pinn", "ptychi", "pinn_refine", "refine_flat"] if a.refine_only
                      else ["pinn", "baseline", "ptychi", "pinn_refine", "refine_flat"],
                      "seeds": a.seeds, "ptychi_iterations": iters, "ptychi_engines": ENGINES,
                      "refine_epochs": REFINE_EPOCHS},
            **cfg}
    ood_cfg = copy.deepcopy(cfg)
    n_train = simulate_scan(from_dict(SimulationConfig, cfg["simulation"])).n_patterns  # all
    ood = {"study": {"kind": "generalization", "values": [n_train], "arms": ["pinn", "baseline"],
                     "seeds": a.seeds, "test_object_kind": "grf"}, **ood_cfg}
    print(machine(), f"| load {os.getloadavg()[0]:.2f}")
    print(f"preset {a.preset}: {cfg}")
    warm_up_ptychi()
    d = run_study(dose, out / "dose")
    o = None if a.refine_only else run_study(ood, out / "ood")
    print(f"\nload after: {os.getloadavg()}")
    print("\nspeed (end to end, this machine, this run; ratio = arm patterns/s / PtyChi's):\n")
    print(speed_table(collect_results(out / "dose")))
    print(f"\ndose study ({out / 'dose' / 'table.md'}):\n")
    print((out / "dose" / "table.md").read_text())
    if o is not None:
        print(f"\nout of distribution ({out / 'ood' / 'table.md'}):\n")
        print((out / "ood" / "table.md").read_text())
    t = means(collect_results(out / "dose"))
    print("goals (means over seeds):")
    for p in a.photons:
        pinn, pty = t.get((p, "PINN"), {}), t.get((p, "PtyChi"), {})
        amp_p, amp_c = (x.get(("amplitude", "ssim"), float("nan")) for x in (pinn, pty))
        ph_p, ph_c = (x.get(("phase", "ssim"), float("nan")) for x in (pinn, pty))
        nll_p, nll_c = (x.get(("data", "nll_per_pixel"), float("nan")) for x in (pinn, pty))
        rt_p, rt_c = (x.get(("timing", "reconstruction_s"), float("nan")) for x in (pinn, pty))
        goal = "PINN >= PtyChi" if p <= 1e4 else "PINN >= PtyChi - 0.02"
        ok = amp_p >= amp_c if p <= 1e4 else amp_p >= amp_c - 0.02
        print(f"  {p:.0e} photons: amp SSIM PINN {amp_p:.3f} vs PtyChi {amp_c:.3f} ({goal}: "
              f"{'met' if ok else 'NOT met'}); phase SSIM {ph_p:.3f} vs {ph_c:.3f}; data NLL/px "
              f"{nll_p:.4f} vs {nll_c:.4f}; PINN inference {rt_p:.2f} s vs PtyChi {rt_c:.1f} s "
              f"(speed-up {rt_c / rt_p:.0f}x; goal 50x: {'met' if rt_c / rt_p >= 50 else 'NOT met'})")
    od = {} if o is None else means(collect_results(out / "ood"))
    pinn = next((v for (p, m), v in od.items() if m == "PINN"), {}).get(("amplitude", "ssim"))
    base = next((v for (p, m), v in od.items() if m == "Baseline"), {}).get(("amplitude", "ssim"))
    if pinn is not None and base is not None:
        print(f"  out of distribution (train lines, test grf): amp SSIM PINN {pinn:.3f} vs "
              f"Baseline {base:.3f} ({'met' if pinn > base else 'NOT met'})")
    print("\nrefinement goals (issue 12; means over seeds):")
    for p in a.photons:
        pty, pr, fl = (t.get((p, m), {}) for m in ("PtyChi", "PINN+refine", "refine from flat"))
        g = lambda x, q, m: x.get((q, m), float("nan"))  # noqa: E731
        amp = [g(x, "amplitude", "ssim") for x in (pr, pty, fl)]
        ph = [g(x, "phase", "ssim") for x in (pr, pty, fl)]
        nll = [g(x, "data", "nll_per_pixel") for x in (pr, pty, fl)]
        if p <= 1e4:
            ok = amp[0] >= amp[1] and ph[0] >= ph[1] and nll[0] <= nll[1]
            goal = "PINN+refine >= PtyChi in amp and phase SSIM and data NLL"
        else:
            ok = amp[0] >= amp[1] - 0.005 and ph[0] >= ph[1] - 0.005
            goal = "PINN+refine within 0.005 SSIM of PtyChi"
        print(f"  {p:.0e} photons: amp SSIM PINN+refine {amp[0]:.4f} vs PtyChi {amp[1]:.4f} "
              f"(flat {amp[2]:.4f}); phase SSIM {ph[0]:.4f} vs {ph[1]:.4f} (flat {ph[2]:.4f}); "
              f"data NLL/px {nll[0]:.4f} vs {nll[1]:.4f} (flat {nll[2]:.4f}); "
              f"{goal}: {'met' if ok else 'NOT met'}")
    ttq = time_to_quality(out / "dose")
    print("\ntime to pty-chi's final data NLL (s; ratio = arm / pty-chi; goal <= 0.2):")
    ratios = defaultdict(list)
    for r in ttq:
        pr, fl = r.get("PINN+refine", float("nan")), r.get("refine from flat", float("nan"))
        ratios[(r["value"], "pinn")].append(pr / r["ptychi_s"])
        ratios[(r["value"], "pinn+train")].append((pr + r["fit_s"]) / r["ptychi_s"])
        ratios[(r["value"], "flat")].append(fl / r["ptychi_s"])
        print(f"  {r['cell']}: target {r['target']:.4f} ({r['engine']}); pty-chi {r['ptychi_s']:.2f}; "
              f"PINN+refine {pr:.2f} (ratio {pr / r['ptychi_s']:.3f}; with training "
              f"{(pr + r['fit_s']) / r['ptychi_s']:.2f}); refine from flat {fl:.2f} "
              f"(ratio {fl / r['ptychi_s']:.3f})")
    for (v, kind), xs in sorted(ratios.items()):
        m, sd = float(np.mean(xs)), float(np.std(xs))
        print(f"  {float(v):.0e} {kind}: ratio {m:.3f} ± {sd:.3f} over {len(xs)} seeds"
              + (f" (goal <= 0.2: {'met' if m <= 0.2 else 'NOT met'})" if kind == "pinn" else ""))
    print(f"\nfindings: {d['finding']}" + ("" if o is None else f" | {o['finding']}"))
    print(f"reports: {out / 'dose' / 'report.html'}"
          + ("" if o is None else f", {out / 'ood' / 'report.html'}"))


if __name__ == "__main__":
    main()
