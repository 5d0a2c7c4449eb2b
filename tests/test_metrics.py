"""Tests for ptypinn.metrics: every expected value comes from an analytic case or an independent
reference (numpy Fourier shift written here, scikit-image's SSIM), never from the code under test."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import ndimage
from skimage.metrics import structural_similarity

from ptypinn import metrics as M


def _smooth(rng: np.random.Generator, shape: tuple[int, int], sigma: float = 3.0) -> np.ndarray:
    """Smooth, periodic random field with unit-ish variance."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return f / f.std()


def _shift_periodic(a: np.ndarray, t: tuple[float, float]) -> np.ndarray:
    """Independent reference: ``out(r) = a(r - t)`` by a Fourier phase ramp (periodic)."""
    ky = np.fft.fftfreq(a.shape[0])[:, None]
    kx = np.fft.fftfreq(a.shape[1])[None, :]
    out = np.fft.ifft2(np.fft.fft2(a) * np.exp(-2j * np.pi * (ky * t[0] + kx * t[1])))
    return out if np.iscomplexobj(a) else out.real


def _object(rng: np.random.Generator, n: int) -> np.ndarray:
    """Smooth complex test object: amplitude ~0.7..1.3, phase ~ +-1 rad."""
    return ((1.0 + 0.1 * _smooth(rng, (n, n))) * np.exp(0.5j * _smooth(rng, (n, n)))).astype(
        np.complex128)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


# ----------------------------------------------------------------------------- scalar metrics

def test_identical_images_score_perfectly(rng):
    img = _smooth(rng, (128, 128))
    assert M.mae(img, img) == 0.0
    assert M.mse(img, img) == 0.0
    assert M.nrmse(img, img) == 0.0
    assert M.psnr(img, img, data_range=1.0) == math.inf
    assert M.ssim(img, img, data_range=float(np.ptp(img))) == pytest.approx(1.0, abs=1e-12)
    assert M.ms_ssim(img, img, data_range=float(np.ptp(img))) == pytest.approx(1.0, abs=1e-12)
    assert M.pearson(img, img) == pytest.approx(1.0, abs=1e-12)


def test_scalar_metrics_known_values():
    truth = np.array([[1.0, 2.0], [3.0, 4.0]])
    test = truth + np.array([[1.0, -1.0], [0.0, 2.0]])
    assert M.mae(truth, test) == pytest.approx(1.0)            # (1+1+0+2)/4
    assert M.mse(truth, test) == pytest.approx(1.5)            # (1+1+0+4)/4
    assert M.nrmse(truth, test) == pytest.approx(math.sqrt(1.5) / math.sqrt(30 / 4))
    mask = np.array([[True, False], [False, True]])
    assert M.mae(truth, test, mask) == pytest.approx(1.5)      # (1+2)/2
    assert M.pearson(truth, -truth) == pytest.approx(-1.0)
    assert M.psnr(truth, test, data_range=3.0) == pytest.approx(10 * math.log10(9 / 1.5))


def test_psnr_matches_gaussian_noise_sigma(rng):
    truth = rng.uniform(0.0, 1.0, (256, 256))
    sigma = 0.05
    noisy = truth + rng.normal(0.0, sigma, truth.shape)
    expected = 10 * math.log10(1.0 ** 2 / sigma ** 2)          # 26.02 dB
    assert M.psnr(truth, noisy, data_range=1.0) == pytest.approx(expected, abs=0.3)


def test_psnr_requires_data_range(rng):
    img = rng.uniform(size=(8, 8))
    with pytest.raises(TypeError):
        M.psnr(img, img)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="data_range"):
        M.psnr(img, img + 0.1, data_range=0.0)
    with pytest.raises(TypeError):
        M.ssim(img, img)  # type: ignore[call-arg]


def test_shape_and_mask_mismatch_raise(rng):
    a = rng.uniform(size=(8, 8))
    with pytest.raises(ValueError, match="test: expected shape"):
        M.mae(a, a[:7])
    with pytest.raises(ValueError, match="mask: expected shape"):
        M.mse(a, a, np.ones((7, 8), bool))
    with pytest.raises(ValueError, match="mask: expected at least one True"):
        M.pearson(a, a, np.zeros((8, 8), bool))


