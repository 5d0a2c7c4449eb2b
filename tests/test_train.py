"""Training: the bundle returned and written, NaN guard, collapse guard, resume, 2-process DDP
on CPU."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from ptypinn import io
from ptypinn.config import Config, from_dict
from ptypinn.pinn.bundle import load_bundle
from ptypinn.pinn.models import PINN
from ptypinn.pinn.train import (TrainingCollapsed, TrainingDiverged, amplitude_collapse_stats,
                                train_model)


def _cfg(**train):
    return from_dict(Config, {
        "grouping": {"gridsize": 2},
        "model": {"width": 8, "depth": 2},
        "train": {"epochs": 2, "batch_size": 8, "progress_bar": False, **train},
    })


def test_train_returns_the_bundle_it_writes(tiny_pair, tmp_path):
    train, test = tiny_pair
    res = train_model(_cfg(), train, tmp_path)
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest == json.loads(json.dumps(res.bundle.manifest))
    assert manifest["training"]["photons_per_pattern"] == pytest.approx(train.photons_per_pattern)
    loaded = load_bundle(res.bundle_dir)
    counts = torch.from_numpy(test.counts[:8]).reshape(2, 4, *test.counts.shape[1:])
    offsets = torch.tensor([[-2.0, -2], [-2, 2], [2, -2], [2, 2]]).expand(2, 4, 2)
    with torch.no_grad():
        assert torch.equal(res.bundle.model(counts, offsets), loaded.model(counts, offsets))
    assert res.epochs_run == 2 and res.n_val_groups > 0
    rows = (tmp_path / "logs" / "metrics.csv").read_text().splitlines()
    assert "train_loss" in rows[0] and len(rows) > 1


def test_nan_guard_stops_and_keeps_last_checkpoint(tiny_pair, tmp_path, monkeypatch):
    train, _ = tiny_pair
    calls = {"n": 0}
    real = PINN.loss

    def flaky(self, batch):
        calls["n"] += 1
        loss, logs = real(self, batch)
        return (loss * float("nan"), logs) if calls["n"] > 40 else (loss, logs)

    monkeypatch.setattr(PINN, "loss", flaky)
    with pytest.raises(TrainingDiverged, match=r"became nan .*Last good checkpoint: .*last\.ckpt"):
        train_model(_cfg(epochs=5, val_fraction=0.0), train, tmp_path)
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert not (tmp_path / "bundle").exists()


def test_resume_continues_epochs(tiny_pair, tmp_path):
    train, _ = tiny_pair
    train_model(_cfg(epochs=1), train, tmp_path)
    res = train_model(_cfg(epochs=2), train, tmp_path, resume=True)
    assert res.epochs_run == 2
    with pytest.raises(ValueError, match="--resume"):
        train_model(_cfg(), train, tmp_path / "empty", resume=True)


def test_ddp_two_cpu_ranks_end_identical(tiny_pair, tmp_path):
    train, _ = tiny_pair
    io.write_scan(tmp_path / "train.npz", train)
    cmd = [sys.executable, "-m", "ptypinn.cli", "train", "--train", str(tmp_path / "train.npz"),
           "-o", str(tmp_path / "run"), "--set", "model.width=8", "--set", "model.depth=2",
           "--set", "train.epochs=1", "--set", "train.batch_size=8",
           "--set", "train.progress_bar=false", "--set", "train.accelerator=cpu",
           "--set", "train.devices=2", "--set", "train.strategy=ddp"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    manifest = json.loads((tmp_path / "run" / "bundle" / "manifest.json").read_text())
    assert manifest["training"]["ranks_identical"] is True


def test_baseline_trains_on_truth(tiny_pair, tmp_path):
    train, _ = tiny_pair
    cfg = from_dict(Config, {"model": {"kind": "baseline", "width": 8, "depth": 2},
                             "train": {"epochs": 1, "progress_bar": False}})
    train_model(cfg, train, tmp_path)
    assert json.loads((tmp_path / "bundle" / "manifest.json").read_text())["kind"] == "baseline"
    assert np.isfinite(torch.load(tmp_path / "checkpoints" / "last.ckpt",
                                  weights_only=False)["epoch"])


def test_resume_keeps_the_best_validation_weights(tiny_pair, tmp_path):
    """The best validation weights live in checkpoints/best.ckpt: a resumed run whose new epochs
    are worse (it starts from spoiled weights) returns the earlier run's best weights."""
    import csv

    train, _ = tiny_pair
    first = train_model(_cfg(epochs=1), train, tmp_path)
    best_path = tmp_path / "checkpoints" / "best.ckpt"
    assert best_path.is_file()
    best_before = {k: v.clone() for k, v in first.bundle.model.state_dict().items()}
    # spoil the weights the resumed run starts from (not the best checkpoint)
    last = tmp_path / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    gen = torch.Generator().manual_seed(0)
    for k, v in ckpt["state_dict"].items():
        if v.is_floating_point() and "generator" in k:
            ckpt["state_dict"][k] = v + 0.5 * torch.randn(v.shape, generator=gen)
    torch.save(ckpt, last)
    res = train_model(_cfg(epochs=2), train, tmp_path, resume=True)
    with open(tmp_path / "logs" / "metrics.csv") as fh:
        val = [(int(r["epoch"]), float(r["val_loss"])) for r in csv.DictReader(fh)
               if r.get("val_loss")]
    assert sorted({e for e, _ in val}) == [0, 1]  # the history of both runs
    best_epoch = min(val, key=lambda ev: ev[1])[0]
    got = res.bundle.model.state_dict()
    if best_epoch == 0:  # the spoiled epoch is worse: the first run's best weights come back
        assert all(torch.equal(got[k], best_before[k]) for k in best_before)
    else:  # (not expected) the resumed epoch is the best: its weights, not the earlier ones
        assert not all(torch.equal(got[k], best_before[k]) for k in best_before)
    saved = io.read_checkpoint(best_path)["state_dict"]
    assert all(torch.equal(got[k], saved["model." + k]) for k in got)


