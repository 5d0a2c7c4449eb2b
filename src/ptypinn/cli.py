"""The ``ptypinn`` command line: one entry point, one sub-command per job.

Every command takes an optional YAML config and ``--set section.field=value`` overrides, writes
the resolved config next to its outputs, logs to the console and to a file beside the outputs,
and exits with status 2 and a one-line reason on bad input (no traceback for user errors).

Layering: this module uses the public API (``ptypinn``, resolved lazily), ``ptypinn.io`` and
``ptypinn.workflows``.  Commands import what they need when they run, so ``--help``,
``--version`` and ``info`` never import Lightning, pty-chi or matplotlib.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Sequence


import ptypinn
from ptypinn import __version__
from ptypinn.config import PTYCHI_ENGINES

log = logging.getLogger("ptypinn.cli")

EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3


# ------------------------------------------------------------------------------------------------
# logging and shared helpers


def _setup_logging(verbose: bool) -> None:
    root = logging.getLogger("ptypinn")
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False  # pty-chi adds a handler to the root logger: avoid duplicate lines
    # one console handler on the current stderr (main() may run several times in one process,
    # e.g. from tests, and an earlier stderr may be closed by now)
    for h in list(root.handlers):
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
            root.removeHandler(h)
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    root.addHandler(h)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Lightning's own code trips a torch deprecation on every fit; not actionable for our users
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)",
                            category=FutureWarning)


def _log_to_file(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    fh = logging.FileHandler(out_dir / "ptypinn.log")
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("ptypinn").addHandler(fh)


def _config(args: argparse.Namespace):
    return ptypinn.load_config(getattr(args, "config", None), getattr(args, "set", None) or [])


def _write_config(out_dir: Path, cfg: Any, name: str = "config.resolved.yaml") -> None:
    from ptypinn import io

    io.write_yaml(out_dir / name, ptypinn.to_dict(cfg))


def _read_scan(path: str, measurement: str | None = None,
               photons_per_pattern: float | None = None, bundle: Any = None):
    """Read a scan and bring it to photon units by the one rule of every command
    (``data.to_photon_units``; with a bundle, ``pinn.infer.prepare_scan``, which also warns when
    the bundle's training beam or flux does not match the scan)."""
    scan = ptypinn.read_scan(path, measurement=measurement)
    if bundle is not None:
        return ptypinn.prepare_scan(bundle, scan, photons_per_pattern)
    return ptypinn.to_photon_units(scan, photons_per_pattern=photons_per_pattern)


def _add_scale(p: argparse.ArgumentParser) -> None:
    p.add_argument("--photons-per-pattern", type=float, default=None, metavar="N",
                   help="rescale the counts to N photons per pattern on average (files of "
                   "normalized amplitudes, e.g. reference PtychoPINN NPZ: the Poisson weighting "
                   "needs photon counts); > 0")


def _with_flags(cfg: Any, section: str, **flags: Any) -> Any:
    """``cfg`` with the command-line flags that were given (not None) set in ``section``."""
    given = {k: v for k, v in flags.items() if v is not None}
    return dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section),
                                                                    **given)})


def _with_refine_flags(cfg: Any, args: argparse.Namespace) -> Any:
    """``cfg`` with ``--refine N``, ``--refine-probe`` and ``--refine-positions`` applied."""
    return _with_flags(cfg, "refine", epochs=args.refine,
                       refine_probe=True if args.refine_probe else None,
                       refine_positions=True if args.refine_positions else None)


def _refine_pinn(recon: Any, scan: Any, cfg: Any) -> Any:
    """Refine the network's stitched object (its whole-patch rim included), or None when off."""
    if cfg.refine.epochs == 0:
        return None
    return ptypinn.refine(scan, cfg.refine, object_init=recon.object)


