"""Peak memory of ``ptypinn info`` on a 20,000 x 128x128 scan (issue 17 item 6).

Writes, under a temporary directory in ``--tmp`` (deleted afterwards), pattern by pattern so
that this script itself never holds the data:

* ``scan.npz``: our canonical NPZ, counts ``(20000, 128, 128)`` float32, stored (1.3 GB);
* ``zeros.npz``: the same NPZ layout, counts all zeros, deflated (about 1.3 MB on disk,
  1.3 GB inflated);
* ``scan.cxi``: the same counts as a CXI file (frames read by h5py slices), with ``--cxi``;
* ``tiny.npz``: 16 patterns, for the baseline (the interpreter with the same imports).

Then runs ``ptypinn info FILE`` in a subprocess of this interpreter (with the environment's
``PYTHONPATH``, so an older checkout can be measured the same way) for each file and reports
the child's peak resident set size (``os.wait4`` ``ru_maxrss``) and the peak above the
baseline.  Target: < 0.5 GB above the baseline.  Run::

    PYTHONPATH=src .venv/bin/python bench/info_memory.py --cxi

Numbers: ``docs/benchmarks.md``, "``ptypinn info`` memory (issue 17 item 6)".
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

RUN_INFO = "import sys; from ptypinn.cli import main; sys.exit(main(sys.argv[1:]))"


def _npy_member(zf: zipfile.ZipFile, key: str, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    zf.writestr(f"{key}.npy", buf.getvalue())


def _positions(n: int, size: int) -> np.ndarray:
    side = int(np.ceil(np.sqrt(n)))
    yy, xx = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    pos = np.stack([yy, xx], -1).reshape(-1, 2)[:n] * 8.0 + size / 2 + 1
    return pos.astype(np.float64)


def _pattern_block(start: int, k: int, size: int) -> np.ndarray:
    """Patterns ``start .. start+k``: a centred disc of photons, brightness varying per pattern."""
    yy, xx = np.mgrid[:size, :size] - size / 2
    disc = ((yy**2 + xx**2) < (size / 8) ** 2).astype(np.float32)
    scale = (1 + (np.arange(start, start + k) % 7)).astype(np.float32)
    return np.round(disc[None] * scale[:, None, None] * 100)


def write_npz(path: Path, n: int, size: int, zeros: bool, block: int = 256) -> None:
    compression = zipfile.ZIP_DEFLATED if zeros else zipfile.ZIP_STORED
    probe = np.ones((size, size), np.complex64)
    with zipfile.ZipFile(path, "w", compression) as zf:
        with zf.open("counts.npy", "w", force_zip64=True) as fh:
            np.lib.format.write_array_header_1_0(
                fh, {"descr": "<f4", "fortran_order": False, "shape": (n, size, size)})
            for start in range(0, n, block):
                k = min(block, n - start)
                data = (np.zeros((k, size, size), np.float32) if zeros
                        else _pattern_block(start, k, size))
                fh.write(data.astype("<f4").tobytes())
        _npy_member(zf, "positions_px", _positions(n, size))
        _npy_member(zf, "probe", probe)
        _npy_member(zf, "format", np.array("ptypinn-scan/1"))
        _npy_member(zf, "meta", np.array(json.dumps({"provenance": "bench/info_memory.py"})))


def write_cxi(path: Path, n: int, size: int, block: int = 256) -> None:
    """A CXI file (the layout ``ptypinn.io.write_cxi`` writes) filled by blocks of frames."""
    import h5py

    pos = _positions(n, size)
    probe = np.ones((size, size), np.complex64)
    with h5py.File(path, "w") as f:
        f["cxi_version"] = 160
        e = f.create_group("entry_1")
        d = e.create_dataset("instrument_1/detector_1/data", (n, size, size), "f4",
                             chunks=(16, size, size))
        for start in range(0, n, block):
            k = min(block, n - start)
            d[start:start + k] = _pattern_block(start, k, size)
        e["instrument_1/detector_1/distance"] = 2.0
        e["instrument_1/detector_1/x_pixel_size"] = 75e-6
        e["instrument_1/detector_1/y_pixel_size"] = 75e-6
        e["instrument_1/source_1/energy"] = 8000.0 * 1.602176634e-19
        e["instrument_1/source_1/illumination"] = probe
        t = np.zeros((n, 3))
        t[:, 0], t[:, 1] = -pos[:, 1] * 1e-8, -pos[:, 0] * 1e-8
        e["sample_1/geometry_1/translation"] = t


def peak_rss(path: Path) -> tuple[float, float, int, str]:
    """Peak RSS (GiB) and wall time (s) of ``ptypinn info path`` in a child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", RUN_INFO, "info", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_maxrss / 2**20, time.perf_counter() - t0, proc.returncode, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patterns", type=int, default=20_000)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--cxi", action="store_true", help="also measure a CXI file")
    ap.add_argument("--tmp", default=tempfile.gettempdir())
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="ptypinn-info-bench-", dir=args.tmp) as d:
        d = Path(d)
        files = {"tiny.npz (baseline)": d / "tiny.npz", "scan.npz (stored)": d / "scan.npz",
                 "zeros.npz (deflated zeros)": d / "zeros.npz"}
        write_npz(files["tiny.npz (baseline)"], 16, args.size, zeros=False)
        write_npz(files["scan.npz (stored)"], args.patterns, args.size, zeros=False)
        write_npz(files["zeros.npz (deflated zeros)"], args.patterns, args.size, zeros=True)
        if args.cxi:
            files["scan.cxi"] = d / "scan.cxi"
            write_cxi(files["scan.cxi"], args.patterns, args.size)
        gib = args.patterns * args.size**2 * 4 / 2**30
        print(f"counts {args.patterns} x {args.size}x{args.size} float32 = {gib:.2f} GiB")
        base = None
        ok = True
        for name, path in files.items():
            rss, wall, rc, out = peak_rss(path)
            base = rss if base is None else base
            above = rss - base
            if rc != 0:
                ok = False
                print(out)
            ok = ok and (name.startswith("tiny") or above < 0.5)
            print(f"{name:28s} file {path.stat().st_size / 2**20:9.1f} MiB  exit {rc}  "
                  f"peak RSS {rss:5.2f} GiB  above baseline {above:5.2f} GiB  {wall:6.1f} s")
            print("".join(f"    {ln}\n" for ln in out.splitlines() if "photons per" in ln), end="")
        print("target < 0.5 GiB above baseline:", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
