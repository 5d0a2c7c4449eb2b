"""Scan files: format detection, one reader table, the canonical and reference NPZ formats.

Scan formats
------------
* **Canonical NPZ** (``format = "ptypinn-scan/1"``): ``counts (n,H,W) float32``,
  ``positions_px (n,2) float64`` (window centres, columns y, x), ``probe``, optional
  ``object_true``, ``object_guess``, ``bad_pixels``, and ``meta`` as a JSON string.
* **Reference (PtychoPINN) NPZ**: ``diffraction`` or ``diff3d`` ``(n,H,W)`` (legacy ``(H,W,n)`` is
  transposed with a warning), ``xcoords``/``ycoords`` (window centres in object pixels),
  ``probeGuess``, optional ``objectGuess``.  Legacy files store *amplitude* (sqrt counts),
  ptychodus exports store *intensity*; see :func:`read_reference_npz` for how the choice is made.
* **CXI** and the bzip2-compressed **tike Siemens-star** NPZ: :mod:`ptypinn.io.hdf5`.

:func:`read_scan` detects the format by content (:func:`detect_format`) and dispatches through one
``{format: reader}`` table.
"""

from __future__ import annotations

import json
import logging
import math
import os
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal

import numpy as np

from ptypinn.data import (
    CHUNK_PATTERNS,
    ScanData,
    ScanSummary,
    check_counts,
    check_scan_fields,
    count_statistics,
    estimate_probe,
    frame_shift_px,
)
from ptypinn.io import hdf5
from ptypinn.io.files import (
    iter_npz_rows,
    json_default,
    json_object,
    load_npy,
    load_npz,
    npz_member_header,
    save_npz,
)

__all__ = [
    "SCAN_FORMAT",
    "read_scan",
    "read_scan_summary",
    "write_scan",
    "read_reference_npz",
    "detect_format",
    "read_probe",
]

log = logging.getLogger(__name__)
SCAN_FORMAT = "ptypinn-scan/1"
Measurement = Literal["amplitude", "counts"]

# ------------------------------------------------------------------------------------------------
# scans


def write_scan(path: str | os.PathLike, scan: ScanData) -> None:
    """Write a :class:`ScanData` as canonical NPZ."""
    arrays: dict[str, Any] = {
        "format": np.array(SCAN_FORMAT),
        "counts": scan.counts,
        "positions_px": scan.positions_px,
        "probe": scan.probe,
        "meta": np.array(json.dumps(scan.meta, default=json_default)),
    }
    for k in ("object_true", "object_guess", "bad_pixels"):
        if getattr(scan, k) is not None:
            arrays[k] = getattr(scan, k)
    save_npz(path, arrays)


