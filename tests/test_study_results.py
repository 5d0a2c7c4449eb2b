"""Study results (SPEC §9): the finding sentence computed from results rows."""

from ptypinn.workflows.study_results import study_finding


def _rows(table):
    """results.csv-style rows from {(model, value): amplitude ssim}."""
    return [{"cell": f"c{v}", "parameter": "photons_per_pattern", "parameter_value": v,
             "gridsize": 1, "seed": 0, "model": m, "quantity": "amplitude", "metric": "ssim",
             "value": s} for (m, v), s in table.items()]


def test_finding_is_computed_from_the_numbers():
    rows = _rows({("PINN", 1e3): 0.8, ("PtyChi", 1e3): 0.5, ("PINN", 1e9): 0.85,
                  ("PtyChi", 1e9): 0.95})
    f = study_finding("dose", rows)
    assert f.startswith("At 1e3 photons per pattern, PINN has the best amplitude SSIM "
                        "(0.800 vs 0.500 for PtyChi, ahead by 0.300)")
    assert "at 1e9 photons per pattern, PtyChi has the best amplitude SSIM (0.950 vs 0.850" in f
    swapped = study_finding("dose", _rows({("PINN", 1e3): 0.4, ("PtyChi", 1e3): 0.5}))
    assert "PtyChi has the best" in swapped and "ahead by 0.100" in swapped
    assert "no finding" in study_finding("dose", [])


def test_finding_counts_a_gridsize_free_arm_once():
    rows = [dict(r, gridsize=g, value=s) for g in (1, 2) for r, s in
            zip(_rows({("PINN", 10.0): 0.0, ("PtyChi", 10.0): 0.0}), (0.3 * g, 0.5))]
    for r in rows:
        r["parameter"] = "scan_step_px"
    f = study_finding("overlap", rows)
    assert f == ("At 10 px scan step, PINN (gridsize 2) has the best amplitude SSIM (0.600 vs "
                 "0.500 for PtyChi, ahead by 0.100).")
