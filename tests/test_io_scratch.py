"""Scratch arrays: in memory below the budget, memory-mapped above it, same contents."""

import numpy as np
import pytest

from ptypinn.io import scratch_array


def test_small_arrays_stay_in_memory_large_ones_are_memory_mapped(tmp_path):
    small = scratch_array((3, 4), np.complex64, max_ram_bytes=10**6)
    assert type(small) is np.ndarray and small.shape == (3, 4) and small.dtype == np.complex64
    big = scratch_array((50, 8, 8), np.complex64, max_ram_bytes=100, directory=str(tmp_path))
    assert isinstance(big, np.memmap) and big.shape == (50, 8, 8)
    values = (np.arange(50 * 64) * (1 + 2j)).astype(np.complex64).reshape(50, 8, 8)
    big[:] = values
    rows = np.array([3, 7, 49])
    np.testing.assert_array_equal(np.asarray(big[rows]), values[rows])
    assert not list(tmp_path.iterdir())  # the backing file is unlinked at once
    assert scratch_array((0, 8), np.float32, max_ram_bytes=0).shape == (0, 8)


def test_bad_shape_is_refused():
    with pytest.raises(ValueError, match="shape"):
        scratch_array((-1, 3), np.float32)
