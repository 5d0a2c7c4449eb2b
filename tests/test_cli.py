"""CLI: end-to-end on a tiny simulated scan, and every user error -> exit 2 with one line."""

import json

import numpy as np
import pytest
import torch

from ptypinn import io
from ptypinn.pinn.bundle import Bundle, save_bundle
from ptypinn.cli import main
from ptypinn.config import Config, ModelConfig, from_dict
from ptypinn.pinn.models import build_model

SIM = ["--set", "simulation.object_size_px=80", "--set", "simulation.probe_size_px=32",
       "--set", "simulation.probe_radius_px=8", "--set", "simulation.scan_step_px=5",
       "--set", "simulation.photons_per_pattern=1e6"]
TINY = ["--set", "model.width=8", "--set", "model.depth=2", "--set", "train.epochs=1",
        "--set", "train.progress_bar=false", "--set", "grouping.gridsize=2"]


def _user_error(capsys, argv, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error:" in err[0], err
    for n in needles:
        assert n in err[0], err[0]
    return err[0]


@pytest.fixture(scope="module")
def sim_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("sim")
    assert main(["simulate", "-o", str(d / "train.npz"), "--test-output", str(d / "test.npz"),
                 *SIM]) == 0
    return d


def test_simulate_writes_scan_preview_and_config(sim_files):
    names = {p.name for p in sim_files.iterdir()}
    assert {"train.npz", "train.png", "test.npz", "test.png", "train.config.yaml"} <= names
    train, test = io.read_scan(sim_files / "train.npz"), io.read_scan(sim_files / "test.npz")
    assert train.pattern_size == 32 and not np.allclose(train.object_true, test.object_true)


def test_info_prints_summary(sim_files, capsys):
    assert main(["info", str(sim_files / "train.npz")]) == 0
    out = capsys.readouterr().out
    for needle in ("patterns:", "photons per pattern", "overlap", "median step"):
        assert needle in out


def test_train_infer_end_to_end(sim_files, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--train", str(sim_files / "train.npz"), "-o", str(run), *TINY]) == 0
    assert (run / "bundle" / "weights.safetensors").is_file()
    assert (run / "logs" / "metrics.csv").is_file() and (run / "config.resolved.yaml").is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert main(["info", str(run)]) == 0
    assert "model bundle" in capsys.readouterr().out
    out = tmp_path / "out"
    assert main(["infer", str(run), "--scan", str(sim_files / "test.npz"), "-o", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_patterns"] == io.read_scan(sim_files / "test.npz").n_patterns
    assert "amplitude" in summary["metrics"]
    rec = io.load_npz(out / "reconstruction.npz")
    assert rec["object"].dtype == np.complex64 and rec["covered"].any()
    assert (out / "reconstruction.png").read_bytes()[:4] == b"\x89PNG"


def test_unknown_config_key(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("simulation:\n  photons_per_patern: 10\n")
    _user_error(capsys, ["simulate", str(cfg), "-o", str(tmp_path / "s.npz")],
                "photons_per_patern", "did you mean")
    assert not (tmp_path / "s.npz").exists()


def test_bad_scan_files(tmp_path, capsys, sim_files):
    bad = tmp_path / "nan.npz"
    np.savez(bad, counts=np.full((2, 8, 8), np.nan), positions_px=np.full((2, 2), 4.0),
             probe=np.ones((8, 8)))
    _user_error(capsys, ["info", str(bad)], "counts", "NaN")
    trunc = tmp_path / "trunc.npz"
    trunc.write_bytes((sim_files / "train.npz").read_bytes()[:1000])
    _user_error(capsys, ["train", "--train", str(trunc), "-o", str(tmp_path / "r"), *TINY],
                "trunc.npz")
    assert not (tmp_path / "r").exists()
    evil = tmp_path / "evil.npz"
    np.savez(evil, counts=np.ones((2, 8, 8)), positions_px=np.full((2, 2), 4.0),
             probe=np.ones((8, 8)), meta=np.array([{}], dtype=object))
    _user_error(capsys, ["info", str(evil)], "pickled")


def test_baseline_without_truth(tmp_path, capsys, sim_files):
    scan = io.read_scan(sim_files / "train.npz").replace(object_true=None)
    io.write_scan(tmp_path / "measured.npz", scan)
    _user_error(capsys, ["train", "--train", str(tmp_path / "measured.npz"), "-o",
                         str(tmp_path / "r"), "--set", "model.kind=baseline", *TINY],
                "baseline", "object_true")
    assert not (tmp_path / "r" / "bundle").exists()


def _bundle(path, size):
    torch.manual_seed(0)
    probe = torch.ones(size, size, dtype=torch.complex64)
    model = build_model(ModelConfig(width=8, depth=2), probe, 1)
    save_bundle(path, Bundle.create(model, from_dict(Config, {"model": {"width": 8, "depth": 2}})))


def test_infer_pattern_size_mismatch_and_format_version(tmp_path, capsys, sim_files):
    _bundle(tmp_path / "b64", 64)
    _user_error(capsys, ["infer", str(tmp_path / "b64"), "--scan", str(sim_files / "test.npz"),
                         "-o", str(tmp_path / "o")], "64x64", "32x32")
    assert not (tmp_path / "o").exists()
    _bundle(tmp_path / "b32", 32)
    m = json.loads((tmp_path / "b32" / "manifest.json").read_text())
    m["format_version"] = 0
    (tmp_path / "b32" / "manifest.json").write_text(json.dumps(m))
    _user_error(capsys, ["infer", str(tmp_path / "b32"), "--scan", str(sim_files / "test.npz"),
                         "-o", str(tmp_path / "o")], "format_version")


def test_constant_prediction_is_an_error(tmp_path, capsys, sim_files, monkeypatch):
    # a generator whose output is constant must be reported, never saved as a result
    from ptypinn.pinn import networks

    scan = io.read_scan(sim_files / "test.npz")
    model = build_model(ModelConfig(width=8, depth=2), torch.from_numpy(scan.probe), 1)
    save_bundle(tmp_path / "flat",
                Bundle.create(model, from_dict(Config, {"model": {"width": 8, "depth": 2}})))

    def constant(self, counts, *args, **kwargs):
        return torch.full(counts.shape, 0.75 + 0j, dtype=torch.complex64)

    monkeypatch.setattr(networks.UNetGenerator, "forward", constant)
    _user_error(capsys, ["infer", str(tmp_path / "flat"), "--scan", str(sim_files / "test.npz"),
                         "-o", str(tmp_path / "o")], "constant")
    assert not (tmp_path / "o").exists()


def test_train_config_option_and_deprecated_positional(sim_files, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  widht: 8\n")  # a typo: proves the file is read
    tail = ["--train", str(sim_files / "train.npz"), "-o", str(tmp_path / "r")]
    _user_error(capsys, ["train", "--config", str(cfg), *tail], "model.widht", "did you mean")
    # the positional form still works, with a deprecation warning before the same error
    assert main(["train", str(cfg), *tail]) == 2
    err = capsys.readouterr().err
    assert "deprecated" in err and "model.widht" in err
    _user_error(capsys, ["train", str(cfg), "--config", str(cfg), *tail], "expected one config")


@pytest.mark.slow
def test_compare_truth_object_guess_gives_metrics(sim_files, tmp_path, capsys):
    """A reference NPZ from simulation keeps its truth in objectGuess: --truth objectGuess scores
    against it; without the option it is an initial guess and no truth metrics appear."""
    import csv

    test = io.read_scan(sim_files / "test.npz")
    ref = tmp_path / "ref.npz"
    np.savez(ref, diff3d=test.counts, xcoords=test.positions_px[:, 1],
             ycoords=test.positions_px[:, 0], probeGuess=test.probe, objectGuess=test.object_true)
    run = tmp_path / "run"
    assert main(["train", "--train", str(sim_files / "train.npz"), "-o", str(run), *TINY]) == 0

    def truth_rows(out):
        with open(out / "metrics.csv") as fh:
            return [r for r in csv.DictReader(fh) if r["metric"] in ("ssim", "psnr")]

    base = ["compare", str(ref), "--pinn", str(run), "--measurement", "counts"]
    assert main([*base, "-o", str(tmp_path / "guess")]) == 0
    assert truth_rows(tmp_path / "guess") == []
    assert main([*base, "--truth", "objectGuess", "-o", str(tmp_path / "truth")]) == 0
    rows = truth_rows(tmp_path / "truth")
    assert {r["quantity"] for r in rows} >= {"amplitude", "phase"}
    capsys.readouterr()
    _user_error(capsys, ["compare", str(sim_files / "test.npz"), "--pinn", str(run), "--truth",
                         "objectGuess", "-o", str(tmp_path / "x")], "only reference")
