"""Refinement schedules compared on the cells of a finished ``bench/compare.py --refine-only`` run:
the default minibatch schedule against a few minibatch epochs followed by the full-batch L-BFGS
phase (``refine.lbfgs_iterations``), from the PINN's object and from a flat object.

Run::

    .venv/bin/python bench/compare.py -o runs/compare --refine-only        # first (or reuse one)
    OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python bench/refine_schedule.py runs/compare/dose

Per cell (one dose and seed of that run): the cell's test scan is simulated again from its
``config.resolved.yaml`` (the same seeds, so the same counts), the PINN's stitched object is read
from ``compare/arms/PINN.npz`` and pty-chi's final data NLL and its time to reach it from the
cell's ``done.json``, as ``bench/compare.py`` reports them.  Each schedule then refines the object
with the cell's ``refine`` settings (cap 500 epochs, CPU) and reports: the time to reach pty-chi's
NLL (the first check at or below it; for the PINN start plus the PINN's inference time of that
run) and its ratio to pty-chi's time; the final data NLL (truth-free); and, beside it, amplitude
and phase SSIM against the truth on the pixels the PINN covers.  Mean +- std over the cells of
each dose.  Nothing is tuned on the truth: the schedules are fixed before the run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from compare import time_to_target
from ptypinn.io import load_config
from ptypinn.metrics import evaluate
from ptypinn.refinement import refine
from ptypinn.simulate import simulate_train_test

SCHEDULES = {
    "minibatch (default)": {"lbfgs_iterations": 0},
    "5 epochs + L-BFGS": {"epochs": 5, "lbfgs_iterations": 200},
}


def machine() -> str:
    return (f"{platform.platform()} | {os.cpu_count()} cores | torch {torch.__version__} "
            f"({torch.get_num_threads()} threads) | load {os.getloadavg()[0]:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", type=Path, help="the dose study directory of a compare run")
    a = ap.parse_args()
    print(machine())
    rows = []
    for done in sorted((a.study / "cells").glob("*/done.json")):
        cell = done.parent
        rec = json.loads(done.read_text())
        arms = rec["summary"]["arms"]
        target = arms["PtyChi"]["nll_per_pixel"]
        t_pty = time_to_target(arms["PtyChi"]["details"]["nll_history"], target)
        pinn_s = arms["PINN"]["wall_time_s"]
        cfg = load_config(cell / "config.resolved.yaml")
        _, test = simulate_train_test(cfg.simulation)
        pinn = np.load(cell / "compare" / "arms" / "PINN.npz")
        for name, kw in SCHEDULES.items():
            rcfg = dataclasses.replace(cfg.refine, **{"epochs": 500, "device": "cpu", **kw})
            for start in ("PINN", "flat"):
                res = refine(test, rcfg, object_init=pinn["object"] if start == "PINN" else None)
                hist = [list(h) for h in res.nll_history]
                t = time_to_target(hist, target, pinn_s if start == "PINN" else 0.0)
                m = evaluate(res.object, test.object_true, mask=pinn["covered"])
                row = {"cell": cell.name, "photons": rec["cell"]["value"], "schedule": name,
                       "start": start, "ratio": t / t_pty, "nll": res.nll_per_pixel,
                       "amp_ssim": m["amplitude"]["ssim"], "phase_ssim": m["phase"]["ssim"],
                       "solver_s": res.wall_time_s, "epochs": res.epochs}
                rows.append(row)
                print(f"{cell.name} {name:<20} from {start:<4}: time to pty-chi's NLL "
                      f"{t:.2f} s (pty-chi {t_pty:.2f} s, ratio {row['ratio']:.3f}); final NLL "
                      f"{row['nll']:.4f} (pty-chi {target:.4f}) after {res.epochs} passes, "
                      f"{res.wall_time_s:.1f} s; amp SSIM {row['amp_ssim']:.4f}, phase SSIM "
                      f"{row['phase_ssim']:.4f}", flush=True)
    groups: dict = defaultdict(list)
    for r in rows:
        groups[(r["photons"], r["schedule"], r["start"])].append(r)
    print(f"\n{machine()}\nmean ± std over cells:")
    print("| photons | schedule | start | ratio to pty-chi | final NLL/px | amp SSIM | phase SSIM "
          "| solver s |")
    print("|---|---|---|---|---|---|---|---|")
    for (p, name, start), rs in sorted(groups.items()):
        f = lambda k, d: f"{np.mean([r[k] for r in rs]):.{d}f} ± {np.std([r[k] for r in rs]):.{d}f}"  # noqa: E731
        print(f"| {float(p):.0e} | {name} | {start} | {f('ratio', 3)} | {f('nll', 4)} | "
              f"{f('amp_ssim', 4)} | {f('phase_ssim', 4)} | {f('solver_s', 1)} |")


if __name__ == "__main__":
    main()
