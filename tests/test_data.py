"""ScanData validation (each bad input names the field) and the single normalization."""

import numpy as np
import pytest
import torch

from ptypinn.data import ScanData, amplitude_scale, calibrate_probe, normalized_amplitudes


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


def test_amplitude_scale_definition():
    counts = np.zeros((2, 4, 4))
    counts[0, 0, 0] = 16 * 9  # totals 144 and 16*4
    counts[1] += 4
    s = amplitude_scale(counts)
    assert s == pytest.approx(np.sqrt((144 + 64) / 2 / 16))
    x = normalized_amplitudes(counts, s)
    assert np.mean(np.sum(x**2, axis=(1, 2))) / 16 == pytest.approx(1.0)
    t = normalized_amplitudes(torch.tensor(counts), s)
    np.testing.assert_allclose(t.numpy(), x)
    with pytest.raises(ValueError, match="scale"):
        normalized_amplitudes(counts, 0.0)
    with pytest.raises(ValueError, match="counts"):
        amplitude_scale(np.zeros((2, 4, 4)))


def test_calibrate_probe_matches_dose():
    s = _scan(counts=np.full((3, 8, 8), 10.0, np.float32))
    c = calibrate_probe(s)
    assert np.sum(np.abs(c.probe) ** 2) == pytest.approx(640.0, rel=1e-5)
    assert c.meta["probe_calibrated"] is True
    assert calibrate_probe(c) is c
