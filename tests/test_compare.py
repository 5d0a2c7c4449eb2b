"""Tests for ptypinn.workflows.compare (and the comparison figures of ptypinn.report).

Arms are built by hand from the simulated truth ("perfect": the truth itself; "worse": the truth
blurred and noised) so no training is needed, except in the one test that runs a tiny PINN bundle.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math

import numpy as np
import pytest
from scipy import ndimage

from ptypinn.workflows.compare import ArmResult, compare, footprint_mask, run_arms, summary_table
from ptypinn.config import Config, InferConfig, IterativeConfig, SimulationConfig, from_dict
from ptypinn.data import ScanData
from ptypinn.physics import data_nll
from ptypinn.stitch import default_crop_px
from ptypinn.metrics import evaluate
from ptypinn.report import comparison_png, frc_png
from ptypinn.simulate import simulate_scan

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FILES = ("metrics.csv", "metrics.json", "comparison.png", "frc.csv", "frc.png", "timings.csv")


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Tiny tensors: one intra-op thread is faster, and far faster on a shared 2-core machine
    (thread oversubscription made a 1-epoch fit 10-30x slower); restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def scan() -> ScanData:
    cfg = SimulationConfig(object_kind="lines", object_size_px=96, probe_size_px=32,
                           probe_radius_px=8.0, scan_kind="raster", scan_step_px=4.0,
                           photons_per_pattern=1e6, seed=5)
    return simulate_scan(cfg)


def _arm(scan: ScanData, name: str, obj: np.ndarray, wall_time_s: float) -> ArmResult:
    """An arm holding ``obj`` cropped to the scan's object frame (same origin)."""
    hy, wx = scan.object_shape_px
    obj = obj[:hy, :wx]
    return ArmResult(name=name, object=obj.astype(np.complex64),
                     covered=footprint_mask(scan), wall_time_s=wall_time_s,
                     patterns_per_s=scan.n_patterns / wall_time_s,
                     nll_per_pixel=float(np.mean(data_nll(obj, scan))))


@pytest.fixture(scope="module")
def arms(scan) -> list[ArmResult]:
    truth = scan.object_true
    rng = np.random.default_rng(0)
    blurred = (ndimage.gaussian_filter(truth.real, 1.5)
               + 1j * ndimage.gaussian_filter(truth.imag, 1.5))
    noise = rng.standard_normal(truth.shape) + 1j * rng.standard_normal(truth.shape)
    worse = blurred + 0.03 * noise
    return [_arm(scan, "Perfect", truth, 0.5), _arm(scan, "Worse", worse, 1.0),
            dataclasses.replace(_arm(scan, "PtyChi", worse, 4.0), end_to_end_s=4.2)]


