"""Bad pixels (issue 13, item 2): zeroed in the network input, left out of the training loss and
of inference's data NLL -- corrupting them changes nothing."""

import numpy as np
import pytest
import torch

from ptypinn.config import Config, from_dict
from ptypinn.grouping import group_patterns
from ptypinn.pinn.infer import reconstruct
from ptypinn.pinn.models import build_model
from ptypinn.pinn.train import GroupDataset, train_model


def _mask(n: int) -> np.ndarray:
    bad = np.zeros((n, n), dtype=bool)
    bad[n // 2 - 1:n // 2 + 1, n // 2 + 3] = True  # a dead pair near the bright centre
    bad[3, 5] = bad[n - 4, 9] = True                 # and hot pixels at the edge
    return bad


def _corrupt(scan, value: float = 5e6):
    return scan.replace(counts=np.where(scan.bad_pixels, value, scan.counts))


def _cfg(gridsize: int = 2) -> Config:
    return from_dict(Config, {"grouping": {"gridsize": gridsize},
                              "model": {"width": 8, "depth": 2},
                              "train": {"epochs": 1, "batch_size": 8, "progress_bar": False,
                                        "accelerator": "cpu", "val_fraction": 0.0},
                              "infer": {"device": "cpu"}})


@pytest.fixture(scope="module")
def masked_pair(tiny_pair):
    train, test = tiny_pair
    bad = _mask(train.pattern_size)
    return train.replace(bad_pixels=bad), test.replace(bad_pixels=bad)


def test_loss_and_input_ignore_bad_pixels(masked_pair):
    train, _ = masked_pair
    cfg = _cfg()
    groups = group_patterns(train.positions_px, cfg.grouping)
    clean = GroupDataset(train, groups)
    dirty = GroupDataset(_corrupt(train), groups)
    items = [clean[i] for i in range(8)], [dirty[i] for i in range(8)]
    batch = [{k: torch.stack([it[k] for it in its]) for k in its[0]} for its in items]
    assert torch.equal(batch[0]["counts"], batch[1]["counts"])  # network input: zeroed
    assert not batch[0]["counts"][..., torch.from_numpy(train.bad_pixels)].any()
    torch.manual_seed(0)
    model = build_model(cfg.model, torch.from_numpy(train.probe), cfg.grouping.group_size)
    # the loss leaves them out even when the counts it is handed are not zeroed
    raw = dict(batch[0], counts=torch.from_numpy(_corrupt(train).counts)[
        torch.as_tensor(groups.indices[:8])])
    l0, l1 = model.loss(batch[0])[0], model.loss(raw)[0]
    assert torch.isfinite(l0) and l0.item() == pytest.approx(l1.item(), rel=1e-6)
    # without the mask the corruption dominates the loss
    unmasked = {k: v for k, v in raw.items() if k != "bad_pixels"}
    assert model.loss(unmasked)[0].item() > 100 * l0.item()


def test_reconstruction_ignores_bad_pixels(masked_pair, tmp_path):
    train, test = masked_pair
    cfg = _cfg()
    a = train_model(cfg, train, tmp_path / "a").bundle
    b = train_model(cfg, _corrupt(train), tmp_path / "b").bundle
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]), k
    assert a.config.model.amplitude_max == b.config.model.amplitude_max
    r0 = reconstruct(a, test, cfg.infer)
    r1 = reconstruct(a, _corrupt(test), cfg.infer)
    np.testing.assert_array_equal(r0.object, r1.object)
    np.testing.assert_allclose(r0.nll_per_pattern, r1.nll_per_pattern, rtol=1e-6)
