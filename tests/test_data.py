"""ScanData validation (each bad input names the field) and the single normalization."""

import numpy as np
import pytest

from ptypinn.data import FRAME_MARGIN_PX, ScanData, calibrate_probe, frame_shift_px


def _scan(**kw):
    base = dict(counts=np.ones((3, 8, 8), np.float32),
                positions_px=np.array([[4.0, 4.0], [5.0, 6.0], [6.0, 6.5]]),
                probe=np.ones((8, 8), np.complex64), object_true=np.ones((16, 16), np.complex64))
    base.update(kw)
    return ScanData(**base)


@pytest.mark.parametrize("kw, field", [
    (dict(counts=np.full((3, 8, 8), np.nan)), "counts"),
    (dict(counts=-np.ones((3, 8, 8))), "counts"),
    (dict(counts=np.ones((3, 8, 8)) * np.inf), "counts"),
    (dict(positions_px=np.zeros((2, 2)) + 4), "positions_px"),
    (dict(positions_px=np.array([[3.0, 4.0], [5, 6], [6, 6]])), "positions_px"),
    (dict(positions_px=np.array([[4.0, 4.0], [5, 6], [12.5, 6]])), "positions_px"),
    (dict(probe=np.ones((16, 16))), "probe"),
    (dict(probe=np.zeros((8, 8))), "probe"),
    (dict(counts=np.ones((3, 8, 6))), "counts"),
    (dict(bad_pixels=np.zeros((4, 4), bool)), "bad_pixels"),
    (dict(object_true=np.ones((3, 16, 16))), "object_true"),
    (dict(meta={"x": object()}), "meta"),
])
def test_bad_input_names_field(kw, field):
    with pytest.raises(ValueError, match=rf"^{field}: expected"):
        _scan(**kw)


def test_valid_scan_casts_and_frames():
    s = _scan(counts=np.ones((3, 8, 8), np.float64) * 2)
    assert s.counts.dtype == np.float32 and s.positions_px.dtype == np.float64
    assert s.object_shape_px == (16, 16)
    assert s.photons_per_pattern == pytest.approx(128.0)
    no_obj = _scan(object_true=None)
    # the smallest frame holding every window plus one pixel of bilinear margin
    assert no_obj.object_shape_px == (11, 12)
    assert s.subset(slice(0, 2)).n_patterns == 2


def test_frame_shift_puts_first_window_at_the_margin():
    n = 8
    pos = np.array([[-3.25, 10.0], [2.5, -7.0], [20.0, 4.0]])
    shift = frame_shift_px(pos, n)
    assert np.all(shift == np.round(shift))  # whole pixels: sub-pixel phases stay as measured
    starts = pos + shift - n / 2
    # first window on each axis starts in [margin, margin + 1): no pixel wasted, none cut
    assert np.all(starts.min(axis=0) >= FRAME_MARGIN_PX)
    assert np.all(starts.min(axis=0) < FRAME_MARGIN_PX + 1)
    s = _scan(object_true=None)
    assert np.array_equal(frame_shift_px(s.positions_px + shift[None], 8),
                          frame_shift_px(s.positions_px, 8) - shift)


def test_calibrate_probe_matches_dose():
    s = _scan(counts=np.full((3, 8, 8), 10.0, np.float32))
    c = calibrate_probe(s)
    assert np.sum(np.abs(c.probe) ** 2) == pytest.approx(640.0, rel=1e-5)
    assert c.meta["probe_calibrated"] is True
    assert calibrate_probe(c) is c


def test_window_outside_needs_the_extra_pixel_only_on_fractional_axes():
    from ptypinn.data import window_outside

    # start (8, 7.5) of an 8-window in a 16x16 frame: y ends at 16 exactly, x needs pixel 16
    assert window_outside(np.array([[12.0, 11.5]]), 8, (16, 16)) is None
    assert window_outside(np.array([[12.0, 12.5]]), 8, (16, 16)) == (0, 1)
    assert window_outside(np.array([[12.5, 11.0]]), 8, (16, 16)) == (0, 0)
    assert window_outside(np.array([[12.0, 12.5]]), 8, (16, 16), bilinear_margin=False,
                          tol_px=0.5) is None


# ------------------------------------------------------------------------------------------------
# lazy counts (rows read on demand)


