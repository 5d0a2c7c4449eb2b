"""All file access of the package (nothing outside ``ptypinn.io`` touches files).

* :mod:`ptypinn.io.files` -- atomic writes; YAML, JSON, NPZ, safetensors, bytes, images,
  32-bit TIFF.
* :mod:`ptypinn.io.scans` -- scan formats: detection, the ``{format: reader}`` table, canonical and
  reference NPZ.
* :mod:`ptypinn.io.hdf5` -- CXI, ptychodus product files and standard layout
  (``diffraction.h5`` + ``product-in.h5``), the tike Siemens-star scan, HDF5 compression
  filters (``hdf5plugin``), lazy HDF5 frames.
* :mod:`ptypinn.io.scratch` -- scratch arrays, memory-mapped on a temporary file when large.

The names below are re-exported so callers write ``from ptypinn import io; io.read_scan(...)``.
This package imports only :mod:`ptypinn.data` and :mod:`ptypinn.config` from the rest of
ptypinn.
"""

from ptypinn.io.files import (
    LAZY_MIN_BYTES,
    TMP_PREFIX,
    WriteError,
    atomic_path,
    available_memory_bytes,
    check_memory,
    check_output,
    clean_orphans,
    json_object,
    load_npy,
    read_json_object,
    append_csv_history,
    read_checkpoint,
    read_text,
    json_default,
    load_config,
    load_npz,
    read_bytes,
    read_image,
    read_json,
    read_safetensors,
    read_tiff,
    read_yaml,
    save_npz,
    write_bytes,
    write_json,
    write_safetensors,
    write_text,
    write_tiff,
    write_yaml,
)
from ptypinn.io.hdf5 import (
    HDF5Rows,
    Product,
    describe_hdf5,
    detect_hdf5_kind,
    read_cxi,
    read_product,
    read_ptychodus,
    read_tike_siemens_npz_bz2,
    register_filters,
    unavailable_filters,
    write_cxi,
    write_product,
    write_ptychodus_diffraction,
)
from ptypinn.io.scratch import scratch_array
from ptypinn.io.scans import (
    SCAN_FORMAT,
    NpzRows,
    detect_format,
    read_probe,
    read_reference_npz,
    read_scan,
    read_scan_summary,
    write_scan,
)

__all__ = [
    "TMP_PREFIX", "WriteError", "available_memory_bytes", "check_memory", "check_output",
    "clean_orphans", "json_object", "load_npy", "read_json_object",
    "append_csv_history", "read_checkpoint", "read_text",
    "atomic_path", "json_default", "load_config", "load_npz", "read_bytes", "read_image", "read_json",
    "read_safetensors", "read_yaml", "save_npz", "write_bytes", "write_json", "write_safetensors",
    "write_text", "write_yaml", "read_tiff", "write_tiff",
    "Product", "describe_hdf5", "detect_hdf5_kind", "read_cxi", "read_product",
    "read_tike_siemens_npz_bz2", "write_cxi", "write_product",
    "SCAN_FORMAT", "detect_format", "read_probe", "read_reference_npz", "read_scan",
    "read_scan_summary", "write_scan", "scratch_array",
    "LAZY_MIN_BYTES", "HDF5Rows", "NpzRows", "read_ptychodus", "write_ptychodus_diffraction",
    "register_filters", "unavailable_filters",
]
