"""The probe as a runtime input (issue 14 item 2, ``model.probe_input``): the physics layer, the
loss and the generator's probe channels take each scan's probe; training may draw from several
scans with different probes; a bundle reconstructs a scan with a probe it was not trained on."""

import json

import numpy as np
import pytest
import torch

from ptypinn import io
from ptypinn.config import (Config, ConfigError, GroupingConfig, InferConfig, ModelConfig,
                            SimulationConfig, TrainConfig)
from ptypinn.pinn.bundle import load_bundle
from ptypinn.pinn.infer import reconstruct
from ptypinn.pinn.models import build_model
from ptypinn.pinn.spectral import probe_features, residual_head
from ptypinn.pinn.train import ScanBatchSampler, train_model
from ptypinn.simulate import simulate_scan


def _disk(radius: float, n: int = 32) -> torch.Tensor:
    yy, xx = np.mgrid[0:n, 0:n] - n // 2
    return torch.from_numpy((np.hypot(yy, xx) <= radius).astype(np.complex64) * 30.0)


def _scan(radius: float, seed: int = 3, size: int = 32):
    sim = SimulationConfig(object_kind="lines", object_size_px=16 + size, probe_size_px=size,
                           probe_kind="disk", probe_radius_px=radius, scan_kind="raster",
                           scan_step_px=4.0, photons_per_pattern=1e6, seed=seed)
    return simulate_scan(sim)


def _cfg(probe_input: bool = True, **train) -> Config:
    return Config(grouping=GroupingConfig(gridsize=2),
                  model=ModelConfig(width=4, depth=2, probe_input=probe_input),
                  train=TrainConfig(**{"epochs": 1, "batch_size": 16, "val_fraction": 0.0,
                                       "accelerator": "cpu", "progress_bar": False, **train}))


@pytest.mark.parametrize("generator", ["unet", "spectral"])
def test_runtime_probe_equal_to_the_buffer_gives_identical_outputs(generator):
    torch.manual_seed(0)
    probe = _disk(8.0)
    model = build_model(ModelConfig(width=4, depth=2, generator=generator, probe_input=True),
                        probe, 4)
    # non-zero probe-channel weights, so the channels matter in this comparison
    for p in model.generator.parameters():
        p.data.add_(0.01 * torch.randn_like(p))
    counts = torch.rand(3, 4, 32, 32) * 100
    offsets = torch.randn(3, 4, 2)
    with torch.no_grad():
        a = model(counts, offsets)
        b = model(counts, offsets, probe.clone())
        c = model(counts, offsets, _disk(6.0))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)  # another probe does change the output
    batch = {"counts": counts, "offsets_px": offsets}
    with torch.no_grad():
        la = model.loss(batch)[0]
        lb = model.loss({**batch, "probe": probe[None, None].expand(3, 1, 32, 32)})[0]
    assert torch.equal(la, lb)


@pytest.mark.parametrize("generator", ["unet", "spectral"])
def test_conditioned_generator_starts_at_the_physics_estimate(generator):
    """At initialisation the probe channels have zero weights and the head is zero: the output
    is the residual head of O0 with zero corrections, whatever the probe."""
    torch.manual_seed(1)
    model = build_model(ModelConfig(width=4, depth=2, generator=generator, probe_input=True),
                        _disk(8.0), 1)
    gen = model.generator
    counts = torch.rand(2, 1, 32, 32) * 100
    for probe in (_disk(8.0), _disk(5.0)):
        with torch.no_grad():
            out = gen(counts, probe)
            o0 = gen.backprop(counts, probe)
        assert torch.allclose(out, residual_head(o0, torch.zeros(2, 2, 32, 32),
                                                 gen.amplitude_max))
    with pytest.raises(ValueError, match="runtime probe"):
        gen(counts)


def test_probe_features_are_scale_free_and_name_the_strongest_mode():
    p = _disk(8.0)
    second = p * 0.3j
    f = probe_features(torch.stack([second, p]), 2)
    assert f.shape == (2, 3, 32, 32)
    assert torch.allclose(f, probe_features(7.0 * torch.stack([second, p]), 2), atol=1e-6)
    # channel 1 is Re of the strongest mode (p, real), normalised to 1 at its peak
    assert float(f[0, 1].max()) == pytest.approx(1.0) and float(f[0, 2].abs().max()) < 1e-6


