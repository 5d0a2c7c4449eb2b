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
    LazyCounts,
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
    LAZY_MIN_BYTES,
    load_npz,
    npz_member_header,
    npz_member_offset,
    read_lazily,
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
    "NpzRows",
    "LAZY_MIN_BYTES",
    "TRUTH_KEYS",
]

log = logging.getLogger(__name__)
SCAN_FORMAT = "ptypinn-scan/1"
Measurement = Literal["amplitude", "counts"]
TRUTH_KEYS = ("objectGuess",)
"""Arrays of a reference NPZ that ``truth=`` may name as the ground truth (``object_true``)."""


class NpzRows:
    """Reads rows of a stored (uncompressed, C-ordered) NPZ member on demand: the
    :data:`ptypinn.data.RowReader` behind the lazy counts of an NPZ scan.

    Every call maps the member read-only (``numpy.memmap`` at the member's data offset), copies
    the rows asked for, and unmaps it, so pages read do not stay in the process.
    ``amplitude``: the member holds amplitudes (legacy reference NPZ); rows are squared, and a
    negative amplitude is an error naming the file, key and pattern.
    """

    def __init__(self, path: str | os.PathLike, key: str, offset: int, shape: tuple[int, ...],
                 dtype: np.dtype, amplitude: bool = False) -> None:
        self.path, self.key, self.offset = Path(path), key, int(offset)
        self.shape, self.dtype, self.amplitude = tuple(shape), np.dtype(dtype), amplitude

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        mm = np.memmap(self.path, dtype=self.dtype, mode="r", offset=self.offset,
                       shape=self.shape)
        try:
            lo, hi = int(rows[0]), int(rows[-1]) + 1
            block = (np.array(mm[lo:hi]) if hi - lo == len(rows)
                     else np.asarray(mm[rows]))
        finally:
            del mm
        block = block.astype(np.float32, copy=False)
        if self.amplitude:
            low = block.min(axis=(1, 2))
            if (low < 0).any():
                i = int(rows[int(np.argmax(low < 0))])
                raise ValueError(f"{self.path}: '{self.key}': expected amplitude >= 0, got "
                                 f"{float(low.min()):g} in pattern {i}")
            block = block * block
        return block


