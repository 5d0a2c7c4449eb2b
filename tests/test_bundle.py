"""Bundles: identical outputs after save -> load; unknown format versions fail clearly."""

import json

import pytest
import torch

from ptypinn.pinn.bundle import load_bundle, save_bundle
from ptypinn.config import Config, ModelConfig, from_dict, to_dict
from ptypinn.pinn.models import build_model


def _model(c=4):
    torch.manual_seed(0)
    probe = torch.polar(torch.rand(16, 16), torch.rand(16, 16))
    return build_model(ModelConfig(width=8, depth=2), probe, 3.5, c)


def test_round_trip_identical_outputs(tmp_path):
    cfg = from_dict(Config, {"grouping": {"gridsize": 2}, "model": {"width": 8, "depth": 2}})
    model = _model().eval()
    save_bundle(tmp_path / "b", model, cfg, 4)
    b = load_bundle(tmp_path / "b")
    x = torch.rand(3, 4, 16, 16)
    off = torch.tensor([[[-2.0, -2], [-2, 2], [2, -2], [2, 2]]]).expand(3, 4, 2)
    with torch.no_grad():
        assert torch.equal(model(x, off), b.model(x, off))
    assert b.amplitude_scale == 3.5 and b.group_size == 4 and b.pattern_size == 16
    assert b.config == cfg
    assert torch.equal(b.model.probe, model.probe)
    names = sorted(p.name for p in (tmp_path / "b").iterdir())
    assert names == ["config.yaml", "manifest.json", "weights.safetensors"]


def test_unknown_format_version_fails(tmp_path):
    save_bundle(tmp_path / "b", _model(1), Config(), 1)
    m = json.loads((tmp_path / "b" / "manifest.json").read_text())
    m["format_version"] = 99
    (tmp_path / "b" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match="format_version expected 1, got 99"):
        load_bundle(tmp_path / "b")
    with pytest.raises(ValueError, match="not a model bundle"):
        load_bundle(tmp_path)
    assert to_dict(Config())  # config stays serialisable
