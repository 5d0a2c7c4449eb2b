"""Benchmark: phase synchronization before stitching (``stitch.synchronize_phases``).

A smooth random object is cut into 64x64 patches on a jittered ``k x k`` grid (step 5 px, the
"lines" preset's), each patch multiplied by its own constant phase error (0.3 rad random plus a
drift of 0.5 rad across the scan).  Patches are generated on demand by the callback, as the
network would produce them, so only one chunk exists at a time.  Prints, per scan size: pairs,
wall time (pairs + overlap products + solve), the spread of the remaining per-patch error
(should be ~0), and peak RSS.

Run::

    .venv/bin/python bench/phase_sync.py --sizes 100 300      # 10,000 and 90,000 patterns
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from ptypinn.physics import extract_patches
from ptypinn.stitch import overlap_pairs, synchronize_phases


def run(k: int, step: float = 5.0, n_px: int = 64, crop: int = 24, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    side = int(k * step + n_px + 4)
    amp = 0.5 + 0.5 * np.clip(gaussian_filter(rng.normal(size=(side, side)), 3.0) * 5 + 0.5, 0, 1)
    ph = gaussian_filter(rng.normal(size=(side, side)), 3.0) * 5
    obj = torch.from_numpy((amp * np.exp(1j * ph)).astype(np.complex64))[None]
    y, x = np.meshgrid(np.arange(k) * step, np.arange(k) * step, indexing="ij")
    pos = np.stack([y.ravel(), x.ravel()], 1) + n_px / 2 + 1 + rng.uniform(-1, 1, (k * k, 2))
    err = rng.normal(0, 0.3, k * k) + 0.5 * (pos[:, 0] + pos[:, 1]) / (2 * k * step)
    rot = torch.polar(torch.ones(k * k), torch.from_numpy(err).float())

    def patches_of(rows: np.ndarray) -> torch.Tensor:
        p = torch.from_numpy(pos[rows])[None]
        return extract_patches(obj, p, n_px)[0] * rot[torch.from_numpy(rows)][:, None, None]

    t0 = time.perf_counter()
    n_pairs = overlap_pairs(pos, crop / 2).shape[0]
    t1 = time.perf_counter()
    theta = synchronize_phases(patches_of, pos, n_px, crop)
    t2 = time.perf_counter()
    return {"patterns": k * k, "pairs": n_pairs, "pairs_s": t1 - t0, "sync_s": t2 - t1,
            "residual_std_rad": float(np.std(err + theta)),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 300],
                    help="grid sides k (k*k patterns)")
    a = ap.parse_args()
    print(f"{platform.platform()} | {os.cpu_count()} cores | torch {torch.__version__} "
          f"({torch.get_num_threads()} threads) | load {os.getloadavg()[0]:.1f}")
    print("patterns     pairs  pairs s  sync s (products + solve)  residual std rad  peak RSS MiB")
    for k in a.sizes:
        r = run(k)
        print(f"{r['patterns']:8d} {r['pairs']:9d} {r['pairs_s']:8.2f} {r['sync_s']:26.2f} "
              f"{r['residual_std_rad']:17.4f} {r['peak_rss_mib']:13.0f}")


if __name__ == "__main__":
    main()
