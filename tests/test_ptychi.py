"""Tests of the pty-chi adapter (``ptypinn.baselines.ptychi``).

Config validation and the torchvision stand-in run everywhere; the reconstructions are skipped
(with the reason) where pty-chi cannot be imported.  Scans are simulated here with
``ptypinn.physics`` only, so these tests do not depend on ``ptypinn.simulate``.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from ptypinn import physics
from ptypinn.data import ScanData
from ptypinn.config import IterativeConfig
from ptypinn.baselines.ptychi import (
    GaussianBlurStandIn,
    ptychi_available,
    reconstruct_ptychi,
    to_ptychi_positions,
)

N = 64


# ---------------------------------------------------------------- runs without pty-chi
@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"algorithm": "pie"}, "algorithm"),
        ({"iterations": 0}, "iterations"),
        ({"iterations": 2.5}, "iterations"),
        ({"batch_size": 0}, "batch_size"),
        ({"optimize_probe": "yes"}, "optimize_probe"),
        ({"device": "tpu"}, "device"),
        ({"seed": -1}, "seed"),
        ({"noise_model": "student"}, "noise_model"),
        ({"step_size": 0.0}, "step_size"),
        ({"step_size": float("nan")}, "step_size"),
        ({"until_converged": 1}, "until_converged"),
        ({"check_every_epochs": 0}, "check_every_epochs"),
        ({"check_every_epochs": 5.0}, "check_every_epochs"),
        ({"convergence_rel_tol": 0.0}, "convergence_rel_tol"),
        ({"convergence_rel_tol": -1e-3}, "convergence_rel_tol"),
        ({"convergence_rel_tol": float("inf")}, "convergence_rel_tol"),
        ({"convergence_rel_tol": True}, "convergence_rel_tol"),
    ],
)
def test_config_rejects_bad_values(kwargs, field):
    with pytest.raises(ValueError, match=rf"^iterative\.{field}: expected .*, got "):
        IterativeConfig(**kwargs)


def test_config_defaults_are_valid():
    cfg = IterativeConfig()
    assert (cfg.algorithm, cfg.iterations, cfg.optimize_probe, cfg.noise_model) == (
        "epie", 100, False, "poisson")
    assert (cfg.until_converged, cfg.check_every_epochs, cfg.convergence_rel_tol) == (
        False, 10, 1e-3)


def test_config_error_names_the_key():
    with pytest.raises(ValueError, match=r"^iterative\.check_every_epochs: expected an integer "
                                         r">= 1, got 0$"):
        IterativeConfig(check_every_epochs=0)


def test_stop_rule_is_relative_to_the_previous_excess_nll():
    from ptypinn.metrics import convergence_stop

    assert convergence_stop(0.60, None, 1e-3) is None  # first check: nothing to compare with
    assert convergence_stop(0.5990, 0.6, 1e-3) is None  # 1e-3 of 0.6 is 6e-4; 1e-3 improvement: go on
    assert convergence_stop(0.5995, 0.6, 1e-3) == "tolerance"  # 5e-4 < 6e-4
    assert convergence_stop(0.6001, 0.6, 1e-3) == "worse"
    assert convergence_stop(0.0, 0.0, 1e-3) == "tolerance"  # a perfect noise-free fit stops
    assert convergence_stop(float("nan"), 0.6, 1e-3) == "diverged"
    assert convergence_stop(float("inf"), None, 1e-3) == "diverged"


def test_position_mapping_formula():
    # pty-chi starts a window at buffer pixel q + origin - (N-1)/2 of a buffer padded by `pad`
    # (origin = floor(buffer_shape/2) - 1/2, set explicitly); ours starts at object pixel p - N/2.
    shape, pad = (129, 100), 2
    p = np.array([[32.0, 32.0], [50.25, 67.5]])
    q = to_ptychi_positions(p, shape, pad_px=pad)
    origin = np.floor((np.array(shape) + 2 * pad) / 2) - 0.5
    np.testing.assert_allclose(q + origin - (N - 1) / 2 - pad, p - N / 2)


def test_gaussian_blur_stand_in_matches_scipy():
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(0)
    img = rng.normal(size=(40, 33))
    # kernel_size is (kx, ky) and sigma (sx, sy), as in torchvision
    blur = GaussianBlurStandIn(kernel_size=(9, 5), sigma=(3.0, 1.5))
    out = blur(torch.from_numpy(img)[None, None])
    ref = ndimage.gaussian_filter(img, sigma=(1.5, 3.0), radius=(2, 4), mode="mirror")
    np.testing.assert_allclose(out[0, 0].numpy(), ref, atol=1e-12)


# ---------------------------------------------------------------- needs pty-chi
_OK, _REASON = ptychi_available()
if not _OK:
    print(f"test_iterative: pty-chi tests skipped: {_REASON}")
needs_ptychi = pytest.mark.skipif(not _OK, reason=f"pty-chi unavailable: {_REASON}")


def _smooth_field(rng, shape, sigma_px):
    from scipy.ndimage import gaussian_filter

    f = gaussian_filter(rng.normal(size=shape), sigma_px, mode="wrap")
    return (f - f.min()) / (f.max() - f.min())


def _disk_probe(radius_px: float, photons: float, size_px: int = N) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    yy, xx = np.mgrid[:size_px, :size_px] - size_px / 2
    disk = gaussian_filter((np.hypot(yy, xx) <= radius_px).astype(float), 1.0)
    probe = disk * np.exp(1j * 0.002 * (yy**2 + xx**2))  # a little curvature
    return (probe * np.sqrt(photons / np.sum(np.abs(probe) ** 2))).astype(np.complex64)


def _simulate(obj: np.ndarray, probe: np.ndarray, step_px: float, seed: int) -> ScanData:
    """Raster scan over ``obj`` with Poisson counts from ``ptypinn.physics``."""
    hy, wx = obj.shape
    n = probe.shape[-1]
    ys = np.arange(n / 2, hy - n / 2 + 1e-9, step_px)
    xs = np.arange(n / 2, wx - n / 2 + 1e-9, step_px)
    pos = np.stack(np.meshgrid(ys, xs, indexing="ij"), -1).reshape(-1, 2)
    patches = physics.extract_patches(torch.from_numpy(obj)[None], torch.from_numpy(pos)[None],
                                      n)[0]
    intensity = physics.predicted_intensity(torch.from_numpy(probe), patches).numpy()
    counts = np.random.default_rng(seed).poisson(intensity.astype(np.float64)).astype(np.float32)
    return ScanData(counts=counts, positions_px=pos, probe=probe, object_true=obj,
                    meta={"probe_calibrated": True})


def _scanned_region(scan: ScanData, reach_px: int = 8) -> tuple[slice, slice]:
    """Pixels within ``reach_px`` of the outermost window centres (well inside the probe disk)."""
    lo = scan.positions_px.min(0) - reach_px
    hi = scan.positions_px.max(0) + reach_px
    return slice(int(lo[0]), int(hi[0])), slice(int(lo[1]), int(hi[1]))


def _amplitude_ssim_and_shift(rec: np.ndarray, truth: np.ndarray,
                              region) -> tuple[float, np.ndarray]:
    from skimage.metrics import structural_similarity
    from skimage.registration import phase_cross_correlation

    a, b = rec[region], truth[region]
    a = a * np.exp(-1j * np.angle(np.vdot(a, b)))  # remove the global phase (for completeness)
    shift, _, _ = phase_cross_correlation(np.abs(b), np.abs(a), upsample_factor=20,
                                          normalization=None)
    ta = np.abs(b)
    ssim = structural_similarity(np.abs(a), ta, data_range=float(ta.max() - ta.min()))
    return float(ssim), np.asarray(shift)


@needs_ptychi
def test_intensity_scaling_matches_ptychi_forward_model():
    """Our ortho-normalised intensities equal pty-chi's |fft2|^2 with the adapter's probe scale."""
    from ptychi.utils import to_tensor  # noqa: F401 (imported only to prove the package loads)

    rng = np.random.default_rng(1)
    obj = np.exp(1j * rng.normal(size=(N, N))).astype(np.complex64)
    probe = _disk_probe(16, 1e6)
    ours = physics.predicted_intensity(torch.from_numpy(probe),
                                       torch.from_numpy(obj)[None]).numpy()[0]
    theirs = np.abs(np.fft.fft2(probe / N * obj)) ** 2  # what pty-chi predicts, DC at the corner
    np.testing.assert_allclose(np.fft.fftshift(theirs), ours, rtol=1e-3, atol=1e-3 * ours.max())


@needs_ptychi
def test_epie_reconstructs_smooth_object_and_restores_global_state():
    rng = np.random.default_rng(3)
    amp = 0.5 + 0.5 * _smooth_field(rng, (128, 128), 3.0)
    phase = 1.0 * (_smooth_field(rng, (128, 128), 4.0) - 0.5)
    obj = (amp * np.exp(1j * phase)).astype(np.complex64)
    scan = _simulate(obj, _disk_probe(16, 1e6), step_px=8.0, seed=4)

    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    dtype, device = torch.get_default_dtype(), torch.get_default_device()

    res = reconstruct_ptychi(scan, IterativeConfig(algorithm="epie", iterations=20,
                                                   batch_size=16, device="cpu"))

    assert torch.get_default_dtype() == dtype and torch.get_default_device() == device
    after = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(after[0], expected[0]) and np.array_equal(after[1], expected[1])
    assert after[2] == expected[2]

    assert res.object.shape == obj.shape and res.object.dtype == np.complex64
    assert res.probe.shape == scan.probe.shape
    np.testing.assert_allclose(res.probe, scan.probe, rtol=1e-5, atol=1e-3)  # fixed probe
    assert len(res.loss_history) == 20 and res.loss_history[-1] < res.loss_history[0]
    # a fixed-epoch run carries one NLL point, at the end
    assert res.iterations == 20 and res.stop_reason == "fixed_epochs" and not res.converged
    assert len(res.nll_history) == 1 and res.nll_history[0][0] == 20
    assert res.nll_history[0][1] == res.wall_time_s
    assert res.nll_history[0][2] == pytest.approx(float(np.mean(physics.data_nll(res.object,
                                                                                 scan))),
                                                  rel=1e-9)
    region = _scanned_region(scan)
    ssim, shift = _amplitude_ssim_and_shift(res.object, obj, region)
    print(f"ePIE 20 epochs: amplitude SSIM {ssim:.4f}, shift {shift}, {res.wall_time_s:.1f} s")
    assert ssim >= 0.95
    assert np.all(np.abs(shift) < 0.2)
    # absolute transmission: the probe/FFT scaling is right if the mean amplitude is
    mean_ratio = np.mean(np.abs(res.object[region])) / np.mean(np.abs(obj[region]))
    assert abs(mean_ratio - 1) < 0.02


@needs_ptychi
def test_sharp_features_reconstruct_at_the_right_place():
    """Asymmetric dots on a flat object: any position-convention error shows as a shift."""
    obj = np.ones((112, 112), dtype=np.complex64)
    for y, x in [(40, 45), (58, 70), (73, 52), (47, 77)]:
        obj[y - 1:y + 2, x - 1:x + 1] = 0.3 * np.exp(0.8j)
    scan = _simulate(obj, _disk_probe(16, 1e7), step_px=8.0, seed=5)
    res = reconstruct_ptychi(scan, IterativeConfig(algorithm="epie", iterations=20,
                                                   batch_size=16, device="cpu"))
    region = _scanned_region(scan)
    rec_amp, true_amp = np.abs(res.object[region]), np.abs(obj[region])
    from skimage.registration import phase_cross_correlation

    shift, _, _ = phase_cross_correlation(1 - true_amp, 1 - rec_amp, upsample_factor=20,
                                          normalization=None)
    print(f"sharp features: shift {shift}")
    assert np.all(np.abs(shift) < 0.2)
    # the darkest reconstructed pixel lies inside one of the true dots
    iy, ix = np.unravel_index(np.argmin(rec_amp), rec_amp.shape)
    assert true_amp[iy, ix] < 0.5


@needs_ptychi
@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["lsqml", "rpie", "dm"])
def test_other_engines_reconstruct(algorithm):
    rng = np.random.default_rng(3)
    amp = 0.5 + 0.5 * _smooth_field(rng, (128, 128), 3.0)
    obj = (amp * np.exp(1j * (_smooth_field(rng, (128, 128), 4.0) - 0.5))).astype(np.complex64)
    scan = _simulate(obj, _disk_probe(16, 1e6), step_px=8.0, seed=4)
    res = reconstruct_ptychi(scan, IterativeConfig(algorithm=algorithm, iterations=60,
                                                   batch_size=16, device="cpu"))
    ssim, shift = _amplitude_ssim_and_shift(res.object, obj, _scanned_region(scan))
    print(f"{algorithm}: amplitude SSIM {ssim:.4f}, shift {shift}, {res.wall_time_s:.1f} s")
    assert ssim >= 0.9
    assert np.all(np.abs(shift) < 0.3)


# ---------------------------------------------------------------- running to convergence
def _small_scan() -> ScanData:
    """81 patterns 32x32 over a 64x64 smooth object, disk probe r = 8, step 4 px, 1e5 photons."""
    rng = np.random.default_rng(3)
    amp = 0.5 + 0.5 * _smooth_field(rng, (64, 64), 2.0)
    obj = (amp * np.exp(1j * (_smooth_field(rng, (64, 64), 3.0) - 0.5))).astype(np.complex64)
    return _simulate(obj, _disk_probe(8, 1e5, size_px=32), step_px=4.0, seed=4)


def data_nll_of(obj: np.ndarray, scan: ScanData) -> float:
    """Mean excess data NLL per pixel, computed outside any pty-chi run."""
    return float(np.mean(physics.data_nll(obj, scan)))


def _until_converged(algorithm: str, tol: float, cap: int = 60) -> IterativeConfig:
    return IterativeConfig(algorithm=algorithm, iterations=cap, batch_size=16, device="cpu",
                           until_converged=True, check_every_epochs=5, convergence_rel_tol=tol)


def _check_history(res, scan: ScanData, cap: int) -> list[float]:
    """Shared invariants of an ``until_converged`` result; returns the NLL values."""
    epochs = [e for e, _, _ in res.nll_history]
    times = [t for _, t, _ in res.nll_history]
    nlls = [v for _, _, v in res.nll_history]
    assert epochs == list(range(5, res.iterations + 1, 5)) and res.iterations == epochs[-1]
    assert res.iterations <= cap and len(res.loss_history) == res.iterations
    assert all(b > a for a, b in zip(times, times[1:])) and times[-1] == res.wall_time_s
    assert res.nll_check_time_s > 0
    # non-increasing up to the stop, except possibly the last point
    assert all(b <= a for a, b in zip(nlls[:-2], nlls[1:-1]))
    # the returned state is the lowest-NLL check, recomputed here independently
    recomputed = float(np.mean(physics.data_nll(res.object, scan)))
    assert recomputed == pytest.approx(min(nlls), rel=1e-9)
    return nlls


@needs_ptychi
def test_until_converged_stops_early_with_a_loose_tolerance():
    scan = _small_scan()
    dtype, device = torch.get_default_dtype(), torch.get_default_device()
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    res = reconstruct_ptychi(scan, _until_converged("epie", tol=0.05))
    assert torch.get_default_dtype() == dtype and torch.get_default_device() == device
    assert torch.equal(torch.rand(3), expected)  # chunks and checks leave no trace either
    nlls = _check_history(res, scan, cap=60)
    print(f"ePIE tol 0.05: {res.iterations} epochs ({res.stop_reason}), solver "
          f"{res.wall_time_s:.2f} s, checks {res.nll_check_time_s:.2f} s, NLL {nlls}")
    assert res.iterations < 60 and res.converged and res.stop_reason == "tolerance"
    drops = [a - b for a, b in zip(nlls, nlls[1:])]
    assert 0 <= drops[-1] <= 0.05 * nlls[-2]  # the last chunk improved by less than 5 %
    assert all(d > 0.05 * a for d, a in zip(drops[:-1], nlls))  # every earlier one by more
    assert data_nll_of(res.object, scan) == pytest.approx(nlls[-1], rel=1e-9)


@needs_ptychi
def test_until_converged_runs_to_the_cap_with_a_tiny_tolerance():
    scan = _small_scan()
    res = reconstruct_ptychi(scan, _until_converged("epie", tol=1e-9))
    nlls = _check_history(res, scan, cap=60)
    print(f"ePIE tol 1e-9: {res.iterations} epochs ({res.stop_reason}), solver "
          f"{res.wall_time_s:.2f} s, NLL {nlls}")
    assert res.iterations == 60 and res.stop_reason == "cap" and not res.converged
    assert len(nlls) == 12 and nlls[-1] < nlls[0]
    assert data_nll_of(res.object, scan) == pytest.approx(nlls[-1], rel=1e-9)


@needs_ptychi
def test_until_converged_lsqml_returns_the_best_state():
    """LSQML fits the noise and its NLL rises again: the best check's state comes back."""
    scan = _small_scan()
    res = reconstruct_ptychi(scan, _until_converged("lsqml", tol=1e-9))
    nlls = _check_history(res, scan, cap=60)
    print(f"LSQML tol 1e-9: {res.iterations} epochs ({res.stop_reason}), solver "
          f"{res.wall_time_s:.2f} s, NLL {nlls}")
    if res.stop_reason == "worse":
        assert nlls[-1] > min(nlls) and res.converged
    else:
        assert res.stop_reason == "cap" and res.iterations == 60
