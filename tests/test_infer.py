"""Streaming inference: phase synchronization wired into ``reconstruct`` (the maths is tested in
``test_stitch``), offsets written out, and the toggle."""

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from ptypinn.config import Config, InferConfig, from_dict
from ptypinn.pinn.infer import reconstruct
from ptypinn.workflows.outputs import write_outputs
from ptypinn.io import load_npz
from ptypinn.pinn.train import train_model


class _PhaseJitter(nn.Module):
    """Wraps a model; multiplies each group's output by a constant phase that depends only on
    that group's input (so both inference passes see the same value)."""

    def __init__(self, model: nn.Module, amplitude_rad: float = 0.4):
        super().__init__()
        self.model = model
        self.amplitude_rad = amplitude_rad

    @staticmethod
    def offsets(counts: torch.Tensor, amplitude_rad: float) -> torch.Tensor:
        key = counts[:, 0].double().sqrt().mean(dim=(-2, -1))
        return amplitude_rad * torch.sin(1e4 * key).float()

    def forward(self, counts: torch.Tensor, offsets_px: torch.Tensor,
                seed_only: bool = False) -> torch.Tensor:
        out = self.model(counts, offsets_px, seed_only=seed_only)
        rot = torch.polar(torch.ones(out.shape[0]), self.offsets(counts, self.amplitude_rad))
        return out * rot[:, None, None, None]


@pytest.fixture(scope="module")
def bundle(tiny_pair, tmp_path_factory):
    train, _ = tiny_pair
    cfg = from_dict(Config, {"grouping": {"gridsize": 1}, "model": {"width": 8, "depth": 2},
                             "train": {"epochs": 2, "batch_size": 8, "progress_bar": False}})
    out = tmp_path_factory.mktemp("run")
    return train_model(cfg, train, out).bundle


