"""Tests for ptypinn.stitch: stitch(extract(O)) == O, crops, no border blow-up, streaming."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import binary_erosion

from ptypinn.physics import extract_patches
from ptypinn.physics import canvas_shape_px
from ptypinn.stitch import (Stitcher, crop_mask, overlap_pairs,
                            pair_overlap_products, solve_phase_offsets, stitch_patches,
                            synchronize_phases)

N = 16


def _extract(obj: np.ndarray, positions_px: np.ndarray, size: int = N) -> torch.Tensor:
    """Patches ``(M, N, N)`` of ``obj`` via the package's one translation function."""
    o = torch.from_numpy(obj).unsqueeze(0)
    p = torch.from_numpy(positions_px).unsqueeze(0)
    return extract_patches(o, p, size)[0]


def _random_object(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    amp = rng.uniform(0.3, 1.0, shape)
    phase = rng.uniform(-np.pi, np.pi, shape)
    return (amp * np.exp(1j * phase)).astype(np.complex64)


def _raster(ny: int, nx: int, step: int, origin: float) -> np.ndarray:
    y, x = np.meshgrid(np.arange(ny) * step, np.arange(nx) * step, indexing="ij")
    return (np.stack([y.ravel(), x.ravel()], axis=1) + origin).astype(np.float64)


def _window_union(shape: tuple[int, int], positions_px: np.ndarray, size: int) -> np.ndarray:
    """Pixels covered by integer windows of ``size`` centred at the positions (independent)."""
    cover = np.zeros(shape, dtype=bool)
    for y, x in positions_px:
        y0, x0 = int(y - size / 2), int(x - size / 2)
        cover[y0:y0 + size, x0:x0 + size] = True
    return cover


def _stitch(patches: torch.Tensor, positions_px: np.ndarray, shape, crop_px=None):
    s = Stitcher(shape, N, crop_px=crop_px)
    s.add(patches, torch.from_numpy(positions_px))
    return s.result()


def test_canvas_shape_px() -> None:
    assert canvas_shape_px(np.array([[8.0, 8.0]]), N) == (N + 1, N + 1)
    assert canvas_shape_px(np.array([[8.0, 8.0], [20.5, 30.25]]), N) == (30, 40)
    with pytest.raises(ValueError, match="positions_px: expected window starts >= 0"):
        canvas_shape_px(np.array([[7.5, 8.0]]), N)


def test_gridsize1_raster_integer_positions_exact() -> None:
    pos = _raster(8, 9, step=6, origin=N / 2)
    shape = canvas_shape_px(pos, N)
    obj = _random_object(shape)
    out, covered = _stitch(_extract(obj, pos), pos, shape)
    assert out.dtype == np.complex64 and covered.dtype == bool and out.shape == shape
    np.testing.assert_array_equal(covered, _window_union(shape, pos, N))
    np.testing.assert_allclose(out[covered], obj[covered], atol=1e-6)
    assert not out[~covered].any()


def test_group_of_four_layout_integer_positions_exact() -> None:
    step = 8  # members at group centre +- step/2 in y and x
    centres = _raster(4, 4, step=2 * step, origin=N / 2 + step / 2)
    d = np.array([[-1, -1], [-1, 1], [1, -1], [1, 1]], dtype=np.float64) * step / 2
    pos = (centres[:, None, :] + d[None]).reshape(-1, 2)
    shape = canvas_shape_px(pos, N)
    obj = _random_object(shape, seed=3)
    out, covered = _stitch(_extract(obj, pos), pos, shape)
    np.testing.assert_array_equal(covered, _window_union(shape, pos, N))
    np.testing.assert_allclose(out[covered], obj[covered], atol=1e-6)


def _smooth_object(shape: tuple[int, int], period_px: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    k = 2 * np.pi / period_px
    amp = 0.7 + 0.2 * np.cos(k * yy) * np.cos(k * xx)
    phase = 0.5 * np.sin(k * (yy + 0.5 * xx))
    return (amp * np.exp(1j * phase)).astype(np.complex64)


def test_subpixel_positions_smooth_object_and_constant() -> None:
    rng = np.random.default_rng(7)
    pos = _raster(10, 10, step=5, origin=N / 2 + 1) + rng.uniform(0, 1, (100, 2))
    shape = canvas_shape_px(pos, N)
    # Why a tolerance: sub-pixel extraction samples O bilinearly at i + f and placement spreads
    # patch pixel j back onto canvas pixels i0 + j and i0 + j + 1 with the same weights, so every
    # contribution to canvas pixel i is a bilinear interpolant of O inside its 3x3 neighbourhood:
    # the result is a convex combination of those 9 values (checked exactly below, for any O).
    # Where both neighbours contribute the first-order terms cancel, but at the edge of a patch
    # (and of the covered region) only one side does, so the error is ~ f |grad O| there: small
    # only for a low-frequency object, and zero only for a constant one.
    obj = _smooth_object(shape, period_px=1024.0)
    out, covered = _stitch(_extract(obj, pos), pos, shape)
    assert covered.sum() > 0.8 * covered.size
    err = np.abs(out - obj)
    pad = np.pad(obj, 1, mode="edge")
    hull = np.stack([pad[1 + dy:1 + dy + shape[0], 1 + dx:1 + dx + shape[1]]
                     for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
    bound = np.abs(hull - obj).max(axis=0)
    assert np.all(err[covered] <= bound[covered] + 1e-6)
    interior = binary_erosion(covered)  # the outermost ring sees only one side of O
    assert err[interior].max() / np.abs(obj[interior]).max() < 1e-3
    const = np.full(shape, 0.6 * np.exp(0.4j), dtype=np.complex64)
    out_c, covered_c = _stitch(_extract(const, pos), pos, shape)
    np.testing.assert_array_equal(covered_c, covered)
    np.testing.assert_allclose(out_c[covered_c], const[covered_c], rtol=0, atol=1e-6)


def test_crop_uses_only_the_central_pixels() -> None:
    crop = 6
    pos = _raster(6, 6, step=4, origin=N / 2)
    shape = canvas_shape_px(pos, N)
    obj = _random_object(shape, seed=5)
    patches = _extract(obj, pos).clone()
    outside = torch.from_numpy(crop_mask(N, crop)) == 0
    patches[:, outside] = 1e6  # garbage outside the crop must not leak into the result
    out, covered = _stitch(patches, pos, shape, crop_px=crop)
    np.testing.assert_array_equal(covered, _window_union(shape, pos, crop))
    np.testing.assert_allclose(out[covered], obj[covered], atol=1e-6)
    # The crop is centred on the window centre: pixel N//2 and crop//2 before it.
    m = crop_mask(N, crop)
    assert m.sum() == crop * crop
    rows = np.flatnonzero(m.any(axis=1))
    assert rows[0] == N // 2 - crop // 2 and rows[-1] == N // 2 + crop // 2 - 1


def test_no_blow_up_at_patch_borders() -> None:
    rng = np.random.default_rng(11)
    m = 60
    pos = rng.uniform(N / 2, 60, size=(m, 2))
    shape = canvas_shape_px(pos, N)
    # Random amplitudes with a small random phase: contributions add up instead of cancelling,
    # so any excess weight in the numerator shows up as |result| > max |patches|.
    amp = rng.uniform(0.5, 1.0, size=(m, N, N))
    patches = torch.from_numpy((amp * np.exp(0.3j * rng.normal(size=(m, N, N)))).astype(
        np.complex64))
    bound = float(patches.abs().max())
    for crop in (None, 9):
        for min_weight in (1e-3, 0.0):
            s = Stitcher(shape, N, crop_px=crop)
            s.add(patches, torch.from_numpy(pos))
            out, covered = s.result(min_weight=min_weight)
            assert covered.any()
            # A weighted average (non-negative weights) cannot exceed its largest input.
            assert np.abs(out).max() <= bound * (1 + 1e-5)


def test_streaming_small_batches_equal_one_batch() -> None:
    rng = np.random.default_rng(2)
    m = 97
    pos = rng.uniform(N / 2, 50, size=(m, 2))
    shape = canvas_shape_px(pos, N)
    patches = torch.from_numpy(
        (rng.normal(size=(m, N, N)) + 1j * rng.normal(size=(m, N, N))).astype(np.complex64))
    one, cov_one = stitch_patches([(patches, torch.from_numpy(pos))], shape, N, crop_px=10)
    chunks = [(patches[i:i + 7], torch.from_numpy(pos[i:i + 7])) for i in range(0, m, 7)]
    many, cov_many = stitch_patches(iter(chunks), shape, N, crop_px=10)
    np.testing.assert_array_equal(cov_one, cov_many)
    np.testing.assert_allclose(many, one, atol=1e-5, rtol=1e-5)


def test_empty_stitcher_and_bad_inputs() -> None:
    s = Stitcher((40, 40), N)
    out, covered = s.result()
    assert not covered.any() and not out.any()
    with pytest.raises(ValueError, match="positions_px: expected windows inside"):
        s.add(torch.zeros(1, N, N, dtype=torch.complex64), torch.tensor([[7.0, 20.0]]))
    with pytest.raises(ValueError, match="positions_px: expected windows inside"):
        s.add(torch.zeros(1, N, N, dtype=torch.complex64), torch.tensor([[20.0, 32.5]]))
    with pytest.raises(ValueError, match="patches: expected shape"):
        s.add(torch.zeros(1, N, N + 1, dtype=torch.complex64), torch.tensor([[20.0, 20.0]]))
    with pytest.raises(ValueError, match="positions_px: expected shape"):
        s.add(torch.zeros(2, N, N, dtype=torch.complex64), torch.tensor([[20.0, 20.0]]))
    with pytest.raises(ValueError, match="crop_px"):
        Stitcher((40, 40), N, crop_px=N + 1)
    # The last integer window that fits: start 40 - 16 = 24, centre 32.
    s.add(torch.ones(1, N, N, dtype=torch.complex64), torch.tensor([[32.0, 32.0]]))
    out, covered = s.result()
    assert covered.sum() == N * N and np.allclose(out[covered], 1.0)


# ------------------------------------------------------------------------------------------------
# phase synchronization


def _smooth_phase_object(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Amplitude 0.5..1 and phase within +-1 rad, both smooth over ~4 px (bilinear-friendly)."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    a = gaussian_filter(rng.normal(size=shape), 4.0)
    b = gaussian_filter(rng.normal(size=shape), 4.0)
    a = 0.5 + 0.5 * (a - a.min()) / (a.max() - a.min())
    b = 2.0 * (b - b.min()) / (b.max() - b.min()) - 1.0
    return (a * np.exp(1j * b)).astype(np.complex64)


def test_overlap_pairs_match_brute_force() -> None:
    rng = np.random.default_rng(3)
    pos = rng.uniform(0, 60, (80, 2))
    got = {tuple(p) for p in overlap_pairs(pos, 7.5)}
    want = {(i, j) for i in range(80) for j in range(i + 1, 80)
            if np.abs(pos[i] - pos[j]).max() <= 7.5}
    assert got == want and len(want) > 20
    assert overlap_pairs(pos[:1], 5.0).shape == (0, 2)
    with pytest.raises(ValueError, match="max_sep_px"):
        overlap_pairs(pos, 0.0)


@pytest.mark.parametrize("delta", [(3.0, -5.0), (2.4, 1.7)])
def test_pair_overlap_product_phase_is_the_offset_difference(delta) -> None:
    obj = _smooth_phase_object((64, 64))
    pos = np.array([[30.0, 30.0], [30.0 + delta[0], 30.0 + delta[1]]])
    k = 12
    crops = _extract(obj, pos, size=k)
    rot = torch.polar(torch.ones(2), torch.tensor([0.4, -0.3]))
    m = pair_overlap_products(crops[:1] * rot[0], crops[1:] * rot[1],
                              torch.tensor([delta], dtype=torch.float64))
    assert float(torch.angle(m)[0]) == pytest.approx(0.7, abs=0.02)
    # independent check of the shared-pixel sum for the integer shift: plain slicing
    if float(delta[0]).is_integer():
        dy, dx = int(delta[0]), int(delta[1])
        ci, cj = crops[0].numpy(), crops[1].numpy()
        want = (ci[dy:, :k + dx] * np.conj(cj[:k - dy, -dx:])).sum()
        assert complex(m[0] / (rot[0] * rot[1].conj())) == pytest.approx(complex(want), rel=1e-4)


def test_solve_phase_offsets_recovers_offsets_up_to_the_mean() -> None:
    rng = np.random.default_rng(0)
    n = 50
    pos = rng.uniform(0, 40, (n, 2))
    pairs = overlap_pairs(pos, 12.0)
    truth = rng.uniform(-1.0, 1.0, n)
    truth -= truth.mean()
    # patch i carries phase truth_i: arg M_ij = truth_i - truth_j; the fix is theta = -truth
    prod = rng.uniform(0.5, 2.0, len(pairs)) * np.exp(1j * (truth[pairs[:, 0]] - truth[pairs[:, 1]]))
    theta = solve_phase_offsets(pairs, prod, n)
    connected = np.isin(np.arange(n), pairs)
    assert np.allclose(theta[connected], -truth[connected], atol=2e-3)
    # a patch without neighbours is left alone; no pairs at all -> zeros
    lone = solve_phase_offsets(np.array([[0, 1]]), np.array([np.exp(0.5j)]), 3)
    assert lone[2] == 0.0 and lone[0] - lone[1] == pytest.approx(-0.5, abs=1e-3)
    assert np.array_equal(solve_phase_offsets(np.zeros((0, 2), int), np.zeros(0), 4), np.zeros(4))
    with pytest.raises(ValueError, match="products"):
        solve_phase_offsets(pairs, prod[:-1], n)


def test_synchronize_phases_undoes_per_patch_offsets_in_chunks() -> None:
    """Patches of one object, each with its own constant phase error (noise + a ramp across the
    scan): after synchronization every patch's total error is the same constant, and the
    stitched phase matches the object; the callback never sees more than a chunk's worth."""
    obj = _smooth_phase_object((96, 96), seed=1)
    rng = np.random.default_rng(2)
    pos = _raster(15, 15, 4, 16.0) + rng.uniform(-0.5, 0.5, (225, 2))
    err = rng.normal(0, 0.3, 225) + 0.02 * (pos[:, 0] + pos[:, 1])
    patches = _extract(obj, pos) * torch.polar(torch.ones(225), torch.from_numpy(err).float())[
        :, None, None]
    asked = []

    def patches_of(rows: np.ndarray) -> torch.Tensor:
        asked.append(len(rows))
        return patches[torch.from_numpy(rows)]

    theta = synchronize_phases(patches_of, pos, N, crop_px=12, chunk=32)
    total = err + theta
    assert np.std(total) < 0.01  # was 0.3 + ramp
    assert max(asked) < 225 and sum(asked) >= 225

    def phase_rms(p: torch.Tensor) -> float:
        got, cov = _stitch(p, pos, obj.shape, crop_px=12)
        d = np.angle(got[cov] * np.conj(obj[cov]))
        d -= np.angle(np.mean(np.exp(1j * d)))
        return float(np.sqrt(np.mean(np.angle(np.exp(1j * d)) ** 2)))

    synced = patches * torch.polar(torch.ones(225), torch.from_numpy(theta).float())[:, None, None]
    assert phase_rms(synced) < 0.02 < 0.1 < phase_rms(patches)
