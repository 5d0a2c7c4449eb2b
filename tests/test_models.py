"""Models: the overlap constraint is a projection; the PINN loss scores the truth best."""

import numpy as np
import pytest
import torch

from ptypinn import physics
from ptypinn.config import ModelConfig
from ptypinn.pinn.models import build_model, merge_window, overlap_constraint


def test_overlap_constraint_keeps_consistent_patches():
    g = torch.Generator().manual_seed(0)
    obj = torch.polar(torch.rand(1, 40, 40, generator=g) + 0.5, torch.rand(1, 40, 40, generator=g))
    centres = torch.tensor([[[18.0, 18.0], [18.0, 22.0], [22.0, 18.0], [22.0, 22.0]]])
    patches = physics.extract_patches(obj, centres, 16)
    offsets = centres - centres.mean(1, keepdim=True)
    window = torch.rand(16, 16, generator=g) + 0.1
    out = overlap_constraint(patches, offsets, window)
    assert torch.allclose(out, patches, atol=1e-5)


def test_overlap_constraint_averages_inconsistent_members():
    p = torch.zeros(1, 2, 8, 8, dtype=torch.complex64)
    p[0, 1] = 2.0
    offsets = torch.zeros(1, 2, 2)  # both members at the same place: the mean is enforced
    out = overlap_constraint(p, offsets, torch.ones(8, 8))
    assert torch.allclose(out, torch.ones_like(out), atol=1e-5)


def test_seed_only_forward_is_the_first_member_of_the_full_forward(tiny_pair):
    """Inference re-extracts only the seed's patch; the merge still uses every member."""
    train, _ = tiny_pair
    torch.manual_seed(0)
    model = build_model(ModelConfig(width=8, depth=2), torch.from_numpy(train.probe), 4)
    torch.nn.init.normal_(model.generator.head.weight, std=0.05)  # members that disagree
    counts = torch.from_numpy(np.stack([train.counts[i:i + 4] for i in (0, 4)])).float()
    offsets = torch.tensor([[[-2.0, -2.0], [-2.0, 2.5], [2.0, -2.0], [2.0, 2.5]]]).expand(2, 4, 2)
    with torch.no_grad():
        full = model(counts, offsets)
        seed = model(counts, offsets, seed_only=True)
    assert seed.shape == (2, 1) + full.shape[2:]
    torch.testing.assert_close(seed[:, 0], full[:, 0])
    assert not torch.allclose(full[:, 0], full[:, 1])


def test_pinn_loss_prefers_truth_and_is_near_half_per_pixel(tiny_pair):
    train, _ = tiny_pair
    probe = torch.from_numpy(train.probe)
    model = build_model(ModelConfig(width=8, depth=2), probe, 1)
    pos = torch.from_numpy(train.positions_px[:16])[None]
    truth = physics.extract_patches(torch.from_numpy(train.object_true)[None], pos, 32)[0]
    counts = torch.from_numpy(train.counts[:16])

    def data_loss(patches):
        pred = model.predicted_counts(patches[:, None])
        c = counts[:, None]
        nll = physics.poisson_nll(pred, c, 1e-6) - physics.poisson_nll(c, c, 1e-6)
        return float((nll / 1024).mean())

    at_truth = data_loss(truth)
    flat = data_loss(torch.full_like(truth, complex(np.abs(train.object_true).mean())))
    # Poisson deviance/2 per pixel has expectation ~0.5 at the true intensities
    assert 0.2 < at_truth < 0.8
    assert flat > 20 * at_truth
    # the model's own loss is the same excess NLL
    loss, _ = model.loss({"counts": counts[:, None], "offsets_px": torch.zeros(16, 1, 2)})
    assert 0 < float(loss) < flat


def test_merge_window_is_probe_shaped():
    probe = torch.zeros(8, 8, dtype=torch.complex64)
    probe[2:6, 2:6] = 3.0
    w = merge_window(probe)
    assert float(w.max()) == pytest.approx(1.0) and float(w[0, 0]) == pytest.approx(1e-3)


