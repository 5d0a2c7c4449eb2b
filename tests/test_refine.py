"""The refinement engine (ptypinn.refinement): exact gradients, recovery of object, probe and
positions, chunked accumulation, bad pixels, config errors."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from scipy import ndimage

from ptypinn.config import Config, ConfigError, RefineConfig, from_dict
from ptypinn.physics import data_nll, predicted_intensity
from ptypinn.refinement import (loss_and_gradients, orthogonalize_modes, refine,
                            refinement_loss)
from ptypinn.stitch import footprint_mask


def _tiny_problem(seed: int = 0, modes: int = 2):
    """A 12x12 complex128 object, a 2-mode 6x6 probe, 5 fractional positions, noisy counts."""
    g = torch.Generator().manual_seed(seed)
    cplx = lambda *s: torch.complex(torch.randn(*s, generator=g, dtype=torch.float64),  # noqa
                                    torch.randn(*s, generator=g, dtype=torch.float64))
    obj = 1 + 0.3 * cplx(12, 12)
    probe = cplx(modes, 6, 6)
    pos = 3 + 5.5 * torch.rand(5, 2, generator=g, dtype=torch.float64)
    pos = torch.floor(pos) + 0.2 + 0.6 * torch.rand(5, 2, generator=g, dtype=torch.float64)
    with torch.no_grad():
        ideal = predicted_intensity(probe, torch.stack([obj[int(p[0] - 3):int(p[0] - 3) + 6,
                                                            int(p[1] - 3):int(p[1] - 3) + 6]
                                                        for p in pos]))
    counts = torch.poisson(ideal * 1.3, generator=g)
    bad = torch.zeros(6, 6, dtype=torch.bool)
    bad[0, 1] = bad[4, 4] = True
    return obj, probe, pos, counts, bad


def _directional_fd(f, x: torch.Tensor, d: torch.Tensor, h: float = 1e-6) -> float:
    return (float(f(x + h * d)) - float(f(x - h * d))) / (2 * h)


def _inner(g: torch.Tensor, d: torch.Tensor) -> float:
    """Re<g, d>: the directional derivative for torch's gradient ``dL/dRe + i dL/dIm``."""
    if g.is_complex():
        return float((g.real * d.real + g.imag * d.imag).sum())
    return float((g * d).sum())


def test_gradients_match_central_finite_differences():
    obj, probe, pos, counts, bad = _tiny_problem()
    loss, g_obj, g_probe, g_pos = loss_and_gradients(obj, probe, pos, counts, bad, batch_size=2)
    assert loss == pytest.approx(float(refinement_loss(obj, probe, pos, counts, bad)), rel=1e-12)
    g = torch.Generator().manual_seed(1)
    for which, x, grad in (("object", obj, g_obj), ("probe", probe, g_probe),
                           ("positions", pos, g_pos)):
        for _ in range(3):
            if x.is_complex():
                d = torch.complex(torch.randn(x.shape, generator=g, dtype=torch.float64),
                                  torch.randn(x.shape, generator=g, dtype=torch.float64))
            else:
                d = torch.randn(x.shape, generator=g, dtype=torch.float64)
            args = {"object": lambda v: (v, probe, pos), "probe": lambda v: (obj, v, pos),
                    "positions": lambda v: (obj, probe, v)}[which]
            fd = _directional_fd(lambda v: refinement_loss(*args(v), counts, bad), x, d)
            assert _inner(grad, d) == pytest.approx(fd, rel=1e-5, abs=1e-6), which
    # the bad pixels take no part: changing their counts changes no gradient
    counts2 = counts.clone()
    counts2[:, bad] = 1e4
    _, g2, _, _ = loss_and_gradients(obj, probe, pos, counts2, bad, batch_size=5)
    torch.testing.assert_close(g2, g_obj, rtol=1e-12, atol=1e-12)


def test_chunked_gradient_equals_full_batch(tiny_pair):
    scan = tiny_pair[1]
    obj = torch.from_numpy(scan.object_true) * 0.9 + 0.05
    probe = torch.from_numpy(scan.probe)
    pos = torch.from_numpy(scan.positions_px) + 0.25
    full = loss_and_gradients(obj, probe, pos, scan.counts, batch_size=scan.n_patterns)
    chunked = loss_and_gradients(obj, probe, pos, scan.counts, batch_size=7)
    assert chunked[0] == pytest.approx(full[0], rel=1e-9)
    for a, b in zip(chunked[1:], full[1:]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))


