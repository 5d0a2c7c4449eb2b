"""Study results: read the finished cells of a study directory and assemble its report.

The study itself (cells, running) is :mod:`ptypinn.workflows.studies`; this module only reads
what its cells left behind (``STUDY/cells/<name>/done.json`` and ``compare/``, in the order of
``study.json``).

* :func:`collect_results` -- long-format rows (:data:`RESULT_COLUMNS`) of every finished cell.
* :func:`study_finding` -- one sentence comparing the arms at the hardest and easiest setting.
* :func:`write_report` -- ``results.csv``, ``table.md``, ``curves.png``, ``report.md`` and
  ``report.html`` (figures embedded).
"""

from __future__ import annotations

import csv
import io as _text_io
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ptypinn import io
from ptypinn.config import ARM_LABELS
from ptypinn.workflows.study_config import (
    ARMS,
    PARAMETERS,
    PROBE_SCENARIOS,
    check_cell_name,
    study_config_from_dict,
)

__all__ = [
    "RESULT_COLUMNS",
    "collect_results",
    "study_finding",
    "write_report",
]

log = logging.getLogger(__name__)

_GRID_FREE = ("PtyChi",)  # arms whose result does not depend on grouping.gridsize
RESULT_COLUMNS = ["cell", "parameter", "parameter_value", "gridsize", "seed", "model", "quantity",
                  "metric", "value"]
"""Columns of ``results.csv`` (long format; ``value`` is the measured number)."""


def _finished_cells(out: Path) -> list[tuple[Path, dict[str, Any]]]:
    """``(cell_dir, done.json record)`` of every finished cell, in the study's planned order
    (``study.json``; directory order if it is missing)."""
    meta = out / "study.json"
    if meta.is_file():
        names = io.read_json_object(meta).get("cells")
        if not isinstance(names, list):
            raise ValueError(f"{meta}: key 'cells': expected a list of cell names, got "
                             f"{type(names).__name__}")
        dirs = [out / "cells" / check_cell_name(n, f"{meta}: key 'cells'") for n in names]
    else:
        dirs = sorted(p.parent for p in (out / "cells").glob("*/done.json"))
    root = (out / "cells").resolve()
    for d in dirs:  # a cell directory (or a link) must not lead outside the study
        if root not in d.resolve().parents:
            raise ValueError(f"{d}: leads outside {out / 'cells'}; refusing to read it")
    return [(d, io.read_json_object(d / "done.json")) for d in dirs
            if (d / "done.json").is_file()]