def _read_csv(path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _value(rows, model, quantity, metric) -> float:
    key = (model, quantity, metric)
    hits = [r for r in rows if (r["model"], r["quantity"], r["metric"]) == key]
    assert len(hits) == 1, (model, quantity, metric)
    return float(hits[0]["value"])


def test_compare_with_truth_writes_all_files(scan, arms, tmp_path):
    summary = compare(scan, arms, tmp_path)
    for name in FILES:
        assert (tmp_path / name).is_file(), name
    for name in ("comparison.png", "frc.png"):
        assert (tmp_path / name).read_bytes().startswith(PNG_SIGNATURE)
    assert json.loads((tmp_path / "metrics.json").read_text())["ground_truth"] is True

    rows = _read_csv(tmp_path / "metrics.csv")
    assert list(rows[0]) == ["model", "quantity", "metric", "value"]
    assert {r["model"] for r in rows} == {"Perfect", "Worse", "PtyChi"}
    assert {"amplitude", "phase", "complex", "data"} <= {r["quantity"] for r in rows}
    for q in ("amplitude", "phase"):
        perfect = _value(rows, "Perfect", q, "ssim")
        worse = _value(rows, "Worse", q, "ssim")
        assert perfect > 0.999 and worse < perfect - 0.05, (q, perfect, worse)
        assert _value(rows, "Perfect", q, "pearson") > _value(rows, "Worse", q, "pearson")
    assert summary["arms"]["Perfect"]["metrics"]["amplitude"]["ssim"] == pytest.approx(
        _value(rows, "Perfect", "amplitude", "ssim"))

    # NLL rows: the truth is the best object for the data
    assert _value(rows, "Perfect", "data", "nll_per_pixel") < _value(rows, "Worse", "data",
                                                                     "nll_per_pixel")
    assert summary["truth_nll_per_pixel"] == pytest.approx(arms[0].nll_per_pixel, rel=1e-6)

    frc_rows = _read_csv(tmp_path / "frc.csv")
    assert list(frc_rows[0]) == ["model", "spatial_frequency", "frc", "threshold_half_bit"]
    perfect = [float(r["frc"]) for r in frc_rows if r["model"] == "Perfect" and r["frc"]]
    assert min(perfect) > 0.99
    freqs = [float(r["spatial_frequency"]) for r in frc_rows if r["model"] == "Perfect"]
    assert freqs[0] == 0.0 and max(freqs) == pytest.approx(0.5, abs=0.02)  # cycles/px

    timings = _read_csv(tmp_path / "timings.csv")
    assert [t["model"] for t in timings] == ["Perfect", "Worse", "PtyChi"]
    speedup = {t["model"]: float(t["speedup_vs_ptychi"]) for t in timings}
    assert speedup == pytest.approx({"Perfect": 8.0, "Worse": 4.0, "PtyChi": 1.0})
    assert float(timings[0]["patterns_per_s"]) == pytest.approx(scan.n_patterns / 0.5)

    # end to end (here the wall times; PtyChi took 0.2 s more than its solver): patterns/s on
    # the same machine and the PINN-to-pty-chi ratio, in the CSV and in the console table
    e2e = {t["model"]: float(t["end_to_end_patterns_per_s"]) for t in timings}
    assert e2e == pytest.approx({"Perfect": scan.n_patterns / 0.5, "Worse": scan.n_patterns / 1.0,
                                 "PtyChi": scan.n_patterns / 4.2})
    ratio = {t["model"]: float(t["ratio_vs_ptychi"]) for t in timings}
    assert ratio == pytest.approx({"Perfect": 8.4, "Worse": 4.2, "PtyChi": 1.0})
    text = summary_table(summary)
    header = text.splitlines()[0]
    assert "e2e patt/s" in header and "vs PtyChi" in header
    assert "Perfect" in text and "8.0x" in text and "8.40x" in text


@pytest.fixture(scope="module")
def measured_arms(scan, arms) -> tuple[ScanData, list[ArmResult]]:
    """The scan without ground truth (its frame then ends at the last window) and the arms in it."""
    measured = scan.replace(object_true=None)
    assert measured.object_shape_px != scan.object_shape_px  # the frame really changes
    return measured, [_arm(measured, a.name, a.object, a.wall_time_s) for a in arms]


def test_compare_without_truth_reports_agreement_and_nll(measured_arms, tmp_path):
    measured, arms = measured_arms
    summary = compare(measured, arms[:2], tmp_path)
    for name in FILES:
        assert (tmp_path / name).is_file(), name
    assert summary["ground_truth"] is False and "truth_nll_per_pixel" not in summary
    assert list(summary["agreement"]) == ["Perfect vs Worse"]
    rows = _read_csv(tmp_path / "metrics.csv")
    assert {r["model"] for r in rows} == {"Perfect vs Worse", "Perfect", "Worse"}
    for q in ("amplitude", "phase"):
        ssim = _value(rows, "Perfect vs Worse", q, "ssim")
        r = _value(rows, "Perfect vs Worse", q, "pearson")
        # phase SSIM uses the reference arm's phase range (not 2 pi): a blurred, noisy copy scores low
        assert 0.1 < ssim < 0.999 and 0.5 < r < 1.0, (q, ssim, r)
    nll_perfect = _value(rows, "Perfect", "data", "nll_per_pixel")
    nll_worse = _value(rows, "Worse", "data", "nll_per_pixel")
    assert nll_perfect < nll_worse
    # independent bound: for the true object, E[NLL - saturated NLL] per pixel is at most ~0.5
    # (0.5 at high counts, less where counts are low)
    assert 0 < nll_perfect < 0.55
    assert {r["model"] for r in _read_csv(tmp_path / "frc.csv")} == {"Perfect vs Worse"}
    timings = _read_csv(tmp_path / "timings.csv")
    assert all(t["speedup_vs_ptychi"] == "" for t in timings)  # no PtyChi arm
    assert "Perfect vs Worse" in summary_table(summary)


def test_identical_arms_agree_perfectly(measured_arms, tmp_path):
    measured, arms = measured_arms
    twin = ArmResult(name="Twin", object=arms[0].object.copy(), covered=arms[0].covered,
                     wall_time_s=1.0, patterns_per_s=1.0, nll_per_pixel=arms[0].nll_per_pixel)
    summary = compare(measured, [arms[0], twin], tmp_path)
    m = summary["agreement"]["Perfect vs Twin"]
    assert m["amplitude"]["ssim"] > 0.999 and m["phase"]["pearson"] > 0.999


def test_scored_region_is_the_intersection(scan, arms, tmp_path):
    half = arms[1].covered.copy()
    half[:, : half.shape[1] // 2] = False
    narrow = ArmResult(name="Narrow", object=arms[1].object, covered=half, wall_time_s=1.0,
                       patterns_per_s=1.0, nll_per_pixel=1.0)
    summary = compare(scan, [arms[0], narrow], tmp_path)
    assert summary["scored_pixels"] == int((arms[0].covered & half).sum())


def test_footprint_mask_matches_crop_geometry(scan):
    mask = footprint_mask(scan)
    crop = default_crop_px(scan.probe)
    lo = scan.positions_px.min(axis=0) - crop / 2
    hi = scan.positions_px.max(axis=0) + crop / 2
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    assert (rows[0], cols[0]) == (int(lo[0]), int(lo[1]))
    assert (rows[-1] + 1, cols[-1] + 1) == (int(hi[0]), int(hi[1]))
    assert mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()  # dense raster: no holes


@pytest.mark.parametrize("bad, match", [
    ([], "arms"),
    ("dup", "unique"),
    ("shape", "object"),
    ("disjoint", "covered"),
])
def test_compare_bad_input(scan, arms, tmp_path, bad, match):
    a = arms[0]
    if bad == "dup":
        bad = [a, a]
    elif bad == "shape":
        bad = [ArmResult("X", a.object[:10], a.covered, 1.0, 1.0, 1.0)]
    elif bad == "disjoint":
        left = np.zeros_like(a.covered)
        left[:, :10] = True
        bad = [ArmResult("L", a.object, left, 1.0, 1.0, 1.0),
               ArmResult("R", a.object, ~left, 1.0, 1.0, 1.0)]
    with pytest.raises(ValueError, match=match):
        compare(scan, bad, tmp_path)


def test_run_arms_needs_an_arm(scan):
    with pytest.raises(ValueError, match="at least one"):
        run_arms(scan)


def test_comparison_and_frc_png(scan, arms):
    from ptypinn.metrics import frc

    truth = scan.object_true
    png = comparison_png(truth, {"a": arms[0].object, "b": arms[1].object}, arms[0].covered, "t")
    assert png.startswith(PNG_SIGNATURE)
    assert comparison_png(None, {"a": truth}).startswith(PNG_SIGNATURE)
    with pytest.raises(ValueError, match="recons"):
        comparison_png(truth, {})
    with pytest.raises(ValueError, match="recons"):
        comparison_png(truth, {"a": truth[:5]})
    with pytest.raises(ValueError, match="mask"):
        comparison_png(truth, {"a": truth}, np.zeros(truth.shape, bool))
    assert frc_png({"x": frc(truth, arms[1].object)}).startswith(PNG_SIGNATURE)
    with pytest.raises(ValueError, match="curves"):
        frc_png({})
    with pytest.raises(ValueError, match="curves"):
        frc_png({"x": {"frc": np.zeros(3)}})


@pytest.fixture(scope="module")
def pinn_bundle(scan, tmp_path_factory):
    from ptypinn.pinn.train import train_model

    cfg = from_dict(Config, {
        "model": {"kind": "pinn", "width": 8, "depth": 2},
        "grouping": {"gridsize": 1},
        "train": {"epochs": 1, "progress_bar": False, "accelerator": "cpu"},
    })
    out = tmp_path_factory.mktemp("pinn")
    train_model(cfg, scan, out)
    return out / "bundle"


def test_run_arms_with_pinn_bundle(scan, pinn_bundle):
    arms = run_arms(scan, pinn=pinn_bundle, infer_cfg=InferConfig(device="cpu"))
    assert [a.name for a in arms] == ["PINN"]
    a = arms[0]
    assert a.object.shape == scan.object_shape_px and a.object.dtype == np.complex64
    assert a.covered.any() and np.array_equal(a.covered, footprint_mask(scan))
    assert a.wall_time_s > 0 and a.patterns_per_s == pytest.approx(scan.n_patterns / a.wall_time_s)
    # the NLL is the returned object's own (rim filled by the whole patches, 1 beyond)
    assert a.nll_per_pixel == pytest.approx(float(np.mean(data_nll(a.object, scan))), rel=1e-5)
    assert a.details["bundle"] == str(pinn_bundle)
    assert a.end_to_end_s >= a.wall_time_s  # the whole call, data-NLL rule included


def test_run_arms_rejects_wrong_bundle_kind(scan, pinn_bundle):
    with pytest.raises(ValueError, match="baseline: expected a bundle with model.kind 'baseline'"):
        run_arms(scan, baseline=pinn_bundle)


def test_run_arms_ptychi(scan):
    from ptypinn.baselines.ptychi import ptychi_available

    ok, why = ptychi_available()
    if not ok:
        print(f"pty-chi not usable: {why}")
        pytest.skip(f"pty-chi not usable: {why}")
    arms = run_arms(scan, ptychi=IterativeConfig(algorithm="epie", iterations=5, device="cpu"),
                    infer_cfg=InferConfig(device="cpu"))
    assert [a.name for a in arms] == ["PtyChi"]
    a = arms[0]
    assert a.object.shape == scan.object_shape_px and np.isfinite(a.object).all()
    assert a.details["algorithm"] == "epie" and a.details["iterations"] == 5
    assert a.details["probe"] == "fixed"
    assert math.isfinite(a.nll_per_pixel) and a.wall_time_s > 0
    assert np.array_equal(a.covered, footprint_mask(scan))
    # a few ePIE epochs already recover the object's structure (scored as compare scores it)
    assert evaluate(a.object, scan.object_true, mask=a.covered)["amplitude"]["pearson"] > 0.5


def test_run_arms_keeps_the_ptychi_engine_with_the_lowest_data_nll(scan):
    """Several engines: each runs, the PtyChi arm is the one whose object fits the data best
    (truth-free), and every candidate's NLL, epochs and time are recorded."""
    from ptypinn.baselines.ptychi import ptychi_available

    ok, why = ptychi_available()
    if not ok:
        print(f"pty-chi not usable: {why}")
        pytest.skip(f"pty-chi not usable: {why}")
    weak = IterativeConfig(algorithm="epie", iterations=1, device="cpu")
    strong = IterativeConfig(algorithm="lsqml", iterations=15, device="cpu")
    arm = run_arms(scan, ptychi=[weak, strong], infer_cfg=InferConfig(device="cpu"))[0]
    cands = arm.details["candidates"]
    assert set(cands) == {"epie", "lsqml"}
    best = min(cands, key=lambda e: cands[e]["nll_per_pixel"])
    assert arm.details["algorithm"] == best
    assert arm.nll_per_pixel == pytest.approx(cands[best]["nll_per_pixel"])
    # the recorded NLL is the object's own (independent recomputation)
    assert arm.nll_per_pixel == pytest.approx(float(np.mean(data_nll(arm.object, scan))),
                                              rel=1e-4)
    assert cands["epie"]["iterations"] == 1 and cands["lsqml"]["iterations"] == 15


def test_run_arms_ptychi_refines_a_wrong_probe(scan):
    """Start pty-chi from a probe 30 % too wide: refining it must explain the data better (data
    NLL under its own probe) than keeping the wrong probe fixed."""
    from ptypinn.baselines.ptychi import ptychi_available

    ok, why = ptychi_available()
    if not ok:
        print(f"pty-chi not usable: {why}")
        pytest.skip(f"pty-chi not usable: {why}")
    import scipy.ndimage as ndi

    p = np.asarray(scan.probe)
    n = p.shape[-1]
    zoomed = ndi.zoom(p.real, 1.3, order=1) + 1j * ndi.zoom(p.imag, 1.3, order=1)
    lo = (zoomed.shape[-1] - n) // 2
    wrong = zoomed[lo:lo + n, lo:lo + n]
    wrong *= np.sqrt((np.abs(p) ** 2).sum() / (np.abs(wrong) ** 2).sum())
    bad = scan.replace(probe=wrong.astype(np.complex64))
    cfg = InferConfig(device="cpu")
    it_cfg = IterativeConfig(algorithm="epie", iterations=20, device="cpu")
    fixed = run_arms(bad, ptychi=it_cfg, infer_cfg=cfg)[0]
    refined = run_arms(bad, ptychi=dataclasses.replace(it_cfg, optimize_probe=True),
                       infer_cfg=cfg)[0]
    assert refined.details["probe"] == "refined"
    print(f"NLL fixed {fixed.nll_per_pixel:.4f} refined {refined.nll_per_pixel:.4f}")
    assert refined.nll_per_pixel < fixed.nll_per_pixel


def test_bad_ptychi_algorithm_is_a_config_error():
    with pytest.raises(ValueError, match=r"iterative\.algorithm"):
        IterativeConfig(algorithm="nope")
