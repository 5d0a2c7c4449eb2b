"""Plain file access: atomic writes, YAML/JSON/NPZ/safetensors/bytes, images.

Every writer is atomic (temporary name in the same directory, then ``os.replace``), so a failure
never leaves a partial output behind.  NPZ files are always read with ``allow_pickle=False``.
Only the ``ptypinn.io`` package touches files.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import yaml

from ptypinn.config import Config, ConfigError, build_config

__all__ = [
    "atomic_path",
    "read_yaml",
    "load_config",
    "write_yaml",
    "write_json",
    "read_json",
    "write_text",
    "json_default",
    "load_npz",
    "save_npz",
    "write_safetensors",
    "read_safetensors",
    "write_bytes",
    "read_bytes",
    "read_image",
    "write_tiff",
    "read_tiff",
]

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
    return json.loads(Path(path).read_text())


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