def test_ssim_on_mask_bounding_box_matches_skimage_crop(rng):
    truth = _smooth(rng, (96, 96))
    test = truth + 0.3 * rng.standard_normal(truth.shape)
    mask = np.zeros(truth.shape, bool)
    mask[10:70, 20:90] = True
    expected = structural_similarity(truth[10:70, 20:90], test[10:70, 20:90], data_range=4.0)
    assert M.ssim(truth, test, data_range=4.0, mask=mask) == pytest.approx(expected, rel=1e-12)
    assert M.ssim(truth[:5, :5], test[:5, :5], data_range=4.0) is None


def test_ssim_terms_reproduce_skimage(rng):
    x = _smooth(rng, (64, 64))
    y = x + 0.5 * _smooth(rng, (64, 64), 1.0)
    full, cs = M._ssim_terms(x, y, 5.0)
    assert full == pytest.approx(structural_similarity(x, y, data_range=5.0), rel=1e-10)
    assert 0.0 < cs <= 1.0


def test_ms_ssim_size_rule_and_ordering(rng, caplog):
    small = rng.uniform(size=(111, 200))                       # 111 < 7 * 2**4
    with caplog.at_level("INFO", logger="ptypinn.metrics"):
        assert M.ms_ssim(small, small, data_range=1.0) is None
    assert "112" in caplog.text
    truth = _smooth(rng, (112, 112))
    mild = truth + 0.2 * rng.standard_normal(truth.shape)
    strong = truth + 1.0 * rng.standard_normal(truth.shape)
    v_mild = M.ms_ssim(truth, mild, data_range=8.0)
    v_strong = M.ms_ssim(truth, strong, data_range=8.0)
    assert v_mild is not None and v_strong is not None
    assert 0.0 < v_strong < v_mild < 1.0


def test_flat_amplitude_scores_badly_on_ssim_and_pearson(rng):
    """SPEC lesson 7: a flat output beats a noisy-but-right one on MAE, yet must fail the gates."""
    truth = 1.0 + 0.1 * _smooth(rng, (128, 128), sigma=1.5)
    flat = np.full_like(truth, truth.mean())
    mae_flat = M.mae(truth, flat)
    sigma = 1.2 * mae_flat / math.sqrt(2 / math.pi)            # E|N(0, s)| = s sqrt(2/pi)
    noisy = truth + rng.normal(0.0, sigma, truth.shape)
    dr = float(np.ptp(truth))
    assert M.mae(truth, noisy) > mae_flat                      # MAE prefers the flat output ...
    assert M.pearson(truth, flat) == 0.0                       # ... the gates do not
    assert M.pearson(truth, noisy) > 0.5
    assert M.ssim(truth, flat, data_range=dr) < 0.15
    assert M.ssim(truth, noisy, data_range=dr) > M.ssim(truth, flat, data_range=dr) + 0.2
    assert M.ms_ssim(truth, flat, data_range=dr) < 0.2


# ----------------------------------------------------------------------------- registration

@pytest.mark.parametrize("t", [(3.0, -5.0), (2.3, -1.7), (-0.4, 0.75)])
def test_register_recovers_known_shift(rng, t):
    ref = _smooth(rng, (96, 96))
    moving = np.roll(ref, (int(t[0]), int(t[1])), axis=(0, 1)) if float(t[0]).is_integer() \
        and float(t[1]).is_integer() else _shift_periodic(ref, t)
    shift, moved = M.register_subpixel(ref, moving)
    np.testing.assert_allclose(shift, [-t[0], -t[1]], atol=0.05)  # moving = ref displaced by +t
    inner = (slice(12, -12), slice(12, -12))
    assert np.max(np.abs(moved[inner] - ref[inner])) < 0.05 * np.ptp(ref)


