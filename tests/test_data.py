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