def _lazy(arr, calls=None):
    from ptypinn.data import LazyCounts

    def read(rows):
        assert np.all(np.diff(rows) > 0)  # sorted, unique: what h5py needs
        if calls is not None:
            calls.append(rows.copy())
        return arr[rows]

    return LazyCounts(arr.shape, read, "test")


def test_lazy_counts_index_like_the_array():
    rng = np.random.default_rng(0)
    arr = rng.poisson(3.0, (9, 8, 8)).astype(np.uint16)  # stored as integers, read as float32
    lazy = _lazy(arr)
    ref = arr.astype(np.float32)
    assert lazy.shape == (9, 8, 8) and len(lazy) == 9 and lazy.dtype == np.float32
    for key in (3, -1, slice(2, 7), slice(None, None, 3), np.array([5, 1, 5, 0]), [8, -9],
                np.arange(9) % 2 == 0, (slice(1, 4), 2, slice(None))):
        got = lazy[key]
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, ref[key])
    np.testing.assert_array_equal(np.asarray(lazy), ref)
    with pytest.raises(IndexError, match="counts index"):
        lazy[np.array([9])]
    view = lazy.view(np.array([7, 2, 4]))
    np.testing.assert_array_equal(view[1:], ref[[2, 4]])
    np.testing.assert_array_equal(lazy.scaled(2.5)[[0, 3]], ref[[0, 3]] * np.float32(2.5))


def test_lazy_counts_read_only_the_rows_asked_for():
    calls = []
    lazy = _lazy(np.ones((100, 4, 4), np.float32), calls)
    lazy[np.array([40, 3, 40])]
    assert [c.tolist() for c in calls] == [[3, 40]]


def test_lazy_scan_validates_in_chunks_and_names_the_bad_pattern():
    arr = np.ones((600, 8, 8), np.float32)
    arr[413, 2, 2] = np.nan
    with pytest.raises(ValueError, match=r"^counts: expected finite values, got NaN/Inf in "
                                         r"pattern 413"):
        _scan(counts=_lazy(arr), positions_px=np.full((600, 2), 5.0))
    arr[413, 2, 2] = -1
    with pytest.raises(ValueError, match=r"^counts: expected values >= 0, .* pattern 413"):
        _scan(counts=_lazy(arr), positions_px=np.full((600, 2), 5.0))


def test_lazy_scan_statistics_subset_and_photon_units_match_the_array():
    from ptypinn.data import LazyCounts, count_sums, pattern_totals, to_photon_units, torch_counts

    rng = np.random.default_rng(1)
    arr = rng.poisson(4.0, (3, 8, 8)).astype(np.float32)
    bad = np.zeros((8, 8), bool)
    bad[0, 1] = True
    eager, lazy = _scan(counts=arr, bad_pixels=bad), _scan(counts=_lazy(arr), bad_pixels=bad)
    assert isinstance(lazy.counts, LazyCounts)
    assert lazy.photons_per_pattern == pytest.approx(eager.photons_per_pattern, rel=1e-12)
    np.testing.assert_allclose(pattern_totals(lazy), pattern_totals(eager), rtol=1e-12)
    np.testing.assert_allclose(count_sums(lazy.counts), arr.sum(axis=(1, 2), dtype=np.float64))
    sub = lazy.subset(np.array([2, 0]))
    assert isinstance(sub.counts, LazyCounts)
    np.testing.assert_array_equal(sub.counts[:], arr[[2, 0]])
    a = to_photon_units(eager, "bright-free-space", photons_per_pattern=1000.0)
    b = to_photon_units(lazy, "bright-free-space", photons_per_pattern=1000.0)
    assert isinstance(b.counts, LazyCounts)
    np.testing.assert_allclose(b.counts[:], a.counts, rtol=1e-6)
    np.testing.assert_allclose(b.probe, a.probe, rtol=1e-6)
    assert pattern_totals(b).mean() == pytest.approx(1000.0)  # bad pixels filled in
    # batches as tensors: (B, C) index tensors give (B, C, H, W), as indexing a CPU tensor does
    import torch

    idx = torch.tensor([[2, 0], [1, 1]])
    np.testing.assert_array_equal(torch_counts(lazy.counts)[idx].numpy(),
                                  torch_counts(eager.counts)[idx].numpy())
