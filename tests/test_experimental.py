"""Cropping a measured scan, the convention variants, and the Siemens-star scan end to end.

The crop / variant tests run on small synthetic scans.  The tests on the real tike scan
(``/work/shared/data/siemens-star-small.npz.bz2``, or ``$PTYPINN_SIEMENS_FILE``) are skipped with
a reason when the file or pty-chi is missing; the end-to-end ones are ``@pytest.mark.slow``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from ptypinn import physics
from ptypinn.data import ScanData
from ptypinn.experimental import (convention_variants, crop_scan, rotate_detector_180,
                                  scan_centre_px)

SIEMENS = Path(os.environ.get("PTYPINN_SIEMENS_FILE",
                              "/work/shared/data/siemens-star-small.npz.bz2"))


def _grid_scan(with_object: bool = True, frac: float = 0.0) -> ScanData:
    """7x7 raster of 16x16 windows, step 5 px (+ a sub-pixel part), on a 60x60 random object."""
    rng = np.random.default_rng(3)
    n = 16
    yy, xx = np.meshgrid(np.arange(7) * 5.0, np.arange(7) * 5.0, indexing="ij")
    pos = np.stack([yy.ravel(), xx.ravel()], 1) + n / 2 + 4 + frac
    obj = (rng.uniform(0.5, 1, (60, 60)) * np.exp(1j * rng.uniform(-1, 1, (60, 60))))
    counts = rng.poisson(50, (len(pos), n, n)).astype(np.float32)
    probe = np.ones((n, n), np.complex64)
    return ScanData(counts=counts, positions_px=pos, probe=probe,
                    object_true=obj if with_object else None,
                    object_guess=np.ones((60, 60)) if with_object else None,
                    meta={"provenance": "test grid"})


def _patches(obj: np.ndarray, pos: np.ndarray, n: int) -> np.ndarray:
    o = torch.from_numpy(np.asarray(obj, np.complex64))[None]
    return physics.extract_patches(o, torch.from_numpy(pos)[None], n)[0].numpy()


# ------------------------------------------------------------------------------------------------
# crop_scan


@pytest.mark.parametrize("frac", [0.0, 0.3])
def test_crop_keeps_the_nearest_patterns_and_their_patches(frac):
    scan = _grid_scan(frac=frac)
    centre = (29.63, 26.29)
    sub = crop_scan(scan, centre, 9)
    d = np.sort(np.hypot(*(scan.positions_px - centre).T))
    assert d[8] < d[9]  # no tie at the boundary: the 9 nearest are well defined
    chosen = np.hypot(*(scan.positions_px - centre).T) <= d[8]
    assert sub.n_patterns == 9
    np.testing.assert_array_equal(sub.counts, scan.counts[chosen])  # original order kept
    shift = np.asarray(sub.meta["crop_shift_px"])
    np.testing.assert_allclose(sub.positions_px + shift, scan.positions_px[chosen], atol=1e-12)
    assert np.all(shift == np.round(shift))  # integer re-framing: sub-pixel parts untouched
    # the same object pixels under every window, before and after (truth and guess)
    for name in ("object_true", "object_guess"):
        np.testing.assert_allclose(_patches(getattr(sub, name), sub.positions_px, 16),
                                   _patches(getattr(scan, name), scan.positions_px[chosen], 16))
    # smallest frame with one pixel of margin on each side
    starts = sub.positions_px - 8
    assert np.all(np.floor(starts.min(0)) == 1)
    assert np.all(np.ceil(starts.max(0) + 16) == np.asarray(sub.object_shape_px) - 1)
    assert sub.meta["crop"]["n_patterns"] == 9 and sub.meta["provenance"] == "test grid"


def test_crop_without_object_and_nested_crops_accumulate_the_shift():
    scan = _grid_scan(with_object=False)
    a = crop_scan(scan, (32.0, 32.0), 25)  # the 5x5 block around grid point (32, 32)
    np.testing.assert_allclose(a.positions_px.min(0) + a.meta["crop_shift_px"], [22.0, 22.0])
    b = crop_scan(a, a.positions_px[0] + (2.4, 2.6), 4)  # the 2x2 block at its corner
    total = np.asarray(b.meta["crop_shift_px"])
    on = lambda p, y, x: np.isin(p[:, 0], y) & np.isin(p[:, 1], x)  # noqa: E731
    expected = scan.positions_px[on(scan.positions_px, [22.0, 27.0], [22.0, 27.0])]
    np.testing.assert_allclose(b.positions_px + total, expected)
    assert b.object_shape_px == (16 + 5 + 2, 16 + 5 + 2)  # 2x2 windows at step 5, 1 px margins


def test_crop_of_all_patterns_clips_to_the_object_frame():
    scan = _grid_scan()  # windows start at pixel 4: the frame shrinks to [3, 51)
    full = crop_scan(scan, scan_centre_px(scan), scan.n_patterns)
    np.testing.assert_array_equal(full.counts, scan.counts)
    assert full.meta["crop_shift_px"] == [3.0, 3.0] and full.object_shape_px == (48, 48)
    edge = scan.replace(positions_px=scan.positions_px - 4)  # windows start at pixel 0
    clipped = crop_scan(edge, (0.0, 0.0), edge.n_patterns)
    assert clipped.meta["crop_shift_px"] == [0.0, 0.0]  # no room for the margin: clipped
    np.testing.assert_array_equal(clipped.object_true, edge.object_true[:47, :47])


@pytest.mark.parametrize("n", [0, -1, 50, 2.5, True, "3"])
def test_crop_rejects_bad_counts(n):
    with pytest.raises(ValueError, match=r"^n_patterns: expected an integer in \[1, 49\]"):
        crop_scan(_grid_scan(), (30.0, 30.0), n)


@pytest.mark.parametrize("c", [(np.nan, 1.0), (1.0, 2.0, 3.0), "ab", 5.0, (1.0, np.inf)])
def test_crop_rejects_bad_centres(c):
    with pytest.raises(ValueError, match="^center_px: expected two finite numbers"):
        crop_scan(_grid_scan(), c, 3)


# ------------------------------------------------------------------------------------------------
# convention variants


def test_rotate_detector_180_is_the_far_field_of_the_conjugate_wave():
    # |F psi|^2(-q) == |F conj(psi)|^2(q): an analytic identity of the Fourier transform
    rng = np.random.default_rng(0)
    psi = torch.from_numpy((rng.normal(size=(3, 16, 16)) + 1j * rng.normal(size=(3, 16, 16)))
                           .astype(np.complex64))
    intensity = (physics.far_field(psi).abs() ** 2).numpy()
    conj = (physics.far_field(psi.conj()).abs() ** 2).numpy()
    np.testing.assert_allclose(rotate_detector_180(intensity), conj, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(rotate_detector_180(rotate_detector_180(intensity)), intensity)
    assert rotate_detector_180(intensity)[0, 8, 8] == intensity[0, 8, 8]  # DC stays


def test_convention_variants_are_valid_reframed_scans():
    scan = _grid_scan(frac=0.25).replace(bad_pixels=np.eye(16, dtype=bool)[::-1])
    v = convention_variants(scan)
    assert list(v) == ["yx", "xy", "detector180", "detector180+scan180"]
    assert v["yx"] is scan
    # positions equal the transformed ones up to one integer shift per variant
    for name, expected in (("xy", scan.positions_px[:, ::-1]), ("detector180", scan.positions_px),
                           ("detector180+scan180", -scan.positions_px)):
        d = v[name].positions_px - expected
        np.testing.assert_allclose(d, d[:1].repeat(len(d), 0), atol=1e-12)
        assert np.allclose(d[0], np.round(d[0]))
        assert v[name].object_true is None and v[name].meta["convention_variant"] == name
    np.testing.assert_array_equal(v["xy"].counts, scan.counts)
    np.testing.assert_array_equal(v["detector180"].counts, rotate_detector_180(scan.counts))
    np.testing.assert_array_equal(v["detector180"].bad_pixels,
                                  rotate_detector_180(scan.bad_pixels))


# ------------------------------------------------------------------------------------------------
# the real Siemens-star scan


def _real_scan_or_skip():
    from ptypinn.baselines.ptychi import ptychi_available

    if not SIEMENS.is_file():
        pytest.skip(f"Siemens-star scan not found at {SIEMENS} (set PTYPINN_SIEMENS_FILE)")
    ok, why = ptychi_available()
    if not ok:
        pytest.skip(f"pty-chi unavailable: {why}")
    from ptypinn.data import calibrate_probe
    from ptypinn.io import read_scan

    return calibrate_probe(read_scan(SIEMENS))


def test_real_scan_crop_and_one_ptychi_epoch():
    """Converter + crop + one pty-chi epoch on 16 real patterns (~6 s idle, ~16 s loaded)."""
    from ptypinn.baselines.ptychi import reconstruct_ptychi
    from ptypinn.config import IterativeConfig

    scan = _real_scan_or_skip()  # ~3-5 s: bzip2 + 516 patterns of 128x128
    sub = crop_scan(scan, scan_centre_px(scan), 16)
    assert sub.n_patterns == 16 and sub.pattern_size == 128
    assert sub.object_shape_px[0] < scan.object_shape_px[0] / 2  # a compact subset
    res = reconstruct_ptychi(sub, IterativeConfig(algorithm="epie", iterations=1, device="cpu"))
    assert res.object.shape == sub.object_shape_px and np.isfinite(res.object).all()


def _agreement_with(reference: np.ndarray, bundle, scan: ScanData, cfg) -> dict[str, float]:
    """Phase and amplitude Pearson r of ``bundle``'s reconstruction of ``scan`` against
    ``reference`` (registered, global phase removed), over the covered probe footprint."""
    from ptypinn.metrics import align, pearson
    from ptypinn.pinn.infer import reconstruct
    from ptypinn.workflows.compare import footprint_mask

    rec = reconstruct(bundle, scan, cfg.infer)
    mask = rec.covered & footprint_mask(scan, rec.crop_px)
    pair = align(rec.object, reference, mask=mask)
    return {"phase": pearson(np.angle(pair.truth), np.angle(pair.recon), pair.mask),
            "amplitude": pearson(np.abs(pair.truth), np.abs(pair.recon), pair.mask)}


@pytest.fixture(scope="module")
def siemens_agreement(tmp_path_factory) -> dict[str, dict[str, float]]:
    """PINN vs pty-chi on 64 real patterns, for the trained PINN and for the same model untrained.

    pty-chi refines the probe (the one in the file is rough: with it fixed, the data NLL stays at
    ~7-8 per pixel, against ~1.5 refined), and the PINN (gridsize 2) trains with that probe.  The
    untrained model is built as :func:`ptypinn.pinn.train.train_model` builds it (same config,
    probe and seed) and reconstructs without a single step: what it reaches comes from the
    physics layer and the overlap constraint alone.
    """
    from ptypinn.baselines.ptychi import reconstruct_ptychi
    from ptypinn.config import IterativeConfig
    from ptypinn.io import load_config
    from ptypinn.pinn.bundle import Bundle, load_bundle
    from ptypinn.pinn.models import build_model
    from ptypinn.pinn.train import train_model

    scan = crop_scan(_real_scan_or_skip(), (231.6, 230.1), 64)
    res = reconstruct_ptychi(scan, IterativeConfig(algorithm="epie", iterations=50,
                                                   optimize_probe=True, device="cpu"))
    scan = scan.replace(probe=res.probe)
    cfg = load_config(None, ["model.width=8", "grouping.gridsize=2", "train.epochs=20",
                             "train.batch_size=8", "train.accelerator=cpu",
                             "train.progress_bar=false", "infer.device=cpu"])
    run = train_model(cfg, scan, tmp_path_factory.mktemp("siemens") / "run")
    trained = _agreement_with(res.object, load_bundle(run.bundle_dir), scan, cfg)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, torch.from_numpy(scan.probe), cfg.grouping.group_size)
    untrained = _agreement_with(res.object, Bundle.create(model, cfg), scan, cfg)
    for name, r in (("trained", trained), ("untrained", untrained)):
        print(f"PINN ({name}) vs pty-chi on 64 real patterns: phase r {r['phase']:.3f}, "
              f"amplitude r {r['amplitude']:.3f}")
    return {"trained": trained, "untrained": untrained}


@pytest.mark.slow
def test_real_scan_pinn_agrees_with_ptychi(siemens_agreement):
    """The trained PINN's phase correlates with pty-chi's (a wrong axis convention gives no star
    at all; gridsize 1 gives ~0.64).  Threshold 0.7: a floor only, below what the untrained
    physics layer already reaches (0.90), so the next test is the one that shows training
    helps."""
    r_phase = siemens_agreement["trained"]["phase"]
    assert r_phase is not None and r_phase > 0.7


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=(
    "known gap (docs/siemens.md): 20 epochs of training do not beat the untrained physics layer "
    "on this scan; measured phase r vs pty-chi: trained 0.894, untrained 0.903 (amplitude r "
    "0.564 vs 0.449)"))
def test_real_scan_training_beats_the_untrained_model(siemens_agreement):
    """Training must add agreement with pty-chi beyond what the untrained model reaches."""
    trained = siemens_agreement["trained"]["phase"]
    untrained = siemens_agreement["untrained"]["phase"]
    assert trained is not None and untrained is not None
    assert trained > untrained, f"phase r vs pty-chi: trained {trained:.3f} <= untrained " \
                                f"{untrained:.3f}"


@pytest.mark.slow
def test_real_scan_training_improves_amplitude_agreement(siemens_agreement):
    """Where training does help today: amplitude agreement with pty-chi (measured 0.564 trained
    vs 0.449 untrained on 2026-12-01); fails if training stops adding anything there."""
    trained = siemens_agreement["trained"]["amplitude"]
    untrained = siemens_agreement["untrained"]["amplitude"]
    assert trained is not None and untrained is not None
    assert trained > untrained + 0.05, f"amplitude r vs pty-chi: trained {trained:.3f}, " \
                                       f"untrained {untrained:.3f}"