def _lazy_npz_counts(path: str | os.PathLike, key: str, lazy: bool | None,
                     amplitude: bool = False) -> LazyCounts | None:
    """Lazy counts over NPZ member ``key`` when it can be read in place (stored, C order,
    ``(n, H, W)`` real numbers, not the legacy ``(H, W, n)`` layout) and ``lazy`` (or its
    size, :data:`LAZY_MIN_BYTES`) says so; else None."""
    where = npz_member_offset(path, key)
    if where is None:
        return None
    offset, shape, dtype = where
    legacy = len(shape) == 3 and shape[0] == shape[1] and shape[2] != shape[0]
    if len(shape) != 3 or legacy or dtype.kind not in "iuf" or not read_lazily(lazy, shape):
        return None
    reader = NpzRows(path, key, offset, shape, dtype, amplitude)
    return LazyCounts(shape, reader, f"{path}: '{key}'")  # type: ignore[arg-type]

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
    ``'npz-bz2'`` (the bzip2-compressed tike Siemens-star scan), ``'ptychodus-dir'`` (a
    directory in ptychodus's standard layout: ``diffraction.h5`` + ``product-in.h5``) or
    ``'unknown'``."""
    path = Path(path)
    if path.is_dir() and (path / hdf5.PTYCHODUS_DIFFRACTION).is_file():
        return "ptychodus-dir"
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


def _read_hdf5(path: str | os.PathLike, lazy: bool | None, flip_positions: bool) -> ScanData:
    h5kind = hdf5.detect_hdf5_kind(path)
    if h5kind == "cxi":
        return hdf5.read_cxi(path, lazy=lazy, flip_positions=flip_positions)
    if h5kind == "ptychodus-diffraction":
        return hdf5.read_ptychodus(path, lazy=lazy)
    raise ValueError(f"{path}: HDF5 '{h5kind}' file is not a scan (expected CXI or a ptychodus "
                     "diffraction.h5; ptychodus products hold reconstructions, not diffraction "
                     "data: give the diffraction file or the directory holding both)")


def _refuse_unknown(path: str | os.PathLike, measurement: Measurement | None) -> ScanData:
    raise ValueError(f"{path}: not a readable NPZ file (unknown or corrupt format)")


def read_scan(path: str | os.PathLike, measurement: Measurement | None = None, *,
              lazy: bool | None = None, flip_positions: bool = False,
              truth: str | None = None) -> ScanData:
    """Read any supported scan file into a validated :class:`ScanData`.

    The format is detected by content (:func:`detect_format`) and looked up in one
    ``{format: reader}`` table.

    Parameters
    ----------
    path : file path (or a ptychodus standard-layout directory)
    measurement : 'amplitude' | 'counts', optional
        Only for reference NPZ files: what the diffraction array holds (see
        :func:`read_reference_npz`).
    lazy : bool, optional
        Keep the counts in the file and read them on demand (:class:`~ptypinn.data.LazyCounts`;
        CXI and ptychodus HDF5 frames, stored NPZ arrays); None: when they take at least
        :data:`LAZY_MIN_BYTES`.  Other layouts are always read whole.
    flip_positions : bool
        Negate the positions read from the file before framing them (CXI translations that are
        beam positions rather than sample positions; see ``docs/formats.md``).
    truth : ``"objectGuess"``, optional
        Reference NPZ only: read ``objectGuess`` as the ground truth (simulated files).
    """
    if truth is not None and detect_format(path) != "reference-npz":
        raise ValueError(f"{path}: truth={truth!r}: only reference (PtychoPINN) NPZ files "
                         "carry their ground truth as objectGuess")
    readers: dict[str, Callable[[Any], ScanData]] = {
        "npz": lambda p: _read_canonical_npz(p, lazy),
        "reference-npz": lambda p: read_reference_npz(p, measurement, truth=truth, lazy=lazy),
        "npz-unknown": lambda p: _refuse_unknown_npz(p, measurement),
        "hdf5": lambda p: _read_hdf5(p, lazy, flip_positions),
        "npz-bz2": hdf5.read_tike_siemens_npz_bz2,
        "ptychodus-dir": lambda p: hdf5.read_ptychodus(p, lazy=lazy),
    }
    fmt = detect_format(path)
    scan = readers.get(fmt, lambda p: _refuse_unknown(p, measurement))(path)
    if flip_positions and fmt != "hdf5":
        scan = _flipped(scan)
    _refuse_degenerate_positions(path, scan, _POSITION_KEYS.get(fmt, "positions"))
    return scan


def _flipped(scan: ScanData) -> ScanData:
    """``scan`` with its positions negated (point-inverted) and re-framed; objects read from
    the file are dropped (their frame is not this one)."""
    pos = -scan.positions_px
    shift = frame_shift_px(pos, scan.pattern_size)
    meta = dict(scan.meta, positions_flipped=True, positions_shift_px=shift.tolist())
    return scan.replace(positions_px=pos + shift, object_true=None, object_guess=None,
                        meta=meta)


_POSITION_KEYS = {"npz": "positions_px", "reference-npz": "xcoords/ycoords",
                  "hdf5": "translation", "npz-bz2": "scan", "ptychodus-dir": "probe_position_*"}


def _refuse_degenerate_positions(path: str | os.PathLike, scan: ScanData | ScanSummary,
                                 key: str) -> None:
    """A scan of several patterns all taken at one position has no overlap to solve with."""
    pos = scan.positions_px
    if pos.shape[0] >= 2 and float(np.ptp(pos, axis=0).max()) == 0.0:
        raise ValueError(f"{path}: {key}: all {pos.shape[0]} scan positions are identical "
                         f"({pos[0, 0]:g}, {pos[0, 1]:g}); expected a scan over the object")


def _read_canonical_npz(path: str | os.PathLike, lazy: bool | None = None) -> ScanData:
    counts = _lazy_npz_counts(path, "counts", lazy) if _has_member(path, "counts") else None
    z = load_npz(path, skip={"counts"} if counts is not None else ())
    missing = [k for k in ("counts", "positions_px")
               if k not in z and not (k == "counts" and counts is not None)]
    if missing:
        raise ValueError(f"{path}: missing required key(s) {missing}")
    meta = json_object(str(z["meta"]), f"{path}: key 'meta'") if "meta" in z else {}
    probe = z.get("probe")
    if counts is None:
        counts = z["counts"]
    try:
        if probe is None:  # no probe in the file: a data-derived start, to be learned
            probe, fit = estimate_probe(check_counts(counts) if isinstance(counts, np.ndarray)
                                        else counts, z.get("bad_pixels"))
            log.warning("%s: key 'probe': missing; estimated the probe from the data (defocused "
                        "aperture, pupil radius %.3g px; reconstruct learns it)", path,
                        fit["pupil_radius_px"])
            meta = {**meta, "probe_calibrated": False, "probe_estimated": fit}
        return ScanData(
            counts=counts, positions_px=z["positions_px"], probe=probe,
            object_true=z.get("object_true"), object_guess=z.get("object_guess"),
            bad_pixels=z.get("bad_pixels"), meta=meta,
        )
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def _has_member(path: str | os.PathLike, key: str) -> bool:
    with zipfile.ZipFile(path) as zf:
        return f"{key}.npy" in zf.namelist()


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
    path: str | os.PathLike, measurement: Measurement | None = None, *,
    truth: str | None = None, lazy: bool | None = None,
) -> ScanData:
    """Read the reference system's NPZ contract into :class:`ScanData`.

    The diffraction array holds amplitude (legacy PtychoPINN) or intensity/counts (ptychodus
    exports).  The decision, in order: the ``measurement`` argument; a ``measurement`` string key
    in the file; a heuristic with a warning -- integer-valued data are counts, anything else is
    amplitude (square roots of counts are almost never integers).  Values are read as float32
    (amplitudes are squared in float32); a stored (uncompressed) array of
    :data:`LAZY_MIN_BYTES` or more stays in the file and is read on demand (``lazy``: force).

    Parameters
    ----------
    truth : ``"objectGuess"``, optional
        Read that array as the ground truth (``object_true``) instead of an initial guess:
        reference files from *simulation* store the true object there, and the reference's own
        comparison scores against it.  Measured files store an initial guess (or nothing).
    lazy : bool, optional
        Read the counts on demand (True), whole (False), or by size (None).

    A ``bad_pixels`` ``(H, W)`` array (nonzero = bad), as some ptychodus exports carry, becomes
    :attr:`ScanData.bad_pixels`.
    """
    if truth is not None and truth not in TRUTH_KEYS:
        raise ValueError(f"truth: expected one of {TRUTH_KEYS}, got {truth!r}")
    with zipfile.ZipFile(path) as zf:
        key = "diffraction" if "diffraction.npy" in zf.namelist() else "diff3d"
    z = load_npz(path, skip={key})
    if _lazy_npz_counts(path, key, lazy) is not None:  # stays in the file: decide, then map
        shape, _, _ = npz_member_header(path, key)
        measurement = _measurement(  # type: ignore[assignment]
            z, path, key, measurement,
            lambda: _looks_integer(iter_npz_rows(path, key, CHUNK_PATTERNS), math.prod(shape)))
        counts = _lazy_npz_counts(path, key, lazy, amplitude=measurement == "amplitude")
        pos, obj, meta = _reference_frame(z, path, str(measurement), shape[-1])
        return _reference_scan(path, z, counts, pos, obj, meta, truth)
    z = load_npz(path)
    try:
        diff = np.asarray(z[key], dtype=np.float32)
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
    counts = diff * diff if measurement == "amplitude" else diff
    pos, obj, meta = _reference_frame(z, path, measurement, counts.shape[-1])
    return _reference_scan(path, z, counts, pos, obj, meta, truth)


def _reference_scan(path: str | os.PathLike, z: Any, counts: Any, pos: np.ndarray,
                    obj: np.ndarray | None, meta: dict[str, Any], truth: str | None
                    ) -> ScanData:
    bad = z.get("bad_pixels")
    if bad is not None:
        bad = np.asarray(bad) != 0
        meta["bad_pixels_source"] = "key 'bad_pixels' (nonzero = bad)"
    if truth is not None:
        if obj is None:
            raise ValueError(f"{path}: truth={truth!r}: the file has no '{truth}' array")
        meta["object_true_source"] = f"key '{truth}' (truth={truth!r})"
    try:
        return ScanData(counts=counts, positions_px=pos, probe=z["probeGuess"],
                        object_guess=None if truth else obj, object_true=obj if truth else None,
                        bad_pixels=bad, meta=meta)
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
