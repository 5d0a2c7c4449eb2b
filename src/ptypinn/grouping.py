"""Grouping of scan patterns for the overlap constraint, and probe-overlap metrics (SPEC §4).

With ``gridsize`` g a group holds C = g² patterns.  C = 1: every pattern is its own group.
C > 1: for each *seed* pattern the K = ``k_neighbors`` nearest other patterns (KD-tree on the
scan positions) form a pool; a group is the seed (always column 0) plus C − 1 members drawn
without replacement from the pool.  By default there is one group per seed (B = n).  More groups
than patterns (B > n) are only possible by drawing several distinct combinations per seed
(at most ``comb(K, C - 1)`` each) and must be requested with ``allow_oversampling``.

The model only ever sees **group-relative offsets** (member centre minus group centroid, in
object pixels, columns ``(y, x)``), made in one place: :func:`relative_offsets`.

Overlap between probe footprints is measured as the area fraction shared by two discs of the
footprint radius (the lens formula, :func:`disc_overlap_fraction`), averaged over each pattern's
nearest neighbours (image-based) or over member pairs within groups (group-based).
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from ptypinn.config import GroupingConfig

__all__ = [
    "Groups",
    "group_patterns",
    "relative_offsets",
    "disc_overlap_fraction",
    "overlap_metrics",
    "probe_radius_px_from_probe",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Groups:
    """Pattern groups.

    Attributes
    ----------
    indices : int64 ``(B, C)``
        Pattern indices of each group's members; column 0 is the seed pattern.
    offsets_px : float64 ``(B, C, 2)``
        Member window centre minus group centroid, in object pixels, columns ``(y, x)``.
    """

    indices: np.ndarray
    offsets_px: np.ndarray

    @property
    def n_groups(self) -> int:
        """Number of groups B."""
        return int(self.indices.shape[0])

    @property
    def group_size(self) -> int:
        """Members per group C."""
        return int(self.indices.shape[1])


def _check_positions(positions_px: np.ndarray) -> np.ndarray:
    pos = np.asarray(positions_px, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 2:
        raise ValueError(f"positions_px: expected shape (n, 2), got {tuple(pos.shape)}")
    if not np.all(np.isfinite(pos)):
        raise ValueError("positions_px: expected finite values, got NaN/Inf")
    return pos


def relative_offsets(positions_px: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Group-relative offsets: member centre minus the group centroid.

    Parameters
    ----------
    positions_px : float ``(n, 2)``
        Window centres ``(y, x)`` in object pixels.
    indices : int ``(B, C)``
        Member indices of each group.

    Returns
    -------
    float64 ``(B, C, 2)``
        Offsets in pixels; they sum to zero over each group's members.
    """
    pos = _check_positions(positions_px)
    idx = np.asarray(indices, dtype=np.int64)
    if idx.ndim != 2:
        raise ValueError(f"indices: expected shape (B, C), got {tuple(idx.shape)}")
    members = pos[idx]  # (B, C, 2)
    return members - members.mean(axis=1, keepdims=True)


def _neighbour_pools(pos: np.ndarray, k: int) -> np.ndarray:
    """``(n, k)`` indices of each pattern's ``k`` nearest other patterns, nearest first."""
    n = pos.shape[0]
    _, nbr = cKDTree(pos).query(pos, k=k + 1)
    nbr = np.asarray(nbr, dtype=np.int64).reshape(n, k + 1)
    # Move the seed itself to the end of its row (usually it is column 0, but not necessarily
    # when positions repeat), then keep the k nearest others.
    order = np.argsort(nbr == np.arange(n)[:, None], axis=1, kind="stable")
    pools = np.take_along_axis(nbr, order, axis=1)[:, :k]
    return pools


def _draw_combinations(rng: np.random.Generator, pool_size: int, r: int, count: int) -> np.ndarray:
    """``count`` distinct r-subsets of ``range(pool_size)``, each sorted, as ``(count, r)``."""
    total = math.comb(pool_size, r)
    if count > total:  # pragma: no cover - guarded by the caller
        raise ValueError(f"count: expected <= {total}, got {count}")
    if 2 * count > total:  # dense request: enumerate and pick
        allc = np.array(list(itertools.combinations(range(pool_size), r)), dtype=np.int64)
        return allc[np.sort(rng.choice(total, size=count, replace=False))]
    chosen: set[tuple[int, ...]] = set()
    out = []
    while len(out) < count:  # sparse request: rejection sampling terminates quickly
        combo = tuple(int(v) for v in np.sort(rng.choice(pool_size, size=r, replace=False)))
        if combo not in chosen:
            chosen.add(combo)
            out.append(combo)
    return np.array(out, dtype=np.int64)


