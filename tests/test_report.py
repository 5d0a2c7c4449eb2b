"""Tests for ptypinn.report: figures come back as PNG bytes, without pyplot global state."""

from __future__ import annotations

import numpy as np
import pytest

from ptypinn.config import SimulationConfig
from ptypinn.data import ScanData
from ptypinn.report import complex_image_png, scan_preview_png
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
