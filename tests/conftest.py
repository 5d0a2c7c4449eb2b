"""Shared fixtures: small simulated scans (generated, never downloaded)."""

import pytest

from ptypinn.config import SimulationConfig
from ptypinn.simulate import simulate_train_test


@pytest.fixture(scope="session")
def tiny_pair():
    """A small 'lines' train/test pair: 32x32 patterns, 1e6 photons, different objects."""
    cfg = SimulationConfig(object_kind="lines", object_size_px=80, probe_size_px=32,
                           probe_radius_px=8.0, scan_kind="raster", scan_step_px=4.0,
                           photons_per_pattern=1e6, seed=11)
    return simulate_train_test(cfg)


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny tensors run faster on one thread, and CI's two cores are not shared with BLAS pools."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
