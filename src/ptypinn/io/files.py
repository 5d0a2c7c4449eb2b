"""Plain file access: atomic writes, YAML/JSON/NPZ/safetensors/bytes, images.

Every writer is atomic (a temporary ``.ptypinn-tmp.<pid>.*`` file in the same directory, then
``os.replace``), so a failure never leaves a partial output behind and never changes an existing
file; temporary files orphaned by a killed process are removed by the next write into that
directory (:func:`clean_orphans`).  NPZ files are always read with ``allow_pickle=False``, and
the array sizes their headers declare are checked against the machine's memory before anything
is allocated (:func:`check_memory`).  Only the ``ptypinn.io`` package touches files.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import yaml

from ptypinn.config import Config, ConfigError, build_config

__all__ = [
    "TMP_PREFIX",
    "WriteError",
    "atomic_path",
    "clean_orphans",
    "check_output",
    "check_memory",
    "available_memory_bytes",
    "json_object",
    "read_json_object",
    "read_yaml",
    "load_config",
    "write_yaml",
    "write_json",
    "read_json",
    "write_text",
    "json_default",
    "npy_header",
    "load_npz",
    "npz_member_header",
    "iter_npz_rows",
    "load_npy",
    "save_npz",
    "write_safetensors",
    "read_safetensors",
    "write_bytes",
    "read_bytes",
    "read_text",
    "read_checkpoint",
    "append_csv_history",
    "read_image",
    "write_tiff",
    "read_tiff",
]

TMP_PREFIX = ".ptypinn-tmp."
"""Name prefix of every temporary file a writer creates (``.ptypinn-tmp.<pid>.<name>.*``)."""


class WriteError(OSError):
    """An output could not be written (full disk, no permission, ...): one line naming the file."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - someone else's live process
        return True
    return True


