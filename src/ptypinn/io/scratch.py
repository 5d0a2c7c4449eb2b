"""Scratch arrays: in memory when small, else memory-mapped on an anonymous temporary file.

Used for caches that grow with the scan (e.g. the patch crops that inference keeps for phase
synchronization, :func:`ptypinn.pinn.infer.reconstruct`), so that resident memory stays bounded
whatever the number of patterns.
"""

from __future__ import annotations

import math
import shutil
import tempfile

import numpy as np

from ptypinn.io.files import available_memory_bytes

__all__ = ["scratch_array", "DEFAULT_SCRATCH_RAM_BYTES"]

DEFAULT_SCRATCH_RAM_BYTES = 2**30
"""Largest scratch array kept in memory (1 GiB), unless a quarter of the available memory is
less."""


def scratch_array(shape: tuple[int, ...], dtype: np.dtype | type,
                  max_ram_bytes: int | None = None, directory: str | None = None) -> np.ndarray:
    """An uninitialized array of ``shape`` and ``dtype``.

    Parameters
    ----------
    shape, dtype : of the array.
    max_ram_bytes : int, optional
        Arrays up to this size are ordinary in-memory arrays; larger ones are a
        :class:`numpy.memmap` on a temporary file that is unlinked at once (its disk space is
        freed when the array is garbage-collected).  Default: the smaller of
        :data:`DEFAULT_SCRATCH_RAM_BYTES` and a quarter of the available memory.
    directory : str, optional
        Where the temporary file goes (default: :func:`tempfile.gettempdir`).

    Raises
    ------
    ValueError
        When a memory-mapped array would not fit on the disk holding ``directory``.
    """
    dtype = np.dtype(dtype)
    shape = tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"shape: expected non-negative sizes, got {shape}")
    n_bytes = math.prod(shape) * dtype.itemsize
    if max_ram_bytes is None:
        max_ram_bytes = min(DEFAULT_SCRATCH_RAM_BYTES, available_memory_bytes() // 4)
    if n_bytes == 0 or n_bytes <= max_ram_bytes:
        return np.empty(shape, dtype=dtype)
    where = directory or tempfile.gettempdir()
    free = shutil.disk_usage(where).free
    if n_bytes > free:
        raise ValueError(f"scratch array: needs {n_bytes / 2**30:.3g} GiB, more than the "
                         f"{free / 2**30:.3g} GiB free in {where}")
    with tempfile.TemporaryFile(dir=where, prefix="ptypinn-scratch-") as f:
        # the map keeps its own handle: the file (already unlinked) lives as long as the array
        return np.memmap(f, dtype=dtype, mode="w+", shape=shape)