def test_register_complex_masked_nonperiodic_with_phase_offset(rng):
    big = _object(rng, 192)
    t = (1.4, -0.6)
    truth = big[32:160, 32:160]
    recon = _shift_periodic(big, t)[32:160, 32:160] * np.exp(-0.7j)
    mask = np.zeros(truth.shape, bool)
    mask[10:-12, 8:-10] = True
    truth_copy, recon_copy = truth.copy(), recon.copy()
    shift, _ = M.register_subpixel(truth, recon, mask=mask)
    np.testing.assert_allclose(shift, [-1.4, 0.6], atol=0.05)
    np.testing.assert_array_equal(truth, truth_copy)
    np.testing.assert_array_equal(recon, recon_copy)


def test_remove_global_phase_exact(rng):
    obj = _object(rng, 64).astype(np.complex64)
    shifted = obj * np.complex64(np.exp(1.234j))
    before = shifted.copy()
    out = M.remove_global_phase(shifted, obj)
    assert out.dtype == np.complex64
    np.testing.assert_allclose(out, obj, atol=1e-6)
    np.testing.assert_array_equal(shifted, before)             # input untouched


def test_remove_phase_ramp_known_ramp(rng):
    obj = _object(rng, 64)
    yy, xx = np.indices(obj.shape)
    ramp = 0.3 + 0.05 * yy - 0.08 * xx                         # wraps several times across x
    ramped = obj * np.exp(1j * ramp)
    before = ramped.copy()
    np.testing.assert_allclose(M.remove_phase_ramp(ramped, obj), obj, atol=1e-9)
    mask = np.zeros(obj.shape, bool)
    mask[5:40, 10:60] = True
    np.testing.assert_allclose(M.remove_phase_ramp(ramped, obj, mask), obj, atol=1e-9)
    np.testing.assert_array_equal(ramped, before)


def test_align_crops_to_common_shape_and_shrinks_mask(rng):
    truth = _object(rng, 80)
    recon = np.pad(truth, ((2, 2), (3, 3))) * np.exp(0.5j)      # same frame centre, bigger canvas
    pair = M.align(recon, truth)
    assert pair.truth.shape == pair.recon.shape == pair.mask.shape == (80, 80)
    np.testing.assert_allclose(pair.shift_px, [0.0, 0.0], atol=0.011)
    assert pair.mask.sum() < 80 * 80 and pair.mask[40, 40] and not pair.mask[0, 0]
    np.testing.assert_allclose(pair.recon[pair.mask], truth[pair.mask], atol=1e-3)
    with pytest.raises(ValueError, match="mask: expected shape"):
        M.align(recon, truth, mask=np.ones((80, 80), bool))


# ----------------------------------------------------------------------------- FRC

def test_half_bit_threshold_formula():
    # van Heel & Schatz (2005): T(1) = 1; T(n -> inf) = 0.2071 / 1.2071
    assert M.half_bit_threshold(np.array([1]))[0] == pytest.approx(2.1173 / 2.1173)
    assert M.half_bit_threshold(np.array([1e12]))[0] == pytest.approx(0.2071 / 1.2071, rel=1e-5)
    assert M.half_bit_threshold(np.array([100]))[0] == pytest.approx(
        (0.2071 + 0.19102) / (1.2071 + 0.09102))


def test_frc_of_image_with_itself_is_one(rng):
    img = rng.standard_normal((64, 64)) + 1j * rng.standard_normal((64, 64))
    res = M.frc(img, img, pixel_size_m=10e-9)
    np.testing.assert_allclose(res["frc"], 1.0, atol=1e-12)
    assert res["resolution_half_bit"] is None and res["resolution_one_seventh"] is None
    np.testing.assert_allclose(res["spatial_frequency"], np.arange(33) / 64 / 10e-9)
    assert res["n_in_ring"][0] == 1 and res["n_in_ring"].sum() <= 64 * 64
    np.testing.assert_allclose(res["threshold_one_seventh"], 1 / 7)


