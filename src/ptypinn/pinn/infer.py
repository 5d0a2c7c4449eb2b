"""Streaming inference: bundle + scan -> stitched object, with bounded memory.

Patterns are grouped exactly as in training (one group per pattern, the pattern as its seed),
run through the model as counts in batches under ``torch.no_grad`` (optionally bf16 autocast), and each group's *seed* patch is added
to a :class:`~ptypinn.stitch.Stitcher` at that pattern's position, so every pattern contributes
once.  Only one batch of patterns and the two stitching canvases live on the device.

With ``infer.phase_sync`` (the default) a first pass computes, chunk by chunk, the phase of every
patch relative to its overlapping neighbours and solves for one constant phase per patch that
makes them agree (:func:`ptypinn.stitch.synchronize_phases`); the stitching pass stitches the
patches both with and without those offsets, and the synchronized object is kept only if it
lowers the data NLL (a truth-free rule, the same for every network arm; measured in
``docs/benchmarks.md``).
The network runs about twice per pattern (the first pass recomputes patches instead of keeping
them, so memory stays bounded).  Without it, each patch keeps the constant phase the network gave
it, and their scatter blurs the stitched phase (see :mod:`ptypinn.stitch`).

The reconstruction lives in the scan's own object frame: pixel ``(0, 0)`` is the origin of
``scan.positions_px``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ptypinn.config import InferConfig
from ptypinn.data import ScanData, pattern_totals, probe_power, to_photon_units, torch_counts
from ptypinn.grouping import group_patterns
from ptypinn.metrics import assert_not_degenerate
from ptypinn.physics import data_nll
from ptypinn.pinn.bundle import Bundle
from ptypinn.stitch import Stitcher, default_crop_px, synchronize_phases

__all__ = ["Reconstruction", "resolve_device", "phase_sync_reg", "reconstruct",
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
    it fits within ``tolerance`` (:data:`MISMATCH_TOLERANCE`).

    Parameters
    ----------
    bundle : Bundle
    scan : ScanData, in photon units (:func:`prepare_scan`).
    """
    out = []
    p_train = bundle.model.probe.detach().cpu().numpy()
    p_scan = scan.probe_modes
    power_train, power_scan = probe_power(p_train), probe_power(p_scan)
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


def _counted(patches: torch.Tensor, bar: tqdm) -> torch.Tensor:
    """``patches``, after advancing ``bar`` by their number."""
    bar.update(len(patches))
    return patches


def reconstruct(bundle: Bundle, scan: ScanData, cfg: InferConfig,
                progress: bool = False) -> Reconstruction:
    """Run the bundle's model over ``scan`` and stitch the result.

    The scan's bad pixels are zeroed in the network input and left out of the data NLL.  A scan
    whose probe is not in photon units is brought there by :func:`prepare_scan` first (callers
    that keep the scan for other uses, e.g. the data NLL of another arm, call it themselves).
    ``progress`` shows progress bars on stderr (the command line turns them on only on a
    terminal): the patches computed for phase synchronization (owners and their overlapping
    partners, so more than one per pattern), then the patterns stitched.

    Raises
    ------
    ValueError
        On a pattern-size mismatch, or when the prediction is all-zero/constant (a diagnostic
        names the amplitude statistics and the training and test photons per pattern).
    """
    _check_scan(bundle, scan)
    if not scan.meta.get("probe_calibrated"):
        scan = prepare_scan(bundle, scan)
    device = resolve_device(cfg.device)
    model = bundle.model.to(device).eval()
    n = scan.pattern_size
    crop = cfg.crop_px or default_crop_px(scan.probe)
    groups = group_patterns(scan.positions_px, dataclasses.replace(
        bundle.config.grouping, n_groups=None, allow_oversampling=False))
    if not np.array_equal(np.asarray(groups.indices)[:, 0], np.arange(scan.n_patterns)):
        raise RuntimeError("grouping: expected one group per pattern, seeded by that pattern")
    counts = torch_counts(scan.counts)  # lazy counts: rows read per batch
    indices = torch.from_numpy(np.asarray(groups.indices, dtype=np.int64))
    offsets = torch.from_numpy(np.asarray(groups.offsets_px, dtype=np.float32))
    bad = (torch.from_numpy(scan.bad_pixels).to(device)
           if scan.bad_pixels is not None and scan.bad_pixels.any() else None)

    def seed_patches(rows: np.ndarray) -> torch.Tensor:
        """Seed patches ``(len(rows), N, N)`` complex64 of the groups seeded by ``rows``."""
        out = []
        for start in range(0, len(rows), cfg.batch_size):
            sel = torch.as_tensor(rows[start:start + cfg.batch_size], dtype=torch.int64)
            batch = counts[indices[sel]].to(device, non_blocking=True)
            if bad is not None:
                batch = batch.masked_fill(bad, 0.0)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.mixed_precision):
                patches = model(batch, offsets[sel].to(device))
            out.append(patches[:, 0].to(torch.complex64))
        return torch.cat(out) if out else torch.zeros((0, n, n), dtype=torch.complex64,
                                                      device=device)

    t0 = time.perf_counter()
    theta = np.zeros(scan.n_patterns)
    with torch.no_grad():
        if cfg.phase_sync:
            with tqdm(desc="phase sync", unit="patch", disable=not progress, leave=False) as sb:
                theta = synchronize_phases(lambda r: _counted(seed_patches(r), sb),
                                           scan.positions_px, n, crop,
                                           chunk=max(cfg.batch_size, 1024), device=device,
                                           reg=phase_sync_reg(cfg, bundle.group_size))
        # Two stitchings of the same patches in one pass (no extra network pass): through the
        # central crop (the reconstruction) and through the whole patch (only to fill the rim the
        # crops leave uncovered but the probe still lights, so that the data NLL scores the
        # network's own prediction there rather than a guess).  With synchronization, both again
        # without the offsets, for the NLL rule below.
        variants = [theta] + ([np.zeros(scan.n_patterns)] if cfg.phase_sync else [])
        stitchers = [(Stitcher(scan.object_shape_px, n, crop_px=crop, device=device),
                      Stitcher(scan.object_shape_px, n, crop_px=None, device=device))
                     for _ in variants]
        rots = [torch.polar(torch.ones(scan.n_patterns), torch.from_numpy(t).float())
                for t in variants]
        positions = torch.from_numpy(scan.positions_px)
        all_rows = np.arange(scan.n_patterns)
        with tqdm(total=scan.n_patterns, desc="inference", unit="pattern", disable=not progress,
                  leave=False) as bar:
            for start in range(0, scan.n_patterns, cfg.batch_size):
                rows = all_rows[start:start + cfg.batch_size]
                patches = seed_patches(rows)
                pos = positions[rows].to(device)
                for (cropped, whole), rot in zip(stitchers, rots):
                    rotated = patches * rot[rows].to(device)[:, None, None]
                    cropped.add(rotated, pos)
                    whole.add(rotated, pos)
                bar.update(len(rows))
        objects = []
        for cropped, whole in stitchers:
            obj_c, covered = cropped.result()
            obj_w, lit = whole.result()
            # crop-stitched where covered, whole-patch values on the rim, free space (1) beyond
            objects.append(np.where(covered, obj_c, np.where(lit, obj_w, 1)).astype(np.complex64))
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
