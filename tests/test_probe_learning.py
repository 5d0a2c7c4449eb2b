"""Probe learning (issue 13): the multi-mode physics layer, the learned probe, its start from a
flat-object maximum-likelihood stage, the probe estimate from the data, and a scan without probe
through ``reconstruct``."""

import json

import numpy as np
import pytest
import torch

from ptypinn import io
from ptypinn.config import (Config, ConfigError, GroupingConfig, ModelConfig, SimulationConfig,
                            TrainConfig)
from ptypinn.data import defocused_aperture, estimate_probe, probe_power
from ptypinn.metrics import probe_correlation
from ptypinn.pinn.bundle import load_bundle, save_bundle
from ptypinn.pinn.models import EXTRA_MODE_POWER, build_model, initial_probe_modes
from ptypinn.pinn.networks import BackPropagation
from ptypinn.simulate import simulate_scan


def _two_mode_probe(n: int = 32) -> torch.Tensor:
    """A disk and an orthogonal, differently shaped second mode (not proportional)."""
    yy, xx = np.mgrid[0:n, 0:n] - n // 2
    disk = (np.hypot(yy, xx) <= 8).astype(np.complex64) * 30.0
    second = disk * (xx / 8.0) * 0.6 * np.exp(0.3j * yy / 8.0)
    return torch.from_numpy(np.stack([disk, second]).astype(np.complex64))


def _numpy_counts(modes: np.ndarray, obj: np.ndarray) -> np.ndarray:
    """Independent reference: sum_k |fftshift(fft2(P_k O, ortho))|^2."""
    far = np.fft.fftshift(np.fft.fft2(modes * obj, norm="ortho"), axes=(-2, -1))
    return (np.abs(far) ** 2).sum(0)


def test_backpropagation_flat_object_with_two_different_modes_is_analytic():
    probe = _two_mode_probe()
    a = 0.7
    counts = _numpy_counts(probe.numpy(), np.full((32, 32), a + 0j))
    layer = BackPropagation(probe, eps=0.01)
    o0 = layer(torch.from_numpy(counts).float()[None, None])[0, 0].to(torch.complex128)
    i = probe.abs().square().sum(0).double()
    expected = a * i / (i + 0.01 * i.max())  # the Wiener estimate with the total intensity
    inside = i >= 0.05 * i.max()
    assert torch.allclose(o0.real[inside], expected[inside], rtol=2e-3, atol=1e-4)
    assert float(o0.imag[inside].abs().max()) < 2e-3
    # the old layer (strongest mode only) misses the second mode's share of the object
    strongest = BackPropagation(probe[0] * float(i.sum().sqrt() / probe[0].abs().square().sum().sqrt()))
    off = strongest(torch.from_numpy(counts).float()[None, None])[0, 0]
    assert float((off.abs().double() - expected)[inside].abs().max()) > 0.05


@pytest.mark.parametrize("kind", ["disk", "flat"])
def test_single_mode_layer_is_the_former_one(kind):
    """One mode: kernel exp(i arg F(P)) (1 where F(P) = 0) and inverse conj(P)/(|P|^2 + eps max),
    written out here independently with numpy."""
    p = _two_mode_probe()[0] if kind == "disk" else torch.ones(32, 32, dtype=torch.complex64)
    far = np.fft.fftshift(np.fft.fft2(p.numpy().astype(np.complex128), norm="ortho"))
    kernel = np.exp(1j * np.angle(far))
    i2 = np.abs(p.numpy()) ** 2
    inverse = np.conj(p.numpy()) / (i2 + 0.01 * i2.max())
    counts = torch.rand(1, 1, 32, 32) * 100
    want = np.fft.ifft2(np.fft.ifftshift(np.sqrt(counts.numpy()[0, 0]) * kernel),
                        norm="ortho") * inverse
    got = BackPropagation(p)(counts)[0, 0].numpy()
    assert np.allclose(got, want, atol=1e-5 * np.abs(want).max())


def test_runtime_probe_equals_the_stored_probe():
    probe = _two_mode_probe()
    other = probe.flip(-1) * 0.3 + 1.0
    counts = torch.rand(2, 4, 32, 32) * 100
    assert torch.allclose(BackPropagation(probe)(counts),
                          BackPropagation(other)(counts, probe), atol=1e-6, rtol=1e-5)
    cfg = ModelConfig(width=4, depth=2)
    torch.manual_seed(0)
    gen_a = build_model(cfg, probe, 4).generator
    torch.manual_seed(0)
    gen_b = build_model(cfg, other, 4).generator
    with torch.no_grad():
        for m in (gen_a, gen_b):
            m.head.weight.normal_(0, 0.1)
        gen_b.load_state_dict(gen_a.state_dict())
        assert torch.allclose(gen_a(counts), gen_b(counts, probe=probe), atol=1e-5, rtol=1e-4)


