"""Studies (SPEC §9): config parsing, cell planning, a tiny dose study end to end, resume."""

import csv
import math

import numpy as np
import pytest

from ptypinn import report
from ptypinn.config import ConfigError
from ptypinn.grouping import probe_radius_px_from_probe
from ptypinn.baselines.ptychi import ptychi_available
from ptypinn.workflows.studies import simulate_cell, experimental_probe, plan_cells, run_study
from ptypinn.workflows.study_config import PROBE_SCENARIOS, load_study, study_config_from_dict

BASE = {
    "simulation": {"object_kind": "lines", "object_size_px": 64, "probe_size_px": 32,
                   "probe_radius_px": 8.0, "scan_kind": "raster", "scan_step_px": 4.0,
                   "seed": 3},
    "grouping": {"gridsize": 1},
    "model": {"width": 8, "depth": 2},
    "train": {"epochs": 1, "batch_size": 16, "progress_bar": False, "accelerator": "cpu"},
    "infer": {"device": "cpu"},
}


def _study(**study):
    return {"study": study, **{k: dict(v) for k, v in BASE.items()}}


# ------------------------------------------------------------------------------------------------
# configuration


def test_study_config_parses_and_validates():
    s = study_config_from_dict({"kind": "dose", "values": ["1e4", 1e6], "arms": ["pinn"],
                                "seeds": [0, 1]})
    assert s.values == (1e4, 1e6) and s.arms == ("pinn",) and s.seeds == (0, 1)
    g = study_config_from_dict({"kind": "generalization", "values": [16, 32.0]})
    assert g.values == (16, 32) and all(isinstance(v, int) for v in g.values)
    assert study_config_from_dict({"kind": "probe"}).scenarios == PROBE_SCENARIOS


@pytest.mark.parametrize("study, match", [
    ({"kind": "dosage", "values": [1e4]}, r"study\.kind: expected one of"),
    ({"values": [1e4]}, r"study\.kind"),
    ({"kind": "dose", "valuse": [1e4]}, r"unknown config key 'study\.valuse'; did you mean "
                                        r"'study\.values'"),
    ({"kind": "dose", "values": []}, r"study\.values"),
    ({"kind": "dose", "values": [-1.0]}, r"study\.values: expected finite numbers > 0"),
    ({"kind": "dose", "values": [1e4], "arms": ["pinn", "tike"]}, r"study\.arms"),
    ({"kind": "dose", "values": [1e4], "seeds": [0, 0]}, r"study\.seeds"),
    ({"kind": "dose", "values": [1e4], "arms": ["pinn_refine"]}, r"study\.arms: expected 'pinn'"),
    ({"kind": "dose", "values": [1e4], "refine_epochs": 0}, r"study\.refine_epochs"),
    ({"kind": "generalization", "values": [10.5]}, r"study\.values: expected integers"),
    ({"kind": "probe", "values": ["ideal_g3"]}, r"study\.values"),
    ({"kind": "dose", "values": [1e4], "gridsizes": [1, 2]}, r"study\.gridsizes"),
    ({"kind": "dose", "values": [1e4], "ptychi_algorithm": "lbfgs"}, r"study\.ptychi_algorithm"),
])
def test_bad_study_config_is_a_value_error(study, match):
    with pytest.raises(ValueError, match=match):
        load_study(_study(**study))


def test_bad_base_config_and_missing_section():
    with pytest.raises(ValueError, match=r"study: expected a 'study:' section"):
        load_study(dict(BASE))
    bad = _study(kind="dose", values=[1e4])
    bad["model"]["widht"] = 8
    with pytest.raises(ConfigError, match=r"model\.widht.*did you mean 'model\.width'"):
        load_study(bad)


def test_overrides_reach_study_and_base():
    study, base = load_study(_study(kind="dose", values=[1e4]),
                             ["study.values=[1e3, 1e5]", "model.width=12"])
    assert study.values == (1e3, 1e5) and base.model.width == 12


# ------------------------------------------------------------------------------------------------
# planning


