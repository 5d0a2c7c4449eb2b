"""HDF5 interoperability: CXI scans, ptychodus product files, and the tike Siemens-star scan.

Part of the io layer (with :mod:`ptypinn.io`, the only modules that touch files).  Every writer
is atomic (:func:`ptypinn.io.files.atomic_path`).  Every error on bad input is a one-line
``ValueError`` that names the file and the HDF5 dataset path (or NPZ key) at fault.  Every
reader opens files through one check (:func:`open_hdf5`) that refuses anything reading data from
outside the file: external links, virtual datasets (VDS) and datasets with external raw
storage.  Dataset sizes are checked against the available memory before they are read.  The full
description of the layouts and conventions is in ``docs/formats.md``.

CXI (NeXus/HDF5, cxidb.org) -- :func:`read_cxi`, :func:`write_cxi`
    * Frames from ``/entry_1/data_1/data`` (or ``/entry_1/instrument_1/detector_1/data``),
      ``(n, H, W)`` (a raster ``(ny, nx, H, W)`` is flattened), stored **as recorded**: zero
      frequency at the array centre, so no ``fftshift`` is applied.
    * Translations ``(n, 3)`` ``(x, y, z)`` in metres from
      ``/entry_1/sample_1/geometry_1/translation`` (or ``/entry_1/data_1/translation``).
      They are **sample** translations (CXI convention): when the sample moves by ``+t`` the
      beam lands at ``-t`` in the sample's frame, so the probe-window centre is
      ``positions_px = origin - t / object_pixel_size`` with columns ``(y, x)`` taken from
      ``(t_y, t_x)``; CXI ``x`` maps to array columns and ``y`` to rows, without flips.
      ``origin`` is an integer shift putting every window at pixel ``>= 1`` (recorded in
      ``meta['positions_shift_px']``), or the origin stored by :func:`write_cxi`.
    * Energy ``/entry_1/instrument_1/source_1/energy`` in **joules** (CXI is SI) -> eV.
    * ``object_pixel_size_m = wavelength * distance / (N * detector_pixel_size)`` per axis,
      unless given.
    * Detector mask ``/entry_1/instrument_1/detector_1/mask``: nonzero = bad pixel.

ptychodus product (``product.h5``) -- :class:`Product`, :func:`read_product`,
:func:`write_product`
    Positions in metres ``probe_position_{x,y}_m``; ``object`` with attributes ``center_{x,y}_m``
    and ``pixel_{width,height}_m``.  Pixel ``(y, x)`` in our object frame of an ``Hy x Wx``
    object: ``x_px = (x_m - center_x_m) / pixel_width_m + Wx / 2`` (same for ``y``) -- the
    mapping ptychodus itself uses, and the same "window centre = start + N/2" convention as
    ours, so no half-pixel offset appears.
"""

from __future__ import annotations

import bz2
import io as _stdio
import json
import logging
import math
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal

import h5py
import numpy as np
from scipy import constants

from ptypinn.data import (
    CHUNK_PATTERNS,
    CountStatistics,
    LazyCounts,
    ScanData,
    count_statistics,
    estimate_probe,
    frame_shift_px,
    iter_chunks,
    window_outside,
)
from ptypinn.io.files import (atomic_path, available_memory_bytes, check_memory, json_default,
                               json_object, read_lazily)

__all__ = [
    "Product",
    "read_cxi",
    "write_cxi",
    "read_product",
    "write_product",
    "read_tike_siemens_npz_bz2",
    "describe_hdf5",
    "detect_hdf5_kind",
    "open_hdf5",
    "wavelength_m",
    "HDF5Rows",
    "register_filters",
    "unavailable_filters",
    "FILTER_NAMES",
    "read_ptychodus",
    "write_ptychodus_diffraction",
    "PTYCHODUS_DIFFRACTION",
    "PTYCHODUS_PRODUCTS",
]

log = logging.getLogger(__name__)

# CXI dataset paths, in order of preference (immutable module constants)
CXI_VERSION = "/cxi_version"
CXI_DATA = ("/entry_1/data_1/data", "/entry_1/instrument_1/detector_1/data")
CXI_TRANSLATION = ("/entry_1/sample_1/geometry_1/translation", "/entry_1/data_1/translation",
                   "/entry_1/instrument_1/detector_1/translation")
CXI_PROBE = ("/entry_1/instrument_1/source_1/illumination",
             "/entry_1/instrument_1/detector_1/probe", "/entry_1/instrument_1/source_1/probe",
             "/entry_1/probe")
CXI_ENERGY = "/entry_1/instrument_1/source_1/energy"
CXI_WAVELENGTH = "/entry_1/instrument_1/source_1/wavelength"
CXI_DISTANCE = "/entry_1/instrument_1/detector_1/distance"
CXI_X_PIXEL = "/entry_1/instrument_1/detector_1/x_pixel_size"
CXI_Y_PIXEL = "/entry_1/instrument_1/detector_1/y_pixel_size"
CXI_MASK = "/entry_1/instrument_1/detector_1/mask"
CXI_PTYPINN = "/entry_1/ptypinn"  # our own extras: meta JSON, frame origin, objects
CXI_WRITE_VERSION = 160
SENTINEL_COUNTS = 2.0**31  # values at or above this in a masked pixel are flags

# ptychodus product names (see docs/formats.md)
PRODUCT_X = "/probe_position_x_m"
PRODUCT_Y = "/probe_position_y_m"
PRODUCT_INDEXES = "/probe_position_indexes"
PRODUCT_PROBE = "/probe"
PRODUCT_OBJECT = "/object"
PRODUCT_LAYERS = "/object_layer_spacing_m"
PRODUCT_LOSS = ("/loss_values", "/costs")
PRODUCT_EPOCHS = "/loss_epochs"
PRODUCT_OPR = "opr_weights"  # ptychodus reads /probe@opr_weights and writes /opr_weights
PRODUCT_PTYPINN = "/ptypinn/metadata_json"  # our run metadata (provenance); ignored by ptychodus
CXI_IMAGE = "/entry_1/image_1"  # a reconstructed object (CXI "image" of data_type "object")

# ptychodus standard layout: a directory with diffraction.h5 and product.h5 (see
# docs/formats.md)
PTYCHODUS_DIFFRACTION = "diffraction.h5"
PTYCHODUS_PRODUCTS = ("product.h5", "product-in.h5", "product-out.h5")
PTYCHODUS_PATTERNS = "/patterns"
PTYCHODUS_INDEXES = "/indexes"
PTYCHODUS_BAD_PIXELS = "/bad_pixels"

TIKE_COPYRIGHT = "Copyright (c) 2018, UChicago Argonne, LLC. All rights reserved."


def wavelength_m(photon_energy_eV: float) -> float:
    """Photon wavelength ``h c / E`` in metres for an energy in eV."""
    if not photon_energy_eV > 0:
        raise ValueError(f"photon_energy_eV: expected a value > 0, got {photon_energy_eV}")
    return constants.h * constants.c / (photon_energy_eV * constants.e)


# ------------------------------------------------------------------------------------------------
# helpers