def _phase_rms(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    d = a[mask] * np.conj(b[mask])
    d = np.angle(d * np.exp(-1j * np.angle(d.sum())))
    return float(np.sqrt(np.mean(d**2)))


def test_phase_sync_undoes_per_pattern_phase_errors(bundle, tiny_pair):
    _, test = tiny_pair
    jittered = dataclasses.replace(bundle, model=_PhaseJitter(bundle.model))
    off = InferConfig(phase_sync=False, device="cpu")
    on = InferConfig(phase_sync=True, device="cpu")
    clean_off = reconstruct(bundle, test, off)
    clean_on = reconstruct(bundle, test, on)
    noisy_off = reconstruct(jittered, test, off)
    noisy_on = reconstruct(jittered, test, on)
    assert not clean_off.phase_offsets_rad.any() and not noisy_off.phase_offsets_rad.any()
    mask = clean_on.covered
    # the injected errors blur the unsynchronized phase; synchronization removes them
    assert _phase_rms(noisy_off.object, clean_off.object, mask) > 0.1
    assert _phase_rms(noisy_on.object, clean_on.object, mask) < 0.02
    # and the offsets it found are the injected ones, negated (up to the trained model's own)
    injected = _PhaseJitter.offsets(torch.from_numpy(test.counts[:, None]), 0.4).numpy()
    found = noisy_on.phase_offsets_rad - clean_on.phase_offsets_rad
    assert np.corrcoef(found, injected)[0, 1] < -0.99


def test_offsets_are_written(bundle, tiny_pair, tmp_path):
    _, test = tiny_pair
    rec = reconstruct(bundle, test, InferConfig(device="cpu"))
    summary = write_outputs(tmp_path, rec, test)
    saved = load_npz(tmp_path / "reconstruction.npz")
    assert np.array_equal(saved["phase_offsets_rad"], rec.phase_offsets_rad)
    assert rec.phase_offsets_rad.shape == (test.n_patterns,)
    assert summary["phase_sync_offsets_std_rad"] == pytest.approx(np.std(rec.phase_offsets_rad))


def test_phase_sync_is_kept_only_when_it_lowers_the_data_nll(bundle, tiny_pair, monkeypatch):
    """The same truth-free rule for every arm: synchronized offsets that fit the data worse than
    none at all are dropped, and the result is the unsynchronized object."""
    from ptypinn.pinn import infer

    _, test = tiny_pair
    jittered = dataclasses.replace(bundle, model=_PhaseJitter(bundle.model))
    good = reconstruct(jittered, test, InferConfig(phase_sync=True, device="cpu"))
    assert good.phase_sync_applied and good.nll_without_sync is not None
    assert float(np.mean(good.nll_per_pattern)) < good.nll_without_sync

    rng = np.random.default_rng(0)
    monkeypatch.setattr(infer, "synchronize_phases",
                        lambda *a, **k: rng.uniform(-3, 3, test.n_patterns))  # a bad solver
    bad = reconstruct(jittered, test, InferConfig(phase_sync=True, device="cpu"))
    off = reconstruct(jittered, test, InferConfig(phase_sync=False, device="cpu"))
    assert not bad.phase_sync_applied and not bad.phase_offsets_rad.any()
    np.testing.assert_array_equal(bad.object, off.object)
    assert float(np.mean(bad.nll_per_pattern)) == pytest.approx(bad.nll_without_sync)


def test_rim_outside_the_crops_holds_the_whole_patch_stitch(bundle, tiny_pair):
    """Pixels the crops leave but a window reaches carry the stitch of the whole patches (what
    the data NLL scores); pixels no window reaches are free space (1)."""
    from ptypinn.stitch import stitch_patches

    _, test = tiny_pair
    rec = reconstruct(bundle, test, InferConfig(phase_sync=False, device="cpu"))
    whole, lit = stitch_patches(
        [(torch.ones((test.n_patterns, 32, 32), dtype=torch.complex64),
          torch.from_numpy(test.positions_px))], test.object_shape_px, 32)
    rim = lit & ~rec.covered
    assert rim.any() and rec.crop_px < 32
    assert np.all(rec.object[~lit] == 1)
    assert not np.allclose(rec.object[rim], 1)  # the network's values, not a fill constant


def _two_pass_reference(bundle, scan, cfg):
    """The synchronized and unsynchronized objects as the two-pass inference made them before
    issue 16 (all seed patches at once, ``synchronize_phases`` fed whole patches, then
    whole-patch stitchers with a crop mask), written with the public stitch API only."""
    from ptypinn.grouping import group_patterns
    from ptypinn.pinn.infer import phase_sync_reg, prepare_scan
    from ptypinn.stitch import default_crop_px, stitch_patches, synchronize_phases

    if not scan.meta.get("probe_calibrated"):
        scan = prepare_scan(bundle, scan)
    n, crop = scan.pattern_size, cfg.crop_px or default_crop_px(scan.probe)
    groups = group_patterns(scan.positions_px, dataclasses.replace(
        bundle.config.grouping, n_groups=None, allow_oversampling=False))
    counts = torch.from_numpy(scan.counts)[torch.from_numpy(np.asarray(groups.indices))]
    with torch.no_grad():
        patches = bundle.model.eval()(
            counts, torch.from_numpy(np.asarray(groups.offsets_px, dtype=np.float32)))[:, 0]
    theta = synchronize_phases(lambda rows: patches[torch.from_numpy(rows)], scan.positions_px,
                               n, crop, chunk=7, reg=phase_sync_reg(cfg, bundle.group_size))
    pos = torch.from_numpy(scan.positions_px)
    objects = []
    for t in (theta, np.zeros(scan.n_patterns)):
        rotated = patches * torch.polar(torch.ones(t.size), torch.from_numpy(t).float())[:, None,
                                                                                        None]
        obj_c, covered = stitch_patches([(rotated, pos)], scan.object_shape_px, n, crop_px=crop)
        obj_w, lit = stitch_patches([(rotated, pos)], scan.object_shape_px, n)
        objects.append(np.where(covered, obj_c, np.where(lit, obj_w, 1)))
    return theta, objects, covered, lit


@pytest.mark.parametrize("gridsize", [1, 2])
def test_one_pass_synchronization_equals_the_two_pass_reference(bundle, tiny_pair, gridsize):
    """One network pass with a crop cache (in memory or memory-mapped) gives the objects,
    offsets and NLLs of the old two-pass path, rim included, to float tolerance."""
    from ptypinn import io
    from ptypinn.physics import data_nll
    from ptypinn.pinn.bundle import Bundle
    from ptypinn.pinn.infer import prepare_scan
    from ptypinn.pinn.models import build_model

    _, test = tiny_pair
    if gridsize == 2:  # an untrained gridsize-2 model: the overlap constraint in the network
        cfg = from_dict(Config, {"grouping": {"gridsize": 2}, "model": {"width": 8, "depth": 2}})
        torch.manual_seed(0)
        base = Bundle.create(build_model(cfg.model, torch.from_numpy(
            prepare_scan(bundle, test).probe), 4), cfg)
    else:
        base = bundle
    jittered = dataclasses.replace(base, model=_PhaseJitter(base.model))
    icfg = InferConfig(phase_sync=True, device="cpu", batch_size=16)
    theta, (obj_sync, obj_raw), covered, lit = _two_pass_reference(jittered, test, icfg)
    assert (lit & ~covered).any()  # the rim path is exercised
    spilled = []

    def spill(shape, dtype):
        spilled.append(shape)
        return io.scratch_array(shape, dtype, max_ram_bytes=0)

    for allocate in (None, spill):
        rec = reconstruct(jittered, test, icfg, allocate=allocate)
        assert rec.phase_sync_applied
        np.testing.assert_array_equal(rec.covered, covered)
        np.testing.assert_allclose(rec.phase_offsets_rad, theta, atol=1e-4)
        np.testing.assert_allclose(rec.object, obj_sync, atol=2e-4)
        scan = test if test.meta.get("probe_calibrated") else prepare_scan(base, test)
        assert rec.nll_without_sync == pytest.approx(float(np.mean(data_nll(obj_raw, scan))),
                                                     rel=1e-5)
    assert spilled and spilled[0][0] == test.n_patterns  # the crop cache was memory-mapped


def test_channels_last_gives_the_same_reconstruction(bundle, tiny_pair):
    _, test = tiny_pair
    plain = reconstruct(bundle, test, InferConfig(device="cpu", channels_last=False))
    fast = reconstruct(bundle, test, InferConfig(device="cpu", channels_last=True))
    assert any(p.ndim == 4 and p.is_contiguous(memory_format=torch.channels_last)
               and not p.is_contiguous() for p in bundle.model.parameters())
    np.testing.assert_allclose(fast.object, plain.object, atol=1e-5)
    np.testing.assert_allclose(fast.phase_offsets_rad, plain.phase_offsets_rad, atol=1e-5)
    bundle.model.to(memory_format=torch.contiguous_format)  # the shared fixture as it was


def test_automatic_batch_size_by_device():
    from ptypinn.pinn.infer import AUTO_BATCH_SIZE, batch_size_for

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert batch_size_for(InferConfig(), cpu) == AUTO_BATCH_SIZE["cpu"] == 64
    assert batch_size_for(InferConfig(), cuda) == AUTO_BATCH_SIZE["cuda"]
    assert batch_size_for(InferConfig(batch_size=7), cpu) == 7
    with pytest.raises(ValueError, match="infer.batch_size"):
        InferConfig(batch_size=0)


def _lazy_copy(scan):
    from ptypinn.data import LazyCounts

    arr = np.asarray(scan.counts)
    return scan.replace(counts=LazyCounts(arr.shape, lambda rows: arr[rows], "memory"))


def test_lazy_counts_reconstruct_like_the_array(bundle, tiny_pair):
    """Counts read per batch (data bigger than RAM) give the same reconstruction."""
    _, test = tiny_pair
    cfg = InferConfig(device="cpu", batch_size=16)
    a, b = reconstruct(bundle, test, cfg), reconstruct(bundle, _lazy_copy(test), cfg)
    np.testing.assert_allclose(b.object, a.object, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b.nll_per_pattern, a.nll_per_pattern, rtol=1e-5)


def test_progress_bars_only_when_asked(bundle, tiny_pair, capsys):
    _, test = tiny_pair
    reconstruct(bundle, test, InferConfig(device="cpu", phase_sync=True), progress=False)
    err = capsys.readouterr().err
    assert "pattern/s" not in err  # tqdm's rate unit
    reconstruct(bundle, test, InferConfig(device="cpu", phase_sync=True), progress=True)
    err = capsys.readouterr().err
    assert "inference: " in err and "pattern/s" in err