def detect_format(path: str | os.PathLike) -> str:
    """By content: ``'npz'`` (canonical), ``'reference-npz'``, ``'npz-unknown'``, ``'hdf5'``,
    ``'npz-bz2'`` (the bzip2-compressed tike Siemens-star scan) or ``'unknown'``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "hdf5"
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as zf:
                names = {n[:-4] if n.endswith(".npy") else n for n in zf.namelist()}
        except zipfile.BadZipFile:
            return "unknown"
        if "counts" in names:
            return "npz"
        if names & {"diffraction", "diff3d"}:
            return "reference-npz"
        return "npz-unknown"
    if head.startswith(b"BZh"):
        return "npz-bz2"
    return "unknown"


def _refuse_unknown_npz(path: str | os.PathLike, measurement: Measurement | None) -> ScanData:
    raise ValueError(f"{path}: NPZ without 'counts', 'diffraction' or 'diff3d' arrays")


def _read_hdf5(path: str | os.PathLike, measurement: Measurement | None) -> ScanData:
    h5kind = hdf5.detect_hdf5_kind(path)
    if h5kind == "cxi":
        return hdf5.read_cxi(path)
    raise ValueError(f"{path}: HDF5 '{h5kind}' file is not a scan (expected CXI; "
                     "ptychodus products hold reconstructions, not diffraction data)")


def _refuse_unknown(path: str | os.PathLike, measurement: Measurement | None) -> ScanData:
    raise ValueError(f"{path}: not a readable NPZ file (unknown or corrupt format)")


def read_scan(path: str | os.PathLike, measurement: Measurement | None = None) -> ScanData:
    """Read any supported scan file into a validated :class:`ScanData`.

    The format is detected by content (:func:`detect_format`) and looked up in one
    ``{format: reader}`` table.

    Parameters
    ----------
    path : file path
    measurement : 'amplitude' | 'counts', optional
        Only for reference NPZ files: what the diffraction array holds (see
        :func:`read_reference_npz`).
    """
    readers = {
        "npz": lambda p, m: _read_canonical_npz(p),
        "reference-npz": lambda p, m: read_reference_npz(p, measurement=m),
        "npz-unknown": _refuse_unknown_npz,
        "hdf5": _read_hdf5,
        "npz-bz2": lambda p, m: hdf5.read_tike_siemens_npz_bz2(p),
    }
    fmt = detect_format(path)
    scan = readers.get(fmt, _refuse_unknown)(path, measurement)
    _refuse_degenerate_positions(path, scan, _POSITION_KEYS.get(fmt, "positions"))
    return scan


_POSITION_KEYS = {"npz": "positions_px", "reference-npz": "xcoords/ycoords",
                  "hdf5": "translation", "npz-bz2": "scan"}


def _refuse_degenerate_positions(path: str | os.PathLike, scan: ScanData | ScanSummary,
                                 key: str) -> None:
    """A scan of several patterns all taken at one position has no overlap to solve with."""
    pos = scan.positions_px
    if pos.shape[0] >= 2 and float(np.ptp(pos, axis=0).max()) == 0.0:
        raise ValueError(f"{path}: {key}: all {pos.shape[0]} scan positions are identical "
                         f"({pos[0, 0]:g}, {pos[0, 1]:g}); expected a scan over the object")


def _read_canonical_npz(path: str | os.PathLike) -> ScanData:
    z = load_npz(path)
    missing = [k for k in ("counts", "positions_px") if k not in z]
    if missing:
        raise ValueError(f"{path}: missing required key(s) {missing}")
    meta = json_object(str(z["meta"]), f"{path}: key 'meta'") if "meta" in z else {}
    probe = z.get("probe")
    try:
        if probe is None:  # no probe in the file: a data-derived start, to be learned
            probe, fit = estimate_probe(check_counts(z["counts"]), z.get("bad_pixels"))
            log.warning("%s: key 'probe': missing; estimated the probe from the data (defocused "
                        "aperture, pupil radius %.3g px; reconstruct learns it)", path,
                        fit["pupil_radius_px"])
            meta = {**meta, "probe_calibrated": False, "probe_estimated": fit}
        return ScanData(
            counts=z["counts"], positions_px=z["positions_px"], probe=probe,
            object_true=z.get("object_true"), object_guess=z.get("object_guess"),
            bad_pixels=z.get("bad_pixels"), meta=meta,
        )
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def _looks_integer(chunks: Iterable[np.ndarray], size: int, sample: int = 200_000) -> bool:
    """Whether every ``size // sample``-th value (of ``size`` in all, given in consecutive
    chunks of the flattened array) is within 1e-3 of an integer."""
    step = size // sample if size > sample else 1
    offset = 0
    for chunk in chunks:
        flat = np.asarray(chunk, dtype=np.float64).reshape(-1)
        picked = flat[(-offset) % step::step]
        if not np.all(np.abs(picked - np.round(picked)) < 1e-3):
            return False
        offset += flat.size
    return True


def read_reference_npz(
    path: str | os.PathLike, measurement: Measurement | None = None
) -> ScanData:
    """Read the reference system's NPZ contract into :class:`ScanData`.

    The diffraction array holds amplitude (legacy PtychoPINN) or intensity/counts (ptychodus
    exports).  The decision, in order: the ``measurement`` argument; a ``measurement`` string key
    in the file; a heuristic with a warning -- integer-valued data are counts, anything else is
    amplitude (square roots of counts are almost never integers).
    """
    z = load_npz(path)
    key = "diffraction" if "diffraction" in z else "diff3d"
    try:
        diff = np.asarray(z[key], dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{path}: '{key}': expected real numbers, got {z[key].dtype}") from None
    if diff.ndim != 3:
        raise ValueError(f"{path}: '{key}' expected 3 dimensions (n, H, W), got {diff.shape}")
    if diff.shape[0] == diff.shape[1] and diff.shape[2] != diff.shape[0]:
        log.warning("%s: '%s' has legacy layout (H, W, n) %s; transposing to (n, H, W)",
                    path, key, diff.shape)
        diff = np.moveaxis(diff, -1, 0)
    measurement = _measurement(z, path, key, measurement,
                               lambda: _looks_integer([diff], diff.size))
    if not np.isfinite(diff).all():
        raise ValueError(f"{path}: '{key}': expected finite values, got NaN/Inf")
    if diff.size and float(diff.min()) < 0:
        raise ValueError(f"{path}: '{key}': expected {measurement} >= 0, got values down to "
                         f"{float(diff.min()):g}")
    counts = diff**2 if measurement == "amplitude" else diff
    pos, obj, meta = _reference_frame(z, path, measurement, counts.shape[-1])
    try:
        return ScanData(counts=counts.astype(np.float32), positions_px=pos,
                        probe=z["probeGuess"], object_guess=obj, meta=meta)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def _measurement(z: Any, path: str | os.PathLike, key: str, measurement: str | None,
                 integer_valued: Callable[[], bool]) -> str:
    """What a reference NPZ's ``key`` holds: ``measurement`` when given, else the file's label,
    else a guess from ``integer_valued()`` (counts when the values are integers; warned)."""
    if measurement is None and "measurement" in z:
        measurement = str(z["measurement"])
    if measurement is None:
        measurement = "counts" if integer_valued() else "amplitude"
        log.warning("%s: '%s' not labelled; integer-valued=%s so treating it as %s "
                    "(override with --measurement amplitude|counts)",
                    path, key, measurement == "counts", measurement)
    if measurement not in ("amplitude", "counts"):
        raise ValueError(f"{path}: measurement: expected 'amplitude' or 'counts', got "
                         f"{measurement!r}")
    return measurement


def _reference_frame(z: Any, path: str | os.PathLike, measurement: str, pattern_size: int
                     ) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Positions ``(n, 2)``, the object guess and the metadata of a reference NPZ ``z`` (its
    arrays by name); without an object guess the windows are framed as every reader does."""
    for k in ("xcoords", "ycoords", "probeGuess"):
        if k not in z:
            raise ValueError(f"{path}: missing required key '{k}'")
    try:
        pos = np.stack([np.ravel(z["ycoords"]), np.ravel(z["xcoords"])],
                       axis=1).astype(np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{path}: 'xcoords', 'ycoords': expected two real arrays of one length, "
                         f"got {z['xcoords'].dtype}{z['xcoords'].shape} and "
                         f"{z['ycoords'].dtype}{z['ycoords'].shape}") from None
    obj = z.get("objectGuess")
    meta: dict[str, Any] = {"provenance": f"reference-npz:{Path(path).name}",
                            "measurement": measurement}
    if obj is None:
        shift = frame_shift_px(pos, pattern_size)
        if np.any(shift):
            log.info("%s: positions shifted by %s px into the object frame", path, shift)
            pos = pos + shift
            meta["positions_shift_px"] = shift.tolist()
    return pos, obj, meta