def group_patterns(positions_px: np.ndarray, cfg: GroupingConfig) -> Groups:
    """Group scan patterns into sets of C = ``cfg.gridsize**2`` neighbours.

    Parameters
    ----------
    positions_px : float ``(n, 2)``
        Window centres ``(y, x)`` in object pixels.
    cfg : GroupingConfig
        ``gridsize``, ``k_neighbors`` (pool size K), ``n_groups`` (None: one group per pattern),
        ``allow_oversampling`` (permit ``n_groups > n``), ``seed``.

    Returns
    -------
    Groups
        ``indices (B, C)`` with the seed in column 0 and the other members ordered by distance
        rank in the seed's pool; ``offsets_px (B, C, 2)`` from :func:`relative_offsets`.
        Groups come ordered by seed index.  Deterministic given ``cfg.seed``.

    Raises
    ------
    ValueError
        If ``n < C``, or ``n_groups`` exceeds what the pools allow (or exceeds n without
        ``allow_oversampling``).
    """
    pos = _check_positions(positions_px)
    n = pos.shape[0]
    c = cfg.group_size
    if n < c:
        raise ValueError(
            f"positions_px: expected at least {c} patterns for gridsize {cfg.gridsize}, got {n}"
        )
    rng = np.random.default_rng(cfg.seed)
    b = n if cfg.n_groups is None else int(cfg.n_groups)

    if c == 1:
        if b > n:
            raise ValueError(
                f"grouping.n_groups: expected <= {n} (the number of patterns; oversampling needs "
                f"gridsize > 1), got {b}"
            )
        seeds = np.arange(n) if b == n else np.sort(rng.choice(n, size=b, replace=False))
        indices = seeds.astype(np.int64)[:, None]
        return Groups(indices=indices, offsets_px=np.zeros((b, 1, 2), dtype=np.float64))

    k = min(cfg.k_neighbors, n - 1)
    if k < cfg.k_neighbors:
        log.warning("grouping.k_neighbors=%d exceeds n-1=%d; using K=%d", cfg.k_neighbors,
                    n - 1, k)
    per_seed_max = math.comb(k, c - 1)
    if b > n:
        if not cfg.allow_oversampling:
            raise ValueError(
                f"grouping.n_groups: expected <= {n} (the number of patterns) unless "
                f"grouping.allow_oversampling is true, got {b}"
            )
        if b > n * per_seed_max:
            raise ValueError(
                f"grouping.n_groups: expected <= {n * per_seed_max} (n * comb(K={k}, C-1={c - 1})"
                f" distinct combinations), got {b}"
            )
        counts = np.full(n, b // n, dtype=np.int64)
        counts[rng.choice(n, size=b % n, replace=False)] += 1
    elif b == n:
        counts = np.ones(n, dtype=np.int64)
    else:
        counts = np.zeros(n, dtype=np.int64)
        counts[rng.choice(n, size=b, replace=False)] = 1

    pools = _neighbour_pools(pos, k)
    seeds = np.flatnonzero(counts)
    if counts.max() == 1:  # one group per seed: draw all pools at once
        ranks = np.sort(np.argsort(rng.random((seeds.size, k)), axis=1)[:, : c - 1], axis=1)
        rows = [np.concatenate([seeds[:, None], np.take_along_axis(pools[seeds], ranks, 1)], 1)]
    else:
        rows = []
        for seed in seeds:
            ranks = _draw_combinations(rng, k, c - 1, int(counts[seed]))  # (count, C-1)
            members = pools[seed][ranks]
            rows.append(np.concatenate([np.full((len(ranks), 1), seed), members], 1))
    indices = np.concatenate(rows, axis=0).astype(np.int64)
    return Groups(indices=indices, offsets_px=relative_offsets(pos, indices))


def disc_overlap_fraction(distance_px: np.ndarray | float, radius_px: float) -> np.ndarray:
    """Area shared by two discs of radius r at centre distance d, as a fraction of one disc.

    ``A = 2 r² acos(d / 2r) − (d / 2) sqrt(4 r² − d²)`` for ``d < 2r`` (0 beyond), divided by
    ``π r²``.

    Parameters
    ----------
    distance_px : float or array
        Centre distances in pixels (``>= 0``).
    radius_px : float
        Disc radius in pixels (``> 0``).

    Returns
    -------
    float64 array of the shape of ``distance_px``, values in [0, 1].
    """
    if not radius_px > 0:
        raise ValueError(f"radius_px: expected > 0, got {radius_px}")
    d = np.clip(np.abs(np.asarray(distance_px, dtype=np.float64)), 0.0, 2.0 * radius_px)
    r = float(radius_px)
    area = 2.0 * r * r * np.arccos(d / (2.0 * r)) - 0.5 * d * np.sqrt(4.0 * r * r - d * d)
    return np.clip(area / (math.pi * r * r), 0.0, 1.0)


def overlap_metrics(
    positions_px: np.ndarray,
    probe_radius_px: float,
    groups: Groups | None = None,
    k: int = 6,
) -> dict[str, float]:
    """Scan density and probe-footprint overlap.

    Parameters
    ----------
    positions_px : float ``(n, 2)``
        Window centres ``(y, x)`` in object pixels.
    probe_radius_px : float
        Footprint radius in pixels (e.g. from :func:`probe_radius_px_from_probe`).
    groups : Groups, optional
        If given with C > 1, the group-based overlap is reported too.
    k : int
        Neighbours per pattern for the image-based overlap.

    Returns
    -------
    dict
        ``n_patterns``; ``nn_step_px_median`` (median nearest-neighbour distance, px);
        ``overlap_nn_mean`` (mean disc overlap of each pattern with its k nearest neighbours);
        ``overlap_group_mean`` (mean pairwise disc overlap within groups; only with groups, C>1).
        Distances and overlaps are NaN for a single pattern.
    """
    pos = _check_positions(positions_px)
    if k < 1:
        raise ValueError(f"k: expected >= 1, got {k}")
    n = pos.shape[0]
    out: dict[str, float] = {"n_patterns": float(n)}
    if n < 2:
        out["nn_step_px_median"] = math.nan
        out["overlap_nn_mean"] = math.nan
    else:
        kk = min(k, n - 1)
        dist, _ = cKDTree(pos).query(pos, k=kk + 1)
        dist = np.asarray(dist).reshape(n, kk + 1)[:, 1:]  # drop self (distance 0)
        out["nn_step_px_median"] = float(np.median(dist[:, 0]))
        out["overlap_nn_mean"] = float(disc_overlap_fraction(dist, probe_radius_px).mean())
    if groups is not None and groups.group_size > 1:
        members = pos[np.asarray(groups.indices, dtype=np.int64)]  # (B, C, 2)
        i, j = np.triu_indices(groups.group_size, k=1)
        pair_d = np.linalg.norm(members[:, i] - members[:, j], axis=-1)
        out["overlap_group_mean"] = float(disc_overlap_fraction(pair_d, probe_radius_px).mean())
    return out


def probe_radius_px_from_probe(probe: np.ndarray) -> float:
    """Footprint radius of a (possibly experimental) probe from its intensity second moment.

    ``r = sqrt(2 <rho^2>)``, with ``<rho^2>`` the ``|P|^2``-weighted mean squared distance from
    the intensity centroid (modes summed incoherently).  A uniform disc of radius ``r`` gives
    exactly ``r``; a Gaussian beam ``|P|^2 = exp(-rho^2 / s^2)`` gives ``s sqrt 2``.

    A half-maximum area (the earlier definition) fails on measured probes: the Siemens-star probe
    of ``../shared/data`` is a ring about 60 px across with a hot rim, and only its rim passes
    half the peak, which gave 14 px; its second-moment radius is 30.6 px, where the radial
    intensity has fallen to ~15 % of the peak.

    Parameters
    ----------
    probe : complex ``(H, W)`` or ``(modes, H, W)``

    Returns
    -------
    float
        Radius in pixels.
    """
    p = np.asarray(probe)
    if p.ndim not in (2, 3):
        raise ValueError(f"probe: expected shape (H, W) or (modes, H, W), got {tuple(p.shape)}")
    intensity = np.abs(p.astype(np.complex128)) ** 2
    if p.ndim == 3:
        intensity = intensity.sum(axis=0)
    total = float(intensity.sum())
    if not (np.isfinite(total) and total > 0):
        raise ValueError(f"probe: expected a finite, non-zero probe, got sum |P|^2 = {total}")
    yy, xx = np.indices(intensity.shape, dtype=np.float64)
    cy = float((intensity * yy).sum()) / total
    cx = float((intensity * xx).sum()) / total
    second = float((intensity * ((yy - cy) ** 2 + (xx - cx) ** 2)).sum()) / total
    return math.sqrt(2.0 * second)