def _add_refine(p: argparse.ArgumentParser) -> None:
    p.add_argument("--refine", type=int, default=None, metavar="N",
                   help="then refine the network's object by Poisson maximum likelihood for at "
                   "most N epochs (until converged; default: refine.epochs, 0 = off)")
    p.add_argument("--refine-probe", action="store_true",
                   help="let the refinement refine the probe modes too (refine.refine_probe)")
    p.add_argument("--refine-positions", action="store_true",
                   help="let the refinement correct the positions (refine.refine_positions, "
                   "at most refine.max_position_shift_px)")


def _add_common(p: argparse.ArgumentParser, config_positional: bool = False) -> None:
    if config_positional:
        p.add_argument("config", nargs="?", help="YAML config (sections: simulation, grouping, "
                       "model, train, infer, iterative, refine)")
    else:
        p.add_argument("--config", "-c", help="YAML config (sections: simulation, grouping, "
                       "model, train, infer, iterative, refine)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override one config value (repeatable)")


# ------------------------------------------------------------------------------------------------
# commands


def cmd_simulate(args: argparse.Namespace) -> int:
    from ptypinn import io
    from ptypinn.workflows.outputs import write_scan_with_preview

    cfg = _config(args)
    out = Path(args.output)
    if out.suffix != ".npz":
        raise ValueError(f"-o: expected a .npz file name, got {out}")
    sim = cfg.simulation
    probe_file = io.read_probe(sim.probe_file) if sim.probe_kind == "file" else None
    image = io.read_image(sim.image_path) if sim.object_kind == "image" else None
    if args.test_output:
        train, test = ptypinn.simulate_train_test(sim, probe_from_file=probe_file, image=image)
        scans = [(out, train), (Path(args.test_output), test)]
    else:
        scans = [(out, ptypinn.simulate_scan(sim, probe_from_file=probe_file, image=image))]
    for path, scan in scans:
        preview = write_scan_with_preview(path, scan)
        log.info("wrote %s (%d patterns of %dx%d, %.3g photons/pattern) and its preview %s",
                 path, scan.n_patterns, scan.pattern_size, scan.pattern_size,
                 scan.photons_per_pattern, preview.name)
    _write_config(out.parent, cfg, out.stem + ".config.yaml")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    if args.config_positional is not None:
        if args.config is not None:
            raise ValueError("train: expected one config, got both a positional one and --config")
        log.warning("'ptypinn train CONFIG' is deprecated; use 'ptypinn train --config CONFIG'")
        args.config = args.config_positional
    cfg = _config(args)
    scan = _read_scan(args.train, args.measurement, args.photons_per_pattern)
    out = Path(args.output)
    _log_to_file(out)
    _write_config(out, cfg)
    res = ptypinn.train_model(cfg, scan, out, resume=args.resume)
    if res.is_global_zero:
        log.info("trained %d epochs in %.1f s (%.1f samples/s); bundle: %s", res.epochs_run,
                 res.fit_time_s, res.samples_per_s, res.bundle_dir)
        if res.ranks_identical is not None:
            log.info("DDP ranks ended with identical weights: %s", res.ranks_identical)
    return 0


def _print_summary(summary: dict[str, Any]) -> None:
    print(f"patterns: {summary['n_patterns']}  inference+stitching: "
          f"{summary['wall_time_s']:.2f} s ({summary['patterns_per_s']:.0f} patterns/s)  "
          f"data NLL/pixel: {summary['nll_per_pixel_mean']:.3f}")
    r = summary.get("refine")
    if r:
        print(f"refinement: {r['epochs']} epochs ({r['stop_reason']}), {r['wall_time_s']:.2f} s; "
              f"data NLL/pixel {summary['nll_per_pixel_pinn']:.3f} (network) -> "
              f"{summary['nll_per_pixel_mean']:.3f} (refined)")
    m = summary.get("metrics")
    if m:
        a, p = m["amplitude"], m["phase"]
        print(f"amplitude: SSIM {a['ssim']:.3f}  Pearson {a['pearson']:.3f}  "
              f"mean ratio {a['mean_ratio']:.3f}")
        print(f"phase:     SSIM {p['ssim']:.3f}  Pearson {p['pearson']:.3f}")