def _scored(scan, obj):
    """Relative rms error to the truth over the scan's footprint, global phase removed."""
    mask = footprint_mask(scan.positions_px, scan.pattern_size, scan.object_shape_px, 20)
    t, o = scan.object_true[mask], obj[mask]
    o = o * np.exp(-1j * np.angle(np.vdot(t, o)))
    return float(np.linalg.norm(o - t) / np.linalg.norm(t))


def _blurred_start(scan, seed=0):
    rng = np.random.default_rng(seed)
    t = scan.object_true
    blur = ndimage.gaussian_filter(t.real, 2) + 1j * ndimage.gaussian_filter(t.imag, 2)
    return (blur + 0.05 * (rng.standard_normal(t.shape) + 1j * rng.standard_normal(t.shape))
            ).astype(np.complex64)


def test_recovers_a_known_object_from_a_perturbed_start(tiny_pair):
    scan = tiny_pair[1]
    start = _blurred_start(scan)
    res = refine(scan, RefineConfig(epochs=12, batch_size=16, check_every_epochs=4,
                                    device="cpu"), object_init=start)
    nll0 = float(np.mean(data_nll(start, scan)))
    assert res.nll_history[0][2] == pytest.approx(nll0, rel=1e-4)
    assert res.nll_per_pixel < 0.5 * nll0
    assert res.nll_per_pixel == pytest.approx(float(np.mean(data_nll(res.object, scan))),
                                              rel=1e-4)
    assert _scored(scan, res.object) < 0.6 * _scored(scan, start)
    assert [h[0] for h in res.nll_history][:2] == [0, 4]
    assert res.epochs <= 12 and res.stop_reason in ("cap", "tolerance", "worse")
    assert res.object.dtype == np.complex64 and res.object.shape == scan.object_shape_px
    np.testing.assert_array_equal(res.positions_px, scan.positions_px)
    np.testing.assert_array_equal(res.probe, scan.probe)


def test_flat_start_is_a_complete_solver(tiny_pair):
    scan = tiny_pair[1]
    res = refine(scan, RefineConfig(epochs=20, batch_size=16, check_every_epochs=5,
                                    device="cpu"))
    truth = float(np.mean(data_nll(scan.object_true, scan)))
    assert res.nll_history[0][2] > 20 * truth
    assert res.nll_per_pixel < 2 * truth
    assert _scored(scan, res.object) < 0.4 * _scored(scan, np.ones_like(res.object))


def test_recovers_perturbed_positions(tiny_pair):
    scan = tiny_pair[1]
    rng = np.random.default_rng(5)
    err = rng.uniform(-2, 2, scan.positions_px.shape)
    half = scan.pattern_size / 2
    hi = np.array(scan.object_shape_px) - half
    wrong = np.clip(scan.positions_px + err, half, hi)
    true = scan.positions_px
    perturbed = scan.replace(positions_px=wrong)
    rms0 = float(np.sqrt(np.mean((wrong - true) ** 2)))
    res = refine(perturbed, RefineConfig(epochs=30, batch_size=16, check_every_epochs=5,
                                         refine_positions=True, max_position_shift_px=3.0,
                                         convergence_rel_tol=1e-4, device="cpu"),
                 object_init=scan.object_true)
    rms = float(np.sqrt(np.mean((res.positions_px - true) ** 2)))
    assert rms0 > 1.0
    assert rms < 0.3, (rms0, rms)
    assert np.abs(res.positions_px - wrong).max() <= 3.0 + 1e-9


