"""Peak memory of ``ptypinn infer`` on 10k ... 100k-pattern 64x64 CXI (HDF5) scans (issue 15
item 3: data bigger than RAM).

1. Simulates a small 64x64 scan and trains a tiny PINN on it (``model.width=8``, 2 epochs, CPU):
   the bundle only has to run, its quality is not measured here.
2. For each size N writes ``scanN.cxi`` under a temporary directory in ``--tmp`` (deleted
   afterwards) with :func:`ptypinn.io.write_cxi`, whose frames are written chunk by chunk from
   :class:`ptypinn.data.LazyCounts` whose rows are generated on demand (the simulated patterns,
   repeated cyclically), so neither this script nor the file writer ever holds all counts.
   Positions: a raster of step ``--step`` px (the object canvas grows with the scanned area:
   ``ceil(sqrt(N)) * step + 64`` px on a side, reported).  The counts do not belong to these
   positions (a memory benchmark: the reconstruction is not meaningful).
3. Runs ``ptypinn infer RUN --scan scanN.cxi`` in a child process of this interpreter (with the
   environment's ``PYTHONPATH``, so an older checkout can be measured the same way) and reports
   the child's peak resident set size (``os.wait4`` ``ru_maxrss``), its wall time and the
   patterns per second of the inference pass.  Target: < 1.5 GB and flat in N.

Run (``--sync`` keeps phase synchronization on; the default turns it off, which the issue allows
for the largest scans)::

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python bench/stream_memory.py --sizes 10000 30000 100000

Numbers: ``docs/benchmarks.md``, "Streaming: ``ptypinn infer`` memory (issue 15 item 3)".
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RUN_CLI = "import sys; from ptypinn.cli import main; sys.exit(main(sys.argv[1:]))"


def _cli(args: list[str], src: str | None = None) -> tuple[float, float, int, str]:
    """Peak RSS (GiB), wall time (s), exit code and output of ``ptypinn ARGS`` in a child
    (``src``: the child imports ptypinn from there, e.g. an older checkout's ``src``)."""
    env = dict(os.environ, PYTHONPATH=src) if src else None
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", RUN_CLI, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    out = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    return (usage.ru_maxrss / 2**20, time.perf_counter() - t0, os.waitstatus_to_exitcode(status),
            out)


def tiny_bundle(d: Path, src: str | None = None, width: int = 8, depth: int = 3) -> Path:
    """Simulate a 64x64 scan and train a tiny PINN on it; the run directory."""
    import ptypinn
    from ptypinn import io as pio
    from ptypinn.config import SimulationConfig

    scan = ptypinn.simulate_scan(SimulationConfig(object_size_px=160, scan_step_px=8.0,
                                                  photons_per_pattern=1e6, seed=1))
    pio.write_scan(d / "train.npz", scan)
    rss, wall, rc, out = _cli(["train", "--train", str(d / "train.npz"), "-o", str(d / "run"),
                               "--set", f"model.width={width}", "--set",
                               f"model.depth={depth}", "--set", "train.epochs=2",
                               "--set", "train.accelerator=cpu", "--set",
                               "train.progress_bar=false"], src)
    if rc != 0:
        raise SystemExit(f"training failed:\n{out}")
    print(f"tiny bundle: width {width}, depth {depth}, {scan.n_patterns} patterns, trained in "
          f"{wall:.0f} s")
    return d / "run"


def write_big_cxi(path: Path, base: "object", n: int, step_px: float) -> int:
    """``n`` patterns of ``base`` (cyclically) on a raster of ``step_px``; the canvas side."""
    import ptypinn
    from ptypinn import io as pio
    from ptypinn.data import LazyCounts

    size = base.pattern_size
    side = int(np.ceil(np.sqrt(n)))
    yy, xx = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    pos = np.stack([yy, xx], -1).reshape(-1, 2)[:n] * step_px + size / 2 + 1
    m = base.n_patterns
    src = np.asarray(base.counts)
    counts = LazyCounts((n, size, size), lambda rows: src[rows % m], "generated")
    meta = {k: v for k, v in base.meta.items() if k != "object_pixel_size_m"}
    meta.update(photon_energy_eV=8000.0, detector_distance_m=2.0, detector_pixel_size_m=75e-6)
    scan = ptypinn.ScanData(counts=counts, positions_px=pos, probe=base.probe, meta=meta)
    pio.write_cxi(path, scan)
    return scan.object_shape_px[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 30_000, 100_000])
    ap.add_argument("--step", type=float, default=4.0, help="raster step in pixels")
    ap.add_argument("--sync", action="store_true", help="keep phase synchronization on")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--width", type=int, default=8, help="model.width of the tiny bundle")
    ap.add_argument("--depth", type=int, default=3, help="model.depth of the tiny bundle")
    ap.add_argument("--tmp", default=tempfile.gettempdir())
    ap.add_argument("--child-src", default=None,
                    help="run the training and `ptypinn infer` children with PYTHONPATH=this "
                    "(an older checkout's src, for a before/after comparison); the files are "
                    "written by this checkout")
    args = ap.parse_args()
    import ptypinn
    from ptypinn import io as pio
    import torch

    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch threads {torch.get_num_threads()}, ptypinn {ptypinn.__version__}, "
          f"python {platform.python_version()}")
    ok = True
    with tempfile.TemporaryDirectory(prefix="ptypinn-stream-bench-", dir=args.tmp) as d:
        d = Path(d)
        run = tiny_bundle(d, args.child_src, args.width, args.depth)
        base = ptypinn.read_scan(d / "train.npz")
        print(f"{'patterns':>9s} {'file GiB':>8s} {'canvas':>7s} {'exit':>4s} "
              f"{'peak RSS GiB':>12s} {'wall s':>7s} {'patterns/s':>10s}")
        for n in args.sizes:
            path = d / f"scan{n}.cxi"
            t0 = time.perf_counter()
            side = write_big_cxi(path, base, n, args.step)
            write_s = time.perf_counter() - t0
            cmd = ["infer", str(run), "--scan", str(path), "-o", str(d / f"out{n}"),
                   "--set", "infer.device=cpu", "--set", f"infer.batch_size={args.batch_size}"]
            if not args.sync:
                cmd += ["--set", "infer.phase_sync=false"]
            rss, wall, rc, out = _cli(cmd, args.child_src)
            rate = re.search(r"\(([\d.]+) patterns/s\)", out)
            if rc != 0:
                ok = False
                print(out[-3000:])
            ok = ok and rss < 1.5 / 1.073741824  # 1.5 GB
            print(f"{n:9d} {path.stat().st_size / 2**30:8.2f} {side:7d} {rc:4d} {rss:12.2f} "
                  f"{wall:7.0f} {rate.group(1) if rate else '?':>10s}   (written in "
                  f"{write_s:.0f} s)", flush=True)
            path.unlink()
        print("target < 1.5 GB peak RSS:", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