def _refuse_foreign(f: h5py.File, path: Path) -> None:
    """Raise ``ValueError`` at the first link, virtual dataset or external storage that would
    make a read leave ``path`` (soft links name paths inside the file, whose targets are checked
    where they live)."""
    seen: set[Any] = set()

    def walk(group: h5py.Group, prefix: str) -> None:
        for name in group:
            where = f"{prefix}/{name}"
            try:
                link = group.get(name, getlink=True)
            except (KeyError, OSError, TypeError) as e:
                raise ValueError(f"{path}: {where}: unreadable link ({e})") from None
            if isinstance(link, h5py.ExternalLink):
                raise ValueError(f"{path}: {where}: external link to {link.filename}:{link.path};"
                                 " refusing to read data outside the input file")
            if isinstance(link, h5py.SoftLink):
                continue
            if not isinstance(link, h5py.HardLink):
                raise ValueError(f"{path}: {where}: user-defined link; refusing to follow it")
            try:
                obj = group[name]
            except (KeyError, OSError) as e:
                raise ValueError(f"{path}: {where}: unreadable object ({e})") from None
            if obj.id in seen:  # an object reached by several hard links (or a cycle)
                continue
            seen.add(obj.id)
            if isinstance(obj, h5py.Dataset):
                if obj.is_virtual:
                    srcs = obj.virtual_sources()
                    first = f" (from {srcs[0].file_name}:{srcs[0].dset_name})" if srcs else ""
                    raise ValueError(f"{path}: {where}: virtual dataset{first}; refusing to "
                                     "read data outside the input file")
                if obj.external:
                    raise ValueError(f"{path}: {where}: external raw storage in "
                                     f"{obj.external[0][0]!r}; refusing to read data outside "
                                     "the input file")
            elif isinstance(obj, h5py.Group):
                walk(obj, where)

    walk(f, "")


FILTER_NAMES = {32008: "bitshuffle", 32004: "LZ4", 32001: "Blosc", 32026: "Blosc2",
                32015: "Zstd", 307: "bzip2", 32017: "SZ", 32013: "ZFP", 32018: "FCIDECOMP"}
"""Registered HDF5 filter ids of the compression plugins that hdf5plugin provides."""


def register_filters() -> bool:
    """Register the compression filters of detector files (bitshuffle/LZ4, Blosc, Zstd, ...)
    with HDF5 by importing ``hdf5plugin`` when it is installed (the optional extra
    ``ptypinn[hdf5plugin]``); whether it was."""
    try:
        import hdf5plugin  # noqa: F401  (registers its filters on import)
    except ImportError:
        return False
    return True


def unavailable_filters(d: h5py.Dataset) -> list[str]:
    """Names (with ids) of the filters in ``d``'s pipeline that HDF5 cannot apply here."""
    try:
        plist = d.id.get_create_plist()
        codes = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
    except (AttributeError, OSError, ValueError):  # pragma: no cover (exotic h5py builds)
        return []
    return [f"{FILTER_NAMES.get(c, 'filter')} (HDF5 filter id {c})" for c in codes
            if not h5py.h5z.filter_avail(c)]


def _check_filters(d: h5py.Dataset, path: Path, where: str) -> None:
    """``ValueError`` naming the missing filter when ``d`` cannot be decoded here."""
    hint = _filter_hint(d)
    if hint:
        raise ValueError(f"{path}: {where}: cannot read the frames{hint}")


def open_hdf5(path: str | os.PathLike) -> h5py.File:
    """Open an HDF5 file for reading, after refusing external links, virtual datasets and
    external raw storage anywhere in it (``ValueError`` naming the file and the object).
    The compression filters of ``hdf5plugin`` are registered first when it is installed."""
    register_filters()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ValueError(f"{path}: not a readable HDF5 file ({e})") from None
    try:
        _refuse_foreign(f, path)
    except BaseException:
        f.close()
        raise
    return f


def _dataset(f: h5py.File, p: str, path: Path) -> h5py.Dataset:
    """The dataset at ``p``; ``ValueError`` naming it when it is a group or something else."""
    obj = f[p]
    if not isinstance(obj, h5py.Dataset):
        raise ValueError(f"{path}: {p}: expected a dataset, got a "
                         f"{'group' if isinstance(obj, h5py.Group) else type(obj).__name__}")
    return obj


def _read(f: h5py.File, p: str, path: Path, dtype: Any = None, array: bool = True
          ) -> np.ndarray:
    """Read dataset ``p`` (size checked against the available memory first).

    ``array``: refuse a scalar dataset.  ``dtype``: convert, with a one-line error naming ``p``
    when the stored values cannot be.
    """
    d = _dataset(f, p, path)
    if array and d.shape is not None and len(d.shape) == 0:
        raise ValueError(f"{path}: {p}: expected an array, got a scalar dataset")
    if d.shape is None:
        raise ValueError(f"{path}: {p}: expected values, got an empty (null) dataset")
    check_memory(float(math.prod(d.shape)) * d.dtype.itemsize, f"{path}: {p}")
    try:
        a = d[()]
        return np.asarray(a) if dtype is None else np.asarray(a, dtype=dtype)
    except (TypeError, ValueError, OSError) as e:
        raise ValueError(f"{path}: {p}: unreadable values ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}){_filter_hint(d)}"
                         ) from None


def _first(f: h5py.File, paths: tuple[str, ...]) -> str | None:
    for p in paths:
        if p in f:
            if isinstance(f[p], h5py.Dataset):
                return p
            raise ValueError(f"{f.filename}: {p}: expected a dataset, got a group")
    return None


def _scalar(f: h5py.File, p: str) -> float | None:
    if p not in f:
        return None
    a = _read(f, p, Path(f.filename), dtype=np.float64, array=False).reshape(-1)
    if a.size == 0:
        return None
    return float(a[0])


def _attr_float(obj: Any, k: str, path: Path, where: str) -> float:
    try:
        return float(np.asarray(obj.attrs[k], dtype=np.float64).reshape(-1)[0])
    except (TypeError, ValueError, IndexError, OSError):
        raise ValueError(f"{path}: {where}@{k}: expected a number, got "
                         f"{obj.attrs[k]!r}") from None


def _attr_str(v: Any) -> str:
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, np.ndarray) and v.size == 1:
        return _attr_str(v.reshape(-1)[0])
    return str(v)


def _fail(path: Path, where: str, expected: str, actual: Any) -> None:
    raise ValueError(f"{path}: {where}: expected {expected}, got {actual}")


