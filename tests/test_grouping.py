"""Tests for ptypinn.grouping: neighbour groups, relative offsets and overlap metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ptypinn.config import GroupingConfig
from ptypinn.grouping import (
    Groups,
    disc_overlap_fraction,
    group_patterns,
    overlap_metrics,
    probe_radius_px_from_probe,
    relative_offsets,
)


def _raster(ny: int, nx: int, step: float, origin: float = 40.0) -> np.ndarray:
    y, x = np.meshgrid(np.arange(ny) * step, np.arange(nx) * step, indexing="ij")
    return np.stack([y.ravel(), x.ravel()], axis=1) + origin


def _random_positions(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(32, 300, size=(n, 2))


def _brute_knn(pos: np.ndarray, i: int, k: int) -> set[int]:
    d = np.linalg.norm(pos - pos[i], axis=1)
    d[i] = np.inf
    return set(np.argsort(d, kind="stable")[:k].tolist())


@pytest.mark.parametrize("gridsize", [2, 3])
def test_seed_is_column_zero_and_members_among_k_nearest(gridsize: int) -> None:
    pos = _random_positions(200)
    k = 12
    g = group_patterns(pos, GroupingConfig(gridsize=gridsize, k_neighbors=k, seed=3))
    c = gridsize**2
    assert g.indices.shape == (200, c) and g.indices.dtype == np.int64
    assert g.group_size == c and g.n_groups == 200
    np.testing.assert_array_equal(g.indices[:, 0], np.arange(200))
    for row in g.indices:
        seed, others = int(row[0]), row[1:].tolist()
        assert len(set(others)) == c - 1 and seed not in others
        assert set(others) <= _brute_knn(pos, seed, k)


def test_offsets_are_member_minus_centroid() -> None:
    pos = _random_positions(100)
    g = group_patterns(pos, GroupingConfig(gridsize=2, k_neighbors=6, seed=0))
    assert g.offsets_px.shape == (100, 4, 2) and g.offsets_px.dtype == np.float64
    for b in range(g.n_groups):
        members = np.array([pos[i] for i in g.indices[b]])
        centroid = members.sum(axis=0) / 4.0
        np.testing.assert_allclose(g.offsets_px[b], members - centroid, atol=1e-12)
    np.testing.assert_allclose(g.offsets_px.sum(axis=1), 0.0, atol=1e-9)
    np.testing.assert_allclose(relative_offsets(pos, g.indices), g.offsets_px, atol=0)


def test_gridsize1_all_patterns_zero_offsets_and_subset() -> None:
    pos = _random_positions(50)
    g = group_patterns(pos, GroupingConfig(gridsize=1))
    np.testing.assert_array_equal(g.indices[:, 0], np.arange(50))
    assert g.offsets_px.shape == (50, 1, 2) and not g.offsets_px.any()
    sub = group_patterns(pos, GroupingConfig(gridsize=1, n_groups=20, seed=5))
    assert sub.n_groups == 20 and len(set(sub.indices[:, 0].tolist())) == 20
    assert not sub.offsets_px.any()
    with pytest.raises(ValueError, match="grouping.n_groups.*50"):
        group_patterns(pos, GroupingConfig(gridsize=1, n_groups=51, allow_oversampling=True))


def test_deterministic_given_seed() -> None:
    pos = _random_positions(120)
    cfg = GroupingConfig(gridsize=2, k_neighbors=8, seed=11)
    a, b = group_patterns(pos, cfg), group_patterns(pos, cfg)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.offsets_px, b.offsets_px)
    c = group_patterns(pos, GroupingConfig(gridsize=2, k_neighbors=8, seed=12))
    assert not np.array_equal(a.indices, c.indices)


def test_subset_of_seeds() -> None:
    pos = _random_positions(100)
    g = group_patterns(pos, GroupingConfig(gridsize=2, n_groups=30, seed=2))
    assert g.n_groups == 30 and len(set(g.indices[:, 0].tolist())) == 30


def test_oversampling_refused_unless_allowed() -> None:
    pos = _random_positions(40)
    with pytest.raises(ValueError, match=r"grouping\.n_groups: expected <= 40"):
        group_patterns(pos, GroupingConfig(gridsize=2, k_neighbors=6, n_groups=100))
    cfg = GroupingConfig(gridsize=2, k_neighbors=6, n_groups=100, allow_oversampling=True)
    g = group_patterns(pos, cfg)
    assert g.n_groups == 100
    # Distinct member sets per seed, seed always in column 0, members among the 6 nearest.
    sets = {(int(r[0]), tuple(sorted(r[1:].tolist()))) for r in g.indices}
    assert len(sets) == 100
    for row in g.indices:
        assert set(row[1:].tolist()) <= _brute_knn(pos, int(row[0]), 6)
    # comb(6, 3) = 20 combinations per seed: 40 * 20 = 800 is the most possible.
    full = group_patterns(pos, GroupingConfig(gridsize=2, k_neighbors=6, n_groups=800,
                                              allow_oversampling=True))
    assert len({(int(r[0]), tuple(sorted(r[1:].tolist()))) for r in full.indices}) == 800
    with pytest.raises(ValueError, match=r"grouping\.n_groups: expected <= 800"):
        group_patterns(pos, GroupingConfig(gridsize=2, k_neighbors=6, n_groups=801,
                                           allow_oversampling=True))


def test_too_few_patterns() -> None:
    with pytest.raises(ValueError, match="positions_px: expected at least 4"):
        group_patterns(_random_positions(3), GroupingConfig(gridsize=2))
    with pytest.raises(ValueError, match="positions_px: expected shape"):
        group_patterns(np.zeros((5, 3)), GroupingConfig(gridsize=1))


def test_groups_properties() -> None:
    g = Groups(indices=np.zeros((7, 9), np.int64), offsets_px=np.zeros((7, 9, 2)))
    assert (g.n_groups, g.group_size) == (7, 9)


def test_disc_overlap_analytic_values() -> None:
    r = 10.0
    assert disc_overlap_fraction(0.0, r) == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(disc_overlap_fraction(np.array([20.0, 25.0, 100.0]), r), 0.0)
    # d = r: lens area = 2 r^2 acos(1/2) - (r/2) sqrt(3) r = r^2 (2 pi / 3 - sqrt(3) / 2).
    expected = (2 * math.pi / 3 - math.sqrt(3) / 2) / math.pi  # ~0.391
    assert disc_overlap_fraction(r, r) == pytest.approx(expected, rel=1e-12)
    assert disc_overlap_fraction(3.0, 3.0) == pytest.approx(expected, rel=1e-12)
    d = np.linspace(0, 25, 11)
    vals = disc_overlap_fraction(d, r)
    assert vals.shape == d.shape and np.all(np.diff(vals) <= 0)
    with pytest.raises(ValueError, match="radius_px"):
        disc_overlap_fraction(1.0, 0.0)


def test_overlap_metrics_on_raster() -> None:
    step, r = 10.0, 10.0
    pos = _raster(12, 12, step)
    m = overlap_metrics(pos, probe_radius_px=r, k=4)
    assert m["n_patterns"] == 144
    assert m["nn_step_px_median"] == pytest.approx(step)
    # Interior patterns have 4 neighbours at distance = step = r; edge/corner patterns fill their
    # 4 nearest with diagonal neighbours at step*sqrt(2) (overlap f2) or at 2*step (overlap 0).
    f1 = (2 * math.pi / 3 - math.sqrt(3) / 2) / math.pi
    d2 = step * math.sqrt(2)
    f2 = (2 * r * r * math.acos(d2 / (2 * r)) - d2 / 2 * math.sqrt(4 * r * r - d2 * d2)) / (
        math.pi * r * r)
    n_corner, n_edge, n_inner = 4, 4 * 10, 100
    expected = (n_inner * 4 * f1 + n_edge * (3 * f1 + f2) + n_corner * (2 * f1 + f2)) / (
        144 * 4)
    assert m["overlap_nn_mean"] == pytest.approx(expected, rel=1e-9)
    assert "overlap_group_mean" not in m


def test_overlap_metrics_group_based() -> None:
    step, r = 8.0, 10.0
    # 2x2 blocks: pairwise distances within each group are step (4 pairs) and step*sqrt2 (2).
    pos = _raster(2, 2, step)
    groups = Groups(indices=np.array([[0, 1, 2, 3]]),
                    offsets_px=relative_offsets(pos, np.array([[0, 1, 2, 3]])))
    m = overlap_metrics(pos, r, groups=groups, k=2)

    def lens(d: float) -> float:
        return (2 * r * r * math.acos(d / (2 * r)) - d / 2 * math.sqrt(4 * r * r - d * d)) / (
            math.pi * r * r)

    assert m["overlap_group_mean"] == pytest.approx((4 * lens(step) + 2 * lens(step * 2**0.5)) / 6)
    g1 = group_patterns(pos, GroupingConfig(gridsize=1))
    assert "overlap_group_mean" not in overlap_metrics(pos, r, groups=g1)
    single = overlap_metrics(pos[:1], r)
    assert math.isnan(single["nn_step_px_median"]) and single["n_patterns"] == 1


def test_probe_radius_from_disc_probe() -> None:
    n, radius = 64, 12.0
    yy, xx = np.mgrid[:n, :n] - n / 2
    disc = (np.hypot(yy, xx) <= radius).astype(np.complex64) * np.exp(1j * 0.3)
    assert probe_radius_px_from_probe(disc) == pytest.approx(radius, rel=0.03)
    # off-centre: measured about the intensity centroid, not the window centre
    assert probe_radius_px_from_probe(np.roll(disc, (7, -5), axis=(0, 1))) == pytest.approx(
        radius, rel=0.03)
    # Gaussian |P|^2 = exp(-rho^2 / s^2): <rho^2> = s^2 in 2-D, so r = s sqrt 2.
    s = 10.0
    gauss = np.exp(-(yy**2 + xx**2) / (2 * s * s)).astype(np.complex64)
    assert probe_radius_px_from_probe(gauss) == pytest.approx(s * math.sqrt(2), rel=0.03)
    modes = np.stack([disc, 0.5 * disc])
    assert probe_radius_px_from_probe(modes) == pytest.approx(radius, rel=0.03)
    # a ring (hot rim, dim centre) counts its whole footprint, not only the rim above half max
    rho = np.hypot(yy, xx)
    ring = np.where(rho <= 20, np.where(rho >= 14, 1.0, 0.5), 0.0).astype(np.complex64)
    assert probe_radius_px_from_probe(ring) > 18.0
    with pytest.raises(ValueError, match="probe"):
        probe_radius_px_from_probe(np.zeros((8, 8), np.complex64))
    with pytest.raises(ValueError, match="probe"):
        probe_radius_px_from_probe(np.ones((2, 2, 8, 8), np.complex64))