def test_frc_of_independent_noise_is_near_zero(rng):
    a = rng.standard_normal((128, 128))
    b = rng.standard_normal((128, 128))
    res = M.frc(a, b)
    curve, n = res["frc"][1:], res["n_in_ring"][1:]
    assert abs(np.mean(curve)) < 0.02
    assert np.all(np.abs(curve) < 5.0 / np.sqrt(n))            # within noise of each ring
    assert res["resolution_half_bit"] is not None
    assert res["resolution_half_bit"]["period"] >= 128 / 3     # "resolved" nothing finer than N/3


def test_frc_finds_cutoff_of_lowpassed_copy(rng):
    a = rng.standard_normal((128, 128))
    fy = np.fft.fftfreq(128)[:, None]
    fx = np.fft.fftfreq(128)[None, :]
    low = np.fft.ifft2(np.fft.fft2(a) * (np.hypot(fy, fx) < 0.25)).real  # band limit 0.25 cyc/px
    b = low + 0.3 * rng.standard_normal(a.shape)
    res = M.frc(low, b)
    f = res["resolution_half_bit"]["frequency"]
    assert 0.2 < f < 0.3


# ----------------------------------------------------------------------------- sanity check

def test_assert_not_degenerate():
    with pytest.raises(ValueError, match="constant"):
        M.assert_not_degenerate(np.full((16, 16), 0.8 + 0.1j))
    with pytest.raises(ValueError, match="all zeros"):
        M.assert_not_degenerate(np.zeros((16, 16), np.complex64))
    bad = np.ones((4, 4), np.complex64)
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        M.assert_not_degenerate(bad, name="object")
    with pytest.raises(ValueError, match="non-empty"):
        M.assert_not_degenerate(np.zeros((0,)))
    M.assert_not_degenerate(np.linspace(0.5, 1.0, 50) * np.exp(1j))  # 1-D, structured: fine


# ----------------------------------------------------------------------------- evaluate

def test_evaluate_scale_check_and_json(rng):
    truth = _object(rng, 128).astype(np.complex64)
    res = M.evaluate(2 * truth, truth)
    assert res["amplitude"]["mean_ratio"] == pytest.approx(2.0, rel=1e-4)
    assert res["amplitude"]["pearson"] == pytest.approx(1.0, abs=1e-4)
    assert res["phase"]["mae"] == pytest.approx(0.0, abs=1e-4)
    json.dumps(res, allow_nan=False)                            # plain floats / None only
    assert set(res) == {"amplitude", "phase", "complex"}


def test_evaluate_perfect_shifted_reconstruction(rng):
    big = _object(rng, 192)
    truth = big[32:160, 32:160]
    recon = _shift_periodic(big, (0.6, -1.3))[32:160, 32:160] * np.exp(2.0j)
    mask = np.zeros(truth.shape, bool)
    mask[4:-4, 4:-4] = True
    res = M.evaluate(recon, truth, mask)
    for q in ("amplitude", "phase"):
        assert res[q]["pearson"] > 0.999
        assert res[q]["ssim"] > 0.99
        assert res[q]["ms_ssim"] is not None and res[q]["ms_ssim"] > 0.99
    assert res["phase"]["mae"] < 0.01                           # 2 rad offset removed
    assert res["complex"]["shift_y_px"] == pytest.approx(-0.6, abs=0.05)
    assert res["complex"]["shift_x_px"] == pytest.approx(1.3, abs=0.05)
    flat = np.full_like(truth, np.abs(truth).mean())
    bad = M.evaluate(flat, truth, mask)
    assert bad["amplitude"]["pearson"] == 0.0 and bad["amplitude"]["ssim"] < 0.3


def test_metrics_long_rows():
    rows = M.metrics_long_rows("PINN", {"amplitude": {"mae": 0.1, "ms_ssim": None},
                                        "complex": {"frc_half_bit_px": 3.0}})
    assert rows == [
        {"model": "PINN", "quantity": "amplitude", "metric": "mae", "value": 0.1},
        {"model": "PINN", "quantity": "amplitude", "metric": "ms_ssim", "value": None},
        {"model": "PINN", "quantity": "complex", "metric": "frc_half_bit_px", "value": 3.0},
    ]