def test_gradient_reaches_the_probe_through_both_paths(tiny_pair):
    train, _ = tiny_pair
    probe = torch.from_numpy(train.probe).clone().requires_grad_()
    out = BackPropagation(probe.detach())(torch.from_numpy(train.counts[:3])[:, None], probe)
    out.abs().sum().backward()
    assert probe.grad is not None and float(probe.grad.abs().sum()) > 0  # the physics layer

    model = build_model(ModelConfig(width=4, depth=2, learn_probe=True), probe.detach(), 4)
    assert isinstance(model.probe, torch.nn.Parameter) and model.learns_probe
    counts = torch.from_numpy(train.counts[:8]).reshape(2, 4, 32, 32)
    offsets = torch.tensor([[[-2.0, -2.0], [-2.0, 2.0], [2.0, -2.0], [2.0, 2.0]]] * 2)
    loss, _ = model.loss({"counts": counts, "offsets_px": offsets})
    loss.backward()
    g = model.probe.grad
    assert g is not None and torch.isfinite(torch.view_as_real(g)).all() and float(g.abs().sum()) > 0


def test_initial_modes_are_orthogonal_with_the_same_power():
    p = _two_mode_probe()[0]
    modes = initial_probe_modes(p, 3)
    gram = torch.einsum("kij,lij->kl", modes.conj(), modes)
    off = gram - torch.diag(torch.diagonal(gram))
    assert modes.shape == (3, 32, 32)
    assert float(off.abs().max()) < 1e-4 * float(gram.abs().max())
    assert float(modes.abs().square().sum()) == pytest.approx(float(p.abs().square().sum()),
                                                              rel=1e-5)
    share = modes.abs().square().sum(dim=(-2, -1)) / modes.abs().square().sum()
    assert float(share[1:].max()) == pytest.approx(EXTRA_MODE_POWER / (1 + 2 * EXTRA_MODE_POWER),
                                                   rel=0.2)


def _defocus_scan(defocus_rad: float, object_size_px: int = 64, seed: int = 3):
    sim = SimulationConfig(object_kind="lines", object_size_px=object_size_px, probe_size_px=32,
                           probe_kind="defocused_disk", probe_radius_px=8.0,
                           probe_defocus_rad=defocus_rad, scan_kind="raster", scan_step_px=3.0,
                           photons_per_pattern=1e6, seed=seed)
    return simulate_scan(sim)


def _cfg(**model) -> Config:
    return Config(grouping=GroupingConfig(gridsize=2),
                  model=ModelConfig(width=4, depth=2, learn_probe=True, **model),
                  train=TrainConfig(epochs=1, batch_size=16, val_fraction=0.0,
                                    accelerator="cpu", progress_bar=False))


def test_learned_modes_stay_orthogonal_and_the_bundle_keeps_them(tmp_path):
    from ptypinn.pinn.train import train_model

    scan = _defocus_scan(4.0, object_size_px=48)
    res = train_model(_cfg(probe_modes=2, probe_start_epochs=0, probe_learning_rate=3e-2),
                      scan, tmp_path / "run")
    p = res.bundle.model.probe.detach()
    assert p.shape == (2, 32, 32)
    gram = torch.einsum("kij,lij->kl", p.conj(), p)
    assert float(gram[0, 1].abs()) < 1e-4 * float(gram[0, 0].abs())
    assert float(p.abs().square().sum()) == pytest.approx(probe_power(scan.probe), rel=1e-4)
    start = initial_probe_modes(torch.from_numpy(scan.probe), 2)
    assert not torch.allclose(p, start)  # it was learned
    loaded = load_bundle(tmp_path / "run" / "bundle")
    assert torch.allclose(loaded.model.probe.detach(), p)
    assert loaded.manifest["training"]["probe_learned"]["modes"] == 2
    counts = torch.from_numpy(scan.counts[:8]).reshape(2, 4, 32, 32)
    offsets = torch.zeros(2, 4, 2)
    with torch.no_grad():
        assert torch.allclose(loaded.model(counts, offsets), res.bundle.model(counts, offsets),
                              atol=1e-5)


def test_probe_recovered_from_a_defocus_50_percent_off(tmp_path):
    """Start: the same aperture with half the defocus (correlation ~0.83); the maximum-likelihood
    start and the joint training must bring it to >= 0.95 (global phase removed by |<,>|)."""
    from ptypinn.pinn.train import train_model

    scan = _defocus_scan(4.0)
    pupil = 32 * 4.0 / (np.pi * 8.0)  # the simulator's pupil radius for r = 8 px
    wrong = defocused_aperture(32, pupil, 2.0)
    wrong = (wrong * np.sqrt(probe_power(scan.probe) / probe_power(wrong))).astype(np.complex64)
    assert probe_correlation(wrong, scan.probe) < 0.85
    res = train_model(_cfg(probe_start_epochs=40), scan.replace(probe=wrong), tmp_path / "run")
    learned = res.bundle.model.probe.detach().numpy()
    assert probe_correlation(learned, scan.probe) >= 0.95
    assert probe_power(learned) == pytest.approx(probe_power(scan.probe), rel=1e-4)