class HDF5Rows:
    """Reads rows of one ``(n, H, W)`` HDF5 dataset on demand: the
    :data:`ptypinn.data.RowReader` behind the :class:`~ptypinn.data.LazyCounts` of a CXI scan.

    The file is opened on first use and kept open (a copy sent to another process reopens it).
    Sorted rows are read as slices where they are dense (one contiguous read covering them),
    else by h5py's point selection.  ``bad`` ``(H, W)``: in those pixels, values that are not
    counts (negative, NaN/Inf, >= 2**31: detector flags) read as 0, as :func:`read_cxi` did.

    Parameters
    ----------
    path : the HDF5 file (already checked by :func:`open_hdf5`)
    dataset : path of the dataset in the file
    bad : bool ``(H, W)``, optional
    """

    def __init__(self, path: str | os.PathLike, dataset: str, bad: np.ndarray | None = None
                 ) -> None:
        self.path = Path(path)
        self.dataset = dataset
        self.bad = None if bad is None or not np.any(bad) else np.asarray(bad, dtype=bool)
        self._file: h5py.File | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_file": None}

    def _dataset(self) -> h5py.Dataset:
        if self._file is None or not self._file.id.valid:
            try:
                self._file = h5py.File(self.path, "r")
            except OSError as e:
                raise ValueError(f"{self.path}: not readable any more ({e})") from None
        return self._file[self.dataset]

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` (sorted, unique) as stored, ``(len(rows), H, W)``."""
        d = self._dataset()
        lo, hi = int(rows[0]), int(rows[-1]) + 1
        try:
            if hi - lo <= 2 * len(rows):  # dense: one contiguous read, then pick
                block = d[lo:hi]
                if hi - lo != len(rows):
                    block = block[rows - lo]
            else:
                block = d[rows]
        except (TypeError, ValueError, OSError) as e:
            raise ValueError(f"{self.path}: {self.dataset}: unreadable values "
                             f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
                             f"{_filter_hint(d)}") from None
        block = np.asarray(block)
        if self.bad is not None:
            vals = block[:, self.bad].astype(np.float64)
            junk = ~(np.isfinite(vals) & (vals >= 0) & (vals < SENTINEL_COUNTS))
            if junk.any():
                block = block.copy() if not block.flags.writeable else block
                vals[junk] = 0
                block[:, self.bad] = vals.astype(block.dtype)
        return block


def _filter_hint(d: h5py.Dataset) -> str:
    """``"; ..."`` naming a compression filter of ``d`` that this h5py cannot decode, or ``""``."""
    missing = unavailable_filters(d)
    if not missing:
        return ""
    return (f"; the dataset is compressed with {', '.join(missing)}, which this installation "
            "cannot decode: pip install 'ptypinn[hdf5plugin]' (registers the bitshuffle/LZ4/"
            "Blosc/Zstd filters of detector files)")


# ------------------------------------------------------------------------------------------------
# CXI


def _cxi_energy_eV(f: h5py.File, path: Path) -> float | None:
    if CXI_ENERGY in f:
        e = _scalar(f, CXI_ENERGY)
        units = _attr_str(f[CXI_ENERGY].attrs.get("units", "")).strip()
        if e is None or not math.isfinite(e) or e <= 0:
            _fail(path, CXI_ENERGY, "a photon energy > 0 in J", e)
        if units.lower() == "ev":
            return e
        if units.lower() == "kev":
            return e * 1e3
        if e > 1e-6:  # J values are ~1e-15; anything this large cannot be joules
            log.warning("%s: %s = %g is not in joules (CXI is SI); reading it as eV",
                        path, CXI_ENERGY, e)
            return e
        return e / constants.e
    lam = _scalar(f, CXI_WAVELENGTH)
    if lam is not None and lam > 0:
        return constants.h * constants.c / (lam * constants.e)
    return None


def _positive(f: h5py.File, p: str, path: Path) -> float | None:
    v = _scalar(f, p)
    if v is not None and not (math.isfinite(v) and v > 0):
        _fail(path, p, "a value > 0 (SI units)", v)
    return v


def read_cxi(path: str | os.PathLike, object_pixel_size_m: float | None = None,
             lazy: bool | None = None, flip_positions: bool = False) -> ScanData:
    """Read a CXI ptychography file into :class:`ScanData`.

    Parameters
    ----------
    path : CXI/HDF5 file
    object_pixel_size_m : float, optional
        Object (and probe) pixel size in metres.  Default: from the geometry,
        ``wavelength * distance / (N * detector_pixel_size)`` per axis.
    lazy : bool or None
        Frames ``(n, H, W)`` stay in the file and are read on demand
        (:class:`~ptypinn.data.LazyCounts` over :class:`HDF5Rows`: memory does not grow with
        the number of patterns); False reads them all (as does a raster ``(ny, nx, H, W)``);
        None: lazily when they take at least :data:`~ptypinn.io.files.LAZY_MIN_BYTES`.
    flip_positions : bool
        Negate the translations (``positions_px = origin + t / pixel_size``): for files whose
        translations are beam (probe) positions rather than sample positions.

    Returns
    -------
    ScanData
        ``counts (n, N, N)`` as stored (zero frequency at the centre), ``positions_px (n, 2)``
        ``(y, x)`` window centres ``= origin - (t_y, t_x) / pixel_size`` (sample translations,
        see the module docstring), the probe from the file, ``bad_pixels`` from the mask, and
        ``meta`` with ``photon_energy_eV``, ``detector_distance_m``, ``detector_pixel_size_m``,
        ``object_pixel_size_m``, ``positions_shift_px`` and ``provenance``.
    """
    path = Path(path)
    with open_hdf5(path) as f:
        data_path = _first(f, CXI_DATA)
        if data_path is None:
            raise ValueError(f"{path}: not a CXI ptychography file: no dataset at "
                             f"{CXI_DATA[0]} or {CXI_DATA[1]}")
        dset = _dataset(f, data_path, path)
        lazy = (dset.shape is not None and len(dset.shape) == 3
                and read_lazily(lazy, dset.shape))
        if lazy:
            counts = None
            shape = dset.shape
            if shape[0] == 0:
                _fail(path, data_path, "frames (n, H, W) with n >= 1", shape)
            if dset.dtype.kind not in "iuf":
                _fail(path, data_path, "real numeric frames", dset.dtype)
            _check_filters(dset, path, data_path)
        else:
            counts = _read(f, data_path, path)
            if counts.ndim == 4:  # raster (ny, nx, H, W)
                counts = counts.reshape(-1, *counts.shape[-2:])
            if counts.ndim != 3 or counts.shape[0] == 0:
                _fail(path, data_path, "frames (n, H, W) with n >= 1", counts.shape)
            shape = counts.shape
        n, h, w = shape

        trans_path = _first(f, CXI_TRANSLATION)
        if trans_path is None:
            raise ValueError(f"{path}: {CXI_TRANSLATION[0]}: missing (also looked at "
                             f"{CXI_TRANSLATION[1]}); CXI ptychography needs the sample "
                             "translations (n, 3) in metres")
        t = _read(f, trans_path, path, dtype=np.float64)
        t = t.reshape(-1, t.shape[-1]) if t.ndim >= 2 else t
        if t.ndim != 2 or t.shape[0] != n or t.shape[1] not in (2, 3):
            _fail(path, trans_path, f"shape ({n}, 3) (x, y, z per frame)", t.shape)
        if not np.isfinite(t).all():
            _fail(path, trans_path, "finite values", "NaN/Inf")

        probe_path = _first(f, CXI_PROBE)
        probe = None
        if probe_path is not None:
            probe = _read(f, probe_path, path)
            while probe.ndim > 3 and probe.shape[0] == 1:
                probe = probe[0]
            if probe.ndim not in (2, 3) or probe.shape[-2:] != (h, w):
                _fail(path, probe_path, f"shape ({h}, {w}) or (modes, {h}, {w}) matching the "
                      f"detector frames in {data_path}", probe.shape)

        bad = None
        if CXI_MASK in f:
            mask = _read(f, CXI_MASK, path)
            if mask.shape != (h, w):
                _fail(path, CXI_MASK, f"shape ({h}, {w})", mask.shape)
            bad = mask != 0
            # flagged pixels may hold sentinels (-1, NaN, 2**32-1) that are not counts: zero
            # those; valid values in flagged pixels are kept as stored
            if counts is not None:
                vals = counts[:, bad].astype(np.float64)
                junk = ~(np.isfinite(vals) & (vals >= 0) & (vals < SENTINEL_COUNTS))
                if junk.any():
                    vals[junk] = 0
                    counts[:, bad] = vals.astype(counts.dtype)

        energy_eV = _cxi_energy_eV(f, path)
        distance_m = _positive(f, CXI_DISTANCE, path)
        px_x_m = _positive(f, CXI_X_PIXEL, path)
        px_y_m = _positive(f, CXI_Y_PIXEL, path) or px_x_m

        if object_pixel_size_m is not None:
            if not (math.isfinite(object_pixel_size_m) and object_pixel_size_m > 0):
                raise ValueError(f"object_pixel_size_m: expected a value > 0, got "
                                 f"{object_pixel_size_m}")
            ps_y = ps_x = float(object_pixel_size_m)
        else:
            for p, v in ((CXI_ENERGY, energy_eV), (CXI_DISTANCE, distance_m),
                         (CXI_X_PIXEL, px_x_m)):
                if v is None:
                    raise ValueError(f"{path}: {p}: missing, needed for the object pixel size "
                                     "(or pass object_pixel_size_m)")
            lam = wavelength_m(energy_eV)  # type: ignore[arg-type]
            ps_x = lam * distance_m / (w * px_x_m)  # type: ignore[operator]
            ps_y = lam * distance_m / (h * px_y_m)  # type: ignore[operator]
            if abs(ps_y - ps_x) > 1e-9 * ps_x:
                log.warning("%s: non-square object pixels (y %.4g m, x %.4g m); meta records x",
                            path, ps_y, ps_x)

        sign = 1.0 if flip_positions else -1.0
        pos = np.stack([sign * t[:, 1] / ps_y, sign * t[:, 0] / ps_x], axis=1)

        extras: dict[str, Any] = {}
        if CXI_PTYPINN in f:
            if not isinstance(f[CXI_PTYPINN], h5py.Group):
                raise ValueError(f"{path}: {CXI_PTYPINN}: expected a group, got a dataset")
            g = f[CXI_PTYPINN]
            for k in ("positions_origin_px", "object_true", "object_guess"):
                if k in g:
                    extras[k] = _read(f, f"{CXI_PTYPINN}/{k}", path)
            if "meta_json" in g:
                mj = f"{CXI_PTYPINN}/meta_json"
                extras["meta"] = json_object(_attr_str(_read(f, mj, path, array=False)),
                                             f"{path}: {mj}")
            origin = extras.get("positions_origin_px")
            if origin is not None and (np.shape(origin) != (2,) or not np.all(
                    np.isfinite(np.asarray(origin, dtype=np.float64)))):
                _fail(path, f"{CXI_PTYPINN}/positions_origin_px", "2 finite values",
                      np.shape(origin))
        version = _scalar(f, CXI_VERSION)

    origin = extras.get("positions_origin_px")
    if origin is not None and object_pixel_size_m is None and not flip_positions:
        shift = np.asarray(origin, dtype=np.float64)
    else:
        shift = frame_shift_px(pos, h)
        for k in ("object_true", "object_guess"):  # their frame is not this one
            extras.pop(k, None)
    pos = pos + shift

    meta: dict[str, Any] = dict(extras.get("meta", {}))
    meta.setdefault("probe_calibrated", False)
    if "provenance" in meta:
        meta["source_provenance"] = meta["provenance"]
    meta.update({
        "provenance": f"cxi:{path.name}"
                      + (f" (cxi_version {int(version)})" if version is not None else ""),
        "measurement": "counts",
        "photon_energy_eV": energy_eV,
        "detector_distance_m": distance_m,
        "detector_pixel_size_m": px_x_m,
        "object_pixel_size_m": ps_x,
        "positions_shift_px": shift.tolist(),
        "positions_convention": ("probe centre = origin + translation (flipped: "
                                 "--flip-positions)" if flip_positions else
                                 "probe centre = origin - sample translation (CXI x -> column)"),
    })
    if counts is None:
        counts = LazyCounts((n, h, w), HDF5Rows(path, data_path, bad), f"{path}: {data_path}")
    else:
        counts = counts.astype(np.float32)
    if probe is None:  # no illumination in the file: a data-derived start, to be learned
        probe, fit = estimate_probe(counts, bad)
        log.warning("%s: %s: missing (also looked at %s); estimated the probe from the data "
                    "(defocused aperture, pupil radius %.3g px; reconstruct learns it)", path,
                    CXI_PROBE[0], ", ".join(CXI_PROBE[1:]), fit["pupil_radius_px"])
        meta["probe_calibrated"] = False
        meta["probe_estimated"] = fit
    try:
        return ScanData(counts=counts, positions_px=pos, probe=probe,
                        object_true=extras.get("object_true"),
                        object_guess=extras.get("object_guess"), bad_pixels=bad, meta=meta)
    except ValueError as e:
        field_name = str(e).split(":", 1)[0]
        where = {"counts": data_path, "probe": probe_path, "positions_px": trans_path,
                 "bad_pixels": CXI_MASK}.get(field_name, CXI_PTYPINN)
        raise ValueError(f"{path}: {where}: {e}") from None


def write_cxi(path: str | os.PathLike, scan: ScanData, image: np.ndarray | None = None,
              metadata: dict[str, Any] | None = None) -> None:
    """Write a scan as a minimal valid CXI file (atomically), optionally with a reconstruction.

    Requires ``meta['photon_energy_eV']``, ``meta['detector_distance_m']`` and
    ``meta['detector_pixel_size_m']`` (CXI stores SI geometry; the object pixel size follows
    from them).  Layout: ``/cxi_version``; frames at
    ``/entry_1/instrument_1/detector_1/data`` with a soft link ``/entry_1/data_1/data``;
    sample translations ``(n, 3)`` m at ``/entry_1/sample_1/geometry_1/translation`` (soft
    link ``/entry_1/data_1/translation``), ``t = -(position - origin) * pixel_size`` with
    ``origin`` the object-frame centre; probe at ``/entry_1/instrument_1/source_1/illumination``;
    energy (J), distance, pixel sizes and mask (1 = bad) under ``instrument_1``; ptypinn's
    meta, frame origin and objects under ``/entry_1/ptypinn`` so the round trip is exact.

    Parameters
    ----------
    path : output file
    scan : ScanData
    image : complex ``(Hy, Wx)``, optional
        A reconstructed object in the scan's frame, written as a CXI image at
        ``/entry_1/image_1/data`` (``data_type = "object"``, ``data_space = "real"``,
        ``x_pixel_size``/``y_pixel_size`` in metres).
    metadata : dict, optional
        JSON-friendly run metadata (provenance), stored at ``/entry_1/ptypinn/metadata_json``.
    """
    path = Path(path)
    meta = scan.meta
    for k in ("photon_energy_eV", "detector_distance_m", "detector_pixel_size_m"):
        v = meta.get(k)
        if v is None or not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise ValueError(f"meta['{k}']: expected a value > 0 to write CXI (SI geometry is "
                             f"required), got {v!r}")
    energy_eV = float(meta["photon_energy_eV"])
    distance_m = float(meta["detector_distance_m"])
    dpx_m = float(meta["detector_pixel_size_m"])
    n_px = scan.pattern_size
    ps = wavelength_m(energy_eV) * distance_m / (n_px * dpx_m)
    given = meta.get("object_pixel_size_m")
    if given is not None and abs(float(given) - ps) > 1e-6 * ps:
        raise ValueError(f"meta['object_pixel_size_m']: expected {ps:.6g} (from energy, distance "
                         f"and detector pixel size), got {given}")
    hy, wx = scan.object_shape_px
    origin = np.array([hy / 2.0, wx / 2.0])
    rel = scan.positions_px - origin
    t = np.zeros((scan.n_patterns, 3))
    t[:, 0] = -rel[:, 1] * ps
    t[:, 1] = -rel[:, 0] * ps
    if image is not None and np.shape(image) != (hy, wx):
        raise ValueError(f"image: expected the scan's object shape ({hy}, {wx}), got "
                         f"{np.shape(image)}")
    # frames are written chunk by chunk (lazy counts are never all in memory); as uint32 when
    # every value is a whole number below 2**31
    integer = all(np.array_equal(c, np.round(c)) and float(c.max()) < 2**31
                  for c in iter_chunks(scan.counts))
    frames_dtype = np.uint32 if integer else np.float32

    with atomic_path(path, suffix=".cxi") as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("cxi_version", data=CXI_WRITE_VERSION)
            entry = f.create_group("entry_1")
            entry.attrs["NX_class"] = "NXentry"
            entry.create_dataset("program_name", data="ptypinn")
            det = entry.create_group("instrument_1/detector_1")
            det.attrs["NX_class"] = "NXdetector"
            d = det.create_dataset("data", shape=scan.counts.shape, dtype=frames_dtype,
                                   chunks=(1, n_px, n_px))
            start = 0
            for c in iter_chunks(scan.counts):
                d[start:start + len(c)] = c.astype(frames_dtype)
                start += len(c)
            d.attrs["axes"] = "translation:y:x"
            det.create_dataset("distance", data=distance_m)
            det.create_dataset("x_pixel_size", data=dpx_m)
            det.create_dataset("y_pixel_size", data=dpx_m)
            if scan.bad_pixels is not None:
                det.create_dataset("mask", data=scan.bad_pixels.astype(np.uint32))
            src = entry.create_group("instrument_1/source_1")
            src.attrs["NX_class"] = "NXsource"
            src.create_dataset("energy", data=energy_eV * constants.e)
            src["energy"].attrs["units"] = "J"
            src.create_dataset("illumination", data=scan.probe)
            geo = entry.create_group("sample_1/geometry_1")
            geo.create_dataset("translation", data=t)
            geo["translation"].attrs["units"] = "m"
            data_1 = entry.create_group("data_1")
            data_1["data"] = h5py.SoftLink("/entry_1/instrument_1/detector_1/data")
            data_1["translation"] = h5py.SoftLink("/entry_1/sample_1/geometry_1/translation")
            det["translation"] = h5py.SoftLink("/entry_1/sample_1/geometry_1/translation")
            own = entry.create_group("ptypinn")
            own.create_dataset("meta_json", data=json.dumps(meta))
            own.create_dataset("positions_origin_px", data=origin)
            for k in ("object_true", "object_guess"):
                if getattr(scan, k) is not None:
                    own.create_dataset(k, data=getattr(scan, k))
            if metadata:
                own.create_dataset("metadata_json", data=json.dumps(metadata,
                                                                    default=json_default))
            if image is not None:
                img = f.create_group(CXI_IMAGE)
                img.attrs["NX_class"] = "NXdata"
                img.create_dataset("data", data=np.asarray(image, dtype=np.complex64))
                img.create_dataset("data_type", data="object")
                img.create_dataset("data_space", data="real")
                img.create_dataset("x_pixel_size", data=ps)
                img.create_dataset("y_pixel_size", data=ps)


# ------------------------------------------------------------------------------------------------
# ptychodus product


@dataclass(frozen=True, eq=False)
class Product:
    """A reconstruction as ptychodus stores it, in our conventions.

    Attributes
    ----------
    positions_px : float64 ``(n, 2)``
        Probe-window centres ``(y, x)`` in pixels of ``object``.
    probe : complex64 ``(modes, H, W)`` (a ``(H, W)`` probe becomes ``(1, H, W)``)
    object : complex64 ``(Hy, Wx)``
    object_pixel_size_m : float
        Object (and probe) pixel size in metres.
    photon_energy_eV : float or None
    loss_history : list of float
        Loss (or data NLL) values, one per entry of ``loss_epochs``.
    name : str
    detector_distance_m : float or None
    loss_epochs : list of int or None
        Epoch of each ``loss_history`` value; None: ``0, 1, 2, ...``.
    opr_weights : float64 ``(n, opr)`` or None
        Orthogonal-probe-relaxation weights of each position for each probe of an OPR stack;
        None: one probe for every position (all weights 1, ``(n, 1)``).
    metadata : dict
        JSON-friendly run metadata (provenance); written under ``/ptypinn`` and read back.
    """

    positions_px: np.ndarray
    probe: np.ndarray
    object: np.ndarray
    object_pixel_size_m: float
    photon_energy_eV: float | None = None
    loss_history: list[float] = field(default_factory=list)
    name: str = "ptypinn"
    detector_distance_m: float | None = None
    loss_epochs: list[int] | None = None
    opr_weights: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        pos = np.asarray(self.positions_px, dtype=np.float64)
        if pos.ndim != 2 or pos.shape[1] != 2 or pos.shape[0] == 0:
            raise ValueError(f"positions_px: expected shape (n, 2), got {pos.shape}")
        if not np.isfinite(pos).all():
            raise ValueError("positions_px: expected finite values, got NaN/Inf")
        probe = np.asarray(self.probe)
        probe = probe[None] if probe.ndim == 2 else probe
        if probe.ndim != 3:
            raise ValueError(f"probe: expected shape (H, W) or (modes, H, W), got {probe.shape}")
        obj = np.asarray(self.object)
        if obj.ndim != 2:
            raise ValueError(f"object: expected shape (Hy, Wx), got {obj.shape}")
        ps = float(self.object_pixel_size_m)
        if not (math.isfinite(ps) and ps > 0):
            raise ValueError(f"object_pixel_size_m: expected a value > 0, got {ps}")
        for k in ("photon_energy_eV", "detector_distance_m"):
            v = getattr(self, k)
            if v is not None and not (math.isfinite(v) and v > 0):
                raise ValueError(f"{k}: expected None or a value > 0, got {v}")
        set_("positions_px", pos)
        set_("probe", probe.astype(np.complex64, copy=False))
        set_("object", obj.astype(np.complex64, copy=False))
        set_("object_pixel_size_m", ps)
        set_("loss_history", [float(v) for v in self.loss_history])
        epochs = (list(range(len(self.loss_history))) if self.loss_epochs is None
                  else [int(e) for e in self.loss_epochs])
        if len(epochs) != len(self.loss_history):
            raise ValueError(f"loss_epochs: expected {len(self.loss_history)} values (one per "
                             f"loss), got {len(epochs)}")
        set_("loss_epochs", epochs)
        w = (np.ones((pos.shape[0], 1)) if self.opr_weights is None
             else np.asarray(self.opr_weights, dtype=np.float64))
        if w.ndim != 2 or w.shape[0] != pos.shape[0] or not np.isfinite(w).all():
            raise ValueError(f"opr_weights: expected finite values of shape ({pos.shape[0]}, "
                             f"opr), got {w.shape}")
        set_("opr_weights", w)


def _check_product_positions(pos: np.ndarray, n: int, shape: tuple[int, int],
                             names: tuple[str, str], path: Path | str) -> None:
    hit = window_outside(pos, n, shape, bilinear_margin=False, tol_px=1e-6)
    if hit is not None:
        i, axis = hit
        raise ValueError(
            f"{path}: {names[axis]}: expected probe windows ({n} px) inside the object "
            f"{shape[0]}x{shape[1]} px, got position {i} at {'yx'[axis]} = {pos[i, axis]:.2f} px")


def read_product(path: str | os.PathLike) -> Product:
    """Read a ptychodus product HDF5 file.

    Positions are mapped into the object's pixel frame:
    ``x_px = (probe_position_x_m - center_x_m) / pixel_width_m + Wx / 2`` (likewise ``y``).
    A 4-D probe (OPR/coherent modes first) keeps its first entry; a single-layer 3-D object is
    squeezed; multislice objects are refused.
    """
    path = Path(path)
    with open_hdf5(path) as f:
        for p in (PRODUCT_X, PRODUCT_Y, PRODUCT_PROBE, PRODUCT_OBJECT):
            if p not in f:
                raise ValueError(f"{path}: {p}: missing; not a ptychodus product file")
        x_m = _read(f, PRODUCT_X, path, dtype=np.float64).reshape(-1)
        y_m = _read(f, PRODUCT_Y, path, dtype=np.float64).reshape(-1)
        if y_m.shape != x_m.shape:
            _fail(path, PRODUCT_Y, f"{x_m.size} values (as {PRODUCT_X})", y_m.size)
        probe = _read(f, PRODUCT_PROBE, path)
        if probe.ndim == 4:
            if probe.shape[0] > 1:
                log.warning("%s: %s has %d OPR/coherent modes; keeping the first", path,
                            PRODUCT_PROBE, probe.shape[0])
            probe = probe[0]
        if probe.ndim not in (2, 3) or not np.iscomplexobj(probe):
            _fail(path, PRODUCT_PROBE, "complex (H, W), (modes, H, W) or (1, modes, H, W)",
                  f"{probe.dtype}{probe.shape}")
        h5obj = _dataset(f, PRODUCT_OBJECT, path)
        obj = _read(f, PRODUCT_OBJECT, path)
        if obj.ndim == 3:
            if obj.shape[0] != 1:
                _fail(path, PRODUCT_OBJECT, "a single layer (multislice is not supported)",
                      f"{obj.shape[0]} layers")
            obj = obj[0]
        if obj.ndim != 2 or not np.iscomplexobj(obj):
            _fail(path, PRODUCT_OBJECT, "complex (Hy, Wx)", f"{obj.dtype}{obj.shape}")
        geo = {}
        for k in ("pixel_width_m", "pixel_height_m", "center_x_m", "center_y_m"):
            if k not in h5obj.attrs:
                raise ValueError(f"{path}: {PRODUCT_OBJECT}@{k}: missing attribute")
            geo[k] = _attr_float(h5obj, k, path, PRODUCT_OBJECT)
        for k in ("pixel_width_m", "pixel_height_m"):
            if not (math.isfinite(geo[k]) and geo[k] > 0):
                _fail(path, f"{PRODUCT_OBJECT}@{k}", "a value > 0", geo[k])
        energy = None
        for k in ("photon_energy_eV", "probe_energy_eV"):
            if k in f.attrs:
                energy = _attr_float(f, k, path, "")
                break
        distance = (_attr_float(f, "detector_object_distance_m", path, "")
                    if "detector_object_distance_m" in f.attrs else None)
        loss_path = _first(f, PRODUCT_LOSS)
        losses = ([] if loss_path is None
                  else _read(f, loss_path, path, dtype=np.float64, array=False)
                  .reshape(-1).tolist())
        epochs = (np.asarray(f[PRODUCT_EPOCHS][()]).reshape(-1).astype(int).tolist()
                  if PRODUCT_EPOCHS in f and loss_path is not None else None)
        if epochs is not None and len(epochs) != len(losses):
            _fail(path, PRODUCT_EPOCHS, f"{len(losses)} epochs (as {loss_path})", len(epochs))
        opr = f[PRODUCT_PROBE].attrs.get(PRODUCT_OPR)
        if opr is None and f"/{PRODUCT_OPR}" in f:
            opr = f[f"/{PRODUCT_OPR}"][()]
        if opr is not None:
            opr = np.asarray(opr, dtype=np.float64)
            if opr.ndim != 2 or opr.shape[0] != x_m.size:
                _fail(path, f"{PRODUCT_PROBE}@{PRODUCT_OPR}", f"shape ({x_m.size}, opr)",
                      opr.shape)
            if opr.shape[1] > 1:  # the first probe of the stack is kept: its weights only
                opr = opr[:, :1]
        metadata = (json_object(_attr_str(f[PRODUCT_PTYPINN][()]), f"{path}: {PRODUCT_PTYPINN}")
                    if PRODUCT_PTYPINN in f else {})
        name = _attr_str(f.attrs.get("name", path.stem))

    hy, wx = obj.shape
    if abs(geo["pixel_height_m"] - geo["pixel_width_m"]) > 1e-9 * geo["pixel_width_m"]:
        log.warning("%s: non-square object pixels; object_pixel_size_m records the width", path)
    pos = np.stack([(y_m - geo["center_y_m"]) / geo["pixel_height_m"] + hy / 2,
                    (x_m - geo["center_x_m"]) / geo["pixel_width_m"] + wx / 2], axis=1)
    _check_product_positions(pos, probe.shape[-1], (hy, wx), (PRODUCT_Y, PRODUCT_X), path)
    try:
        return Product(positions_px=pos, probe=probe, object=obj,
                       object_pixel_size_m=geo["pixel_width_m"],
                       photon_energy_eV=energy if energy and energy > 0 else None,
                       loss_history=losses, name=name,
                       detector_distance_m=distance if distance and distance > 0 else None,
                       loss_epochs=epochs, opr_weights=opr, metadata=metadata)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def write_product(path: str | os.PathLike, product: Product) -> None:
    """Write a ptychodus product HDF5 file (atomically) that ptychodus can open.

    The object is centred at ``(0, 0)`` m, so ``probe_position_x_m = (x_px - Wx/2) * pixel``.
    Both ``photon_energy_eV`` and the older ``probe_energy_eV`` root attributes are written
    (0.0 when unknown, as ptychodus does), with every root attribute and dataset ptychodus's
    reader requires.  ``opr_weights`` ``(n, opr)`` go where ptychodus's reader looks
    (``/probe@opr_weights``) and where its writer puts them (``/opr_weights``);
    ``product.metadata`` is stored as JSON at ``/ptypinn/metadata_json``.
    """
    path = Path(path)
    hy, wx = product.object.shape
    n_px = product.probe.shape[-1]
    _check_product_positions(product.positions_px, n_px, (hy, wx),
                             ("positions_px[:, 0] (y)", "positions_px[:, 1] (x)"), "product")
    ps = product.object_pixel_size_m
    x_m = (product.positions_px[:, 1] - wx / 2) * ps
    y_m = (product.positions_px[:, 0] - hy / 2) * ps
    energy = float(product.photon_energy_eV or 0.0)
    with atomic_path(path, suffix=".h5") as tmp:
        # HDF5 >= 1.8 object headers: attributes larger than 64 kB (opr_weights of big scans)
        with h5py.File(tmp, "w", libver=("v108", "latest")) as f:
            f.attrs["name"] = product.name
            f.attrs["comments"] = "written by ptypinn"
            f.attrs["detector_object_distance_m"] = float(product.detector_distance_m or 0.0)
            f.attrs["photon_energy_eV"] = energy
            f.attrs["probe_energy_eV"] = energy
            f.attrs["probe_photon_count"] = 0.0
            f.attrs["exposure_time_s"] = 0.0
            f.attrs["mass_attenuation_m2_kg"] = 0.0
            f.attrs["tomography_angle_deg"] = 0.0
            f.create_dataset(PRODUCT_INDEXES, data=np.arange(len(x_m), dtype=np.int64))
            f.create_dataset(PRODUCT_X, data=x_m)
            f.create_dataset(PRODUCT_Y, data=y_m)
            pr = f.create_dataset(PRODUCT_PROBE, data=product.probe)
            pr.attrs["pixel_width_m"] = ps
            pr.attrs["pixel_height_m"] = ps
            pr.attrs[PRODUCT_OPR] = product.opr_weights
            f.create_dataset(PRODUCT_OPR, data=product.opr_weights)
            ob = f.create_dataset(PRODUCT_OBJECT, data=product.object)
            ob.attrs["center_x_m"] = 0.0
            ob.attrs["center_y_m"] = 0.0
            ob.attrs["pixel_width_m"] = ps
            ob.attrs["pixel_height_m"] = ps
            f.create_dataset(PRODUCT_LAYERS, data=np.zeros(0, dtype=np.float64))
            f.create_dataset(PRODUCT_EPOCHS, data=np.asarray(product.loss_epochs,
                                                             dtype=np.int64))
            f.create_dataset(PRODUCT_LOSS[0], data=np.asarray(product.loss_history,
                                                              dtype=np.float64))
            if product.metadata:
                f.create_dataset(PRODUCT_PTYPINN, data=json.dumps(product.metadata,
                                                                  default=json_default))


# ------------------------------------------------------------------------------------------------
# ptychodus standard layout (diffraction.h5 + product-in.h5)


def _ptychodus_paths(path: Path) -> tuple[Path, Path]:
    """The diffraction file and its product file, from the directory or the diffraction file."""
    diffraction = path / PTYCHODUS_DIFFRACTION if path.is_dir() else path
    for name in PTYCHODUS_PRODUCTS:
        if (diffraction.parent / name).is_file():
            return diffraction, diffraction.parent / name
    raise ValueError(f"{diffraction}: a ptychodus diffraction file needs its product file (probe, "
                     f"positions, object) beside it: {' or '.join(PTYCHODUS_PRODUCTS)} in "
                     f"{diffraction.parent}")


def read_ptychodus(path: str | os.PathLike, lazy: bool | None = None) -> ScanData:
    """Read a scan in ptychodus's standard layout into :class:`ScanData`.

    ``path`` is the directory, or its ``diffraction.h5``; the product is ``product-in.h5``
    beside it (else ``product-out.h5``).  ``diffraction.h5``: ``/patterns (n, H, W)`` counts
    as measured (zero frequency at the centre), ``/indexes (n,)``, ``/bad_pixels (H, W)``
    (nonzero = bad) and the detector pixel size in ``/patterns@detector_pixel_{width,height}_m``.
    The product (:func:`read_product`) gives the probe, the object (read as the initial guess,
    ``object_guess``), the positions in its pixel frame (matched to the patterns by index),
    the photon energy and the detector distance.  The probe is not taken to be in photon units.

    ``lazy``: the patterns stay in the file and are read on demand (None: when they take at
    least :data:`~ptypinn.io.files.LAZY_MIN_BYTES`).
    """
    diffraction, product_path = _ptychodus_paths(Path(path))
    product = read_product(product_path)
    with open_hdf5(diffraction) as f:
        d = _dataset(f, PTYCHODUS_PATTERNS, diffraction)
        if d.shape is None or len(d.shape) != 3 or d.shape[0] == 0:
            _fail(diffraction, PTYCHODUS_PATTERNS, "patterns (n, H, W) with n >= 1", d.shape)
        if d.dtype.kind not in "iuf":
            _fail(diffraction, PTYCHODUS_PATTERNS, "real numeric patterns", d.dtype)
        _check_filters(d, diffraction, PTYCHODUS_PATTERNS)
        n, h, w = d.shape
        pixel = {k: (_attr_float(d, k, diffraction, PTYCHODUS_PATTERNS) if k in d.attrs else None)
                 for k in ("detector_pixel_width_m", "detector_pixel_height_m")}
        indexes = (_read(f, PTYCHODUS_INDEXES, diffraction).reshape(-1).astype(np.int64)
                   if PTYCHODUS_INDEXES in f else np.arange(n))
        if indexes.shape != (n,):
            _fail(diffraction, PTYCHODUS_INDEXES, f"{n} indexes (one per pattern)", indexes.shape)
        bad = None
        if PTYCHODUS_BAD_PIXELS in f:
            bad = _read(f, PTYCHODUS_BAD_PIXELS, diffraction) != 0
            if bad.shape != (h, w):
                _fail(diffraction, PTYCHODUS_BAD_PIXELS, f"shape ({h}, {w})", bad.shape)
        lazily = read_lazily(lazy, (n, h, w))
        if not lazily:
            check_memory(float(n * h * w) * d.dtype.itemsize,
                         f"{diffraction}: {PTYCHODUS_PATTERNS}")
    rows = HDF5Rows(diffraction, PTYCHODUS_PATTERNS, bad)
    counts: Any = LazyCounts((n, h, w), rows, f"{diffraction}: {PTYCHODUS_PATTERNS}")
    if not lazily:
        counts = counts[:]
        rows._file = None  # the whole array is read: let the file go

    # positions: the product's, matched to the patterns by index
    with open_hdf5(product_path) as f:
        pidx = (_read(f, PRODUCT_INDEXES, product_path).reshape(-1).astype(np.int64)
                if PRODUCT_INDEXES in f else np.arange(product.positions_px.shape[0]))
    where = {int(k): i for i, k in enumerate(pidx)}
    missing = [int(k) for k in indexes if int(k) not in where]
    if missing:
        raise ValueError(f"{product_path}: {PRODUCT_INDEXES}: no position for pattern index "
                         f"{missing[0]} of {diffraction} ({len(missing)} missing)")
    pos = product.positions_px[[where[int(k)] for k in indexes]]
    probe = product.probe[0] if product.probe.shape[0] == 1 else product.probe
    meta: dict[str, Any] = {
        "provenance": f"ptychodus:{diffraction.name}+{product_path.name}",
        "measurement": "counts",
        "probe_calibrated": False,
        "photon_energy_eV": product.photon_energy_eV,
        "detector_distance_m": product.detector_distance_m,
        "detector_pixel_size_m": pixel["detector_pixel_width_m"],
        "object_pixel_size_m": product.object_pixel_size_m,
        "positions_convention": "ptychodus product positions mapped into its object's frame",
    }
    try:
        return ScanData(counts=counts, positions_px=pos, probe=probe,
                        object_guess=product.object, bad_pixels=bad, meta=meta)
    except ValueError as e:
        if not str(e).startswith("positions_px"):
            raise ValueError(f"{diffraction}: {e}") from None
    # a window reaches the product object's edge: frame the positions on their own
    shift = frame_shift_px(pos, h)
    log.warning("%s: positions leave the object of %s by a fraction of a pixel; framing them "
                "on their own (shift %s px) without its object", diffraction, product_path.name,
                shift.tolist())
    meta["positions_shift_px"] = shift.tolist()
    try:
        return ScanData(counts=counts, positions_px=pos + shift, probe=probe, bad_pixels=bad,
                        meta=meta)
    except ValueError as e:
        raise ValueError(f"{diffraction}: {e}") from None


def write_ptychodus_diffraction(path: str | os.PathLike, scan: ScanData,
                                compression: str | None = "lzf") -> None:
    """Write ``scan``'s counts as ptychodus's ``diffraction.h5`` (atomically, chunk by chunk):
    ``/patterns`` (float32 or uint32 when whole numbers), ``/indexes``, ``/bad_pixels`` and the
    detector pixel size attributes.  With :func:`write_product` (as ``product-in.h5`` beside
    it) this is ptychodus's standard layout, which :func:`read_ptychodus` reads."""
    path = Path(path)
    n, h, w = scan.counts.shape
    integer = all(np.array_equal(c, np.round(c)) and float(c.max()) < 2**31
                  for c in iter_chunks(scan.counts))
    dtype = np.uint32 if integer else np.float32
    px = float(scan.meta.get("detector_pixel_size_m") or 0.0)
    with atomic_path(path, suffix=".h5") as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset(PTYCHODUS_INDEXES, data=np.arange(n, dtype=np.int64))
            d = f.create_dataset(PTYCHODUS_PATTERNS, shape=(n, h, w), dtype=dtype,
                                 chunks=(1, h, w), compression=compression)
            start = 0
            for c in iter_chunks(scan.counts):
                d[start:start + len(c)] = c.astype(dtype)
                start += len(c)
            d.attrs["detector_pixel_width_m"] = px
            d.attrs["detector_pixel_height_m"] = px
            bad = (np.zeros((h, w), bool) if scan.bad_pixels is None else scan.bad_pixels)
            f.create_dataset(PTYCHODUS_BAD_PIXELS, data=bad)


# ------------------------------------------------------------------------------------------------
# the tike Siemens-star scan


def read_tike_siemens_npz_bz2(path: str | os.PathLike) -> ScanData:
    """Convert the tike test scan ``siemens-star-small.npz.bz2`` into :class:`ScanData`.

    ``data (1, n, N, N)`` counts with zero frequency at the corner -> ``fftshift`` over the last
    two axes; ``scan (1, n, 2)`` minimum corners of the probe box, columns ``(y, x)`` (tike's
    convention, checked on the data: see ``docs/formats.md``) -> ``+ N/2`` for window centres,
    then an integer shift so every window starts at pixel ``>= 1``; ``probe (1, 1, 1, m, N, N)``
    -> ``(N, N)`` (or ``(m, N, N)``), not calibrated to the counts.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        limit = available_memory_bytes()
        with bz2.open(path, "rb") as fh:
            chunks, total = [], 0
            while chunk := fh.read(1 << 24):
                total += len(chunk)
                if total > limit:
                    raise ValueError(f"{path}: decompressed content exceeds the "
                                     f"{limit / 2**30:.3g} GiB of memory available")
                chunks.append(chunk)
            raw = b"".join(chunks)
    except (OSError, EOFError, ValueError) as e:
        raise ValueError(f"{path}: not a readable bzip2 file ({e})") from None
    try:
        with np.load(_stdio.BytesIO(raw), allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("data", "scan", "probe") if k in z.files}
            missing = [k for k in ("data", "scan", "probe") if k not in z.files]
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise ValueError(f"{path}: not an NPZ inside the bzip2 stream ({e})") from None
    except ValueError as e:  # pickled objects refused
        raise ValueError(f"{path}: unreadable NPZ content ({e})") from None
    if missing:
        raise ValueError(f"{path}: key '{missing[0]}': missing (expected data, scan, probe)")
    data = arrays["data"]
    if data.ndim < 3 or data.shape[-1] != data.shape[-2]:
        _fail(path, "data", "(1, n, N, N) frames", data.shape)
    counts = np.fft.fftshift(data.reshape(-1, *data.shape[-2:]), axes=(-2, -1))
    n, n_px = counts.shape[0], counts.shape[-1]
    try:
        corners = np.asarray(arrays["scan"], dtype=np.float64).reshape(-1, 2)
    except (TypeError, ValueError):
        _fail(path, "scan", "(1, n, 2) real positions", f"{arrays['scan'].dtype}"
              f"{arrays['scan'].shape}")
    if corners.shape[0] != n:
        _fail(path, "scan", f"{n} positions (one per frame), (1, n, 2)", arrays["scan"].shape)
    pos = corners + n_px / 2
    shift = frame_shift_px(pos, n_px)
    pos = pos + shift
    if arrays["probe"].shape[-2:] != (n_px, n_px):
        _fail(path, "probe", f"(..., {n_px}, {n_px}) matching the frames", arrays["probe"].shape)
    probe = np.asarray(arrays["probe"]).reshape(-1, n_px, n_px)  # (modes, N, N)
    probe = probe[0] if probe.shape[0] == 1 else probe
    meta = {
        "provenance": f"tike test data {path.name}; {TIKE_COPYRIGHT} "
                      "(BSD-style licence: keep this notice with any copy)",
        "copyright": TIKE_COPYRIGHT,
        "measurement": "counts",
        "probe_calibrated": False,
        "seed": None,
        "positions_shift_px": shift.tolist(),
        "positions_convention": "tike scan = probe-box minimum corner (y, x); + N/2 + shift",
        "dc_convention": "fftshift applied (tike stores zero frequency at the corner)",
    }
    try:
        return ScanData(counts=counts.astype(np.float32), positions_px=pos, probe=probe,
                        meta=meta)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


# ------------------------------------------------------------------------------------------------
# inspection


def detect_hdf5_kind(path: str | os.PathLike
                     ) -> Literal["cxi", "product", "ptychodus-diffraction", "unknown-hdf5"]:
    """Which HDF5 layout a file holds, by content."""
    with open_hdf5(path) as f:
        if CXI_VERSION in f or _first(f, CXI_DATA) is not None:
            return "cxi"
        if all(p in f for p in (PRODUCT_X, PRODUCT_Y, PRODUCT_PROBE, PRODUCT_OBJECT)):
            return "product"
        if PTYCHODUS_PATTERNS in f and isinstance(f[PTYCHODUS_PATTERNS], h5py.Dataset):
            return "ptychodus-diffraction"
    return "unknown-hdf5"


def _shape(f: h5py.File, p: str | None) -> str:
    if p is None or p not in f:
        return "missing"
    d = f[p]
    return f"{d.shape} {d.dtype} at {p}"


def _cxi_count_statistics(f: h5py.File, data_path: str, path: Path,
                          patterns: int = CHUNK_PATTERNS) -> CountStatistics:
    """Statistics of the CXI frames ``(n, H, W)`` or ``(ny, nx, H, W)``, read ``patterns`` frames
    at a time through h5py (never all in memory), validated as :func:`read_cxi` validates them."""
    d = _dataset(f, data_path, path)
    per_row = math.prod(d.shape[1:-2])  # frames per index of the first axis

    def chunks() -> Iterator[np.ndarray]:
        step = max(1, patterns // max(per_row, 1))
        for start in range(0, d.shape[0], step):
            try:
                block = np.asarray(d[start:start + step])
            except (TypeError, ValueError, OSError) as e:
                raise ValueError(f"{data_path}: unreadable values ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0] if str(e) else ''})") from None
            yield block.reshape(-1, *block.shape[-2:])

    try:
        return count_statistics(chunks())
    except ValueError as e:
        raise ValueError(f"{path}: {data_path}: {e}") from None


def describe_hdf5(path: str | os.PathLike) -> list[str]:
    """A few readable lines about an HDF5 file (CXI, ptychodus product, or other)."""
    path = Path(path)
    kind = detect_hdf5_kind(path)
    if kind == "product":
        read_product(path)  # validates every dataset and attribute it describes
    with open_hdf5(path) as f:
        if kind == "cxi":
            data_path = _first(f, CXI_DATA)
            if data_path is None:
                raise ValueError(f"{path}: {CXI_DATA[0]}: missing (also looked at {CXI_DATA[1]});"
                                 " a CXI file without frames")
            shape = f[data_path].shape
            if shape is None or len(shape) not in (3, 4) or math.prod(shape[:-2]) == 0:
                _fail(path, data_path, "frames (n, H, W) with n >= 1", shape)
            version = _scalar(f, CXI_VERSION)
            tp = _first(f, CXI_TRANSLATION)
            vtext = "missing" if version is None else str(int(version))
            stats = _cxi_count_statistics(f, data_path, path)
            lines = [f"{path}: CXI file (cxi_version {vtext})",
                     f"frames: {_shape(f, _first(f, CXI_DATA))}",
                     f"photons per pattern: {stats.photons_per_pattern:.4g} measured (min "
                     f"{stats.totals.min():.4g}, max {stats.totals.max():.4g}); integer-valued: "
                     f"{stats.integer_valued}",
                     f"translations: {_shape(f, tp)}",
                     f"probe: {_shape(f, _first(f, CXI_PROBE))}"]
            if tp is not None:
                t = _read(f, tp, path, dtype=np.float64)
                if t.ndim < 2 or t.shape[-1] < 2 or t.size == 0:
                    _fail(path, tp, "translations (n, 3)", t.shape)
                t = t.reshape(-1, t.shape[-1])
                lines.append(f"translation extent x [{t[:, 0].min():.4g}, {t[:, 0].max():.4g}] m, "
                             f"y [{t[:, 1].min():.4g}, {t[:, 1].max():.4g}] m")
            try:
                e = _cxi_energy_eV(f, path)
            except ValueError as err:
                e = f"invalid ({err})"
            lines.append(f"photon energy: {e} eV; distance: {_scalar(f, CXI_DISTANCE)} m; "
                         f"detector pixel: {_scalar(f, CXI_X_PIXEL)} m")
            if CXI_MASK in f:
                lines.append(f"bad pixels (mask != 0): {int(np.count_nonzero(_read(f, CXI_MASK, path)))}")
            return lines
        if kind == "product":
            ob = f[PRODUCT_OBJECT]
            loss_path = _first(f, PRODUCT_LOSS)
            losses = ([] if loss_path is None else
                      _read(f, loss_path, path, dtype=np.float64, array=False).reshape(-1))
            energy = f.attrs.get("photon_energy_eV", f.attrs.get("probe_energy_eV"))
            return [
                f"{path}: ptychodus product '{_attr_str(f.attrs.get('name', ''))}'",
                f"positions: {f[PRODUCT_X].shape[0]} (metres)",
                f"object: {ob.shape} {ob.dtype}, pixel {ob.attrs.get('pixel_width_m')} m, centre "
                f"({ob.attrs.get('center_x_m')}, {ob.attrs.get('center_y_m')}) m",
                f"probe: {f[PRODUCT_PROBE].shape} {f[PRODUCT_PROBE].dtype}",
                f"photon energy: {energy} eV",
                f"loss history: {len(losses)} values"
                + (f", last {float(losses[-1]):.6g}" if len(losses) else ""),
            ]
        keys = list(f.keys())
    return [f"{path}: HDF5 file of unknown layout (neither CXI nor a ptychodus product)",
            "top-level entries: " + ", ".join(keys[:12]) + (" ..." if len(keys) > 12 else "")]
