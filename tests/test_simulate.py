"""Tests for ptypinn.simulate: seeds, dose, forward model against plain numpy, scans, probes."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from ptypinn.config import SimulationConfig
from ptypinn.simulate import (
    make_object,
    make_positions,
    make_probe,
    simulate_scan,
    simulate_train_test,
)

SMALL = dict(object_size_px=96, probe_size_px=32, probe_radius_px=8.0, scan_step_px=8.0)


def small_cfg(**kw) -> SimulationConfig:
    return SimulationConfig(**{**SMALL, **kw})


def numpy_expected_counts(obj, probe, positions, n):
    """Independent forward model: integer windows, numpy FFT, ortho norm, fftshift."""
    out = []
    for y, x in positions:
        y0, x0 = int(y) - n // 2, int(x) - n // 2
        assert y == int(y) and x == int(x)
        patch = obj[y0:y0 + n, x0:x0 + n].astype(np.complex128)
        far = np.fft.fftshift(np.fft.fft2(probe.astype(np.complex128) * patch, norm="ortho"))
        out.append(np.abs(far) ** 2)
    return np.stack(out)


# ------------------------------------------------------------------------------------------------
# seeds


def test_same_seed_same_scan_and_different_seed_differs():
    cfg = small_cfg(scan_kind="jittered", photons_per_pattern=1e4, seed=3)
    a, b = simulate_scan(cfg), simulate_scan(cfg)
    np.testing.assert_array_equal(a.counts, b.counts)
    np.testing.assert_array_equal(a.positions_px, b.positions_px)
    np.testing.assert_array_equal(a.object_true, b.object_true)
    c = simulate_scan(cfg, seed=4)
    assert not np.array_equal(a.object_true, c.object_true)
    assert not np.array_equal(a.positions_px, c.positions_px)
    assert a.meta["seed"] == 3 and c.meta["seed"] == 4


def test_streams_are_independent_object_unchanged_by_scan_kind():
    a = simulate_scan(small_cfg(scan_kind="raster", photons_per_pattern=None))
    b = simulate_scan(small_cfg(scan_kind="random", n_random_positions=20,
                                photons_per_pattern=None))
    np.testing.assert_array_equal(a.object_true, b.object_true)


def test_train_test_objects_differ_probe_shared():
    cfg = small_cfg(photons_per_pattern=1e5, seed=7)
    train, test = simulate_train_test(cfg)
    assert not np.allclose(train.object_true, test.object_true)
    np.testing.assert_array_equal(train.probe, test.probe)
    assert (train.meta["seed"], test.meta["seed"]) == (7, 8)
    assert train.meta["split"] == "train" and test.meta["split"] == "test"
    assert test.meta["train_seed"] == 7 and test.meta["test_seed"] == 8
    np.testing.assert_array_equal(train.object_true, simulate_scan(cfg).object_true)


# ------------------------------------------------------------------------------------------------
# dose and noise


def test_dose_mean_total_counts_and_integer_counts():
    photons = 2e4
    scan = simulate_scan(small_cfg(photons_per_pattern=photons, scan_step_px=4.0))
    totals = scan.counts.sum(axis=(1, 2), dtype=np.float64)
    assert abs(totals.mean() / photons - 1) < 0.02
    np.testing.assert_array_equal(scan.counts, np.round(scan.counts))
    assert scan.meta["noise"] == "poisson" and scan.meta["photons_per_pattern"] == photons
    assert scan.meta["probe_calibrated"] is True
    # Poisson: the variance of the count in a bright pixel matches its expectation
    expected = numpy_expected_counts(scan.object_true, scan.probe, scan.positions_px, 32)
    z = (scan.counts - expected)[expected > 50] / np.sqrt(expected[expected > 50])
    assert abs(z.mean()) < 0.05 and abs(z.std() - 1) < 0.05


def test_noise_free_counts_equal_numpy_forward_model():
    cfg = small_cfg(photons_per_pattern=None, object_kind="grf")
    scan = simulate_scan(cfg)
    assert scan.meta["noise"] == "none" and scan.meta["photons_per_pattern"] is None
    expected = numpy_expected_counts(scan.object_true, scan.probe, scan.positions_px, 32)
    np.testing.assert_allclose(scan.counts, expected, rtol=1e-4, atol=1e-5 * expected.max())
    # nominal photon scale of a noise-free scan: 1e9 expected photons per pattern on average
    assert abs(expected.sum(axis=(1, 2)).mean() / 1e9 - 1) < 1e-4


def test_given_object_is_used():
    rng = np.random.default_rng(0)
    obj = (0.5 + 0.5 * rng.random((80, 80))) * np.exp(1j * rng.random((80, 80)))
    scan = simulate_scan(small_cfg(photons_per_pattern=None), obj=obj)
    assert scan.object_true.shape == (80, 80) and scan.meta["object_kind"] == "given"
    np.testing.assert_allclose(scan.object_true, obj.astype(np.complex64))
    with pytest.raises(ValueError, match="obj"):
        simulate_scan(small_cfg(), obj=obj[None])


# ------------------------------------------------------------------------------------------------
# scan positions


@pytest.mark.parametrize("kind", ["raster", "jittered", "random", "fermat"])
def test_positions_inside_frame(kind):
    cfg = small_cfg(scan_kind=kind, scan_jitter_px=3.0, n_random_positions=200)
    pos = make_positions(cfg, (96, 110), np.random.default_rng(1))
    assert pos.dtype == np.float64 and pos.ndim == 2 and pos.shape[1] == 2 and len(pos) > 10
    start = pos - 16
    assert start.min() >= 0
    assert (start[:, 0] + 32 + 1).max() <= 96 and (start[:, 1] + 32 + 1).max() <= 110


def test_fermat_density_matches_step():
    cfg = small_cfg(object_size_px=256, scan_kind="fermat", scan_step_px=6.0)
    pos = make_positions(cfg, (256, 256), np.random.default_rng(0))
    area = (256 - 32 - 1) ** 2
    assert abs(len(pos) * 36.0 / area - 1) < 0.1


def test_raster_step_equals_requested():
    cfg = small_cfg(object_size_px=128, scan_step_px=7.0)
    pos = make_positions(cfg, (128, 128), np.random.default_rng(0))
    for axis in (0, 1):
        diffs = np.diff(np.unique(pos[:, axis]))
        np.testing.assert_allclose(diffs, 7.0)
    assert np.all(pos == np.round(pos))


def test_overlap_fraction_sets_step():
    cfg = small_cfg(object_size_px=128, overlap_fraction=0.6)
    pos = make_positions(cfg, (128, 128), np.random.default_rng(0))
    np.testing.assert_allclose(np.diff(np.unique(pos[:, 1])), 2 * 8.0 * (1 - 0.6))


def test_object_too_small_for_window_raises():
    with pytest.raises(ValueError, match="object_shape"):
        make_positions(small_cfg(), (32, 32), np.random.default_rng(0))


# ------------------------------------------------------------------------------------------------
# objects


@pytest.mark.parametrize("kind", ["lines", "grf", "siemens_star"])
def test_object_amplitude_range_and_nonzero_phase(kind):
    cfg = small_cfg(object_kind=kind, object_amplitude_range=(0.2, 0.9),
                    object_phase_max_rad=1.5)
    obj = make_object(cfg, np.random.default_rng(0))
    assert obj.dtype == np.complex64 and obj.shape == (96, 96)
    amp, phase = np.abs(obj), np.angle(obj)
    assert amp.min() >= 0.2 - 1e-5 and amp.max() <= 0.9 + 1e-5
    assert amp.max() - amp.min() > 0.3
    assert phase.min() >= -1e-5 and phase.max() <= 1.5 + 1e-5
    assert phase.std() > 0.1


def test_image_object_needs_array_and_follows_image():
    cfg = small_cfg(object_kind="image", image_path="unused.png")
    with pytest.raises(ValueError, match="image"):
        make_object(cfg, np.random.default_rng(0))
    img = np.tile(np.linspace(0, 255, 50), (40, 1))  # brightness increasing along x
    obj = make_object(cfg, np.random.default_rng(0), image=img)
    assert obj.shape == (96, 96)
    assert np.abs(obj)[:, -1].mean() > np.abs(obj)[:, 0].mean() + 0.5
    assert np.angle(obj)[:, -1].mean() > 0.9
    with pytest.raises(ValueError, match="image"):
        make_object(cfg, np.random.default_rng(0), image=np.zeros((3, 4, 5, 6)))


def test_image_train_test_use_disjoint_halves():
    img = np.zeros((64, 64))
    img[:32, ::8] = 1.0  # top half: vertical stripes (vary along x)
    img[32::8, :] = 1.0  # bottom half: horizontal stripes (vary along y)
    cfg = small_cfg(object_kind="image", image_path="unused.png", photons_per_pattern=None)
    train, test = simulate_train_test(cfg, image=img)
    a_train, a_test = np.abs(train.object_true), np.abs(test.object_true)
    assert a_train.std(axis=1).mean() > 10 * a_train.std(axis=0).mean()
    assert a_test.std(axis=0).mean() > 10 * a_test.std(axis=1).mean()


# ------------------------------------------------------------------------------------------------
# probes


def _half_max_radius_along_row(probe: np.ndarray) -> float:
    """Linear-interpolated distance from the centre pixel where |P| crosses 0.5 * max."""
    n = probe.shape[-1]
    row = np.abs(probe[n // 2, n // 2:]) / np.abs(probe).max()
    i = int(np.argmax(row < 0.5))
    return (i - 1) + (row[i - 1] - 0.5) / (row[i - 1] - row[i])


def test_disk_probe_half_max_radius():
    for n, r in ((32, 8.0), (64, 16.0), (64, 11.5)):
        p = make_probe(small_cfg(probe_size_px=n, probe_radius_px=r, object_size_px=130))
        assert p.dtype == np.complex64 and p.shape == (n, n)
        assert abs(_half_max_radius_along_row(p) - r) < 0.6
        area = float((np.abs(p) >= 0.5 * np.abs(p).max()).sum())
        assert abs(math.sqrt(area / math.pi) - r) < 0.6
        assert np.abs(p)[0, 0] < 1e-3


def test_gaussian_probe_is_analytic():
    p = make_probe(small_cfg(probe_kind="gaussian", probe_size_px=64, probe_radius_px=10.0,
                             object_size_px=130))
    yy, xx = np.mgrid[0:64, 0:64] - 32
    np.testing.assert_allclose(np.abs(p), np.exp(-(yy**2 + xx**2) / 100.0), atol=1e-6)


def test_defocused_disk_probe_size_and_curved_phase():
    cfg = small_cfg(probe_kind="defocused_disk", probe_size_px=64, probe_radius_px=16.0,
                    probe_defocus_rad=20.0, object_size_px=130)
    p = make_probe(cfg)
    inside = float((np.abs(p) >= 0.5).sum())
    assert 0.7 < math.sqrt(inside / math.pi) / 16.0 < 1.2
    # curved wavefront: the far-field intensity is a disk of radius U = N D / (pi r) ~ 25.5 px
    far = np.abs(np.fft.fftshift(np.fft.fft2(p))) ** 2
    bright = far >= 0.25 * far.max()
    assert abs(math.sqrt(bright.sum() / math.pi) - 64 * 20 / (math.pi * 16)) < 2.5
    with pytest.raises(ValueError, match="probe_defocus_rad"):
        make_probe(dataclasses.replace(cfg, probe_defocus_rad=0.5))


def test_file_probe_validated_and_scaled_only():
    rng = np.random.default_rng(0)
    given = (rng.random((32, 32)) + 1j * rng.random((32, 32))).astype(np.complex64)
    cfg = small_cfg(probe_kind="file", probe_file="unused.npy", photons_per_pattern=None)
    np.testing.assert_array_equal(make_probe(cfg, given), given)
    with pytest.raises(ValueError, match="probe_from_file"):
        make_probe(cfg, given[:16])
    with pytest.raises(ValueError, match="probe_from_file"):
        make_probe(cfg)
    scan = simulate_scan(cfg, probe_from_file=given)
    ratio = scan.probe / given
    np.testing.assert_allclose(ratio, ratio[0, 0], rtol=1e-5)
    assert abs(ratio[0, 0].imag) < 1e-6 * abs(ratio[0, 0])