def _prefixed(path: str | os.PathLike, e: ValueError) -> ValueError:
    msg = str(e)
    return ValueError(msg if msg.startswith(str(path)) else f"{path}: {msg}")


def _streamable(path: str | os.PathLike, key: str, legacy_ok: bool = True) -> bool:
    """Whether NPZ member ``key`` is a C-ordered ``(n, H, W)`` numeric array to stream."""
    shape, dtype, fortran = npz_member_header(path, key)
    legacy = len(shape) == 3 and shape[0] == shape[1] and shape[2] != shape[0]
    return (len(shape) == 3 and not fortran and dtype.kind in "iuf"
            and (legacy_ok or not legacy))


def _summarize_canonical_npz(path: str | os.PathLike, patterns: int) -> ScanSummary:
    if not _streamable(path, "counts"):
        return ScanSummary.from_scan(_read_canonical_npz(path), patterns)
    z = load_npz(path, skip={"counts"})
    if "probe" not in z:  # the probe is estimated from the data: read them whole
        return ScanSummary.from_scan(_read_canonical_npz(path), patterns)
    missing = [k for k in ("positions_px", "probe") if k not in z]
    if missing:
        raise ValueError(f"{path}: missing required key(s) {missing}")
    meta = json_object(str(z["meta"]), f"{path}: key 'meta'") if "meta" in z else {}
    try:
        stats = count_statistics(iter_npz_rows(path, "counts", patterns))
        fields = check_scan_fields(stats.shape, z["positions_px"], z["probe"],
                                   z.get("object_true"), z.get("object_guess"),
                                   z.get("bad_pixels"), meta)
    except ValueError as e:
        raise _prefixed(path, e) from None
    return ScanSummary(counts=stats, **fields)