def test_lbfgs_polish_converges_what_the_minibatch_steps_leave(tiny_pair):
    """From a flat object and 1-2 px position errors: the full-batch L-BFGS phase lowers the
    data NLL and the position error below the minibatch phase's own result (which it starts
    from), within the shift limit, and counts its passes in ``epochs``."""
    scan = tiny_pair[1]
    rng = np.random.default_rng(7)
    r, a = rng.uniform(1, 2, scan.n_patterns), rng.uniform(0, 2 * np.pi, scan.n_patterns)
    half = scan.pattern_size / 2
    wrong = np.clip(scan.positions_px + np.c_[r * np.sin(a), r * np.cos(a)], half,
                    np.array(scan.object_shape_px) - half)
    cfg = RefineConfig(epochs=60, batch_size=16, refine_positions=True,
                       max_position_shift_px=2.5, lbfgs_iterations=0, device="cpu")
    first = refine(scan.replace(positions_px=wrong), cfg)
    both = refine(scan.replace(positions_px=wrong),
                  dataclasses.replace(cfg, lbfgs_iterations=40))
    assert RefineConfig(refine_positions=True).lbfgs_iterations_resolved > 0
    assert RefineConfig().lbfgs_iterations_resolved == 0
    assert first.lbfgs_iterations == 0 and 0 < both.lbfgs_iterations <= 40
    assert both.epochs > first.epochs and both.nll_history[:len(first.nll_history)] == [
        h[:1] + (pytest.approx(h[1], abs=1e9),) + h[2:] for h in first.nll_history]

    def err(p):
        d = p - scan.positions_px
        return float(np.sqrt(np.mean(np.sum((d - d.mean(0)) ** 2, axis=1))))

    assert both.nll_per_pixel < first.nll_per_pixel * 0.98
    assert err(both.positions_px) < 0.7 * err(first.positions_px), (
        err(first.positions_px), err(both.positions_px))
    assert np.abs(both.positions_px - wrong).max() <= 2.5 + 1e-6


def test_position_shift_is_clamped(tiny_pair):
    scan = tiny_pair[1]
    half = scan.pattern_size / 2
    wrong = np.clip(scan.positions_px + np.random.default_rng(1).choice([-1.5, 1.5], (
        scan.n_patterns, 2)), half, np.array(scan.object_shape_px) - half)
    res = refine(scan.replace(positions_px=wrong),
                 RefineConfig(epochs=4, batch_size=16, check_every_epochs=4,
                              refine_positions=True, max_position_shift_px=0.5,
                              device="cpu"), object_init=scan.object_true)
    assert np.abs(res.positions_px - wrong).max() <= 0.5 + 1e-9
    assert np.abs(res.positions_px - wrong).max() > 0.3  # it moved towards the truth


def test_probe_refinement_lowers_the_nll_and_keeps_modes_orthogonal(tiny_pair):
    scan = tiny_pair[1]
    p = scan.probe_modes[0]
    # two modes: a blurred copy of the probe and a weak second mode
    start = np.stack([ndimage.gaussian_filter(p.real, 1.5) + 1j * ndimage.gaussian_filter(
        p.imag, 1.5), 0.1 * np.roll(p, 2, axis=0)]).astype(np.complex64)
    cfg = RefineConfig(epochs=8, batch_size=16, check_every_epochs=4, refine_probe=True,
                       device="cpu")
    fixed = refine(scan, dataclasses.replace(cfg, refine_probe=False),
                   object_init=scan.object_true, probe_init=start)
    res = refine(scan, cfg, object_init=scan.object_true, probe_init=start)
    assert res.probe.shape == (2, 32, 32)
    assert res.nll_per_pixel < 0.7 * fixed.nll_per_pixel
    flat = res.probe.reshape(2, -1).astype(np.complex128)
    gram = flat.conj() @ flat.T
    assert abs(gram[0, 1]) < 1e-4 * abs(gram[0, 0])


def test_orthogonalize_modes_keeps_every_intensity():
    obj, probe, pos, counts, bad = _tiny_problem(modes=3)
    ortho = orthogonalize_modes(probe)
    patches = obj[:6, :6][None]
    torch.testing.assert_close(predicted_intensity(ortho, patches),
                               predicted_intensity(probe, patches))
    flat = ortho.reshape(3, -1)
    gram = flat.conj() @ flat.T
    torch.testing.assert_close(gram, torch.diag(torch.diagonal(gram)), atol=1e-9, rtol=0)
    power = torch.diagonal(gram).real
    assert torch.all(power[:-1] >= power[1:])