def test_plan_overlap_cells_with_gridsizes_and_seeds():
    study, base = load_study(_study(kind="overlap", values=[4, 6], gridsizes=[1, 2],
                                    seeds=[0, 1]))
    cells = plan_cells(study, base)
    assert len(cells) == 2 * 2 * 2
    assert len({c.name for c in cells}) == 8
    for c in cells:
        assert c.config.simulation.scan_step_px == c.value
        assert c.config.grouping.gridsize == c.gridsize
        assert c.config.simulation.seed == base.simulation.seed + 2 * c.seed
        assert c.config.train.seed == base.train.seed + c.seed


def test_plan_dose_generalization_probe():
    study, base = load_study(_study(kind="dose", values=[1e3, 1e9]))
    assert [c.config.simulation.photons_per_pattern for c in plan_cells(study, base)] == [1e3, 1e9]
    study, base = load_study(_study(kind="generalization", values=[8, 16]))
    assert [c.n_train for c in plan_cells(study, base)] == [8, 16]
    study, base = load_study(_study(kind="probe"))
    cells = plan_cells(study, base)
    assert [(c.probe, c.gridsize) for c in cells] == [("ideal", 1), ("ideal", 2),
                                                      ("experimental", 1), ("experimental", 2)]


def test_generalization_subsets_and_out_of_distribution_test():
    study, base = load_study(_study(kind="generalization", values=[10, 20],
                                    test_object_kind="grf"))
    cache = {}
    c10, c20 = plan_cells(study, base)
    tr10, te10, notes = simulate_cell(c10, study, cache)
    tr20, te20, _ = simulate_cell(c20, study, cache)
    assert tr10.n_patterns == 10 and tr20.n_patterns == 20
    # nested subsets of one training scan (same object, positions a subset)
    assert set(map(tuple, tr10.positions_px)) <= set(map(tuple, tr20.positions_px))
    np.testing.assert_array_equal(tr10.object_true, tr20.object_true)
    assert te10.meta["object_kind"] == "grf" and tr10.meta["object_kind"] == "lines"
    assert notes["test_object_kind"] == "grf"
    # the out-of-distribution test scan is taken with the training beam (probe and flux), not a
    # probe re-calibrated to the new object (SPEC lesson 9)
    np.testing.assert_array_equal(te10.probe, tr10.probe)
    np.testing.assert_array_equal(te20.probe, tr20.probe)
    too_big = plan_cells(*load_study(_study(kind="generalization", values=[10_000])))[0]
    with pytest.raises(ValueError, match=r"study\.values: expected training-set sizes <= \d+ "):
        simulate_cell(too_big, study, cache)


def test_probe_study_falls_back_to_defocused_disk(tmp_path, caplog):
    study, base = load_study(_study(kind="probe", values=["experimental_g1"],
                                    experimental_probe_path=str(tmp_path / "missing.npz")))
    (cell,) = plan_cells(study, base)
    with caplog.at_level("WARNING", logger="ptypinn.workflows.studies"):
        train, _, notes = simulate_cell(cell, study, {})
    assert "stand-in" in notes["probe_source"] and "not found" in caplog.text
    assert train.meta["probe_kind"] == "defocused_disk"


def test_experimental_probe_resamples_and_centres():
    # Gaussian beam off-centre in a 128 px frame: intensity exp(-2 rho^2 / w^2) is >= half max
    # within rho = w sqrt(ln 2 / 2) (analytic), here 10 px.
    w = 10.0 / math.sqrt(math.log(2) / 2)
    yy, xx = np.indices((128, 128))
    rho2 = (yy - 50.0) ** 2 + (xx - 75.0) ** 2
    beam = np.exp(-rho2 / w**2) * np.exp(1j * 0.01 * rho2)
    out = experimental_probe(beam, 32, 6.0)
    assert out.shape == (32, 32) and out.dtype == np.complex64
    assert np.abs(out).max() == pytest.approx(1.0)
    assert probe_radius_px_from_probe(out) == pytest.approx(6.0, rel=0.08)
    inten = np.abs(out) ** 2
    cy = (inten * np.indices(inten.shape)[0]).sum() / inten.sum()
    cx = (inten * np.indices(inten.shape)[1]).sum() / inten.sum()
    assert abs(cy - 16) <= 0.6 and abs(cx - 16) <= 0.6
    with pytest.raises(ValueError, match="probe: expected shape"):
        experimental_probe(np.ones(5), 32, 6.0)


