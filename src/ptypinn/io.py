"""All file reading and writing.  Nothing else in the package touches files.

Every writer is atomic (temporary name in the same directory, then ``os.replace``), so a failure
never leaves a partial output behind.  NPZ files are always read with ``allow_pickle=False``.

Scan formats
------------
* **Canonical NPZ** (``format = "ptypinn-scan/1"``): ``counts (n,H,W) float32``,
  ``positions_px (n,2) float64`` (window centres, columns y, x), ``probe``, optional
  ``object_true``, ``object_guess``, ``bad_pixels``, and ``meta`` as a JSON string.
* **Reference (PtychoPINN) NPZ**: ``diffraction`` or ``diff3d`` ``(n,H,W)`` (legacy ``(H,W,n)`` is
  transposed with a warning), ``xcoords``/``ycoords`` (window centres in object pixels),
  ``probeGuess``, optional ``objectGuess``.  Legacy files store *amplitude* (sqrt counts),
  ptychodus exports store *intensity*; see :func:`read_reference_npz` for how the choice is made.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping

import numpy as np
import yaml

from ptypinn.data import ScanData

__all__ = [
    "atomic_path",
    "read_yaml",
    "write_yaml",
    "write_json",
    "read_json",
    "load_npz",
    "save_npz",
    "read_scan",
    "write_scan",
    "read_reference_npz",
    "detect_format",
]

log = logging.getLogger(__name__)
SCAN_FORMAT = "ptypinn-scan/1"
Measurement = Literal["amplitude", "counts"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or path.suffix,
                               dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp creates 0600 files
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def read_yaml(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such config file")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None


def write_yaml(path: str | os.PathLike, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(data, sort_keys=False))


def write_json(path: str | os.PathLike, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read every array of an NPZ (``allow_pickle=False``), with one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {}
            for k in z.files:
                try:
                    out[k] = z[k]
                except ValueError as e:
                    if "allow_pickle" in str(e):
                        raise ValueError(
                            f"{path}: key '{k}' holds pickled Python objects; refusing to load "
                            "them (allow_pickle=False)"
                        ) from None
                    raise
            return out
    except (zipfile.BadZipFile, EOFError, OSError, zipfile.LargeZipFile) as e:
        raise ValueError(f"{path}: not a readable NPZ file ({type(e).__name__}: {e})") from None
    except zipfile.error as e:  # pragma: no cover
        raise ValueError(f"{path}: corrupt NPZ ({e})") from None


def save_npz(path: str | os.PathLike, arrays: Mapping[str, Any], compress: bool = False) -> None:
    """Write arrays to an NPZ atomically (object arrays are refused)."""
    clean = {}
    for k, v in arrays.items():
        a = np.asarray(v)
        if a.dtype == object:
            raise ValueError(f"{k}: refusing to write an object array (would need pickle)")
        clean[k] = a
    with atomic_path(path, suffix=".npz") as tmp:
        (np.savez_compressed if compress else np.savez)(tmp, **clean)


# ------------------------------------------------------------------------------------------------
# scans


def write_scan(path: str | os.PathLike, scan: ScanData) -> None:
    """Write a :class:`ScanData` as canonical NPZ."""
    arrays: dict[str, Any] = {
        "format": np.array(SCAN_FORMAT),
        "counts": scan.counts,
        "positions_px": scan.positions_px,
        "probe": scan.probe,
        "meta": np.array(json.dumps(scan.meta, default=_json_default)),
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


def read_scan(path: str | os.PathLike, measurement: Measurement | None = None) -> ScanData:
    """Read any supported scan file into a validated :class:`ScanData`.

    Parameters
    ----------
    path : file path
    measurement : 'amplitude' | 'counts', optional
        Only for reference NPZ files: what the diffraction array holds (see
        :func:`read_reference_npz`).
    """
    kind = detect_format(path)
    if kind == "npz":
        return _read_canonical_npz(path)
    if kind == "reference-npz":
        return read_reference_npz(path, measurement=measurement)
    if kind == "npz-unknown":
        raise ValueError(f"{path}: NPZ without 'counts', 'diffraction' or 'diff3d' arrays")
    if kind == "hdf5":
        from ptypinn import io_hdf5  # lazy: io_hdf5 imports this module

        h5kind = io_hdf5.detect_hdf5_kind(path)
        if h5kind == "cxi":
            return io_hdf5.read_cxi(path)
        raise ValueError(f"{path}: HDF5 '{h5kind}' file is not a scan (expected CXI; "
                         "ptychodus products hold reconstructions, not diffraction data)")
    if kind == "npz-bz2":
        from ptypinn import io_hdf5

        return io_hdf5.read_tike_siemens_npz_bz2(path)
    raise ValueError(f"{path}: not a readable NPZ file (unknown or corrupt format)")


def _read_canonical_npz(path: str | os.PathLike) -> ScanData:
    z = load_npz(path)
    missing = [k for k in ("counts", "positions_px", "probe") if k not in z]
    if missing:
        raise ValueError(f"{path}: missing required key(s) {missing}")
    meta = json.loads(str(z["meta"])) if "meta" in z else {}
    try:
        return ScanData(
            counts=z["counts"], positions_px=z["positions_px"], probe=z["probe"],
            object_true=z.get("object_true"), object_guess=z.get("object_guess"),
            bad_pixels=z.get("bad_pixels"), meta=meta,
        )
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def _looks_integer(a: np.ndarray, sample: int = 200_000) -> bool:
    flat = a.reshape(-1)
    if flat.size > sample:
        flat = flat[:: flat.size // sample]
    return bool(np.all(np.abs(flat - np.round(flat)) < 1e-3))


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
    diff = np.asarray(z[key], dtype=np.float64)
    if diff.ndim != 3:
        raise ValueError(f"{path}: '{key}' expected 3 dimensions (n, H, W), got {diff.shape}")
    if diff.shape[0] == diff.shape[1] and diff.shape[2] != diff.shape[0]:
        log.warning("%s: '%s' has legacy layout (H, W, n) %s; transposing to (n, H, W)",
                    path, key, diff.shape)
        diff = np.moveaxis(diff, -1, 0)
    if measurement is None and "measurement" in z:
        measurement = str(z["measurement"])  # type: ignore[assignment]
    if measurement is None:
        measurement = "counts" if _looks_integer(diff) else "amplitude"
        log.warning("%s: '%s' not labelled; integer-valued=%s so treating it as %s "
                    "(override with --measurement amplitude|counts)",
                    path, key, measurement == "counts", measurement)
    if measurement not in ("amplitude", "counts"):
        raise ValueError(f"measurement: expected 'amplitude' or 'counts', got {measurement!r}")
    counts = diff**2 if measurement == "amplitude" else diff
    for k in ("xcoords", "ycoords", "probeGuess"):
        if k not in z:
            raise ValueError(f"{path}: missing required key '{k}'")
    pos = np.stack([np.ravel(z["ycoords"]), np.ravel(z["xcoords"])], axis=1).astype(np.float64)
    obj = z.get("objectGuess")
    meta: dict[str, Any] = {"provenance": f"reference-npz:{Path(path).name}",
                            "measurement": measurement}
    if obj is None:
        # no object frame in the file: shift positions so every window starts at pixel >= 0
        n = counts.shape[-1]
        shift = np.maximum(0.0, np.ceil(n / 2 - pos.min(axis=0)))
        if np.any(shift):
            log.warning("%s: positions shifted by %s px into the object frame", path, shift)
            pos = pos + shift
            meta["positions_shift_px"] = shift.tolist()
    try:
        return ScanData(counts=counts.astype(np.float32), positions_px=pos,
                        probe=z["probeGuess"], object_guess=obj, meta=meta)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


# ------------------------------------------------------------------------------------------------
# model weights, images


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, Any]) -> None:
    """Write torch tensors as safetensors (no pickle), atomically."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(dict(tensors), str(tmp))


def read_safetensors(path: str | os.PathLike) -> dict[str, Any]:
    """Read a safetensors file into CPU torch tensors."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"{path}: unreadable weights ({e})") from None


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a PNG/JPEG/TIFF image as a float64 grayscale array in [0, 1]."""
    from skimage import color, io as skio

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such image file")
    img = np.asarray(skio.imread(str(path)), dtype=np.float64)
    if img.ndim == 3:
        img = color.rgb2gray(img[..., :3]) if img.shape[-1] >= 3 else img[..., 0]
    lo, hi = float(img.min()), float(img.max())
    return (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)


def read_probe(path: str | os.PathLike) -> np.ndarray:
    """A probe from a ``.npy`` array or from any scan file (its ``probe``), complex64."""
    path = Path(path)
    if path.suffix == ".npy":
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such probe file")
        try:
            arr = np.load(path, allow_pickle=False)
        except ValueError as e:
            raise ValueError(f"{path}: not a plain array ({e})") from None
        return np.asarray(arr, dtype=np.complex64)
    return read_scan(path).probe


def read_bytes(path: str | os.PathLike) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return path.read_bytes()