# ------------------------------------------------------------------------------------------------
# generator (networks): the fixed back-propagation layer and the residual U-Net


def _disk_probe(n: int, radius: float, photons: float) -> torch.Tensor:
    yy, xx = np.mgrid[0:n, 0:n] - n // 2
    disk = (np.hypot(yy, xx) <= radius).astype(np.float32)
    return torch.from_numpy((disk * np.sqrt(photons / disk.sum())).astype(np.complex64))


def _numpy_counts(probe: np.ndarray, obj: np.ndarray) -> np.ndarray:
    """Independent far-field reference: |fftshift(fft2(P O, ortho))|^2 summed over modes."""
    modes = probe if probe.ndim == 3 else probe[None]
    far = np.fft.fftshift(np.fft.fft2(modes * obj, norm="ortho"), axes=(-2, -1))
    return (np.abs(far) ** 2).sum(0)


@pytest.mark.parametrize("modes", [1, 2])
def test_backpropagation_returns_a_flat_object_inside_the_probe(modes):
    from ptypinn.pinn.networks import BackPropagation

    p = _disk_probe(32, 8.0, 1e6)
    probe = p if modes == 1 else torch.stack([p, 0.5 * p])  # proportional modes: exact
    a, phi = 0.7, 0.4
    counts = _numpy_counts(probe.numpy(), np.full((32, 32), a * np.exp(1j * phi)))
    o0 = BackPropagation(probe)(torch.from_numpy(counts).float()[None, None])[0, 0]
    inside = p.abs() > 0
    assert torch.allclose(o0.abs()[inside], torch.full_like(o0.abs()[inside], a / 1.01), rtol=2e-3)
    # the global phase is not observable: only its constancy is checked
    ph = torch.angle(o0[inside] * o0[16, 16].conj())
    assert float(ph.abs().max()) < 1e-3


def test_untrained_generator_starts_from_the_backpropagated_estimate():
    p = _disk_probe(32, 8.0, 1e6)
    counts = _numpy_counts(p.numpy(), np.full((32, 32), 0.6 + 0j))
    model = build_model(ModelConfig(width=4, depth=2), p, 4)
    x = torch.from_numpy(counts).float().expand(2, 4, 32, 32)
    with torch.no_grad():
        out = model.generator(x)
    inside = p.abs() > 0
    assert out.shape == (2, 4, 32, 32) and out.dtype == torch.complex64
    assert torch.allclose(out.abs()[..., inside], torch.tensor(0.6 / 1.01), rtol=3e-3)
    assert float(out.abs().max()) <= 1.5


def test_generator_output_is_bounded_and_differentiable():
    p = _disk_probe(32, 8.0, 1e4)
    model = build_model(ModelConfig(width=4, depth=2, amplitude_max=1.2), p, 1)
    with torch.no_grad():
        model.generator.head.weight.normal_(0, 10.0)  # large corrections saturate, never overflow
    x = (torch.rand(3, 1, 32, 32) * 100 + 1).requires_grad_()
    out = model.generator(x)
    assert torch.isfinite(torch.view_as_real(out)).all()
    assert float(out.detach().abs().max()) <= 1.2 + 1e-6
    out.abs().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("shape, field", [((2, 3, 32, 32), "counts"),
                                          ((2, 1, 24, 24), "pattern size"),
                                          ((2, 1, 16, 16), "pattern size")])
def test_generator_rejects_bad_shapes(shape, field):
    model = build_model(ModelConfig(width=4, depth=2), _disk_probe(32, 8.0, 1e4), 1)
    with pytest.raises(ValueError, match=field):
        model.generator(torch.rand(*shape))


def test_build_generator_rejects_unknown_kind():
    from ptypinn.pinn.networks import build_generator

    with pytest.raises(ValueError, match="model.generator"):
        build_generator("mlp", 1, 4, 2, 1.5, _disk_probe(32, 8.0, 1e4))
