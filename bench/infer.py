"""Inference + stitching throughput and memory (issue: the PINN, "Speed").

Run::

    .venv/bin/python bench/infer.py                         # batch sweep on 10k patterns, CPU
    .venv/bin/python bench/infer.py --device cuda --patterns 100000
    .venv/bin/python bench/infer.py --memory 10000 100000   # peak memory vs scan size
    .venv/bin/python bench/infer.py --phase-sync off        # without the synchronization
    # A/B variants interleaved in one process (same scan and model; medians of --repeats):
    .venv/bin/python bench/infer.py --gridsize 2 --width 16 --patterns 600 \
        --ab sync nosync no_channels_last bf16 batch256 --repeats 3

Measures ``infer.reconstruct`` end to end (normalization, grouping, network, overlap constraint,
stitching; the data-NLL pass is timed separately) for 64x64 patterns with an untrained gridsize-1
or -2 model of the default size (the weights do not change the cost).  Scans are built by tiling a
small simulated scan over random positions on a large canvas, so building them is cheap.  Memory
runs go in fresh subprocesses (peak RSS is per process); on CUDA the peak allocated device memory
is reported too.  Also reports training throughput (groups/s) for a few steps.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from ptypinn import Bundle, ScanData, load_config, reconstruct, simulate_scan
from ptypinn.config import InferConfig
from ptypinn.pinn.models import build_model


def machine() -> str:
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA"
    return (f"{platform.platform()} | {platform.processor() or platform.machine()} | "
            f"{os.cpu_count()} cores | torch {torch.__version__} ({torch.get_num_threads()} threads)"
            f" | {dev}")


def make_scan(n_patterns: int, seed: int = 0) -> ScanData:
    base = simulate_scan(load_config({"simulation": {
        "object_size_px": 128, "probe_size_px": 64, "probe_radius_px": 16.0,
        "scan_step_px": 8.0, "photons_per_pattern": 1e6, "seed": seed}}).simulation)
    rng = np.random.default_rng(seed)
    side = int(np.sqrt(n_patterns) * 6) + 80
    pos = rng.uniform(33, side - 34, (n_patterns, 2))
    counts = base.counts[np.arange(n_patterns) % base.n_patterns]
    return ScanData(counts=counts, positions_px=pos, probe=base.probe,
                    meta={"provenance": "bench/infer.py tiled scan"})


def make_bundle(scan: ScanData, gridsize: int, device: str, width: int = 32) -> Bundle:
    cfg = load_config({"grouping": {"gridsize": gridsize}, "model": {"width": width}})
    torch.manual_seed(0)
    model = build_model(cfg.model, torch.from_numpy(scan.probe), gridsize**2).to(device)
    return Bundle.create(model, cfg)


def run_once(n: int, batch: int, gridsize: int, device: str, amp: bool,
             phase_sync: bool = True, width: int = 32) -> dict:
    scan = make_scan(n)
    bundle = make_bundle(scan, gridsize, device, width)
    cfg = InferConfig(batch_size=batch, device=device, mixed_precision=amp, phase_sync=phase_sync)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    rec = reconstruct(bundle, scan, cfg)
    total = time.perf_counter() - t0
    out = {"patterns": n, "batch": batch, "gridsize": gridsize, "device": device, "amp": amp,
           "phase_sync": phase_sync,
           "patterns_per_s": rec.patterns_per_s, "infer_stitch_s": rec.wall_time_s,
           "with_nll_s": total,
           "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "rss_before_mib": rss0, "counts_mib": scan.counts.nbytes / 2**20}
    if device.startswith("cuda"):
        out["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


VARIANTS = {
    # name: (InferConfig overrides, model transform); "sync" is the default configuration
    "sync": ({}, None),
    "nosync": ({"phase_sync": False}, None),
    "no_channels_last": ({"channels_last": False}, None),
    "bf16": ({"mixed_precision": True}, None),
    "batch16": ({"batch_size": 16}, None),
    "batch32": ({"batch_size": 32}, None),
    "batch64": ({"batch_size": 64}, None),
    "batch128": ({"batch_size": 128}, None),
    "batch256": ({"batch_size": 256}, None),
    "batch1024": ({"batch_size": 1024}, None),
    "compile": ({}, "compile"),
}
"""Variants of ``--ab``: each is the default run (batch ``--batch``, phase sync on) with one
change."""


def ab(n: int, batch: int | None, gridsize: int, width: int, device: str, names: list[str],
       repeats: int) -> dict[str, list[float]]:
    """Interleaved A/B runs on one scan and one model: round-robin over ``names``, ``repeats``
    rounds (so a varying machine load hits every variant alike).  Returns end-to-end
    patterns/s (the whole ``reconstruct`` call) per variant."""
    import copy

    scan = make_scan(n)
    base = make_bundle(scan, gridsize, device, width)
    bundles, cfgs = {}, {}
    for name in names:
        over, transform = VARIANTS[name]
        model = copy.deepcopy(base.model)
        if transform == "compile":
            model.generator = torch.compile(model.generator, dynamic=False)
        elif transform is not None:
            model = transform(model)
        bundles[name] = Bundle(model=model, config=base.config, manifest=base.manifest)
        cfgs[name] = InferConfig(**{"batch_size": batch, "device": device, **over})
    out: dict[str, list[float]] = {name: [] for name in names}
    inner: dict[str, list[float]] = {name: [] for name in names}
    for name in names:  # warm-up (and compilation) outside the timing
        reconstruct(bundles[name], make_scan(min(n, 512), seed=1), cfgs[name])
    for r in range(repeats):
        for name in names:
            t0 = time.perf_counter()
            rec = reconstruct(bundles[name], scan, cfgs[name])
            out[name].append(n / (time.perf_counter() - t0))
            inner[name].append(rec.patterns_per_s)
            print(f"  round {r} {name:>14}: {out[name][-1]:6.1f} patterns/s end to end "
                  f"({rec.patterns_per_s:6.1f} inference+sync+stitch); load "
                  f"{os.getloadavg()[0]:.2f}", flush=True)
    return {name: (out[name], inner[name]) for name in names}


def train_throughput(device: str, gridsize: int, steps: int = 20, batch: int = 16) -> float:
    scan = make_scan(2000)
    model = make_bundle(scan, gridsize, device).model.train()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    c = gridsize**2
    counts = torch.from_numpy(scan.counts[: batch * c]).view(batch, c, 64, 64).to(device)
    batch_d = {"counts": counts, "offsets_px": torch.zeros(batch, c, 2, device=device)}
    for i in range(steps + 3):
        if i == 3:
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        loss, _ = model.loss(batch_d)
        opt.zero_grad()
        loss.backward()
        opt.step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--patterns", type=int, default=10000)
    p.add_argument("--batches", type=int, nargs="+", default=[64, 256, 1024, 4096])
    p.add_argument("--gridsize", type=int, default=1)
    p.add_argument("--width", type=int, default=32, help="model.width")
    p.add_argument("--ab", nargs="+", choices=sorted(VARIANTS),
                   help="interleaved A/B comparison of these variants (see VARIANTS)")
    p.add_argument("--repeats", type=int, default=3, help="rounds of --ab")
    p.add_argument("--batch", type=int, default=None,
                   help="batch of --ab (default: infer.batch_size's automatic value)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast")
    p.add_argument("--phase-sync", choices=["on", "off"], default="on",
                   help="infer.phase_sync (on: a second network pass, see infer.py)")
    p.add_argument("--memory", type=int, nargs="*", help="scan sizes for the memory check")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: JSON args of one subprocess run
    a = p.parse_args()
    if a.one:
        print(json.dumps(run_once(**json.loads(a.one))))
        return
    sync = a.phase_sync == "on"
    print(machine())
    if a.ab:
        print(f"A/B: patterns {a.patterns}, gridsize {a.gridsize}, width {a.width}, batch "
              f"{a.batch or 'auto'}, device {a.device}, load {os.getloadavg()}")
        res = ab(a.patterns, a.batch, a.gridsize, a.width, a.device, a.ab, a.repeats)
        ref = np.median(res[a.ab[0]][0])
        print("variant         median e2e patterns/s  (vs first)  median inference+stitch/s")
        for name, (e2e, inner) in res.items():
            print(f"{name:<15} {np.median(e2e):21.1f}  {np.median(e2e) / ref:10.2f}"
                  f"  {np.median(inner):25.1f}")
        print(f"load after: {os.getloadavg()}")
        return
    print(f"training throughput (gridsize {a.gridsize}, batch 16): "
          f"{train_throughput(a.device, a.gridsize):.1f} groups/s")
    if a.memory:
        print("patterns  batch  patterns/s  peak RSS MiB  (counts MiB)  peak CUDA MiB")
        for n in a.memory:
            args = dict(n=n, batch=a.batches[-1], gridsize=a.gridsize, device=a.device, amp=a.amp,
                        phase_sync=sync, width=a.width)
            res = subprocess.run([sys.executable, __file__, "--one", json.dumps(args)],
                                 capture_output=True, text=True, check=True)
            r = json.loads(res.stdout.strip().splitlines()[-1])
            print(f"{n:8d} {r['batch']:6d} {r['patterns_per_s']:11.0f} {r['peak_rss_mib']:13.0f}"
                  f" ({r['counts_mib']:.0f}) {r.get('peak_cuda_mib', float('nan')):14.0f}")
        return
    print(f"patterns {a.patterns}, gridsize {a.gridsize}, device {a.device}, amp {a.amp}, "
          f"phase sync {a.phase_sync}")
    print("batch  patterns/s  infer+stitch s  incl. NLL pass s")
    for b in a.batches:
        r = run_once(a.patterns, b, a.gridsize, a.device, a.amp, sync, a.width)
        print(f"{b:5d} {r['patterns_per_s']:11.0f} {r['infer_stitch_s']:15.2f} {r['with_nll_s']:17.2f}")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory():
        main()