def _summarize_reference_npz(path: str | os.PathLike, measurement: Measurement | None,
                             patterns: int) -> ScanSummary:
    with zipfile.ZipFile(path) as zf:
        key = "diffraction" if "diffraction.npy" in zf.namelist() else "diff3d"
    if not _streamable(path, key, legacy_ok=False):
        return ScanSummary.from_scan(read_reference_npz(path, measurement), patterns)
    shape, _, _ = npz_member_header(path, key)
    z = load_npz(path, skip={key})
    measurement = _measurement(
        z, path, key, measurement,
        lambda: _looks_integer(iter_npz_rows(path, key, patterns), math.prod(shape)))

    def counts_chunks() -> Iterator[np.ndarray]:
        rows = iter_npz_rows(path, key, patterns)
        low = np.inf
        for chunk in rows:
            diff = np.asarray(chunk, dtype=np.float64)
            if not np.isfinite(diff).all():
                raise ValueError(f"{path}: '{key}': expected finite values, got NaN/Inf")
            low = min(low, float(diff.min()))
            if low < 0:
                continue  # read on: a NaN further on is reported first, as by read_scan
            yield (diff**2 if measurement == "amplitude" else diff).astype(np.float32)
        if low < 0:
            raise ValueError(f"{path}: '{key}': expected {measurement} >= 0, got values down "
                             f"to {low:g}")

    try:
        stats = count_statistics(counts_chunks())
    except ValueError as e:
        raise _prefixed(path, e) from None
    pos, obj, meta = _reference_frame(z, path, measurement, shape[-1])
    try:
        fields = check_scan_fields(stats.shape, pos, z["probeGuess"], object_guess=obj,
                                   meta=meta)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return ScanSummary(counts=stats, **fields)


def read_scan_summary(path: str | os.PathLike, measurement: Measurement | None = None,
                      patterns: int = CHUNK_PATTERNS) -> ScanSummary:
    """What :func:`read_scan` would read, as a :class:`ScanSummary`: the same validation and
    the same statistics, but the patterns of NPZ files (ours and the reference format, stored
    or deflated) are streamed ``patterns`` at a time and never all held in memory.

    Other formats, and NPZ layouts that cannot be streamed (Fortran order, the legacy
    ``(H, W, n)`` reference layout), are read whole with :func:`read_scan`.
    """
    fmt = detect_format(path)
    if fmt == "npz":
        summary = _summarize_canonical_npz(path, patterns)
    elif fmt == "reference-npz":
        summary = _summarize_reference_npz(path, measurement, patterns)
    else:
        return ScanSummary.from_scan(read_scan(path, measurement), patterns)
    _refuse_degenerate_positions(path, summary, _POSITION_KEYS[fmt])
    return summary


def read_probe(path: str | os.PathLike) -> np.ndarray:
    """A probe from a ``.npy`` array or from any scan file (its ``probe``), complex64."""
    path = Path(path)
    if path.suffix == ".npy":
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such probe file")
        arr = load_npy(path)
        if arr.ndim not in (2, 3) or not np.isfinite(arr).all():
            raise ValueError(f"{path}: expected a finite probe (H, W) or (modes, H, W), got "
                             f"shape {arr.shape}")
        try:
            return np.asarray(arr, dtype=np.complex64)
        except (TypeError, ValueError):
            raise ValueError(f"{path}: expected a numeric probe array, got {arr.dtype}") from None
    return read_scan(path).probe