def test_bad_pixels_do_not_change_the_result(tiny_pair):
    scan = tiny_pair[1]
    rng = np.random.default_rng(2)
    bad = rng.random((32, 32)) < 0.05
    bad[16, 16] = True  # the brightest pixel too
    masked = scan.replace(bad_pixels=bad)
    corrupt = scan.counts.copy()
    corrupt[:, bad] = rng.uniform(0, 1e5, (scan.n_patterns, int(bad.sum())))
    cfg = RefineConfig(epochs=2, batch_size=16, check_every_epochs=1, refine_probe=True,
                       refine_positions=True, device="cpu")
    a = refine(masked, cfg, object_init=_blurred_start(scan))
    b = refine(masked.replace(counts=corrupt), cfg, object_init=_blurred_start(scan))
    np.testing.assert_allclose(b.object, a.object, rtol=0, atol=1e-5)
    np.testing.assert_allclose(b.positions_px, a.positions_px, rtol=0, atol=1e-6)
    assert [h[2] for h in b.nll_history] == pytest.approx([h[2] for h in a.nll_history],
                                                          rel=1e-5)


def test_zero_epochs_returns_the_start(tiny_pair):
    scan = tiny_pair[1]
    start = _blurred_start(scan)
    for positions in (False, True):  # with positions: no L-BFGS phase either
        res = refine(scan, RefineConfig(epochs=0, refine_positions=positions, device="cpu"),
                     object_init=start)
        assert res.stop_reason == "off" and res.epochs == 0 and len(res.nll_history) == 1
        assert res.lbfgs_iterations == 0
        np.testing.assert_array_equal(res.object, start)
        np.testing.assert_array_equal(res.positions_px, scan.positions_px)


def test_wrong_start_shape_names_the_argument(tiny_pair):
    scan = tiny_pair[1]
    with pytest.raises(ValueError, match="object_init"):
        refine(scan, RefineConfig(epochs=1, device="cpu"), object_init=np.ones((5, 5)))


@pytest.mark.parametrize("field,value", [
    ("epochs", -1), ("epochs", 1.5), ("batch_size", 0), ("optimizer", "sgd"), ("step", 0.0),
    ("step", float("nan")), ("max_position_shift_px", -1.0), ("check_every_epochs", 0),
    ("convergence_rel_tol", 0.0), ("device", "gpu"), ("seed", -1), ("refine_probe", 1),
    ("lbfgs_iterations", -1), ("lbfgs_iterations", 2.5),
])
def test_config_errors_name_the_key(field, value):
    with pytest.raises(ConfigError, match=f"refine.{field}"):
        RefineConfig(**{field: value})


def test_config_section_parses_and_rejects_unknown_keys():
    cfg = from_dict(Config, {"refine": {"epochs": 5, "optimizer": "adam", "step": 0.01}})
    assert cfg.refine.epochs == 5 and cfg.refine.optimizer == "adam"
    with pytest.raises(ConfigError, match="refine.stepp"):
        from_dict(Config, {"refine": {"stepp": 1}})


def test_public_name_is_the_function(tiny_pair):
    import ptypinn

    res = ptypinn.refine(tiny_pair[1], RefineConfig(epochs=0, device="cpu"))
    assert isinstance(res, ptypinn.RefineResult) and res.stop_reason == "off"


# ------------------------------------------------------------------------------------------------
# interfaces: CLI and comparison arms


def _untrained_bundle(scan):
    """A small PINN bundle with random weights (its fixed physics layer already gives an
    estimate: enough to start a refinement from)."""
    from ptypinn.pinn.bundle import Bundle
    from ptypinn.pinn.models import build_model

    torch.manual_seed(0)
    cfg = from_dict(Config, {"model": {"width": 8, "depth": 2}})
    return Bundle.create(build_model(cfg.model, torch.from_numpy(scan.probe), 1), cfg)


