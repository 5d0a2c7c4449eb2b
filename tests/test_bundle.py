"""Bundles: identical outputs after save -> load; format-1 bundles still load; unknown format
versions fail clearly."""

import json

import pytest
import torch

from ptypinn import io
from ptypinn.config import Config, ModelConfig, from_dict, to_dict
from ptypinn.pinn.bundle import Bundle, load_bundle, save_bundle
from ptypinn.pinn.models import build_model

CFG = {"grouping": {"gridsize": 2}, "model": {"width": 8, "depth": 2}}


def _model(c=4):
    torch.manual_seed(0)
    probe = torch.polar(torch.rand(16, 16), torch.rand(16, 16))
    return build_model(ModelConfig(width=8, depth=2), probe, c)


def _inputs():
    counts = torch.rand(3, 4, 16, 16) * 100
    off = torch.tensor([[[-2.0, -2], [-2, 2], [2, -2], [2, 2]]]).expand(3, 4, 2)
    return counts, off


def test_round_trip_identical_outputs(tmp_path):
    cfg = from_dict(Config, CFG)
    model = _model().eval()
    save_bundle(tmp_path / "b", Bundle.create(model, cfg))
    b = load_bundle(tmp_path / "b")
    counts, off = _inputs()
    with torch.no_grad():
        assert torch.equal(model(counts, off), b.model(counts, off))
    assert b.group_size == 4 and b.pattern_size == 16
    assert b.config == cfg
    assert torch.equal(b.model.probe, model.probe)
    names = sorted(p.name for p in (tmp_path / "b").iterdir())
    assert names == ["config.yaml", "manifest.json", "weights.safetensors"]
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert "group_size" not in manifest and "amplitude_scale" not in manifest  # one source each


def test_format_1_bundle_loads_with_same_outputs(tmp_path):
    """A format-1 bundle stored the dataset scale s and buffers derived from it (the
    back-propagation kernel times s, for inputs sqrt(n)/s); they are dropped and rebuilt."""
    model = _model().eval()
    s = 7.0
    state = {k: v for k, v in model.state_dict().items()}
    backprop = model.generator.backprop
    state.update({"amplitude_scale": torch.tensor(s, dtype=torch.float64),
                  "window": model.window, "generator.backprop.kernel": backprop.kernel * s,
                  "generator.backprop.inverse_probe": backprop.inverse_probe})
    flat = {}
    for k, v in state.items():
        if v.is_complex():
            flat[k + ".real"], flat[k + ".imag"] = v.real.contiguous(), v.imag.contiguous()
        else:
            flat[k] = v.contiguous()
    cfg = to_dict(from_dict(Config, CFG))
    cfg["model"]["object_big"] = True  # format 1 had this never-read field
    io.write_safetensors(tmp_path / "v1" / "weights.safetensors", flat)
    io.write_yaml(tmp_path / "v1" / "config.yaml", cfg)
    io.write_json(tmp_path / "v1" / "manifest.json", {
        "format": "ptypinn-bundle", "format_version": 1, "kind": "pinn", "group_size": 4,
        "pattern_size": 16, "amplitude_scale": s})
    b = load_bundle(tmp_path / "v1")
    counts, off = _inputs()
    with torch.no_grad():
        assert torch.equal(model(counts, off), b.model(counts, off))


def test_unknown_format_version_fails(tmp_path):
    save_bundle(tmp_path / "b", Bundle.create(_model(1), Config()))
    m = json.loads((tmp_path / "b" / "manifest.json").read_text())
    m["format_version"] = 99
    (tmp_path / "b" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match=r"format_version expected one of \[1, 2\], got 99"):
        load_bundle(tmp_path / "b")
    with pytest.raises(ValueError, match="not a model bundle"):
        load_bundle(tmp_path)