# ------------------------------------------------------------------------------------------------
# report pieces


def test_report_helpers():
    md = report.markdown_table(["a", "b|c"], [["1", "2"]])
    assert md.splitlines() == ["| a | b\\|c |", "|---|---|", "| 1 | 2 |"]
    png = report.study_curves_png({"PINN": {"k": ([1e3, 1e6], [0.5, 0.7], [0.0, 0.1])}},
                                  [("k", "amplitude SSIM")], "dose (photons per pattern)",
                                  log_x=True)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match=r"curves\['PINN'\]\['k'\]: expected equal-length"):
        report.study_curves_png({"PINN": {"k": ([1.0], [0.5, 0.7], [0.0])}}, [("k", "y")], "x")
    html = report.study_report_html("T", "F <b>", "cmd", [("tab", ["h"], [["v"]])],
                                    [("fig", png)])
    assert "F &lt;b&gt;" in html and "data:image/png;base64," in html and "<td>v</td>" in html


# ------------------------------------------------------------------------------------------------
# end to end


@pytest.fixture(scope="module")
def dose_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("dose_study")
    arms = ["pinn", "ptychi", "pinn_refine", "refine_flat"]
    cfg = _study(kind="dose", values=[1e4, 1e8], arms=arms, ptychi_iterations=5,
                 refine_epochs=3)
    return out, cfg, run_study(cfg, out)


def test_tiny_dose_study_end_to_end(dose_study):
    out, cfg, summary = dose_study
    for f in ("results.csv", "table.md", "report.md", "report.html", "curves.png", "study.yaml"):
        assert (out / f).is_file(), f
    assert summary["n_cells"] == 2 and summary["cells_run"] == ["dose_1e04_s0", "dose_1e08_s0"]
    with open(out / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    ssim = [r for r in rows if r["quantity"] in ("amplitude", "phase") and r["metric"] == "ssim"]
    models = {"PINN", "PINN+refine", "refine from flat"} | (
        {"PtyChi"} if ptychi_available()[0] else set())
    assert {r["model"] for r in ssim} == models
    # one row per cell x arm for each metric
    amp = [(r["cell"], r["model"]) for r in ssim if r["quantity"] == "amplitude"]
    assert sorted(amp) == sorted({(c, m) for c in summary["cells_run"] for m in models})
    assert all(-1.0 <= float(r["value"]) <= 1.0 for r in ssim)
    assert {float(r["parameter_value"]) for r in rows} == {1e4, 1e8}
    times = [float(r["value"]) for r in rows if r["metric"] == "reconstruction_s"]
    assert len(times) == 2 * len(models) and all(t > 0 for t in times)
    md = (out / "report.md").read_text()
    assert summary["finding"] in md and summary["finding"].startswith("At 1e4 photons per pattern")
    assert "ptypinn study" in md and "cells/dose_1e04_s0/compare/comparison.png" in md
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3  # curves + one comparison per cell
    if not ptychi_available()[0]:
        assert "PtyChi skipped" in md


def test_rerun_skips_finished_cells(dose_study):
    out, cfg, _ = dose_study
    dones = sorted(out.glob("cells/*/done.json"))
    mtimes = [d.stat().st_mtime_ns for d in dones]
    again = run_study(cfg, out)
    assert again["cells_run"] == [] and len(again["cells_skipped"]) == 2
    assert [d.stat().st_mtime_ns for d in dones] == mtimes
    assert again["finding"]  # report rebuilt from the finished cells


def test_unfinished_cell_is_run_again(dose_study):
    out, cfg, _ = dose_study
    (out / "cells" / "dose_1e08_s0" / "done.json").unlink()
    again = run_study(cfg, out)
    assert again["cells_run"] == ["dose_1e08_s0"] and again["cells_skipped"] == ["dose_1e04_s0"]
    assert (out / "cells" / "dose_1e08_s0" / "done.json").is_file()