def cmd_infer(args: argparse.Namespace) -> int:
    from ptypinn.workflows.outputs import write_outputs

    cfg = _with_refine_flags(_config(args), args)
    bundle = ptypinn.load_bundle(args.run)
    scan = _read_scan(args.scan, args.measurement, args.photons_per_pattern, bundle)
    out = Path(args.output)
    recon = ptypinn.reconstruct(bundle, scan, cfg.infer)
    refined = _refine_pinn(recon, scan, cfg)
    _log_to_file(out)
    _write_config(out, cfg)
    _print_summary(write_outputs(out, recon, scan, {"bundle": str(args.run)}, refined=refined))
    return 0


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from ptypinn.workflows.outputs import write_outputs

    cfg = _with_refine_flags(_config(args), args)
    scan = _read_scan(args.scan, args.measurement, args.photons_per_pattern)
    out = Path(args.output)
    _log_to_file(out)
    _write_config(out, cfg)
    t0 = time.perf_counter()
    bundle = ptypinn.train_model(cfg, scan, out / "run").bundle
    train_s = time.perf_counter() - t0
    recon = ptypinn.reconstruct(bundle, scan, cfg.infer)
    refined = _refine_pinn(recon, scan, cfg)
    _print_summary(write_outputs(out, recon, scan, {"train_time_s": train_s}, refined=refined))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from ptypinn.workflows.compare import compare, run_arms, summary_table

    cfg = _config(args)
    cfg = _with_flags(cfg, "iterative", iterations=args.ptychi_iterations,
                      optimize_probe=True if args.ptychi_refine_probe else None)
    cfg = _with_refine_flags(cfg, args)
    engines = list(dict.fromkeys(args.ptychi or []))
    ptychi = [dataclasses.replace(cfg.iterative, algorithm=e) for e in engines] or None
    scan = _read_scan(args.scan, args.measurement, args.photons_per_pattern,
                      ptypinn.load_bundle(args.pinn) if args.pinn else None)
    out = Path(args.output)
    arms = run_arms(scan, pinn=args.pinn, baseline=args.baseline, ptychi=ptychi,
                    infer_cfg=cfg.infer, refine=cfg.refine if cfg.refine.epochs > 0 else None)
    _log_to_file(out)
    _write_config(out, cfg)
    print(summary_table(compare(scan, arms, out)))
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    from ptypinn.workflows.studies import run_study
    from ptypinn.workflows.study_results import write_report

    out = Path(args.output)
    _log_to_file(out)
    summary = write_report(out) if args.report_only else run_study(args.config, out, args.set)
    print(summary["table"])
    print(f"finding: {summary['finding']}")
    print(f"report: {out / 'report.html'} ({summary['n_cells']} cells)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ptypinn.workflows.demo import run_demo

    out = Path(args.output)
    _log_to_file(out)
    summary = run_demo(out, quick=args.quick, overrides=args.set)
    print(summary["text"])
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from ptypinn.workflows.describe import describe_path

    for line in describe_path(args.file, measurement=args.measurement):
        print(line)
    return 0


# ------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ptypinn", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"ptypinn {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("simulate", help="simulate a scan (and optionally a disjoint test scan)")
    _add_common(s, config_positional=True)
    s.add_argument("-o", "--output", required=True, help="output scan .npz (+ .png preview)")
    s.add_argument("--test-output", help="also write a test scan of a different object here")
    s.set_defaults(func=cmd_simulate)

    measurement = dict(choices=["amplitude", "counts"], default=None,
                       help="what a reference-format NPZ 'diffraction' array holds")

    t = sub.add_parser("train", help="train a model (PINN or baseline) on a scan")
    _add_common(t)
    t.add_argument("config_positional", nargs="?", metavar="CONFIG",
                   help="deprecated: use --config")
    t.add_argument("--train", required=True, help="training scan file")
    t.add_argument("-o", "--output", required=True, help="run directory")
    t.add_argument("--resume", action="store_true", help="continue from RUN/checkpoints/last.ckpt")
    t.add_argument("--measurement", **measurement)
    _add_scale(t)
    t.set_defaults(func=cmd_train)

    i = sub.add_parser("infer", help="reconstruct a scan with a trained bundle")
    i.add_argument("run", help="run directory or bundle directory")
    _add_common(i, config_positional=False)
    i.add_argument("--scan", required=True, help="scan file to reconstruct")
    i.add_argument("-o", "--output", required=True, help="output directory")
    i.add_argument("--measurement", **measurement)
    _add_scale(i)
    _add_refine(i)
    i.set_defaults(func=cmd_infer)

    r = sub.add_parser("reconstruct", help="self-supervised: train on a scan, then reconstruct it")
    r.add_argument("scan", help="scan file")
    _add_common(r, config_positional=False)
    r.add_argument("-o", "--output", required=True, help="output directory")
    r.add_argument("--measurement", **measurement)
    _add_scale(r)
    _add_refine(r)
    r.set_defaults(func=cmd_reconstruct)

    c = sub.add_parser("compare", help="run PINN / baseline / pty-chi on one scan and compare them")
    c.add_argument("scan", help="test scan file")
    _add_common(c, config_positional=False)
    c.add_argument("--pinn", help="PINN run or bundle directory")
    c.add_argument("--baseline", help="supervised-baseline run or bundle directory")
    c.add_argument("--ptychi", choices=list(PTYCHI_ENGINES), nargs="+", metavar="ENGINE",
                   help="also run pty-chi with this engine, or several (e.g. epie lsqml: the one "
                   f"with the lowest data NLL is kept); one of {list(PTYCHI_ENGINES)}; needs "
                   "ptypinn[iterative]; other settings from the config's iterative section")
    c.add_argument("--ptychi-iterations", type=int, default=None, metavar="N",
                   help="pty-chi epochs (default: iterative.iterations, 100)")
    c.add_argument("--ptychi-refine-probe", action="store_true",
                   help="let pty-chi refine the probe (measured scans); default: "
                   "iterative.optimize_probe (false)")
    c.add_argument("-o", "--output", required=True, help="output directory")
    c.add_argument("--measurement", **measurement)
    _add_scale(c)
    _add_refine(c)
    c.set_defaults(func=cmd_compare)

    y = sub.add_parser("study", help="parameter study: dose, overlap, generalization or probe")
    y.add_argument("config", help="study YAML (a study: section plus the base run sections)")
    y.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override one config value (repeatable; study.values=[...] too)")
    y.add_argument("-o", "--output", required=True, help="study directory (re-running resumes)")
    y.add_argument("--report-only", action="store_true",
                   help="only rebuild results and report from the finished cells")
    y.set_defaults(func=cmd_study)

    d = sub.add_parser("demo", help="whole pipeline on built-in synthetic data (a few minutes)")
    d.add_argument("-o", "--output", default="runs/demo", help="output directory")
    d.add_argument("--quick", action="store_true", help="tiny run (seconds; for smoke tests)")
    d.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    d.set_defaults(func=cmd_demo)

    f = sub.add_parser("info", help="describe a scan, HDF5 or bundle")
    f.add_argument("file")
    f.add_argument("--measurement", **measurement)
    f.set_defaults(func=cmd_info)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except ptypinn.TrainingDiverged as e:  # light: resolving it does not import Lightning
        print(f"ptypinn: training diverged: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    except (ValueError, FileNotFoundError, IsADirectoryError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"ptypinn {args.command}: error: {msg}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("ptypinn: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
