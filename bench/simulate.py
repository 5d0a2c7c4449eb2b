"""Simulation throughput benchmark: patterns per second for 64^2 and 128^2 patterns.

Run: ``.venv/bin/python bench/simulate.py [--patterns 2000]``.  Times ``simulate_scan`` end to end
(object, probe, positions, dose calibration, forward model, Poisson noise) on the CPU and, when
available, on CUDA (the noise is always drawn with numpy on the CPU).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time

import torch

from ptypinn.config import SimulationConfig
from ptypinn.simulate import simulate_scan


def config_for(n: int, patterns: int) -> SimulationConfig:
    """A random scan of ``patterns`` positions, ``n x n`` patterns, ~8 object px per position."""
    side = int(math.ceil(n + 2 + math.sqrt(patterns) * 8))
    return SimulationConfig(object_kind="lines", object_size_px=side, probe_size_px=n,
                            probe_radius_px=n / 4, scan_kind="random",
                            n_random_positions=patterns, photons_per_pattern=1e6, seed=0)


def time_scan(cfg: SimulationConfig, device: str, repeats: int) -> float:
    """Best-of-``repeats`` wall time (s) of one ``simulate_scan`` after a warm-up call."""
    simulate_scan(cfg, device=device)
    best = float("inf")
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        simulate_scan(cfg, device=device)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patterns", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"platform : {platform.platform()}")
    print(f"python   : {platform.python_version()}")
    print(f"cpus     : {os.cpu_count()} (torch threads {torch.get_num_threads()})")
    print(f"torch    : {torch.__version__}")
    if torch.cuda.is_available():
        print(f"cuda     : {torch.cuda.get_device_name(0)}")
    else:
        print("cuda     : not available")
    print(f"{'device':<6} {'N':>4} {'patterns':>8} {'time_s':>8} {'patterns/s':>11}")
    for device in devices:
        for n in (64, 128):
            cfg = config_for(n, args.patterns)
            dt = time_scan(cfg, device, args.repeats)
            print(f"{device:<6} {n:>4} {args.patterns:>8} {dt:>8.3f} {args.patterns / dt:>11.0f}")


if __name__ == "__main__":
    main()
