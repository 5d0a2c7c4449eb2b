"""Benchmark: streaming stitching throughput and memory (SPEC §6, lesson 5).

Stitches ``--n`` random complex patches of ``--patch`` pixels onto a ``--canvas``² canvas in
batches of ``--batch``; every batch is generated on the fly, so only one batch of patches exists
at a time.  Prints machine info, throughput (patches/s) and resident memory (peak via
``getrusage``, current via ``/proc/self/status``) after 20k patches and at the end: memory must
stay flat because the stitcher keeps only its two canvases.

Usage::

    .venv/bin/python bench/stitch.py [--n 200000] [--batch 1024] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time

import torch

from ptypinn.stitch import Stitcher


def current_rss_mb() -> float:
    """Current resident set size (VmRSS) in MiB, or NaN where /proc is unavailable."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def peak_rss_mb() -> float:
    """Peak resident set size in MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if platform.system() == "Darwin" else peak / 1024.0


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000, help="number of patches")
    ap.add_argument("--batch", type=int, default=1024, help="patches per batch")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:0, ...")
    ap.add_argument("--patch", type=int, default=64, help="patch size N (px)")
    ap.add_argument("--canvas", type=int, default=1024, help="canvas side (px)")
    ap.add_argument("--crop", type=int, default=None, help="central crop (px), default none")
    ap.add_argument("--checkpoint", type=int, default=20_000,
                    help="report memory after this many patches too")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    device = torch.device(args.device)
    print(f"platform     : {platform.platform()}")
    print(f"python       : {platform.python_version()}")
    print(f"cpu cores    : {os.cpu_count()} (affinity {len(os.sched_getaffinity(0))})"
          if hasattr(os, "sched_getaffinity") else f"cpu cores    : {os.cpu_count()}")
    print(f"torch        : {torch.__version__}, intra-op threads {torch.get_num_threads()}")
    is_cuda = device.type == "cuda"
    dev_name = torch.cuda.get_device_name(device) if is_cuda else platform.processor()
    print(f"device       : {device} ({dev_name or 'cpu'})")
    print(f"workload     : {args.n} patches {args.patch}x{args.patch} complex64 -> "
          f"{args.canvas}x{args.canvas} canvas, batch {args.batch}, crop {args.crop}")

    gen = torch.Generator(device=device).manual_seed(args.seed)
    n, size, side = args.n, args.patch, args.canvas
    lo, hi = size / 2.0, side - size / 2.0 - 1.0  # window centres; +1 px bilinear margin
    stitcher = Stitcher((side, side), size, crop_px=args.crop, device=device)
    rss_start = current_rss_mb()
    print(f"rss at start : {rss_start:.1f} MiB (peak {peak_rss_mb():.1f} MiB)")

    t_gen = t_add = 0.0
    done = 0
    rss_check = None
    t_all = time.perf_counter()
    while done < n:
        m = min(args.batch, n - done)
        t0 = time.perf_counter()
        patches = torch.randn(m, size, size, dtype=torch.complex64, device=device, generator=gen)
        pos = lo + (hi - lo) * torch.rand(m, 2, dtype=torch.float64, device=device, generator=gen)
        sync(device)
        t1 = time.perf_counter()
        stitcher.add(patches, pos)
        sync(device)
        t2 = time.perf_counter()
        t_gen += t1 - t0
        t_add += t2 - t1
        del patches, pos
        prev, done = done, done + m
        if prev < args.checkpoint <= done:
            rss_check = (done, current_rss_mb(), peak_rss_mb())
            print(f"after {done:>7d} : rss {rss_check[1]:.1f} MiB, peak {rss_check[2]:.1f} MiB, "
                  f"{done / t_add:.0f} patches/s (stitching only)")
    obj, covered = stitcher.result()
    sync(device)
    wall = time.perf_counter() - t_all
    rss_end, peak_end = current_rss_mb(), peak_rss_mb()
    print(f"after {done:>7d} : rss {rss_end:.1f} MiB, peak {peak_end:.1f} MiB")
    print(f"covered      : {covered.mean() * 100:.1f}% of the canvas, |obj| mean "
          f"{abs(obj[covered]).mean():.4f}")
    print(f"throughput   : {n / t_add:.0f} patches/s stitching only "
          f"({t_add:.1f} s), {n / wall:.0f} patches/s incl. generation ({wall:.1f} s, "
          f"generation {t_gen:.1f} s)")
    if device.type == "cuda":
        peak_gpu_mb = torch.cuda.max_memory_allocated(device) / 2**20
        print(f"gpu memory   : peak allocated {peak_gpu_mb:.1f} MiB")
    if rss_check is not None:
        growth = rss_end - rss_check[1]
        flat = abs(growth) < max(50.0, 0.05 * rss_check[1])
        print(f"memory flat  : rss {rss_check[1]:.1f} MiB @ {rss_check[0]} -> {rss_end:.1f} MiB @ "
              f"{done} (growth {growth:+.1f} MiB) -> {'OK' if flat else 'GROWING'}")
    ok = peak_end < 2048.0
    print(f"target       : peak rss {peak_end:.1f} MiB < 2048 MiB -> {'OK' if ok else 'FAIL'}")


if __name__ == "__main__":
    main()
