"""Spectral generator: the spectral convolution against numpy references, the residual start at
the physics estimate, configuration, and one short training through ``build_model``."""

import numpy as np
import pytest
import torch

from ptypinn.config import Config, ConfigError, ModelConfig, from_dict
from ptypinn.pinn.models import build_model
from ptypinn.pinn.networks import BackPropagation, UNetGenerator, build_generator
from ptypinn.pinn.spectral import SpectralConv2d, SpectralResNetGenerator


def _disk(n: int, r: float, scale: float = 30.0) -> torch.Tensor:
    y, x = np.mgrid[:n, :n] - n / 2
    return torch.from_numpy(((y**2 + x**2) <= r**2).astype(np.complex64) * scale)


def _set_weights(conv: SpectralConv2d, spectrum: np.ndarray) -> None:
    """Weights of a 1 -> 1 channel layer from a full rfft2 spectrum ``(H, W//2+1)``."""
    my, mx = conv.modes_y, conv.modes_x
    w = np.zeros((2, 1, 1, my, mx), dtype=np.complex64)
    w[0, 0, 0] = spectrum[:my, :mx]
    w[1, 0, 0] = spectrum[-my:, :mx]
    with torch.no_grad():
        conv.weight.copy_(torch.view_as_real(torch.from_numpy(w)))


def test_spectral_conv_all_modes_ones_is_identity():
    n = 8
    conv = SpectralConv2d(1, 1, n, modes=n // 2 + 1)
    _set_weights(conv, np.ones((n, n // 2 + 1)))
    x = torch.randn(3, 1, n, n, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(conv(x), x, atol=1e-5)


def test_spectral_conv_all_modes_is_circular_convolution():
    n = 8
    rng = np.random.default_rng(1)
    kernel = rng.normal(size=(n, n))
    x = rng.normal(size=(n, n))
    conv = SpectralConv2d(1, 1, n, modes=n)
    _set_weights(conv, np.fft.rfft2(kernel))
    got = conv(torch.from_numpy(x).float()[None, None])[0, 0].detach().numpy()
    # direct circular convolution, no FFT: y[i, j] = sum_kl k[k, l] x[i - k, j - l]
    want = np.zeros((n, n))
    for k in range(n):
        for m in range(n):
            want += kernel[k, m] * np.roll(x, (k, m), axis=(0, 1))
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_spectral_conv_drops_high_modes():
    n = 16
    conv = SpectralConv2d(1, 1, n, modes=2)
    _set_weights(conv, np.ones((n, n // 2 + 1)))
    y, x = np.mgrid[:n, :n]
    low = np.cos(2 * np.pi * y / n) + np.sin(2 * np.pi * x / n)  # |k| = 1: kept
    high = np.cos(2 * np.pi * 5 * y / n)  # ky = 5: dropped
    got = conv(torch.from_numpy(low + high).float()[None, None])[0, 0].detach().numpy()
    np.testing.assert_allclose(got, low, atol=1e-5)
    with pytest.raises(ValueError, match="expected maps of 16 x 16"):
        conv(torch.zeros(1, 1, 8, 8))


@pytest.mark.parametrize("members", [1, 4])
def test_generator_starts_at_the_physics_estimate(members):
    n = 32
    probe = _disk(n, 8.0)
    g = torch.Generator().manual_seed(2)
    counts = torch.poisson(torch.rand(2, members, n, n, generator=g) * 50)
    spec = SpectralResNetGenerator(members, BackPropagation(probe), width=8, depth=2,
                                   amplitude_max=1.5, modes=6, blocks=1)
    unet = UNetGenerator(members, probe, width=8, depth=2, amplitude_max=1.5)
    with torch.no_grad():
        out = spec(counts)
        ref = unet(counts)  # the U-Net's residual head also starts at the (clamped) estimate
        o0 = BackPropagation(probe)(counts)
    assert out.shape == (2, members, n, n) and out.dtype == torch.complex64
    assert torch.allclose(out, ref, atol=1e-5)
    clamped = torch.polar((o0.abs() / 1.5).clamp(0.02, 0.98) * 1.5, o0.angle())
    assert torch.allclose(out, clamped, atol=1e-5)
    # the optional runtime probe is accepted
    with torch.no_grad():
        assert torch.allclose(spec(counts, probe), out)


def test_generator_rejects_bad_shapes():
    spec = build_generator("spectral", 1, 8, 2, 1.5, _disk(32, 8.0), spectral_modes=4)
    with pytest.raises(ValueError, match="expected shape"):
        spec(torch.zeros(1, 2, 32, 32))
    with pytest.raises(ValueError, match="pattern size"):
        spec(torch.zeros(1, 1, 16, 16))
    with pytest.raises(ValueError, match="multiple of 8"):
        build_generator("spectral", 1, 8, 3, 1.5, _disk(36, 8.0))
    with pytest.raises(ValueError, match="'unet' or 'spectral'"):
        build_generator("fno", 1, 8, 2, 1.5, _disk(32, 8.0))


def test_config_validates_spectral_fields():
    assert ModelConfig(generator="spectral", spectral_modes=4, spectral_blocks=0)
    with pytest.raises(ConfigError, match="model.generator"):
        ModelConfig(generator="attention")
    with pytest.raises(ConfigError, match="model.spectral_modes"):
        ModelConfig(spectral_modes=0)
    with pytest.raises(ConfigError, match="model.spectral_blocks"):
        ModelConfig(spectral_blocks=-1)


def test_spectral_pinn_trains_and_lowers_loss(tiny_pair):
    train, _ = tiny_pair
    cfg = from_dict(Config, {"model": {"generator": "spectral", "width": 8, "depth": 2,
                                       "spectral_modes": 6, "spectral_blocks": 1}})
    model = build_model(cfg.model, torch.from_numpy(train.probe), 1)
    counts = torch.from_numpy(train.counts[:8])[:, None]
    batch = {"counts": counts, "offsets_px": torch.zeros(8, 1, 2)}
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    with torch.no_grad():
        first, _ = model.loss(batch)
    for _ in range(6):
        loss, _ = model.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        last, _ = model.loss(batch)
    assert float(last) < float(first)