def collect_results(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Long-format rows (:data:`RESULT_COLUMNS`) of every finished cell of a study directory.

    Per arm: every metric of :func:`ptypinn.metrics.evaluate` (quantities ``amplitude``,
    ``phase``, ``complex``), ``data/nll_per_pixel`` (truth-free) and ``data/nll_minus_truth``
    (the same minus the ground truth's own NLL on the same data), ``timing/{reconstruction_s,
    patterns_per_s, speedup_vs_ptychi, end_to_end_patterns_per_s, ratio_vs_ptychi, train_s}``
    (:mod:`ptypinn.workflows.compare`); per cell (model ``scan``):
    ``test_overlap/*``, ``train_overlap/*`` and ``scan/{n_train_patterns, n_test_patterns,
    test_photons_per_pattern}``.
    """

    rows: list[dict[str, Any]] = []
    for _, rec in _finished_cells(Path(out_dir)):
        c = rec["cell"]
        head = {"cell": c["name"], "parameter": c["parameter"], "parameter_value": c["value"],
                "gridsize": c["gridsize"], "seed": c["seed"]}

        def add(model: str, quantity: str, metric: str, value: Any) -> None:
            v = None if value is None else float(value)
            rows.append({**head, "model": model, "quantity": quantity, "metric": metric,
                         "value": v if v is None or math.isfinite(v) else None})

        for name, a in ((rec.get("summary") or {}).get("arms") or {}).items():
            for quantity, scores in (a.get("metrics") or {}).items():
                for metric, value in scores.items():
                    add(name, quantity, metric, value)
            add(name, "data", "nll_per_pixel", a.get("nll_per_pixel"))
            truth_nll = (rec.get("summary") or {}).get("truth_nll_per_pixel")
            if truth_nll is not None and a.get("nll_per_pixel") is not None:
                add(name, "data", "nll_minus_truth", a["nll_per_pixel"] - truth_nll)
            add(name, "timing", "reconstruction_s", a.get("wall_time_s"))
            add(name, "timing", "patterns_per_s", a.get("patterns_per_s"))
            add(name, "timing", "speedup_vs_ptychi", a.get("speedup_vs_ptychi"))
            add(name, "timing", "end_to_end_patterns_per_s", a.get("end_to_end_patterns_per_s"))
            add(name, "timing", "ratio_vs_ptychi", a.get("ratio_vs_ptychi"))
            if name in rec.get("train", {}):
                add(name, "timing", "train_s", rec["train"][name]["fit_time_s"])
            if "iterations" in a.get("details", {}):
                add(name, "timing", "epochs", a["details"]["iterations"])
        scan = rec.get("scan", {})
        for which in ("test_overlap", "train_overlap"):
            for metric, value in scan.get(which, {}).items():
                add("scan", which, metric, value)
        for metric in ("n_train_patterns", "n_test_patterns", "test_photons_per_pattern"):
            if metric in scan:
                add("scan", "scan", metric, scan[metric])
    return rows


def _ptychi_engines(out: Path) -> list[str]:
    """One markdown bullet per finished cell with a PtyChi arm: the engine kept and every
    candidate's epochs, solver time and data NLL."""
    lines = []
    for _, rec in _finished_cells(out):
        arm = ((rec.get("summary") or {}).get("arms") or {}).get(ARM_LABELS["ptychi"])
        if not arm:
            continue
        d = arm.get("details", {})
        cands = d.get("candidates") or {d.get("algorithm"): {
            "iterations": d.get("iterations"), "wall_time_s": arm.get("wall_time_s"),
            "nll_per_pixel": arm.get("nll_per_pixel"), "stop_reason": d.get("stop_reason")}}
        parts = [f"{e} {c.get('iterations')} epochs ({c.get('stop_reason') or 'fixed'}), "
                 f"{c.get('wall_time_s') or 0:.1f} s, NLL/px {c.get('nll_per_pixel') or 0:.4f}"
                 for e, c in cands.items()]
        lines.append(f"- {rec['cell']['name']}: **{d.get('algorithm')}**; " + "; ".join(parts))
    return lines


def _csv_text(rows: list[dict[str, Any]]) -> str:
    buf = _text_io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(RESULT_COLUMNS)
    for r in rows:
        w.writerow(["" if r[k] is None else (repr(r[k]) if isinstance(r[k], float) else r[k])
                    for k in RESULT_COLUMNS])
    return buf.getvalue()


def _stats(values: list[float]) -> tuple[float, float, int]:
    v = [x for x in values if x is not None and math.isfinite(x)]
    if not v:
        return math.nan, math.nan, 0
    return float(np.mean(v)), float(np.std(v)) if len(v) > 1 else 0.0, len(v)


def _aggregate(rows: list[dict[str, Any]]) -> dict[tuple, tuple[float, float, int]]:
    """(model, gridsize, parameter_value, quantity, metric) -> (mean, std, n) over seeds."""
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        k = (r["model"], r["gridsize"], r["parameter_value"], r["quantity"], r["metric"])
        groups.setdefault(k, []).append(r["value"])
    return {k: _stats(v) for k, v in groups.items()}


def _fmt_value(kind: str, v: Any) -> str:
    if kind == "dose":
        return f"{float(v):.0e}".replace("e+0", "e").replace("e+", "e")
    if kind == "overlap":
        return f"{float(v):g} px"
    return str(v)


def _series(models: list[str], grids: list[int]) -> list[tuple[str, int, str]]:
    """(model, gridsize, label) per curve; PtyChi does not group patterns: one curve."""
    multi = len(grids) > 1
    return [(m, g, f"{m} (gridsize {g})" if multi and m not in _GRID_FREE else m)
            for m in models for g in (grids[:1] if m in _GRID_FREE else grids)]


_TABLE_METRICS = [
    ("amplitude", "ssim", "amp SSIM", ".3f"),
    ("phase", "ssim", "phase SSIM", ".3f"),
    ("amplitude", "pearson", "amp r", ".3f"),
    ("phase", "pearson", "phase r", ".3f"),
    ("complex", "frc_half_bit_px", "FRC 1/2-bit (px)", ".2f"),
    ("amplitude", "mean_ratio", "mean ratio", ".3f"),
    ("data", "nll_per_pixel", "data NLL/px", ".3f"),
    ("data", "nll_minus_truth", "NLL - truth NLL", ".3f"),
    ("timing", "train_s", "train (s)", ".1f"),
    ("timing", "reconstruction_s", "recon (s)", ".3g"),
    ("timing", "epochs", "pty-chi epochs", ".0f"),
]
_NYQUIST_PERIOD_PX = 2.0
_TABLE_NOTE = ("amplitude/phase scored against the ground truth after registration and "
               "global-phase removal, SSIM with the truth's own range; FRC on the illuminated "
               "interior, an FRC 1/2-bit period of 2 px means the FRC never fell below the "
               "threshold (resolved to Nyquist); data NLL/px is the truth-free Poisson NLL "
               "per pixel minus the saturated model's (about 0.5 for the truth at high counts), "
               "and 'NLL - truth NLL' the same minus the ground truth's own value")
_CURVE_PANELS = [
    ("amplitude", "ssim", "amplitude SSIM"),
    ("phase", "ssim", "phase SSIM"),
    ("amplitude", "pearson", "amplitude Pearson r"),
    ("phase", "pearson", "phase Pearson r"),
    ("complex", "frc_half_bit_px", "FRC 1/2-bit period (px)"),
    ("timing", "reconstruction_s", "reconstruction time (s)"),
]


def _mean_pm(stat: tuple[float, float, int] | None, spec: str) -> str:
    if stat is None or stat[2] == 0:
        return "-"
    mean, std, n = stat
    return format(mean, spec) + (f" ± {format(std, spec)}" if n > 1 else "")


def study_finding(kind: str, rows: list[dict[str, Any]]) -> str:
    """One sentence summarising a study, computed from its results.

    The hardest setting (lowest dose, largest scan step, smallest training set; the experimental
    probe at the smallest gridsize for the probe study) and the easiest one are compared: which
    arm has the best mean amplitude SSIM there and by how much it leads the runner-up.
    """
    agg = _aggregate(rows)
    ssim = {(m, g, v): s for (m, g, v, q, k), s in agg.items()
            if q == "amplitude" and k == "ssim" and s[2] > 0}
    if not ssim:
        return "No arm produced a scored reconstruction, so there is no finding."
    grids = sorted({g for _, g, _ in ssim})
    values = sorted({v for _, _, v in ssim}, key=lambda v: (PROBE_SCENARIOS.index(v)
                                                            if kind == "probe" else float(v)))
    if kind == "probe":
        exp = [v for v in values if v.startswith("experimental")] or values
        hard, easy = exp[0], (["ideal_g2"] if "ideal_g2" in values else values)[-1]
        describe = lambda v: f"with the {v.replace('_g', ' probe at gridsize ')}"  # noqa: E731
    else:
        hard, easy = ((values[0], values[-1]) if kind in ("dose", "generalization")
                      else (values[-1], values[0]))
        unit = {"dose": " photons per pattern", "overlap": " px scan step",
                "generalization": " training patterns"}[kind]
        describe = lambda v: (  # noqa: E731
            f"at {_fmt_value(kind, v).replace(' px', '')}{unit}")

    def ranking(v: Any) -> list[tuple[float, str]]:
        out: dict[str, float] = {}
        for (m, g, vv), s in sorted(ssim.items(), key=lambda kv: kv[0][1]):
            if vv != v:
                continue
            label = (f"{m} (gridsize {g})" if len(grids) > 1 and kind != "probe"
                     and m not in _GRID_FREE else m)
            out.setdefault(label, s[0])  # a gridsize-free arm counts once
        return sorted(((s, m) for m, s in out.items()), reverse=True)

    def clause(v: Any) -> str:
        r = ranking(v)
        if len(r) == 1:
            return f"{r[0][1]} reaches amplitude SSIM {r[0][0]:.3f}"
        (s1, a1), (s2, a2) = r[0], r[1]
        return (f"{a1} has the best amplitude SSIM ({s1:.3f} vs {s2:.3f} for {a2}, "
                f"ahead by {s1 - s2:.3f})")

    first = describe(hard)
    first = first[0].upper() + first[1:]
    if hard == easy:
        return f"{first}, {clause(hard)}."
    return f"{first}, {clause(hard)}; {describe(easy)}, {clause(easy)}."


def write_report(out_dir: str | os.PathLike) -> dict[str, Any]:
    """Collect every finished cell of a study directory and write the results and the report.

    Writes ``results.csv``, ``table.md``, ``curves.png``, ``report.md`` and ``report.html``.

    Returns
    -------
    dict
        ``kind``, ``n_cells``, ``finding``, ``table`` (markdown), ``files``.
    """
    from ptypinn import report  # matplotlib: imported only when figures are drawn

    out = Path(out_dir)
    if not (out / "study.yaml").is_file():
        raise FileNotFoundError(f"{out}: no study.yaml (not a study directory)")
    resolved = io.read_yaml(out / "study.yaml")
    if not isinstance(resolved, dict) or not isinstance(resolved.get("study"), dict):
        raise ValueError(f"{out / 'study.yaml'}: key 'study': expected a mapping")
    study = study_config_from_dict(resolved["study"])
    meta = io.read_json_object(out / "study.json") if (out / "study.json").is_file() else {}
    kind = study.kind
    rows = collect_results(out)
    io.write_text(out / "results.csv", _csv_text(rows))
    # an FRC that never drops below the threshold resolves down to the Nyquist period (2 px)
    agg = _aggregate([dict(r, value=_NYQUIST_PERIOD_PX) if r["quantity"] == "complex"
                      and r["metric"].startswith("frc_") and r["value"] is None else r
                      for r in rows])
    arm_order = [ARM_LABELS[a] for a in ARMS]
    models = sorted({r["model"] for r in rows if r["model"] != "scan"},
                    key=lambda m: arm_order.index(m) if m in arm_order else 99)
    grids = sorted({int(r["gridsize"]) for r in rows})
    values = sorted({r["parameter_value"] for r in rows},
                    key=lambda v: PROBE_SCENARIOS.index(v) if kind == "probe" else float(v))
    n_cells = len({r["cell"] for r in rows})
    seeds = sorted({int(r["seed"]) for r in rows})
    finding = study_finding(kind, rows)

    # metrics table: one row per (value, gridsize, arm), mean ± std over seeds
    pname, xlabel = PARAMETERS[kind]
    header = [pname, "gridsize", "model"]
    if kind == "overlap":
        header.append("overlap (test)")
    header += [t[2] for t in _TABLE_METRICS]
    table_rows: list[list[str]] = []
    for v in values:
        for g in grids:
            for m in models:
                if (m, g, v, "timing", "reconstruction_s") not in agg:
                    continue
                line = [_fmt_value(kind, v), str(g), m]
                if kind == "overlap":
                    line.append(_mean_pm(agg.get(("scan", g, v, "test_overlap",
                                                  "overlap_nn_mean")), ".2f"))
                line += [_mean_pm(agg.get((m, g, v, q, k)), spec) for q, k, _, spec in
                         _TABLE_METRICS]
                table_rows.append(line)
    table_md = report.markdown_table(header, table_rows)
    seed_note = (f"mean ± std over {len(seeds)} seeds" if len(seeds) > 1 else "one seed")
    engines = _ptychi_engines(out)
    engine_note = ("\n\nPtyChi per cell, the engine with the lowest data NLL (candidates: epochs, "
                   "solver time, NLL/px):\n\n" + "\n".join(engines) if engines else "")
    io.write_text(out / "table.md",
                  f"{table_md}\n\n({seed_note}; {_TABLE_NOTE}){engine_note}\n")

    # timings table: per arm, averaged over all cells
    t_header = ["model", "train (s)", "reconstruction (s)", "patterns/s", "speed-up vs PtyChi",
                "end-to-end patterns/s", "end-to-end ratio vs PtyChi"]
    t_rows = []
    for m in models:
        def over_cells(metric: str) -> tuple[float, float, int]:
            return _stats([r["value"] for r in rows if r["model"] == m
                           and r["quantity"] == "timing" and r["metric"] == metric])
        t_rows.append([m, _mean_pm(over_cells("train_s"), ".1f"),
                       _mean_pm(over_cells("reconstruction_s"), ".3g"),
                       _mean_pm(over_cells("patterns_per_s"), ".0f"),
                       _mean_pm(over_cells("speedup_vs_ptychi"), ".1f"),
                       _mean_pm(over_cells("end_to_end_patterns_per_s"), ".1f"),
                       _mean_pm(over_cells("ratio_vs_ptychi"), ".2f")])

    # curves
    numeric_x = kind != "probe"
    curves: dict[str, dict[str, tuple[list[float], list[float], list[float]]]] = {}
    for m, g, label in _series(models, grids if kind != "probe" else [0]):
        series: dict[str, tuple[list[float], list[float], list[float]]] = {}
        for q, k, _ in _CURVE_PANELS:
            xs, ms, ss = [], [], []
            for i, v in enumerate(values):
                gg = g if kind != "probe" else int(str(v)[-1])
                s = agg.get((m, gg, v, q, k))
                if s is None or s[2] == 0:
                    continue
                xs.append(float(v) if numeric_x else float(i))
                ms.append(s[0])
                ss.append(s[1])
            series[f"{q}.{k}"] = (xs, ms, ss)
        curves[label] = series
    tick_labels = None
    if kind == "probe":
        tick_labels = {float(i): v.replace("_g", "\ngridsize ") for i, v in enumerate(values)}
    elif kind == "overlap":
        g0 = grids[0]
        tick_labels = {}
        for v in values:
            ov = agg.get(("scan", g0, v, "test_overlap", "overlap_nn_mean"))
            tick_labels[float(v)] = f"{float(v):g}" + (f"\n({ov[0]:.2f})" if ov and ov[2] else "")
        xlabel = "scan step (px)  [mean disc overlap with nearest neighbours]"
    files = ["results.csv", "table.md", "report.md", "report.html"]
    figures_md: list[tuple[str, str]] = []
    figures_png: list[tuple[str, bytes]] = []
    if models and values:
        png = report.study_curves_png(
            curves, [(f"{q}.{k}", label) for q, k, label in _CURVE_PANELS], xlabel,
            log_x=kind == "dose", x_tick_labels=tick_labels,
            title=f"{kind} study: quality vs {xlabel.split('  [')[0]} ({seed_note}; error bars "
                  f"± 1 std)")
        io.write_bytes(out / "curves.png", png)
        files.append("curves.png")
        caption = "Quality and reconstruction time vs the study parameter"
        figures_md.append((caption, "curves.png"))
        figures_png.append((caption, png))
    first_seed = seeds[0] if seeds else None
    finished = _finished_cells(out)
    for cell_dir, rec in finished:
        if rec["cell"]["seed"] != first_seed:
            continue
        img = cell_dir / "compare" / "comparison.png"
        if img.is_file() and cell_dir.resolve() in img.resolve().parents:  # no link out
            c = rec["cell"]
            cap = (f"{c['name']}: {pname} = {_fmt_value(kind, c['value'])}, gridsize "
                   f"{c['gridsize']}, seed {c['seed']}")
            figures_md.append((cap, img.relative_to(out).as_posix()))
            figures_png.append((cap, io.read_bytes(img)))
    notes = []
    for _, rec in finished:
        for arm, why in rec.get("skipped", {}).items():
            notes.append(f"{rec['cell']['name']}: {arm} skipped ({why})")
        for arm, why in rec.get("failed", {}).items():
            notes.append(f"{rec['cell']['name']}: {arm} failed ({why})")
        src = rec.get("notes", {}).get("probe_source")
        if src and "stand-in" in src:
            notes.append(f"{rec['cell']['name']}: experimental probe = {src}")
    command = f"ptypinn study {out / 'study.yaml'} -o {out}"
    if meta.get("source"):
        sets = "".join(f" --set {s}" for s in meta.get("overrides", []))
        command = f"ptypinn study {meta['source']} -o {meta.get('out_dir', out)}{sets}"
    notes.insert(0, _TABLE_NOTE[0].upper() + _TABLE_NOTE[1:] + ".")
    tables = [("Metrics (" + seed_note + ")", header, table_rows),
              ("Timings (mean ± std over cells)", t_header, t_rows)]
    title = f"ptypinn {kind} study ({n_cells} cells, arms: {', '.join(models) or 'none'})"
    io.write_text(out / "report.md", report.study_report_md(
        title, finding, command, tables, figures_md, notes))
    io.write_text(out / "report.html", report.study_report_html(
        title, finding, command, tables, figures_png, notes))
    log.info("study report written to %s (%d cells): %s", out, n_cells, finding)
    return {"kind": kind, "n_cells": n_cells, "finding": finding, "table": table_md,
            "files": files}
