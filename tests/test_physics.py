"""Physics against plain-numpy references, Parseval, adjointness, exact integer shifts, gradcheck."""

import numpy as np
import pytest
import torch

from ptypinn import physics


def _rand_complex(*shape, seed=0, dtype=torch.complex128):
    g = torch.Generator().manual_seed(seed)
    return torch.complex(torch.randn(*shape, generator=g, dtype=torch.float64),
                         torch.randn(*shape, generator=g, dtype=torch.float64)).to(dtype)


def test_far_field_parseval_and_centre():
    psi = _rand_complex(3, 16, 16)
    f = physics.far_field(psi)
    assert torch.allclose((f.abs() ** 2).sum((-2, -1)), (psi.abs() ** 2).sum((-2, -1)))
    flat = torch.ones(16, 16, dtype=torch.complex128)
    i = physics.far_field(flat).abs() ** 2
    assert torch.argmax(i) == 8 * 16 + 8  # zero frequency at the array centre (N/2, N/2)


def test_intensity_matches_numpy_reference_with_modes():
    probe = _rand_complex(2, 16, 16, seed=1)
    obj = _rand_complex(5, 16, 16, seed=2)
    ours = physics.predicted_intensity(probe, obj).numpy()
    p, o = probe.numpy(), obj.numpy()
    ref = np.zeros((5, 16, 16))
    for k in range(2):
        ref += np.abs(np.fft.fftshift(np.fft.fft2(p[k] * o, norm="ortho"), axes=(-2, -1))) ** 2
    np.testing.assert_allclose(ours, ref, rtol=1e-10)
    single = physics.predicted_intensity(probe[0], obj)
    assert single.shape == (5, 16, 16)


def test_poisson_nll_matches_formula_and_masks():
    g = np.random.default_rng(0)
    i = g.uniform(0.1, 5, (2, 4, 4))
    n = g.poisson(i).astype(float)
    ours = physics.poisson_nll(torch.tensor(i), torch.tensor(n), eps=1e-9).numpy()
    ref = (i - n * np.log(i + 1e-9)).sum((-2, -1))
    np.testing.assert_allclose(ours, ref, rtol=1e-12)
    bad = torch.zeros(4, 4, dtype=torch.bool)
    bad[0, 0] = True
    masked = physics.poisson_nll(torch.tensor(i), torch.tensor(n), 1e-9, bad).numpy()
    np.testing.assert_allclose(masked, ref - (i - n * np.log(i + 1e-9))[:, 0, 0], rtol=1e-12)
    with pytest.raises(ValueError, match="eps"):
        physics.poisson_nll(torch.tensor(i), torch.tensor(n), eps=0.0)


def test_integer_positions_are_exact_copies():
    obj = _rand_complex(1, 40, 50)
    pos = torch.tensor([[[20.0, 25.0], [12.0, 30.0], [4.0, 4.0]]], dtype=torch.float64)
    patches = physics.extract_patches(obj, pos, 8)
    for m, (y, x) in enumerate(pos[0].tolist()):
        y0, x0 = int(y) - 4, int(x) - 4
        assert torch.equal(patches[0, m], obj[0, y0:y0 + 8, x0:x0 + 8])


def test_subpixel_extract_is_bilinear_reference():
    obj = _rand_complex(1, 20, 20, seed=3)
    y, x = 9.25, 10.75  # window start (5.25, 6.75)
    got = physics.extract_patches(obj, torch.tensor([[[y, x]]], dtype=torch.float64), 8)[0, 0]
    o = obj[0].numpy()
    fy, fx = 0.25, 0.75
    ref = ((1 - fy) * (1 - fx) * o[5:13, 6:14] + (1 - fy) * fx * o[5:13, 7:15]
           + fy * (1 - fx) * o[6:14, 6:14] + fy * fx * o[6:14, 7:15])
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-12)


def test_place_is_adjoint_of_extract():
    obj = _rand_complex(2, 30, 33, seed=4)
    g = torch.Generator().manual_seed(5)
    pos = torch.rand(2, 7, 2, generator=g, dtype=torch.float64) * 12 + 6
    y = _rand_complex(2, 7, 10, 10, seed=6)
    lhs = (physics.extract_patches(obj, pos, 10).conj() * y).sum()
    rhs = (obj.conj() * physics.place_patches(y, pos, (30, 33))).sum()
    assert abs(lhs - rhs) <= 1e-5 * abs(lhs)


def test_gradcheck_small():
    obj = _rand_complex(1, 12, 12, seed=7).requires_grad_(True)
    pos = torch.tensor([[[6.3, 5.6], [6.9, 6.2]]], dtype=torch.float64)
    probe = _rand_complex(6, 6, seed=8)

    def f(o):
        return physics.predicted_intensity(probe, physics.extract_patches(o, pos, 6))

    assert torch.autograd.gradcheck(f, (obj,))


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="probe"):
        physics.predicted_intensity(torch.ones(8, 8, dtype=torch.complex64),
                                    torch.ones(2, 16, 16, dtype=torch.complex64))
    with pytest.raises(ValueError, match="positions_px"):
        physics.extract_patches(torch.ones(1, 20, 20), torch.ones(5, 2), 4)
    with pytest.raises(ValueError, match="probe"):
        physics.probe_modes(torch.ones(1, 1, 4, 4))
