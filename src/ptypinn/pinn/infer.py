"""Streaming inference: bundle + scan -> stitched object, with bounded memory.

Patterns are grouped exactly as in training (one group per pattern, the pattern as its seed),
run through the model as counts in batches under ``torch.inference_mode`` (optionally bf16
autocast), and each group's *seed* patch is added to a :class:`~ptypinn.stitch.Stitcher` at that
pattern's position, so every pattern contributes once.  Only one batch of patterns and the
stitching canvases live on the device; counts are read one batch at a time.

With ``infer.phase_sync`` (the default) the network still runs once per pattern: that pass
stitches the patches as they come and keeps their central crops (plus the whole patches of the
few patterns on the rim of the covered region) in an array made by the caller's ``allocate``
(in memory, or a memory-mapped temporary file from :func:`ptypinn.io.scratch_array`).  The phase
of every crop relative to its overlapping neighbours is then computed from that cache, one
constant phase per patch that makes them agree is solved for
(:func:`ptypinn.stitch.synchronize_phases`), and the cached crops are stitched again with those
offsets.  The synchronized object is kept only if it lowers the data NLL (a truth-free rule, the
same for every network arm; measured in ``docs/benchmarks.md``).  Without synchronization each
patch keeps the constant phase the network gave it, and their scatter blurs the stitched phase
(see :mod:`ptypinn.stitch`).

The reconstruction lives in the scan's own object frame: pixel ``(0, 0)`` is the origin of
``scan.positions_px``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from ptypinn.config import InferConfig
from ptypinn.data import ScanData, pattern_totals, probe_power, to_photon_units
from ptypinn.grouping import group_patterns
from ptypinn.metrics import assert_not_degenerate
from ptypinn.pinn.bundle import Bundle
from ptypinn.parallel import process_group, shard_bounds
from ptypinn.physics import data_nll, window_starts
from ptypinn.stitch import Stitcher, crop_start_px, default_crop_px, synchronize_phases

__all__ = ["Reconstruction", "resolve_device", "phase_sync_reg", "reconstruct", "process_group",
           "batch_size_for", "AUTO_BATCH_SIZE",
           "MISMATCH_TOLERANCE", "bundle_beam_power", "bundle_mismatch", "prepare_scan"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reconstruction:
    """A stitched reconstruction in the scan's object frame.

    Attributes
    ----------
    object : complex64 ``(Hy, Wx)``; stitched through each patch's central crop where
        ``covered``; outside it, on the rim the crops leave but the probe lights, the stitch of the
        whole patches (the network's own, less constrained prediction there); 1 (free space)
        where no patch reaches.  Score it over ``covered``.
    covered : bool ``(Hy, Wx)``; pixels reached by at least one (cropped) patch.
    nll_per_pattern : float64 ``(n,)``; Poisson NLL per pixel minus the saturated model's, of the
        measured counts under ``object`` and the scan's probe.
    wall_time_s : float; inference + stitching (excludes the NLL pass).
    crop_px : int; central crop of every patch used for stitching.
    phase_offsets_rad : float64 ``(n,)``; the constant phase added to each pattern's patch by
        phase synchronization before stitching (zeros when it was not applied).
    phase_sync_applied : bool; whether the synchronized object was kept (it is kept only when
        it lowers the data NLL, the same truth-free rule for every network arm).
    nll_without_sync : float or None; mean data NLL per pixel of the unsynchronized object
        (None when ``infer.phase_sync`` is off).
    """

    object: np.ndarray
    covered: np.ndarray
    nll_per_pattern: np.ndarray
    wall_time_s: float
    crop_px: int
    phase_offsets_rad: np.ndarray
    phase_sync_applied: bool = False
    nll_without_sync: float | None = None

    @property
    def patterns_per_s(self) -> float:
        return self.nll_per_pattern.shape[0] / self.wall_time_s if self.wall_time_s > 0 else math.nan


def resolve_device(name: str) -> torch.device:
    """``'auto'`` -> CUDA when available, else CPU; anything else as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def phase_sync_reg(cfg: InferConfig, group_size: int) -> float:
    """``infer.phase_sync_reg``, or its default: 0 for gridsize > 1, 0.01 for gridsize 1.

    Measured on the "lines" benchmark (cpu preset): gridsize-1 patches carry a common phase
    ramp (-0.002 rad/px, as large as its spread) that an unregularized synchronization integrates
    into a ramp across the scan (phase Pearson 0.86 -> 0.72, SSIM unchanged at 0.65); with 0.01
    (offset patterns slower than ~30 scan steps left alone) SSIM 0.78, Pearson 0.81.  Gridsize-2
    patches carry a 10x smaller ramp, and 0 is best there (phase SSIM 0.969 vs 0.951 with 0.01).
    Re-checked without the truth on a second object family (grf, ``bench/defaults.py``,
    docs/benchmarks.md): the data NLL picks the same values on both families.
    """
    if cfg.phase_sync_reg is not None:
        return float(cfg.phase_sync_reg)
    return 0.0 if group_size > 1 else 0.01


MISMATCH_TOLERANCE = {"probe_power": 0.25, "photons_per_pattern": 1.0, "probe_correlation": 0.9}
"""When :func:`bundle_mismatch` warns: the scan's probe power (photons per pattern through free
space) differs from the training probe's by more than 25 %; its photons per pattern differ from
the training scan's by more than a factor 2 (wider, since another object transmits
differently under the same beam); or the normalized overlap ``|<P_train, P_scan>| / (|P_train|
|P_scan|)`` of the two probes is below 0.9."""


def bundle_beam_power(bundle: Bundle) -> float:
    """``sum |P|^2`` of the bundle's probe: the training beam's photons per pattern through free
    space (photon units)."""
    return probe_power(bundle.model.probe.detach().cpu().numpy())


def bundle_mismatch(bundle: Bundle, scan: ScanData,
                    tolerance: dict[str, float] = MISMATCH_TOLERANCE) -> list[str]:
    """Reasons why ``bundle`` may not fit ``scan`` (its beam or flux), one line each; empty when
    it fits within ``tolerance`` (:data:`MISMATCH_TOLERANCE`).  A probe-conditioned bundle
    (``model.probe_input``) is not checked for the probe's shape (only its power and the flux).

    Parameters
    ----------
    bundle : Bundle
    scan : ScanData, in photon units (:func:`prepare_scan`).
    """
    out = []
    p_train = bundle.model.probe.detach().cpu().numpy()
    p_scan = scan.probe_modes
    power_train, power_scan = probe_power(p_train), probe_power(p_scan)
    # a probe-conditioned bundle (model.probe_input) expects another probe: only the flux counts
    if not bundle.config.model.probe_input:
        if abs(power_scan / power_train - 1) > tolerance["probe_power"]:
            out.append(f"probe power {power_scan:.4g} photons differs from the training probe's "
                       f"{power_train:.4g} by more than {tolerance['probe_power']:.0%}")
        if p_train.shape == p_scan.shape:
            overlap = abs(np.vdot(p_train, p_scan)) / math.sqrt(power_train * power_scan)
            if overlap < tolerance["probe_correlation"]:
                out.append(f"probe shape differs from the training probe's (normalized overlap "
                           f"{overlap:.3f} < {tolerance['probe_correlation']})")
        else:
            out.append(f"probe shape {p_scan.shape} differs from the training probe's "
                       f"{p_train.shape}")
    trained = bundle.manifest.get("training", {}).get("photons_per_pattern")
    if trained:
        photons = float(pattern_totals(scan).mean())
        ratio = photons / float(trained)
        if not ratio > 0 or abs(math.log(ratio)) > math.log1p(tolerance["photons_per_pattern"]):
            out.append(f"photons per pattern {photons:.4g} differ from the "
                       f"training scan's {float(trained):.4g} by more than a factor "
                       f"{1 + tolerance['photons_per_pattern']:g}")
    return out


def prepare_scan(bundle: Bundle, scan: ScanData, photons_per_pattern: float | None = None
                 ) -> ScanData:
    """``scan`` in photon units for ``bundle``, with a warning when the two do not match.

    The rule (:func:`ptypinn.data.to_photon_units`, ``auto``): a scan whose probe is already in
    photon units keeps it (``file-units``); otherwise the probe gets the power of the bundle's
    training probe (``training-beam``: the same beam).  Every reason from
    :func:`bundle_mismatch` is logged as a warning.

    Raises
    ------
    ValueError
        Patterns of another size than the bundle's, or fewer than a group.
    """
    _check_scan(bundle, scan)
    scan = to_photon_units(scan, photons_per_pattern=photons_per_pattern,
                           beam_power_photons=bundle_beam_power(bundle))
    for reason in bundle_mismatch(bundle, scan):
        log.warning("bundle applied to a scan it was not trained for: %s", reason)
    return scan


def _check_scan(bundle: Bundle, scan: ScanData) -> None:
    if scan.pattern_size != bundle.pattern_size:
        raise ValueError(f"scan: expected {bundle.pattern_size}x{bundle.pattern_size} patterns "
                         f"(the bundle's), got {scan.pattern_size}x{scan.pattern_size}")
    if scan.n_patterns < bundle.group_size:
        raise ValueError(f"scan: expected at least {bundle.group_size} patterns, got "
                         f"{scan.n_patterns}")


def _batched_counts(counts, rows: np.ndarray) -> torch.Tensor:
    """``counts[rows]`` for an int array ``rows`` of any shape, reading each pattern once.

    ``counts`` is anything indexable like a numpy array along its first axis (an array, a
    memory map, a lazy reader): it is indexed once per batch with sorted unique rows.
    """
    uniq, inverse = np.unique(rows, return_inverse=True)
    block = torch.from_numpy(np.ascontiguousarray(counts[uniq]))
    return block[torch.from_numpy(inverse.reshape(rows.shape))]


def _rim_patterns(positions_px: np.ndarray, patch_size: int, covered: np.ndarray
                  ) -> np.ndarray:
    """Indices of the patterns whose whole window (with its bilinear margin) reaches a pixel
    outside ``covered``: the only patches the whole-patch stitch needs on the rim."""
    hy, wx = covered.shape
    outside = np.pad(~covered, ((0, 1), (0, 1)), constant_values=True)
    # integral image: the count of uncovered pixels in any window is four look-ups
    integral = np.zeros((hy + 2, wx + 2), dtype=np.int64)
    integral[1:, 1:] = outside.cumsum(0).cumsum(1)
    start = np.floor(window_starts(np.asarray(positions_px, dtype=np.float64), patch_size))
    y0 = np.clip(start[:, 0].astype(np.int64), 0, hy + 1)
    x0 = np.clip(start[:, 1].astype(np.int64), 0, wx + 1)
    y1 = np.clip(y0 + patch_size + 1, 0, hy + 1)
    x1 = np.clip(x0 + patch_size + 1, 0, wx + 1)
    n_out = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    return np.flatnonzero(n_out > 0)


AUTO_BATCH_SIZE = {"cpu": 64, "cuda": 256}
"""``infer.batch_size`` None: patterns per network batch by device type.  CPU: measured on the
CPU box (64² patterns, gridsize 2, width 16; docs/benchmarks.md, "Speed (issue 16)"): 64 was
1.5x faster than 256 and 2x faster than 1024 (the activations of a batch stay in cache).  CUDA:
the earlier fixed default, not yet measured."""


def batch_size_for(cfg: InferConfig, device: torch.device) -> int:
    """``cfg.batch_size``, or :data:`AUTO_BATCH_SIZE` of ``device`` when it is None."""
    if cfg.batch_size is not None:
        return int(cfg.batch_size)
    return AUTO_BATCH_SIZE.get(device.type, AUTO_BATCH_SIZE["cuda"])


def _share_blocks(array: np.ndarray, bounds: np.ndarray, chunk: int,
                  device: torch.device) -> None:
    """Give every rank rows ``bounds[r]:bounds[r + 1]`` of ``array`` (complex), which rank ``r``
    filled: broadcast from their owner in chunks of ``chunk`` rows (memory O(chunk))."""
    rank, _ = process_group()
    for r in range(len(bounds) - 1):
        for a in range(int(bounds[r]), int(bounds[r + 1]), chunk):
            b = min(a + chunk, int(bounds[r + 1]))
            if rank == r:
                buf = torch.from_numpy(np.ascontiguousarray(array[a:b])).to(device)
            else:
                buf = torch.empty((b - a, *array.shape[1:]), dtype=torch.complex64,
                                  device=device)
            torch.distributed.broadcast(torch.view_as_real(buf), src=r)
            if rank != r:
                array[a:b] = buf.cpu().numpy()


def reconstruct(bundle: Bundle, scan: ScanData, cfg: InferConfig, progress: bool = False,
                allocate: Callable[[tuple[int, ...], np.dtype], np.ndarray] | None = None
                ) -> Reconstruction:
    """Run the bundle's model over ``scan`` and stitch the result.

    The scan's bad pixels are zeroed in the network input and left out of the data NLL.  A scan
    whose probe is not in photon units is brought there by :func:`prepare_scan` first (callers
    that keep the scan for other uses, e.g. the data NLL of another arm, call it themselves).
    ``progress`` shows a progress bar of the patterns on stderr (the command line turns it on
    only on a terminal).

    A probe-conditioned bundle (``model.probe_input``) runs with the scan's probe (in photon
    units, after :func:`prepare_scan`) in its physics layer and probe channels; any other bundle
    with its training probe.

    The network runs once per pattern.  With ``cfg.phase_sync`` the central crops of the seed
    patches (``(n, crop_px, crop_px)`` complex64) and the whole patches of the patterns on the
    rim of the covered region are kept for the synchronized stitch; ``allocate(shape, dtype)``
    makes those arrays (default: ``numpy.empty``, in memory; :func:`ptypinn.io.scratch_array`
    spills large ones to a memory-mapped temporary file).

    Data-parallel: called in every rank of an initialized ``torch.distributed`` process group
    (e.g. under ``torchrun`` or a Lightning Fabric/Trainer DDP strategy), each rank runs the
    network on its own contiguous block of patterns and stitches it onto its own canvases; one
    all-reduce per canvas merges them (:meth:`~ptypinn.stitch.Stitcher.all_reduce`).  With
    synchronization the cached crops are broadcast to every rank, each rank computes its share
    of the pair overlap products and one all-reduce gathers them; every rank solves the same
    phase problem, each rank stitches its block with the offsets, and the canvases are
    all-reduced again.  Every rank returns the same reconstruction (the data NLL is computed
    on every rank).

    Raises
    ------
    ValueError
        On a pattern-size mismatch, or when the prediction is all-zero/constant (a diagnostic
        names the amplitude statistics and the training and test photons per pattern).
    """
    _check_scan(bundle, scan)
    if not scan.meta.get("probe_calibrated"):
        scan = prepare_scan(bundle, scan)
    allocate = allocate or np.empty
    device = resolve_device(cfg.device)
    cfg = dataclasses.replace(cfg, batch_size=batch_size_for(cfg, device))
    model = bundle.model.to(device).eval()
    if cfg.channels_last and device.type == "cpu":
        model = model.to(memory_format=torch.channels_last)  # in place, like .to(device)
    n = scan.pattern_size
    n_pat = scan.n_patterns
    crop = cfg.crop_px or default_crop_px(scan.probe)
    if not 1 <= crop <= n:
        raise ValueError(f"infer.crop_px: expected in [1, {n}] (the pattern size), got {crop}")
    cs = crop_start_px(n, crop)
    # a probe-conditioned bundle (model.probe_input) runs with this scan's probe, not its own
    run_probe = (torch.from_numpy(np.asarray(scan.probe_modes, dtype=np.complex64)).to(device)
                 if bundle.config.model.probe_input else None)
    groups = group_patterns(scan.positions_px, dataclasses.replace(
        bundle.config.grouping, n_groups=None, allow_oversampling=False))
    indices = np.asarray(groups.indices, dtype=np.int64)
    if not np.array_equal(indices[:, 0], np.arange(n_pat)):
        raise RuntimeError("grouping: expected one group per pattern, seeded by that pattern")
    offsets = torch.from_numpy(np.asarray(groups.offsets_px, dtype=np.float32))
    bad = (torch.from_numpy(scan.bad_pixels).to(device)
           if scan.bad_pixels is not None and scan.bad_pixels.any() else None)
    positions = torch.from_numpy(np.asarray(scan.positions_px, dtype=np.float64))
    # a crop of size K stitched at this centre lands on exactly the pixels (and bilinear
    # weights) of the central crop of the N-patch at the pattern's own centre
    crop_shift = (crop / 2 - crop // 2) - (n / 2 - n // 2)
    shape = scan.object_shape_px

    def seed_patches(rows: np.ndarray) -> torch.Tensor:
        """Seed patches ``(len(rows), N, N)`` complex64 of the groups seeded by ``rows``."""
        batch = _batched_counts(scan.counts, indices[rows]).to(device, non_blocking=True)
        if bad is not None:
            batch = batch.masked_fill(bad, 0.0)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.mixed_precision):
            patches = (model(batch, offsets[rows].to(device), seed_only=True)
                       if run_probe is None else
                       model(batch, offsets[rows].to(device), run_probe, seed_only=True))
        return patches[:, 0].to(torch.complex64)

    def stitchers() -> tuple[Stitcher, Stitcher]:
        # through the central crop (the reconstruction), and through the whole patch (only to
        # fill the rim the crops leave uncovered but the probe still lights, so that the data
        # NLL scores the network's own prediction there rather than a guess)
        return (Stitcher(shape, crop, crop_px=None, device=device),
                Stitcher(shape, n, crop_px=None, device=device))

    t0 = time.perf_counter()
    rank, world = process_group()
    bounds = shard_bounds(n_pat, world)
    lo, hi = int(bounds[rank]), int(bounds[rank + 1])  # this rank's block of patterns
    theta = np.zeros(n_pat)
    crops = rim = rim_slot = None
    with torch.inference_mode():
        if cfg.phase_sync:
            # only the crops are compared and stitched; whole patches are kept only where the
            # crops leave the rim uncovered (known from the positions alone)
            footprint = Stitcher(shape, crop, crop_px=None, device=device)
            for start in range(0, n_pat, 4096):
                pos = positions[start:start + 4096].to(device)
                footprint.add(torch.ones((pos.shape[0], crop, crop), dtype=torch.complex64,
                                         device=device), pos + crop_shift)
            rim = _rim_patterns(scan.positions_px, n, footprint.result()[1])
            rim_slot = np.full(n_pat, -1, dtype=np.int64)
            rim_slot[rim] = np.arange(rim.size)
            crops = allocate((n_pat, crop, crop), np.dtype(np.complex64))
            rim_patches = allocate((rim.size, n, n), np.dtype(np.complex64))
        cropped, whole = stitchers()
        with tqdm(total=hi - lo, desc="inference", unit="pattern", disable=not progress,
                  leave=False) as bar:
            for start in range(lo, hi, cfg.batch_size):
                rows = np.arange(start, min(start + cfg.batch_size, hi))
                patches = seed_patches(rows)
                pos = positions[rows].to(device)
                c = patches[:, cs:cs + crop, cs:cs + crop]
                cropped.add(c, pos + crop_shift)
                whole.add(patches, pos)
                if crops is not None:
                    crops[start:start + rows.size] = c.cpu().numpy()
                    slots = rim_slot[rows]
                    keep = slots >= 0
                    if keep.any():
                        rim_patches[slots[keep]] = patches[torch.from_numpy(keep).to(device)
                                                           ].cpu().numpy()
                bar.update(rows.size)
        if world > 1:
            cropped.all_reduce()
            whole.all_reduce()
            if crops is not None:
                _share_blocks(crops, bounds, max(cfg.batch_size, 1024), device)
                _share_blocks(rim_patches, np.searchsorted(rim, bounds), max(cfg.batch_size, 1024),
                              device)
        obj_c, covered = cropped.result()
        obj_w, lit = whole.result()
        # crop-stitched where covered, whole-patch values on the rim, free space (1) beyond
        objects = [np.where(covered, obj_c, np.where(lit, obj_w, 1)).astype(np.complex64)]
        if cfg.phase_sync:
            chunk = max(cfg.batch_size, 1024)
            theta = synchronize_phases(
                lambda r: torch.from_numpy(np.ascontiguousarray(crops[r])), scan.positions_px,
                crop, crop, max_sep_px=crop / 2.0, chunk=chunk, device=device,
                reg=phase_sync_reg(cfg, bundle.group_size), distributed=world > 1)
            rot = torch.polar(torch.ones(n_pat), torch.from_numpy(theta).float())
            cropped, whole = stitchers()
            for start in range(lo, hi, chunk):
                rows = np.arange(start, min(start + chunk, hi))
                c = torch.from_numpy(np.ascontiguousarray(crops[start:start + rows.size]))
                cropped.add(c.to(device) * rot[rows].to(device)[:, None, None],
                            positions[rows].to(device) + crop_shift)
            rim_lo, rim_hi = (int(v) for v in np.searchsorted(rim, [lo, hi]))
            for start in range(rim_lo, rim_hi, chunk):
                rows = rim[start:min(start + chunk, rim_hi)]
                p = torch.from_numpy(np.ascontiguousarray(rim_patches[start:start + rows.size]))
                whole.add(p.to(device) * rot[rows].to(device)[:, None, None],
                          positions[rows].to(device))
            cropped.all_reduce()
            whole.all_reduce()
            obj_c = cropped.result()[0]
            # only rim patches were stitched whole: their ratio is exact on the rim, where every
            # contributing patch is a rim patch; ``lit`` is the full stitch's
            obj_w = whole.result(min_weight=0.0)[0]
            objects.insert(0, np.where(covered, obj_c, np.where(lit, obj_w, 1)
                                       ).astype(np.complex64))
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    obj = objects[0]
    amp = np.abs(obj[covered])
    try:
        assert_not_degenerate(obj[covered] if covered.any() else obj)
    except ValueError as e:
        trained = bundle.manifest.get("training", {}).get("photons_per_pattern")
        raise ValueError(
            f"{e} (amplitude mean {amp.mean() if amp.size else 0:.3g}, std "
            f"{amp.std() if amp.size else 0:.3g}; photons per pattern: training scan "
            f"{trained if trained is None else f'{trained:.4g}'}, this scan "
            f"{scan.photons_per_pattern:.4g}: an untrained model or a dose far from the "
            "training data?)"
        ) from None
    nll = data_nll(obj, scan, batch_size=cfg.batch_size, device=device)
    applied, nll_raw_mean = False, None
    if len(objects) > 1:
        # one truth-free rule for every arm: keep the synchronization only if the data agree
        nll_raw = data_nll(objects[1], scan, batch_size=cfg.batch_size, device=device)
        nll_raw_mean = float(np.mean(nll_raw))
        applied = float(np.mean(nll)) < nll_raw_mean
        log.info("phase synchronization %s: data NLL/px %.4f with, %.4f without",
                 "kept" if applied else "dropped", float(np.mean(nll)), nll_raw_mean)
        if not applied:
            obj, nll, theta = objects[1], nll_raw, np.zeros(scan.n_patterns)
    log.info("reconstructed %d patterns in %.2f s (%.0f patterns/s) on %s",
             scan.n_patterns, wall, scan.n_patterns / wall, device)
    return Reconstruction(object=obj, covered=covered, nll_per_pattern=nll, wall_time_s=wall,
                          crop_px=crop, phase_offsets_rad=theta, phase_sync_applied=applied,
                          nll_without_sync=nll_raw_mean)