class _FlatGenerator(torch.nn.Module):
    """A generator forced to collapse: one learned constant amplitude, zero phase, whatever the
    input (it keeps the physics layer, as the real generators do)."""

    def __init__(self, probe):
        super().__init__()
        from ptypinn.pinn.networks import BackPropagation

        self.backprop = BackPropagation(probe)
        self.level = torch.nn.Parameter(torch.tensor(0.5))

    def forward(self, counts, probe=None):
        amp = self.level.abs().expand(counts.shape).float()
        return torch.polar(amp, torch.zeros_like(amp))


def test_amplitude_collapse_stats_match_numpy():
    g = torch.Generator().manual_seed(3)
    a = torch.rand(2, 3, 6, 6, generator=g)
    r = torch.rand(2, 3, 6, 6, generator=g)
    a[1, 2] = 0.7  # a flat patch: spread 0, correlation 0 by definition
    core = torch.zeros(6, 6, dtype=torch.bool)
    core[1:5, 2:6] = True
    spread, spread0, corr = amplitude_collapse_stats(a, r, core)
    an, rn = a.numpy()[:, :, 1:5, 2:6].reshape(6, -1), r.numpy()[:, :, 1:5, 2:6].reshape(6, -1)
    np.testing.assert_allclose(spread.numpy(), an.std(axis=1), atol=1e-6)
    np.testing.assert_allclose(spread0.numpy(), rn.std(axis=1), atol=1e-6)
    want = [np.corrcoef(an[i], rn[i])[0, 1] for i in range(5)] + [0.0]
    np.testing.assert_allclose(corr.numpy(), want, atol=1e-6)


def test_collapse_guard_stops_a_collapsed_model(tiny_pair, tmp_path, monkeypatch, caplog):
    import ptypinn.pinn.train as train_mod

    train, _ = tiny_pair
    real = train_mod.build_model

    def collapsed(cfg, probe, group_size):
        model = real(cfg, probe, group_size)
        model.generator = _FlatGenerator(probe)
        return model

    monkeypatch.setattr(train_mod, "build_model", collapsed)
    cfg = _cfg(epochs=4, collapse_patience_epochs=2)
    with caplog.at_level("WARNING", logger="ptypinn.pinn.train"):
        with pytest.raises(TrainingCollapsed, match=r"flat and unrelated .*correlation with "
                                                    r"\|O0\| 0\.000.*2 validation epochs"):
            train_model(cfg, train, tmp_path)
    assert "collapse check" in caplog.text
    rows = (tmp_path / "logs" / "metrics.csv").read_text().splitlines()
    assert len([r for r in rows[1:] if r.split(",")[0] == "2"]) == 0  # stopped after epoch 1
    # the guard can be turned off: the same model then trains to the end
    off = _cfg(epochs=2, collapse_check=False)
    assert train_model(off, train, tmp_path / "off").epochs_run == 2


def test_collapse_guard_quiet_on_a_normal_run(tiny_pair, tmp_path):
    train, _ = tiny_pair
    res = train_model(_cfg(epochs=2, collapse_patience_epochs=1), train, tmp_path)
    assert res.epochs_run == 2
    assert res.final_metrics["val_amp_corr"] > 0.2
    assert res.final_metrics["val_amp_spread"] > 0.05 * res.final_metrics["val_o0_spread"]
