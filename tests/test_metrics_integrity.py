"""Measurement integrity of ptypinn.metrics: phase scores with the truth's own range.  Expected
values come from scikit-image, never from the code under test."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage
from skimage.metrics import structural_similarity

from ptypinn import metrics as M

N = 128


def _field(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    f = ndimage.gaussian_filter(rng.standard_normal((n, n)), sigma, mode="wrap")
    return f / f.std()


def _phase_truth(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Truth with a structured phase spanning exactly [0, 1] rad (extremes all over the image)."""
    yy, xx = np.mgrid[0:N, 0:N].astype(np.float64)
    phase = 0.5 + 0.5 * np.sin(2 * np.pi * yy / 32) * np.cos(2 * np.pi * xx / 32)
    amp = 1.0 + 0.1 * _field(rng, N, 3.0)
    return amp * np.exp(1j * phase), phase


def _inner_ssim(t: np.ndarray, x: np.ndarray, data_range: float, inset: int = 3) -> float:
    """scikit-image SSIM on the image minus an ``inset`` border (evaluate's mask shrink)."""
    sl = (slice(inset, -inset), slice(inset, -inset))
    return structural_similarity(t[sl], x[sl], data_range=data_range)


# ----------------------------------------------------------------------------- phase data range

def test_phase_data_range_is_the_truths_range_and_recorded():
    truth, phase = _phase_truth(np.random.default_rng(0))
    res = M.evaluate(truth * np.exp(0.3j), truth)
    assert res["phase"]["data_range"] == pytest.approx(1.0, abs=2e-3)
    amp = np.abs(truth)[3:-3, 3:-3]
    assert res["amplitude"]["data_range"] == pytest.approx(float(np.ptp(amp)), rel=0.05)


def test_flat_phase_guess_scores_low():
    truth, phase = _phase_truth(np.random.default_rng(1))
    flat = np.abs(truth) * np.exp(0.5j)                      # right amplitude, no phase structure
    res = M.evaluate(flat, truth)
    assert res["phase"]["ssim"] < 0.3
    # the 2 pi range it replaces would have called this guess decent
    assert _inner_ssim(phase, np.full_like(phase, 0.5), 2 * math.pi) > 0.5
    assert abs(res["phase"]["pearson"]) < 0.01


def test_phase_noise_scores_lower_than_with_a_two_pi_range():
    rng = np.random.default_rng(2)
    truth, phase = _phase_truth(rng)
    noise = rng.normal(0.0, 0.1, truth.shape)
    res = M.evaluate(truth * np.exp(1j * noise), truth)
    noisy_phase = phase + noise
    expected = _inner_ssim(phase, noisy_phase, float(np.ptp(phase)))
    old = _inner_ssim(phase, noisy_phase, 2 * math.pi)
    assert expected < old - 0.1                                # the ordering the change implies
    assert res["phase"]["ssim"] == pytest.approx(expected, abs=0.02)
    assert res["phase"]["ssim"] < old - 0.1
    assert res["phase"]["psnr"] == pytest.approx(10 * math.log10(1.0 / 0.01), abs=0.3)


def test_flat_truth_phase_uses_the_floor():
    rng = np.random.default_rng(3)
    truth = (1.0 + 0.2 * _field(rng, N, 3.0)).astype(np.complex128)   # pure amplitude object
    res = M.evaluate(truth * np.exp(1j * rng.normal(0, 0.01, truth.shape)), truth)
    assert res["phase"]["data_range"] == M.PHASE_RANGE_FLOOR_RAD
    assert res["phase"]["psnr"] == pytest.approx(
        10 * math.log10(M.PHASE_RANGE_FLOOR_RAD ** 2 / 1e-4), abs=0.3)
    assert M.truth_data_range(np.zeros((8, 8)), quantity="phase") == M.PHASE_RANGE_FLOOR_RAD
    assert M.truth_data_range(np.full((8, 8), 0.7)) == pytest.approx(0.7)   # amplitude rule
    with pytest.raises(ValueError, match="quantity"):
        M.truth_data_range(np.ones((8, 8)), quantity="intensity")


def test_truth_phase_across_the_pi_cut_is_not_wrapped():
    """A truth whose phase straddles +-pi has a ~0.6 rad range, not ~2 pi."""
    rng = np.random.default_rng(4)
    truth, phase = _phase_truth(rng)
    truth = truth * np.exp(1j * (math.pi - 0.8))               # phase in [pi - 0.8, pi + 0.2]
    res = M.evaluate(truth, truth)
    assert res["phase"]["data_range"] == pytest.approx(1.0, abs=2e-3)
    assert res["phase"]["ssim"] == pytest.approx(1.0, abs=1e-6)