def clean_orphans(directory: str | os.PathLike) -> list[Path]:
    """Remove temporary files left in ``directory`` by writers that were killed.

    A temporary file ``.ptypinn-tmp.<pid>.*`` is an orphan when process ``pid`` is gone (this
    process's own files are kept: another of its writers may be using them).  Returns the
    removed paths.
    """
    d = Path(directory)
    removed: list[Path] = []
    if not d.is_dir():
        return removed
    for p in d.glob(TMP_PREFIX + "*"):
        pid_text = p.name[len(TMP_PREFIX):].split(".", 1)[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid() or _pid_alive(int(pid_text)):
            continue
        with contextlib.suppress(OSError):
            p.unlink()
            removed.append(p)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only on success.

    On failure ``path`` is untouched (an existing file keeps its content) and the temporary file
    is removed.  An ``OSError`` (full disk, permissions) becomes a :class:`WriteError` naming
    ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        clean_orphans(path.parent)
        fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{os.getpid()}.{path.name}.",
                                   suffix=suffix or path.suffix, dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise WriteError(e.errno, f"{path}: cannot write ({e.strerror or e})") from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp creates 0600 files
        os.replace(tmp_path, path)
    except WriteError:
        raise
    except OSError as e:
        raise WriteError(e.errno, f"{path}: cannot write ({e.strerror or e})") from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_output(output: str | os.PathLike, inputs: Sequence[str | os.PathLike | None] = (),
                 existing_ok: bool = False, hint: str = "pass --overwrite to replace it",
                 what: str = "-o") -> Path:
    """Refuse an output before any work is done; return it as a ``Path``.

    Refused (``ValueError``, one line naming the output): an output that equals an input or is
    a directory containing one; an output that exists already (a non-empty directory or a
    file) unless ``existing_ok``; a location that cannot be written (a file where a directory
    is needed, no permission, read-only file system).  Nothing is created; temporary files
    orphaned in the output directory by a killed run are removed.

    Parameters
    ----------
    output : the output file or directory.
    inputs : the files and directories the command reads (None entries are ignored).
    existing_ok : accept an existing output (``--resume``, ``--overwrite``).
    hint : how to accept an existing output, for the message.
    what : the option naming the output, for the message.
    """
    out = Path(output)
    out_r = out.resolve()
    for inp in inputs:
        if inp is None or str(inp) == "":
            continue
        p = Path(inp).resolve()
        if p == out_r:
            raise ValueError(f"{what} {out}: is also an input of this command; refusing to "
                             "overwrite it (choose another output)")
        if out_r in p.parents:
            raise ValueError(f"{what} {out}: contains the input {inp}; refusing to write over "
                             "it (choose another output)")
    if out.exists() or out.is_symlink():
        empty_dir = out.is_dir() and not any(out.iterdir())
        if not empty_dir and not existing_ok:
            raise ValueError(f"{what} {out}: exists already; {hint}")
    base = _nearest_existing(out if out.is_dir() else out.parent)
    if not base.is_dir():
        raise ValueError(f"{what} {out}: cannot be created ({base} is not a directory)")
    try:
        fd, probe = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{os.getpid()}.check.", dir=base)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ValueError(f"{what} {out}: not writable ({e.strerror or e} in {base})") from None
    if out.is_dir():
        clean_orphans(out)
    elif out.parent.is_dir():
        clean_orphans(out.parent)
    return out


def available_memory_bytes() -> int:
    """Memory this process may still allocate: ``MemAvailable`` (Linux), else physical memory."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 2**63 - 1


def check_memory(n_bytes: float, where: str) -> None:
    """Raise ``ValueError`` naming ``where`` when ``n_bytes`` exceed the available memory.

    Called with the size a file header (or a configuration) declares, before allocating.
    """
    avail = available_memory_bytes()
    if not math.isfinite(n_bytes) or n_bytes > avail:
        raise ValueError(f"{where}: declares {n_bytes / 2**30:.3g} GiB, more than the "
                         f"{avail / 2**30:.3g} GiB of memory available; refusing to allocate it")


def json_object(text: str | bytes, where: str) -> dict[str, Any]:
    """Parse ``text`` as a JSON object (a mapping); ``ValueError`` naming ``where`` otherwise."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, TypeError) as e:
        raise ValueError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(data).__name__}")
    return data


def read_yaml(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such config file")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text (YAML) file") from None


def load_config(source: str | os.PathLike | Mapping[str, Any] | None = None,
                overrides: Sequence[str] = ()) -> Config:
    """A validated :class:`~ptypinn.config.Config` from a YAML file or a mapping, plus overrides.

    Parameters
    ----------
    source : path of a YAML file with sections (``simulation``, ``grouping``, ``model``,
        ``train``, ``infer``, ``iterative``), a mapping of such sections, or None for defaults.
    overrides : ``section.field=value`` strings, applied last.
    """
    if source is None or isinstance(source, Mapping):
        return build_config(source, overrides)
    data = read_yaml(source)
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of sections at the top level")
    return build_config(data, overrides)


def write_yaml(path: str | os.PathLike, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(data, sort_keys=False))