def test_probe_estimate_fits_the_aperture_and_the_photons():
    sim = SimulationConfig(object_kind="lines", object_size_px=96, probe_size_px=64,
                           probe_kind="defocused_disk", probe_radius_px=16.0,
                           probe_defocus_rad=20.0, scan_kind="raster", scan_step_px=8.0,
                           photons_per_pattern=1e6, seed=1)
    scan = simulate_scan(sim)
    probe, fit = estimate_probe(scan.counts)
    true_pupil = 64 * 20.0 / (np.pi * 16.0)  # 25.5 frequency pixels
    assert fit["pupil_radius_px"] == pytest.approx(true_pupil, rel=0.1)
    assert probe_power(probe) == pytest.approx(scan.photons_per_pattern, rel=1e-4)
    # with the true real-space radius the estimate is close to the true probe
    probe16, _ = estimate_probe(scan.counts, radius_px=16.0)
    assert probe_correlation(probe16, scan.probe) > 0.6
    bad = np.zeros((64, 64), bool)
    bad[32, 30:34] = True  # masked pixels are filled, not counted as dark
    _, fit_bad = estimate_probe(np.where(bad, 0, scan.counts), bad)
    assert fit_bad["pupil_radius_px"] == pytest.approx(fit["pupil_radius_px"], rel=0.02)
    with pytest.raises(ValueError, match="counts"):
        estimate_probe(scan.counts[0])
    with pytest.raises(ValueError, match="radius_px"):
        estimate_probe(scan.counts, radius_px=40.0)


def test_probe_correlation_removes_phase_and_scale_only():
    p = _two_mode_probe()[0].numpy()
    assert probe_correlation(3.0 * np.exp(1.1j) * p, p) == pytest.approx(1.0, abs=1e-6)
    q = _two_mode_probe()[1].numpy()
    assert probe_correlation(q, p) < 1e-6
    ramp = p * np.exp(0.2j * np.arange(32))[None, :]
    assert probe_correlation(ramp, p) < 0.9
    assert probe_correlation(ramp, p, remove_ramp=True) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("field, value", [("probe_modes", 0), ("probe_modes", 9),
                                          ("probe_learning_rate", 0.0),
                                          ("probe_start_epochs", -1)])
def test_probe_learning_config_is_validated(field, value):
    with pytest.raises(ConfigError, match=f"model.{field}"):
        ModelConfig(**{field: value})
    with pytest.raises(ConfigError, match="model.learn_probe"):
        ModelConfig(kind="baseline", learn_probe=True)


def test_scan_without_probe_is_reconstructed_end_to_end(tmp_path, capsys, caplog):
    from ptypinn.cli import main

    scan = _defocus_scan(4.0, object_size_px=48)
    path = tmp_path / "noprobe.npz"
    np.savez(path, counts=scan.counts, positions_px=scan.positions_px)
    read = io.read_scan(path)
    assert "probe_estimated" in read.meta and not read.meta["probe_calibrated"]
    out = tmp_path / "out"
    assert main(["reconstruct", str(path), "-o", str(out), "--probe-modes", "1",
                 "--set", "model.width=4", "--set", "model.depth=2",
                 "--set", "model.probe_start_epochs=5", "--set", "train.epochs=1",
                 "--set", "train.progress_bar=false", "--set", "train.accelerator=cpu",
                 "--set", "infer.device=cpu", "--set", "grouping.gridsize=2"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_patterns"] == scan.n_patterns and np.isfinite(summary["nll_per_pixel_mean"])
    manifest = json.loads((out / "run" / "bundle" / "manifest.json").read_text())
    assert manifest["training"]["probe_learned"]["start_epochs"] == 5
    assert (out / "config.resolved.yaml").read_text().count("learn_probe: true") == 1
    # the bundle applied to the probe-less file takes its learned probe, not the estimate
    inf = tmp_path / "inf"
    capsys.readouterr()
    assert main(["infer", str(out / "run"), "--scan", str(path), "-o", str(inf),
                 "--set", "infer.device=cpu"]) == 0
    assert "using the bundle's" in capsys.readouterr().err


def test_cxi_without_probe_gets_the_estimate(tmp_path):
    import h5py

    scan = _defocus_scan(4.0, object_size_px=48)
    scan = scan.replace(meta={**scan.meta, "photon_energy_eV": 8000.0,
                              "detector_distance_m": 2.0, "detector_pixel_size_m": 75e-6})
    path = tmp_path / "scan.cxi"
    io.write_cxi(path, scan)
    with h5py.File(path, "a") as f:
        for k in ("/entry_1/instrument_1/source_1/illumination", "/entry_1/instrument_1/"
                  "detector_1/probe", "/entry_1/instrument_1/source_1/probe", "/entry_1/probe"):
            if k in f:
                del f[k]
    read = io.read_scan(path)
    want, fit = estimate_probe(scan.counts)
    assert read.meta["probe_estimated"] == pytest.approx(fit)
    assert np.allclose(read.probe, want) and not read.meta["probe_calibrated"]
