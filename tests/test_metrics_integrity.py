"""Measurement integrity of ptypinn.metrics: phase scores with the truth's own range, and the FRC
on the apodized interior of the mask.  Expected values come from scikit-image or from brute
force, never from the code under test."""

from __future__ import annotations

import itertools
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


# ----------------------------------------------------------------------------- FRC interior

def _brute_largest(mask: np.ndarray, max_aspect: float) -> int:
    h, w = mask.shape
    best = -1
    for y0, x0 in itertools.product(range(h), range(w)):
        for y1, x1 in itertools.product(range(y0 + 1, h + 1), range(x0 + 1, w + 1)):
            hh, ww = y1 - y0, x1 - x0
            if ww <= max_aspect * hh and hh <= max_aspect * ww and mask[y0:y1, x0:x1].all():
                best = max(best, hh * ww)
    return best


def test_largest_rectangle_matches_brute_force():
    rng = np.random.default_rng(5)
    for _ in range(60):
        mask = rng.random((rng.integers(1, 8), rng.integers(1, 8))) > rng.uniform(0.05, 0.5)
        rect = M._largest_rectangle(mask, 2.0)
        best = _brute_largest(mask, 2.0)
        if rect is None:
            assert best == -1
            continue
        assert mask[rect].all()
        assert (rect[0].stop - rect[0].start) * (rect[1].stop - rect[1].start) == best


def _irregular_mask(n: int) -> np.ndarray:
    yy, xx = np.mgrid[0:n, 0:n]
    r = np.hypot(yy - n / 2, xx - n / 2 + 2)
    theta = np.arctan2(yy - n / 2, xx - n / 2 + 2)
    return r < 0.375 * n + 0.05 * n * np.cos(3 * theta)      # trefoil-like disc


def test_frc_interior_region_is_inside_the_eroded_mask():
    rng = np.random.default_rng(6)
    img = _field(rng, 160, 1.5) + 0j
    mask = _irregular_mask(160)
    res = M.frc_interior(img, img, mask)
    y0, y1, x0, x1 = res["region"]
    eroded = ndimage.binary_erosion(mask, np.ones((9, 9), bool))
    assert eroded[y0:y1, x0:x1].all() and min(y1 - y0, x1 - x0) >= 60
    assert max(y1 - y0, x1 - x0) <= 2 * min(y1 - y0, x1 - x0)
    assert res["margin_px"] == M.FRC_INTERIOR_MARGIN_PX
    np.testing.assert_allclose(res["frc"][1:], 1.0, atol=1e-9)
    tiny = np.zeros((160, 160), bool)
    tiny[50:60, 50:90] = True                                  # 10 px tall: 2 px after erosion
    assert M.frc_interior(img, img, tiny) is None


@pytest.mark.parametrize("seed", [0, 1])
def test_frc_separates_blurred_from_sharp_under_an_irregular_mask(seed):
    """A sigma = 2 px blurred copy resolves clearly less than a sharp one (same noise on both).

    The object has a large-scale phase variation (as reconstructions of real objects do), so the
    hard mask edge of the old preparation (mask bounding box, zero off the mask) carried strong
    correlated high frequencies and called the blurred copy resolved to Nyquist."""
    rng = np.random.default_rng(seed)
    n = 160
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
    truth = (1 + 0.15 * _field(rng, n, 1.5)) * np.exp(
        1j * (0.3 * _field(rng, n, 1.5) + 3.0 * (yy + xx) / n))
    mask = _irregular_mask(n)

    def noise() -> np.ndarray:
        return 0.03 * (rng.standard_normal(truth.shape) + 1j * rng.standard_normal(truth.shape))

    sharp = truth + noise()
    blurred = (ndimage.gaussian_filter(truth.real, 2.0)
               + 1j * ndimage.gaussian_filter(truth.imag, 2.0) + noise())

    def period(res: dict | None) -> float:
        assert res is not None
        r = res["resolution_half_bit"]
        return 2.0 if r is None else r["period"]               # never crossed: Nyquist

    p_sharp = period(M.frc_interior(sharp, truth, mask))
    p_blur = period(M.frc_interior(blurred, truth, mask))
    assert p_blur / p_sharp > 1.5
    # evaluate() reports the same interior FRC after its own alignment
    e_sharp = M.evaluate(sharp, truth, mask)["complex"]["frc_half_bit_px"]
    e_blur = M.evaluate(blurred, truth, mask)["complex"]["frc_half_bit_px"]
    e_sharp = 2.0 if e_sharp is None else e_sharp
    assert e_blur is not None and e_blur / e_sharp > 1.5