def write_json(path: str | os.PathLike, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Any JSON value from a file; ``ValueError`` naming the file when it is not JSON."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def read_json_object(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON object (mapping) from a file; ``ValueError`` naming the file otherwise."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def npy_header(fh: Any, where: str) -> tuple[tuple[int, ...], np.dtype, bool]:
    """Shape, dtype and Fortran order an NPY stream declares (the file position is left after
    the header).

    Raises ``ValueError`` naming ``where`` for a corrupt header or an object (pickled) dtype.
    """
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
    except (ValueError, OSError, EOFError, SyntaxError) as e:
        raise ValueError(f"{where}: not a valid NPY array header ({e})") from None
    if dtype.hasobject:
        raise ValueError(f"{where} holds pickled Python objects; refusing to load them "
                         "(allow_pickle=False)")
    return tuple(int(n) for n in shape), dtype, bool(fortran)


def _npz_declared_bytes(path: Path) -> float:
    """Bytes the arrays of an NPZ declare in their headers (checked for pickles first)."""
    total = 0.0
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                continue
            key = info.filename[:-4]
            with zf.open(info) as fh:
                shape, dtype, _ = npy_header(fh, f"{path}: key '{key}'")
            total += float(math.prod(shape)) * dtype.itemsize
    return total


def load_npz(path: str | os.PathLike, skip: Iterable[str] = ()) -> dict[str, np.ndarray]:
    """Read every array of an NPZ (``allow_pickle=False``), with one-line errors.

    The headers are read first: pickled arrays are refused and the declared sizes are checked
    against the available memory before any array is allocated.  Arrays named in ``skip`` are
    not read (see :func:`iter_npz_rows` to stream them).
    """
    skip = set(skip)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        check_memory(_npz_declared_bytes(path), f"{path}: arrays")
        with np.load(path, allow_pickle=False) as z:
            out = {}
            for k in z.files:
                if k in skip:
                    continue
                try:
                    out[k] = z[k]
                except ValueError as e:
                    if "allow_pickle" in str(e):
                        raise ValueError(
                            f"{path}: key '{k}' holds pickled Python objects; refusing to load "
                            "them (allow_pickle=False)"
                        ) from None
                    raise ValueError(f"{path}: key '{k}': unreadable array ({e})") from None
            return out
    except (zipfile.BadZipFile, EOFError, OSError, zipfile.LargeZipFile) as e:
        raise ValueError(f"{path}: not a readable NPZ file ({type(e).__name__}: {e})") from None
    except zipfile.error as e:  # pragma: no cover
        raise ValueError(f"{path}: corrupt NPZ ({e})") from None


def npz_member_header(path: str | os.PathLike, key: str
                      ) -> tuple[tuple[int, ...], np.dtype, bool]:
    """Shape, dtype and Fortran order that NPZ member ``key`` declares (nothing else is read)."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf, zf.open(f"{key}.npy") as fh:
            return npy_header(fh, f"{path}: key '{key}'")
    except (zipfile.BadZipFile, EOFError, OSError, KeyError, zipfile.LargeZipFile) as e:
        raise ValueError(f"{path}: key '{key}': not readable ({type(e).__name__}: {e})") from None


LAZY_MIN_BYTES = 64 * 2**20
"""Counts of at least this many bytes (as float32) stay in their file by default and are read
on demand (:class:`~ptypinn.data.LazyCounts`): CXI and ptychodus HDF5 frames, stored
(uncompressed) NPZ arrays.  Smaller scans are read whole (faster for training)."""


def read_lazily(lazy: bool | None, shape: tuple[int, ...]) -> bool:
    """Whether counts of ``shape`` are read on demand: ``lazy``, or by size when None
    (:data:`LAZY_MIN_BYTES`)."""
    if lazy is not None:
        return bool(lazy)
    return float(math.prod(shape)) * 4 >= LAZY_MIN_BYTES


def npz_member_offset(path: str | os.PathLike, key: str
                      ) -> tuple[int, tuple[int, ...], np.dtype] | None:
    """Where the data of NPZ member ``key`` start in the file, its shape and dtype, when the
    member is stored (not deflated) in C order, so that rows can be read (or memory-mapped)
    straight from the file; None otherwise."""
    path = Path(path)
    where = f"{path}: key '{key}'"
    try:
        with zipfile.ZipFile(path) as zf:
            info = zf.getinfo(f"{key}.npy")
            if info.compress_type != zipfile.ZIP_STORED:
                return None
            with zf.open(info) as fh:
                shape, dtype, fortran = npy_header(fh, where)
                header_len = fh.tell()
        with open(path, "rb") as raw:
            raw.seek(info.header_offset)
            local = raw.read(30)
        if len(local) != 30 or local[:4] != b"PK\x03\x04":
            raise ValueError(f"{where}: corrupt local zip header")
        name_len = int.from_bytes(local[26:28], "little")
        extra_len = int.from_bytes(local[28:30], "little")
    except (zipfile.BadZipFile, EOFError, OSError, KeyError, zipfile.LargeZipFile) as e:
        raise ValueError(f"{where}: not readable ({type(e).__name__}: {e})") from None
    if fortran and len(shape) > 1:
        return None
    return info.header_offset + 30 + name_len + extra_len + header_len, shape, dtype


def iter_npz_rows(path: str | os.PathLike, key: str, rows: int) -> Iterator[np.ndarray]:
    """Stream NPZ member ``key`` (C order, ``ndim >= 1``) ``rows`` entries of its first axis at
    a time, stored or deflated alike: only one chunk is ever in memory.

    Raises ``ValueError`` naming the file and key for a truncated or unreadable member.
    """
    path = Path(path)
    where = f"{path}: key '{key}'"
    try:
        with zipfile.ZipFile(path) as zf, zf.open(f"{key}.npy") as fh:
            shape, dtype, fortran = npy_header(fh, where)
            if fortran and len(shape) > 1 or not shape:
                raise ValueError(f"{where}: expected a C-ordered array with a first axis to "
                                 f"stream, got shape {shape}, Fortran order {fortran}")
            row_shape = shape[1:]
            row_bytes = math.prod(row_shape) * dtype.itemsize
            for start in range(0, shape[0], rows):
                k = min(rows, shape[0] - start)
                buf = fh.read(k * row_bytes)
                if len(buf) != k * row_bytes:
                    raise ValueError(f"{where}: truncated (declares shape {shape}, data end "
                                     f"within row {start + len(buf) // max(row_bytes, 1)})")
                yield np.frombuffer(buf, dtype=dtype).reshape((k, *row_shape))
    except (zipfile.BadZipFile, EOFError, OSError, KeyError, zipfile.LargeZipFile) as e:
        raise ValueError(f"{where}: not readable ({type(e).__name__}: {e})") from None
    except zipfile.error as e:  # pragma: no cover
        raise ValueError(f"{where}: corrupt NPZ member ({e})") from None


def load_npy(path: str | os.PathLike) -> np.ndarray:
    """Read one ``.npy`` array (``allow_pickle=False``; size checked before allocating)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with open(path, "rb") as fh:
            shape, dtype, _ = npy_header(fh, str(path))
        check_memory(float(math.prod(shape)) * dtype.itemsize, str(path))
        return np.load(path, allow_pickle=False)
    except (OSError, EOFError) as e:
        raise ValueError(f"{path}: not a readable NPY file ({e})") from None
    except ValueError as e:
        msg = str(e)
        raise ValueError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None


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


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a training checkpoint safely (``torch.load(weights_only=True)``: tensors and plain
    containers only, never arbitrary pickled objects).

    Raises
    ------
    ValueError
        Naming the file: missing, truncated, not a checkpoint, or holding other pickled objects.
    """
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(f"{path}: not a plain checkpoint (holds objects other than tensors and "
                         f"plain containers, or is corrupt: {first})") from None
    except (RuntimeError, EOFError, OSError, ValueError, TypeError, AttributeError,
            KeyError, IndexError, zipfile.BadZipFile) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path}: not a readable checkpoint (truncated or corrupt: "
                         f"{first})") from None
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: expected a checkpoint mapping, got {type(ckpt).__name__}")
    return ckpt


def read_text(path: str | os.PathLike) -> str:
    """A text file's content (``ValueError`` naming it when it is not text)."""
    path = Path(path)
    try:
        return path.read_text()
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text file") from None


def append_csv_history(path: str | os.PathLike, earlier: str) -> None:
    """Put the rows of ``earlier`` (a CSV text with a header) before those of the CSV at
    ``path``, with the union of both headers (atomically); used so that a resumed run's
    ``metrics.csv`` keeps its history.  Nothing is done when ``path`` already starts with it."""
    import csv
    import io as stdio

    path = Path(path)
    now = read_text(path) if path.is_file() else ""
    if not earlier.strip() or now.startswith(earlier):
        return
    old = list(csv.DictReader(stdio.StringIO(earlier)))
    new_reader = csv.DictReader(stdio.StringIO(now)) if now.strip() else None
    new = list(new_reader) if new_reader is not None else []
    fields: list[str] = []
    for names in (csv.DictReader(stdio.StringIO(earlier)).fieldnames or [],
                  (new_reader.fieldnames if new_reader is not None else None) or []):
        fields += [n for n in names if n not in fields]
    buf = stdio.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for row in old + new:
        w.writerow({k: ("" if v is None else v) for k, v in row.items() if k in fields})
    write_text(path, buf.getvalue())


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif")
"""File name endings :func:`read_image` accepts."""


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a PNG/JPEG/TIFF image as a float64 grayscale array in [0, 1]."""
    from skimage import color, io as skio

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such image file")
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"{path}: not an image file (expected one of "
                         f"{', '.join(IMAGE_SUFFIXES)})")
    try:
        img = np.asarray(skio.imread(str(path)), dtype=np.float64)
    except Exception as e:  # imageio/tifffile/PIL raise many types on a non-image
        raise ValueError(f"{path}: not a readable image ({type(e).__name__})") from None
    if img.ndim == 3:
        img = color.rgb2gray(img[..., :3]) if img.shape[-1] >= 3 else img[..., 0]
    if img.ndim != 2 or min(img.shape) < 2 or not np.isfinite(img).all():
        raise ValueError(f"{path}: expected a finite 2-D (grayscale or colour) image, got "
                         f"shape {img.shape}")
    lo, hi = float(img.min()), float(img.max())
    return (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)


def write_tiff(path: str | os.PathLike, image: np.ndarray,
               metadata: Mapping[str, Any] | None = None,
               pixel_size_m: float | None = None) -> None:
    """Write a 2-D real image as a 32-bit float TIFF (tifffile), atomically.

    Parameters
    ----------
    path : output ``.tif``/``.tiff`` file
    image : real ``(H, W)``
        Stored as float32 (NaN allowed, e.g. for pixels outside the reconstructed region).
    metadata : dict, optional
        JSON-friendly metadata, stored as JSON in the ImageDescription tag (tifffile's "shaped"
        description; read back by :func:`read_tiff`).
    pixel_size_m : float, optional
        Pixel size in metres, stored as the X/Y resolution tags in pixels per centimetre.
    """
    import tifffile

    img = np.asarray(image)
    if img.ndim != 2 or np.iscomplexobj(img):
        raise ValueError(f"image: expected a real 2-D array, got {img.dtype}{img.shape}")
    # round-trip through JSON so numpy values and paths become plain JSON types
    meta = json.loads(json.dumps(dict(metadata or {}), default=json_default))
    extra: dict[str, Any] = {}
    if pixel_size_m is not None and pixel_size_m > 0:
        per_cm = 1e-2 / float(pixel_size_m)
        extra = {"resolution": (per_cm, per_cm), "resolutionunit": "CENTIMETER"}
    with atomic_path(path, suffix=".tif") as tmp:
        tifffile.imwrite(tmp, img.astype(np.float32), metadata=meta, **extra)


def read_tiff(path: str | os.PathLike) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a TIFF written by :func:`write_tiff`: ``(image, metadata)``."""
    import tifffile

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such TIFF file")
    try:
        with tifffile.TiffFile(path) as tif:
            image = tif.asarray()
            shaped = tif.shaped_metadata
    except (tifffile.TiffFileError, ValueError) as e:
        raise ValueError(f"{path}: not a readable TIFF file ({e})") from None
    meta = dict(shaped[0]) if shaped else {}
    meta.pop("shape", None)
    return image, meta


def read_bytes(path: str | os.PathLike) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return path.read_bytes()