def test_runtime_probe_needs_probe_input():
    model = build_model(ModelConfig(width=4, depth=2), _disk(8.0), 1)
    with pytest.raises(ValueError, match="model.probe_input"):
        model(torch.rand(1, 1, 32, 32), torch.zeros(1, 1, 2), _disk(8.0))
    with pytest.raises(ConfigError, match="model.probe_input"):
        ModelConfig(probe_input=True, learn_probe=True)
    with pytest.raises(ConfigError, match="model.probe_input"):
        ModelConfig(probe_input=True, kind="baseline")


def test_scan_batch_sampler_keeps_one_scan_per_batch():
    sampler = ScanBatchSampler([5, 7], 3, shuffle=True, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 2 + 3
    assert sorted(i for b in batches for i in b) == list(range(12))
    for b in batches:
        assert all(i < 5 for i in b) or all(i >= 5 for i in b)


def test_two_probes_train_save_load_and_reconstruct_an_unseen_probe(tmp_path):
    a, b, c = _scan(6.0, seed=3), _scan(10.0, seed=4), _scan(8.0, seed=5)
    res = train_model(_cfg(val_fraction=0.25), [a, b], tmp_path / "run")  # with validation
    assert res.bundle.manifest["training"]["scans"] == 2
    bundle = load_bundle(res.bundle_dir)
    assert bundle.config.model.probe_input
    recon = reconstruct(bundle, c, InferConfig(device="cpu"))
    assert np.isfinite(recon.nll_per_pattern).all() and recon.covered.any()
    # the scan's own probe is used: with another one the physics estimate, hence the object,
    # differs
    other = reconstruct(bundle, c.replace(probe=a.probe), InferConfig(device="cpu",
                                                                      phase_sync=False))
    own = reconstruct(bundle, c, InferConfig(device="cpu", phase_sync=False))
    assert not np.allclose(own.object, other.object)


def test_cli_trains_on_several_scans_and_infers_a_third(tmp_path, capsys):
    from ptypinn.cli import main

    paths = []
    for r, seed in ((6.0, 3), (10.0, 4), (8.0, 5)):
        p = tmp_path / f"r{int(r)}.npz"
        io.write_scan(p, _scan(r, seed=seed))
        paths.append(str(p))
    common = ["--set", "model.width=4", "--set", "model.depth=2", "--set", "train.epochs=1",
              "--set", "train.accelerator=cpu", "--set", "train.progress_bar=false",
              "--set", "train.val_fraction=0", "--set", "grouping.gridsize=2"]
    run = tmp_path / "run"
    assert main(["train", "--scan", paths[0], "--scan", paths[1], "-o", str(run),
                 "--set", "model.probe_input=true", *common]) == 0
    manifest = json.loads((run / "bundle" / "manifest.json").read_text())
    assert manifest["training"]["scans"] == 2
    out = tmp_path / "inf"
    assert main(["infer", str(run), "--scan", paths[2], "-o", str(out),
                 "--set", "infer.device=cpu"]) == 0
    capsys.readouterr()
    assert main(["train", "--scan", paths[0], "--scan", paths[1], "-o", str(tmp_path / "x"),
                 *common]) != 0
    assert "model.probe_input=true" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_several_scans_need_probe_input_and_one_pattern_size(tmp_path):
    a, b = _scan(6.0), _scan(10.0, seed=4)
    with pytest.raises(ValueError, match="model.probe_input=true"):
        train_model(_cfg(probe_input=False), [a, b], tmp_path / "r1")
    with pytest.raises(ValueError, match="one pattern size"):
        train_model(_cfg(), [a, _scan(12.0, seed=4, size=64)], tmp_path / "r2")
    with pytest.raises(ValueError, match="train.devices"):
        train_model(_cfg(devices=2), [a, b], tmp_path / "r3")
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()
