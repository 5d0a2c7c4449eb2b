"""Generators side by side (issue 14): parameters, FLOPs per pattern and CPU inference speed.

For each generator (``model.generator``: ``unet``, ``spectral``) at 64² patterns and gridsize 1
and 2, with the cpu preset's width and depth (``bench/quality.py``), prints:

- parameter count;
- FLOPs per pattern of one forward pass (:class:`torch.utils.flop_counter.FlopCounterMode`, which
  counts convolutions and matrix products, i.e. also the spectral mode mixing, but not the FFTs),
  plus an estimate of the FFTs (``5 n log2 n`` real FLOPs per complex ``n``-point transform, half
  that for real transforms) for the spectral generator;
- CPU inference patterns/s (forward only, ``torch.no_grad``, batch 64, best of ``--repeats``
  after a warm-up) with the threads given by ``OMP_NUM_THREADS``;

and the machine (CPU, threads, load).  The quality comparison is ``bench/quality.py
--generator``, e.g.::

    OMP_NUM_THREADS=1 .venv/bin/python bench/generators.py --spectral-depth 2
    .venv/bin/python bench/quality.py --preset cpu --gridsize 1 --photons 1e9 --generator spectral \
        --seeds 1 2 3 -o runs/gen-spectral-gs1
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import PRESETS  # noqa: E402

from ptypinn.config import ModelConfig  # noqa: E402
from ptypinn.pinn.networks import build_generator  # noqa: E402
from ptypinn.pinn.spectral import SpectralConv2d  # noqa: E402


def disk_probe(n: int, radius_px: float = 16.0, photons: float = 1e6) -> torch.Tensor:
    """An ideal disk probe ``(n, n)`` complex64 scaled to ``photons`` (bench input only)."""
    y, x = torch.meshgrid(torch.arange(n) - n / 2, torch.arange(n) - n / 2, indexing="ij")
    p = ((y**2 + x**2) <= radius_px**2).to(torch.complex64)
    return p * math.sqrt(photons / float(p.abs().square().sum()))


def fft_flops(gen: torch.nn.Module, batch_patterns: int, members: int) -> float:
    """Estimated real FLOPs per pattern of the spectral convolutions' rfft2 + irfft2."""
    total = 0.0
    for mod in gen.modules():
        if isinstance(mod, SpectralConv2d):
            n = mod.size_px
            c_in, c_out = mod.weight.shape[1], mod.weight.shape[2]
            per_map = 2.5 * n * n * math.log2(n * n)  # one real 2-D transform
            total += (c_in + c_out) * per_map
    return total / members  # per group -> per pattern


def measure(kind: str, gridsize: int, width: int, depth: int, n: int, modes: int, blocks: int,
            repeats: int) -> dict[str, float]:
    members = gridsize**2
    cfg = ModelConfig(generator=kind, width=width, depth=depth, spectral_modes=modes,
                      spectral_blocks=blocks)
    gen = build_generator(cfg.generator, members, cfg.width, cfg.depth, 1.5, disk_probe(n),
                          spectral_modes=cfg.spectral_modes, spectral_blocks=cfg.spectral_blocks)
    gen.eval()
    params = sum(p.numel() for p in gen.parameters())
    x = torch.poisson(torch.full((1, members, n, n), 50.0))
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        gen(x)
    flops = fc.get_total_flops() / members
    batch = max(64 // members, 1)
    xb = torch.poisson(torch.full((batch, members, n, n), 50.0))
    best = math.inf
    with torch.no_grad():
        gen(xb)
        for _ in range(repeats):
            t0 = time.perf_counter()
            gen(xb)
            best = min(best, time.perf_counter() - t0)
    return {"params": params, "flops": flops,
            "fft_flops": fft_flops(gen, 1, members) if kind == "spectral" else 0.0,
            "patterns_per_s": batch * members / best}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--generators", nargs="+", default=["unet", "spectral"])
    parser.add_argument("--gridsize", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--size", type=int, default=64, help="pattern size N")
    parser.add_argument("--modes", type=int, default=ModelConfig.spectral_modes)
    parser.add_argument("--blocks", type=int, default=ModelConfig.spectral_blocks)
    parser.add_argument("--width", type=int, default=None, help="override the preset")
    parser.add_argument("--depth", type=int, default=None, help="override the preset")
    parser.add_argument("--spectral-depth", type=int, default=None,
                        help="depth of the spectral generator (default: --depth)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    width = args.width or preset["width"]
    depth = args.depth or preset["depth"]
    print(f"platform      : {platform.platform()}")
    print(f"processor     : {platform.processor() or platform.machine()}; cpus {os.cpu_count()}")
    print(f"torch         : {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"load          : {os.getloadavg()}")
    print(f"generators at {args.size}² patterns, width {width}, depth {depth} (spectral: "
          f"{args.spectral_depth or depth}), spectral modes {args.modes}, blocks {args.blocks}\n")
    print("| generator | gridsize | params | GFLOP/pattern (counted) | + FFT est. | "
          "patterns/s (CPU) |")
    print("|---|---|---|---|---|---|")
    for kind in args.generators:
        for gs in args.gridsize:
            d = args.spectral_depth or depth if kind == "spectral" else depth
            r = measure(kind, gs, width, d, args.size, args.modes, args.blocks, args.repeats)
            print(f"| {kind} | {gs} | {r['params'] / 1e6:.3f} M | {r['flops'] / 1e9:.3f} | "
                  f"{r['fft_flops'] / 1e9:.3f} | {r['patterns_per_s']:.0f} |", flush=True)
    print(f"\nload after    : {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