def test_run_arms_adds_the_refinement_arms(tiny_pair):
    from ptypinn.config import InferConfig
    from ptypinn.workflows.compare import run_arms

    scan = tiny_pair[1]
    cfg = RefineConfig(epochs=3, batch_size=32, check_every_epochs=3, device="cpu")
    arms = run_arms(scan, pinn=_untrained_bundle(scan), infer_cfg=InferConfig(device="cpu"),
                    refine=cfg)
    assert [a.name for a in arms] == ["PINN", "PINN+refine", "refine from flat"]
    pinn, refined, flat = arms
    assert refined.nll_per_pixel < pinn.nll_per_pixel
    assert refined.wall_time_s == pytest.approx(pinn.wall_time_s
                                                + refined.details["refine_wall_time_s"])
    assert refined.details["start"] == "PINN" and refined.details["epochs"] == 3
    assert len(refined.details["nll_history"]) == 2
    assert flat.details["start"] == "flat (ones)"
    assert flat.wall_time_s == pytest.approx(flat.details["refine_wall_time_s"])
    only_flat = run_arms(scan, refine=cfg)
    assert [a.name for a in only_flat] == ["refine from flat"]
    with pytest.raises(ValueError, match="refine.epochs"):
        run_arms(scan, refine=RefineConfig(epochs=0))


