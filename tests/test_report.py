"""Tests for ptypinn.report: figures come back as PNG bytes, without pyplot global state."""

from __future__ import annotations

import numpy as np
import pytest

from ptypinn.config import SimulationConfig
from ptypinn.data import ScanData
from ptypinn.report import (amplitude_panel_ranges, comparison_figure, comparison_png,
                            complex_image_png, scan_preview_png)
from ptypinn.simulate import simulate_scan

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def scan() -> ScanData:
    cfg = SimulationConfig(object_size_px=96, probe_size_px=32, probe_radius_px=8.0,
                           scan_step_px=8.0, photons_per_pattern=1e4)
    return simulate_scan(cfg)


def test_scan_preview_is_png(scan):
    png = scan_preview_png(scan)
    assert png.startswith(PNG_SIGNATURE) and len(png) > 10_000


def test_scan_preview_without_object_is_png(scan):
    bare = ScanData(counts=scan.counts, positions_px=scan.positions_px, probe=scan.probe)
    assert scan_preview_png(bare).startswith(PNG_SIGNATURE)


def test_complex_image_png(scan):
    assert complex_image_png(scan.object_true, "object").startswith(PNG_SIGNATURE)
    with pytest.raises(ValueError, match="obj"):
        complex_image_png(np.zeros((2, 3, 4), np.complex64), "bad")


# ------------------------------------------------------------------------------------------------
# comparison figure: no arm drawn black because of another arm's scale


def _arms_30x_apart() -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Two arms of one random object, amplitudes ~1.5 and ~45 (30x apart), and a scan mask."""
    rng = np.random.default_rng(0)
    amp = rng.uniform(0.3, 1.0, (40, 48))
    obj = amp * np.exp(1j * rng.uniform(-1.0, 1.0, amp.shape))
    mask = np.zeros(amp.shape, bool)
    mask[4:36, 6:44] = True
    return obj, {"pinn": 1.5 * obj, "ptychi": 45.0 * obj}, mask


def _own_span(img: np.ndarray) -> tuple[float, float]:
    v = img[np.isfinite(img)]
    return float(np.percentile(v, 1)), float(np.percentile(v, 99))


def test_amplitude_panel_ranges_fit_each_arm_without_truth():
    _, arms, mask = _arms_30x_apart()
    amps = [np.where(mask, np.abs(a), np.nan) for a in arms.values()]
    ranges = amplitude_panel_ranges(amps, truth_first=False)
    assert len(ranges) == 2
    for img, (lo, hi) in zip(amps, ranges):
        own_lo, own_hi = _own_span(img)
        width = own_hi - own_lo
        # covers its own data ...
        assert lo <= own_lo + 1e-9 and hi >= own_hi - 1e-9
        # ... and not much more: a shared range (0.45 .. 45) fails this for the 1.5 arm
        assert lo >= own_lo - 0.1 * width and hi <= own_hi + 0.1 * width
        inside = np.mean((img[mask] >= lo) & (img[mask] <= hi))
        assert inside >= 0.97


def test_amplitude_panel_ranges_with_truth_share_the_truths_range():
    truth, arms, _ = _arms_30x_apart()
    amps = [np.abs(truth)] + [np.abs(a) for a in arms.values()]
    ranges = amplitude_panel_ranges(amps, truth_first=True)
    lo, hi = np.percentile(np.abs(truth), [0.5, 99.5])
    np.testing.assert_allclose(ranges, [(lo, hi)] * 3)
    # degenerate images: no finite pixel, a constant image
    assert amplitude_panel_ranges([np.full((3, 3), np.nan)], False) == [(0.0, 1.0)]
    (c_lo, c_hi), = amplitude_panel_ranges([np.full((3, 3), 45.0)], False)
    assert c_lo < 45.0 < c_hi
    with pytest.raises(ValueError, match="amplitudes"):
        amplitude_panel_ranges([], False)


def _amplitude_images(fig, k: int):
    axes = fig.axes[:2 * k]  # subplots first (row-major), then the colorbars
    return [ax.images[0] for ax in axes[:k]], axes


def test_comparison_figure_scales_each_arm_on_its_own_without_truth():
    _, arms, mask = _arms_30x_apart()
    fig = comparison_figure(None, arms, mask, "no truth")
    images, axes = _amplitude_images(fig, 2)
    for im, arm, ax in zip(images, arms.values(), axes):
        lo, hi = im.get_clim()
        own_lo, own_hi = _own_span(np.abs(arm)[mask])
        assert lo == pytest.approx(own_lo) and hi == pytest.approx(own_hi)
        assert f"{hi:.3g}" in ax.get_title()  # the range is readable from the title
    assert "each panel on its own scale" in fig.get_suptitle()
    assert "each panel on its own scale" in axes[0].get_ylabel()
    n_colorbars = len(fig.axes) - 4
    assert n_colorbars == 3  # one per amplitude panel, one for the common phase row
    # phases share one range
    assert axes[2].images[0].get_clim() == axes[3].images[0].get_clim()
    assert comparison_png(None, arms, mask).startswith(PNG_SIGNATURE)


def test_comparison_figure_with_truth_clips_to_it_and_shows_the_mean():
    truth, arms, mask = _arms_30x_apart()
    fig = comparison_figure(truth, arms, mask)
    images, axes = _amplitude_images(fig, 3)
    lo, hi = np.percentile(np.abs(truth)[mask], [0.5, 99.5])
    for im in images:
        np.testing.assert_allclose(im.get_clim(), (lo, hi))
    for ax, img in zip(axes, [truth, *arms.values()]):
        assert f"mean amplitude {np.abs(img)[mask].mean():.3g}" in ax.get_title()
    assert "truth's scale" in fig.get_suptitle()
    assert len(set(axes[j].images[0].get_clim() for j in (3, 4, 5))) == 1
