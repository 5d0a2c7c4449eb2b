"""Exact sub-pixel simulation (no inverse crime): ``simulate.extract_patches_exact`` against plain
slicing and an analytic band-limited object, and ``simulate_scan`` end to end at fractional
positions.  The bilinear ``physics.extract_patches`` is used only to show it is *not* what the
simulator does (these tests fail if the simulator goes back to bilinear interpolation)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ptypinn.config import SimulationConfig
from ptypinn import physics
from ptypinn.physics import extract_patches
from ptypinn.simulate import extract_patches_exact, simulate_scan

N = 32
SIZE = 160


class BandLimited:
    """``O(y, x) = 0.8 + sum_k a_k exp(2 pi i (ky y + kx x))`` with |k| <= 0.1 cycles/px, evaluated
    analytically at any real coordinates (px)."""

    def __init__(self, seed: int = 0, n_terms: int = 5, kmax: float = 0.1):
        rng = np.random.default_rng(seed)
        self.k = rng.uniform(-kmax, kmax, (n_terms, 2))
        self.a = 0.08 * (rng.standard_normal(n_terms) + 1j * rng.standard_normal(n_terms))

    def __call__(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        out = np.full(np.broadcast(y, x).shape, 0.8, dtype=np.complex128)
        for a, (ky, kx) in zip(self.a, self.k):
            out += a * np.exp(2j * np.pi * (ky * y + kx * x))
        return out

    def array(self, size: int) -> np.ndarray:
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
        return self(yy, xx).astype(np.complex64)

    def windows(self, positions: np.ndarray, n: int) -> np.ndarray:
        """Pixel ``j`` of the window centred at ``p`` samples ``O(p - n/2 + j)`` (SPEC §1)."""
        j = np.arange(n, dtype=np.float64)
        return np.stack([self(p[0] - n / 2 + j[:, None], p[1] - n / 2 + j[None, :])
                         for p in positions])


def _bilinear(obj: np.ndarray, positions: np.ndarray, n: int) -> np.ndarray:
    return extract_patches(torch.from_numpy(obj)[None], torch.from_numpy(positions)[None],
                           n)[0].numpy()


def _rel_err(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(a - ref).max() / np.abs(ref).max())


def test_integer_positions_are_plain_slices_even_at_the_edges():
    rng = np.random.default_rng(1)
    obj = (rng.random((70, 90)) * np.exp(1j * rng.random((70, 90)))).astype(np.complex64)
    # windows touching every edge the simulator allows (start 0; end + 1 px margin = shape)
    pos = np.array([[16, 16], [70 - 17, 90 - 17], [16, 90 - 17], [40, 33]], dtype=np.float64)
    pos = np.concatenate([pos, rng.integers(16, 53, (30, 2)).astype(np.float64)])
    out = extract_patches_exact(obj, pos, N)
    assert out.dtype == np.complex64 and out.shape == (len(pos), N, N)
    for p, patch in zip(pos.astype(int), out):
        np.testing.assert_array_equal(patch, obj[p[0] - 16:p[0] + 16, p[1] - 16:p[1] + 16])


def test_fractional_shift_matches_analytic_object_and_bilinear_does_not():
    truth = BandLimited(seed=0)
    obj = truth.array(SIZE)
    rng = np.random.default_rng(2)
    pos = rng.uniform(40.0, SIZE - 41.0, (40, 2))      # crops (window + 16 px) inside the object
    pos[:4] = [[60.5, 70.5], [61.25, 70.0], [80.0, 90.75], [99.9, 100.1]]  # one axis integer too
    ref = truth.windows(pos, N)
    err_exact = _rel_err(extract_patches_exact(obj, pos, N), ref)
    err_bilinear = _rel_err(_bilinear(obj, pos, N), ref)
    assert err_exact < 2e-4
    assert err_bilinear > 3e-3 and err_bilinear > 30 * err_exact


def test_deterministic_and_chunk_independent(monkeypatch):
    import ptypinn.simulate as sim

    obj = BandLimited(seed=3).array(SIZE)
    pos = np.random.default_rng(4).uniform(16.0, SIZE - 17.0, (37, 2))
    a = extract_patches_exact(obj, pos, N)
    monkeypatch.setattr(sim, "_CHUNK", 5)
    np.testing.assert_array_equal(a, extract_patches_exact(obj, pos, N))


def test_windows_near_the_edge_use_a_reflected_margin_only():
    """Windows whose crop leaves the object still work (reflection for the crop only) and stay
    close to the analytic object in the probe's central region; the object is not modified."""
    truth = BandLimited(seed=5)
    obj = truth.array(SIZE)
    before = obj.copy()
    pos = np.array([[16.3, 16.7], [SIZE - 17.01, SIZE - 17.5]])
    out = extract_patches_exact(obj, pos, N)
    np.testing.assert_array_equal(obj, before)
    centre = (slice(None), slice(8, 24), slice(8, 24))
    assert _rel_err(out[centre], truth.windows(pos, N)[centre]) < 2e-2