def test_cli_infer_and_reconstruct_with_refine(tiny_pair, tmp_path, capsys):
    from ptypinn import io
    from ptypinn.cli import main
    from ptypinn.pinn.bundle import save_bundle

    scan = tiny_pair[1]
    io.write_scan(tmp_path / "scan.npz", scan)
    save_bundle(tmp_path / "bundle", _untrained_bundle(scan))
    out = tmp_path / "out"
    assert main(["infer", str(tmp_path / "bundle"), "--scan", str(tmp_path / "scan.npz"),
                 "-o", str(out), "--refine", "2", "--refine-positions",
                 "--set", "refine.batch_size=32", "--set", "refine.check_every_epochs=1",
                 "--set", "infer.device=cpu", "--set", "refine.device=cpu"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["refine"]["epochs"] >= 1 and len(summary["refine"]["nll_history"]) >= 2
    assert summary["refine"]["lbfgs_iterations"] > 0  # automatic with --refine-positions
    assert summary["nll_per_pixel_mean"] <= summary["nll_per_pixel_pinn"]
    rec = io.load_npz(out / "reconstruction.npz")
    assert {"object", "object_pinn", "probe", "positions_px"} <= set(rec)
    nll = float(np.mean(data_nll(rec["object"], scan.replace(positions_px=rec["positions_px"]))))
    assert nll == pytest.approx(summary["nll_per_pixel_mean"], rel=1e-5)
    assert (out / "reconstruction_pinn.png").is_file()
    assert "refinement:" in capsys.readouterr().out
    resolved = (out / "config.resolved.yaml").read_text()
    assert "refine_positions: true" in resolved and "epochs: 2" in resolved

    out2 = tmp_path / "out2"
    assert main(["reconstruct", str(tmp_path / "scan.npz"), "-o", str(out2), "--refine", "1",
                 "--set", "model.width=8", "--set", "model.depth=2",
                 "--set", "train.epochs=1", "--set", "train.progress_bar=false",
                 "--set", "train.accelerator=cpu", "--set", "infer.device=cpu",
                 "--set", "refine.device=cpu", "--set", "refine.check_every_epochs=1"]) == 0
    summary = json.loads((out2 / "summary.json").read_text())
    assert summary["refine"]["epochs"] == 1
    assert summary["nll_per_pixel_mean"] <= summary["nll_per_pixel_pinn"]


def test_cli_refine_errors_name_the_key(tiny_pair, tmp_path, capsys):
    from ptypinn import io
    from ptypinn.cli import main

    io.write_scan(tmp_path / "scan.npz", tiny_pair[1])
    assert main(["compare", str(tmp_path / "scan.npz"), "-o", str(tmp_path / "o"),
                 "--refine", "-1"]) == 2
    assert "refine.epochs" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "scan.npz"), "-o", str(tmp_path / "o"),
                 "--refine", "2", "--refine-engine", "ptychi", "--refine-positions"]) == 2
    assert "refine.refine_positions" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_infer_with_the_ptychi_refinement_engine(tiny_pair, tmp_path, capsys):
    from ptypinn import io
    from ptypinn.baselines.ptychi import ptychi_available
    from ptypinn.cli import main
    from ptypinn.pinn.bundle import save_bundle

    ok, why = ptychi_available()
    if not ok:
        pytest.skip(f"pty-chi not usable: {why}")
    scan = tiny_pair[1]
    io.write_scan(tmp_path / "scan.npz", scan)
    save_bundle(tmp_path / "bundle", _untrained_bundle(scan))
    out = tmp_path / "out"
    assert main(["infer", str(tmp_path / "bundle"), "--scan", str(tmp_path / "scan.npz"),
                 "-o", str(out), "--refine", "4", "--refine-engine", "ptychi",
                 "--set", "refine.check_every_epochs=2", "--set", "infer.device=cpu",
                 "--set", "refine.device=cpu", "--set", "iterative.algorithm=lsqml"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["refine"]["epochs"] >= 2
    assert summary["nll_per_pixel_mean"] <= summary["nll_per_pixel_pinn"]
    assert "engine: ptychi" in (out / "config.resolved.yaml").read_text()


def test_a_stalled_run_halves_its_step_from_the_best_state(tiny_pair, caplog):
    """Minibatch updates at too large a step stall (or rise); halving the step from the best state
    goes on lower, where ``step_halvings=0`` stops at the first such check."""
    scan = tiny_pair[1]
    cfg = RefineConfig(epochs=60, batch_size=8, step=3.0, check_every_epochs=2, device="cpu",
                       step_halvings=0)
    stopped = refine(scan, cfg)
    with caplog.at_level("INFO", logger="ptypinn.refinement"):
        halved = refine(scan, dataclasses.replace(cfg, step_halvings=3))
    assert stopped.stop_reason in ("worse", "tolerance") and stopped.epochs < 60
    assert halved.epochs > stopped.epochs
    assert halved.nll_per_pixel < stopped.nll_per_pixel
    assert sum("step halved" in r.getMessage() for r in caplog.records) >= 1
    # every check is recorded as measured, and the result is the lowest of them
    assert halved.nll_per_pixel == min(h[2] for h in halved.nll_history)
    assert halved.nll_per_pixel == pytest.approx(float(np.mean(data_nll(halved.object, scan))),
                                                 rel=1e-4)


# ------------------------------------------------------------------------------------------------
# the pty-chi refinement engine


def test_ptychi_engine_with_positions_is_a_config_error():
    with pytest.raises(ConfigError, match="refine.refine_positions"):
        RefineConfig(engine="ptychi", refine_positions=True)


def test_ptychi_engine_warm_start_lowers_the_nll(tiny_pair):
    from ptypinn.baselines.ptychi import ptychi_available
    from ptypinn.workflows.refine import refine_scan

    ok, why = ptychi_available()
    if not ok:
        pytest.skip(f"pty-chi not usable: {why}")
    test = tiny_pair[1]
    start = np.ones(test.object_shape_px, np.complex64)
    cfg = RefineConfig(engine="ptychi", epochs=4, check_every_epochs=2, device="cpu")
    res = refine_scan(test, cfg, object_init=start)
    assert res.object.shape == test.object_shape_px
    assert res.epochs >= 2 and res.nll_history
    start_nll = float(data_nll(start, test).mean())
    assert res.nll_per_pixel < start_nll
    # the returned NLL is the measured one of the returned object
    assert float(data_nll(res.object, test.replace(probe=res.probe)).mean()) == pytest.approx(
        res.nll_per_pixel, rel=1e-3)
    # the same function with the own engine is ptypinn.refine
    own = refine_scan(test, dataclasses.replace(cfg, engine="ptypinn", epochs=0), start)
    assert own.stop_reason == "off"


def test_refine_reads_lazy_counts_per_batch(tiny_pair):
    """Counts that stay in their file (read per minibatch) refine exactly like the array."""
    from ptypinn.data import LazyCounts

    _, scan = tiny_pair
    arr = np.asarray(scan.counts)
    calls = []

    def read(rows):
        calls.append(len(rows))
        return arr[rows]

    lazy = scan.replace(counts=LazyCounts(arr.shape, read, "memory"))
    cfg = RefineConfig(epochs=2, batch_size=16, check_every_epochs=1, device="cpu", seed=3)
    a, b = refine(scan, cfg), refine(lazy, cfg)
    np.testing.assert_allclose(b.object, a.object, rtol=1e-5, atol=1e-6)
    assert 16 in calls  # read minibatch by minibatch