def test_windows_outside_the_object_are_rejected():
    obj = np.ones((64, 64), np.complex64)
    with pytest.raises(ValueError, match="positions_px"):
        extract_patches_exact(obj, np.array([[15.5, 30.0]]), N)
    with pytest.raises(ValueError, match="positions_px"):
        extract_patches_exact(obj, np.array([[30.0, 64 - 15.5]]), N)  # no room for the +1 px
    with pytest.raises(ValueError, match="positions_px"):
        extract_patches_exact(obj, np.array([[30.0, 64 - 15.0]]), N)
    assert extract_patches_exact(obj, np.array([[64 - 16.0, 64 - 16.5]]), N).shape == (1, N, N)
    with pytest.raises(ValueError, match="obj"):
        extract_patches_exact(obj[None], np.array([[30.0, 30.0]]), N)


def _scan_cfg(**kw) -> SimulationConfig:
    return SimulationConfig(**{**dict(object_size_px=SIZE, probe_size_px=N, probe_radius_px=8.0,
                                      scan_step_px=6.0, scan_kind="jittered",
                                      scan_jitter_px=2.0, seed=11), **kw})


def _far_field(probe: np.ndarray, patches: np.ndarray) -> np.ndarray:
    f = np.fft.fftshift(np.fft.fft2(probe.astype(np.complex128) * patches, norm="ortho"),
                        axes=(-2, -1))
    return np.abs(f) ** 2


def test_simulated_counts_at_fractional_positions_follow_the_analytic_object():
    """End to end: noise-free counts of a jittered scan equal the forward model applied to the
    analytic object at the exact positions, not to its bilinear interpolation."""
    truth = BandLimited(seed=6)
    scan = simulate_scan(_scan_cfg(photons_per_pattern=None), obj=truth.array(SIZE))
    pos = scan.positions_px
    assert np.any(pos != np.round(pos))
    inner = np.all((pos >= 16 + 16 + 1) & (pos <= SIZE - 16 - 16 - 2), axis=1)
    assert inner.sum() >= 10
    pos = pos[inner]
    exact = _far_field(scan.probe, truth.windows(pos, N))
    bilinear = _far_field(scan.probe, _bilinear(scan.object_true, pos, N))
    got = scan.counts[inner].astype(np.float64)
    err = np.abs(got - exact).max() / exact.max()
    err_bilinear = np.abs(bilinear - exact).max() / exact.max()
    assert err < 1e-4
    assert err_bilinear > 1e-3 and err_bilinear > 10 * err
    assert scan.meta["subpixel_shift"] == "fourier"


def test_dose_and_parseval_at_fractional_positions():
    # noise-free: counts are |F(P * exact patch)|^2 (Parseval) at the nominal 1e9 photons
    scan = simulate_scan(_scan_cfg(photons_per_pattern=None, object_kind="grf"))
    patches = extract_patches_exact(scan.object_true, scan.positions_px, N)
    power = np.sum(np.abs(scan.probe.astype(np.complex128) * patches) ** 2, axis=(1, 2))
    totals = scan.counts.sum(axis=(1, 2), dtype=np.float64)
    np.testing.assert_allclose(totals, power, rtol=1e-4)
    assert abs(totals.mean() / 1e9 - 1) < 1e-4
    # with noise: the mean total count per pattern is the requested dose
    photons = 2e4
    noisy = simulate_scan(_scan_cfg(photons_per_pattern=photons))
    assert abs(noisy.counts.sum(axis=(1, 2), dtype=np.float64).mean() / photons - 1) < 0.02
    np.testing.assert_array_equal(noisy.counts, np.round(noisy.counts))


# ------------------------------------------------------------------------------------------------
# the measurement model (physics.scan_intensity: integer window under the Fourier-shifted probe)


def _smooth_probe(n: int = N, seed: int = 0) -> np.ndarray:
    """A band-limited probe that vanishes at the grid edge (Gaussian with a phase curvature)."""
    yy, xx = np.mgrid[0:n, 0:n] - n / 2
    r2 = yy ** 2 + xx ** 2
    return (np.exp(-r2 / (2 * (n / 8) ** 2)) * np.exp(1j * 0.01 * r2)).astype(np.complex64)


def test_scan_intensity_matches_the_analytic_object_at_fractional_positions():
    """Independent reference: |F(P(j) O(s + j))|^2 with O evaluated analytically at s + j."""
    truth = BandLimited(seed=3)
    rng = np.random.default_rng(1)
    pos = rng.uniform(N / 2 + 2, SIZE - N / 2 - 3, (12, 2))
    assert np.all(pos != np.round(pos))
    probe = _smooth_probe()
    ref = _far_field(probe, truth.windows(pos, N))
    got = physics.scan_intensity(torch.from_numpy(truth.array(SIZE)), torch.from_numpy(probe),
                                 torch.from_numpy(pos), N).numpy()
    bilinear = _far_field(probe, _bilinear(truth.array(SIZE), pos, N))
    err = np.abs(got - ref).max() / ref.max()
    assert err < 1e-4
    assert np.abs(bilinear - ref).max() / ref.max() > 10 * err


def test_scan_intensity_at_integer_positions_is_the_plain_forward_model():
    rng = np.random.default_rng(2)
    obj = (rng.standard_normal((64, 64)) + 1j * rng.standard_normal((64, 64))).astype(np.complex64)
    probe = np.stack([_smooth_probe(16, 0)[None][0], 0.3 * _smooth_probe(16, 1).T])
    pos = np.array([[8.0, 8.0], [20.0, 31.0], [56.0, 56.0]])
    got = physics.scan_intensity(torch.from_numpy(obj), torch.from_numpy(probe),
                                 torch.from_numpy(pos), 16)
    ref = physics.predicted_intensity(torch.from_numpy(probe), extract_patches(
        torch.from_numpy(obj)[None], torch.from_numpy(pos)[None], 16)[0])
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * float(ref.max()))


def test_shift_probe_integer_shift_is_a_roll_and_shifts_compose():
    probe = torch.from_numpy(_smooth_probe(16))
    one = physics.shift_probe(probe, torch.tensor([[1.0, -2.0]]))[0, 0]
    torch.testing.assert_close(one, torch.roll(probe, (1, -2), (0, 1)), atol=1e-5, rtol=0)
    there = physics.shift_probe(probe, torch.tensor([[0.3, 0.7]]))[0]
    back = physics.shift_probe(there, torch.tensor([[-0.3, -0.7]]))[0, 0]
    torch.testing.assert_close(back, probe, atol=1e-5, rtol=0)


def test_data_nll_of_the_truth_does_not_grow_with_dose_from_interpolation():
    """The truth's excess NLL per pixel is the Poisson noise floor (<= ~0.5), which the bilinear
    model exceeds at high dose because it smooths the object."""
    cfg = _scan_cfg(photons_per_pattern=1e8)
    scan = simulate_scan(cfg, obj=BandLimited(seed=4).array(SIZE))
    assert np.any(scan.positions_px != np.round(scan.positions_px))
    nll = float(np.mean(physics.data_nll(scan.object_true, scan)))
    pred = physics.predicted_intensity(torch.from_numpy(scan.probe), extract_patches(
        torch.from_numpy(scan.object_true)[None], torch.from_numpy(scan.positions_px)[None], N)[0])
    nll_bilinear = float(physics.excess_nll_per_pixel(
        pred, torch.from_numpy(scan.counts), 1e-6, None).mean())
    assert nll < 0.55
    assert nll_bilinear > 10 * nll
