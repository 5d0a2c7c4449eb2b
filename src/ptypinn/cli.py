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
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Sequence


import ptypinn
from ptypinn import __version__
from ptypinn.config import PTYCHI_ENGINES, REFINE_ENGINES

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
               photons_per_pattern: float | None = None, bundle: Any = None,
               args: argparse.Namespace | None = None):
    """Read a scan and bring it to photon units by the one rule of every command
    (``data.to_photon_units``; with a bundle, ``pinn.infer.prepare_scan``, which also warns when
    the bundle's training beam or flux does not match the scan).  A file without probe gets the
    bundle's probe when there is a bundle, else the estimate from the data (``io`` readers).
    ``args``: the command's ``--flip-positions`` and ``--truth``."""
    scan = ptypinn.read_scan(path, measurement=measurement,
                             flip_positions=bool(getattr(args, "flip_positions", False)),
                             truth=getattr(args, "truth", None))
    if bundle is not None:
        probe = bundle.model.probe.detach().cpu().numpy()
        if "probe_estimated" in scan.meta and probe.shape[-1] == scan.pattern_size:
            log.info("%s has no probe: using the bundle's (the training beam) instead of the "
                     "estimate from the data", path)
            scan = scan.replace(probe=probe)
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
    """``cfg`` with ``--refine N``, ``--refine-engine``, ``--refine-probe`` and
    ``--refine-positions`` applied."""
    return _with_flags(cfg, "refine", epochs=args.refine, engine=args.refine_engine,
                       refine_probe=True if args.refine_probe else None,
                       refine_positions=True if args.refine_positions else None)


def _refine_pinn(recon: Any, scan: Any, cfg: Any) -> Any:
    """Refine the network's stitched object (its whole-patch rim included), or None when off."""
    if cfg.refine.epochs == 0:
        return None
    return ptypinn.refine_scan(scan, cfg.refine, object_init=recon.object,
                               iterative=cfg.iterative, progress=_progress())


def _add_refine(p: argparse.ArgumentParser) -> None:
    p.add_argument("--refine", type=int, default=None, metavar="N",
                   help="then refine the network's object by Poisson maximum likelihood for at "
                   "most N epochs (until converged; default: refine.epochs, 0 = off)")
    p.add_argument("--refine-engine", choices=list(REFINE_ENGINES), default=None,
                   help="ptypinn (our own, default) or ptychi (pty-chi warm-started from the "
                   "same object, with the iterative section's engine; optional extra)")
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
# output formats, provenance and progress (issue 15)


def _add_format(p: argparse.ArgumentParser, what: str = "the reconstruction") -> None:
    p.add_argument("--format", default="npz", metavar="LIST",
                   help=f"formats of {what}: a comma-separated list of npz, product (ptychodus "
                   "product HDF5), cxi (the scan plus the reconstruction), tiff (32-bit amplitude "
                   "and phase); default npz; PNG pictures are always written")


def _formats(args: argparse.Namespace, scan: Any) -> tuple[str, ...]:
    """The ``--format`` list, checked against what ``scan`` holds (before any computing)."""
    from ptypinn.workflows.outputs import check_formats, parse_formats

    formats = parse_formats(args.format)
    check_formats(formats, scan)
    return formats


def _provenance(out_dir: Path, cfg: Any) -> dict[str, Any]:
    """Record the run's provenance in ``OUT/ptypinn.log`` (only there: the console stays
    short, and a bad-input error stays one line): one readable line, then the full record with
    the resolved config as JSON.  Return it for the outputs' metadata."""
    from ptypinn.provenance import provenance_line, run_provenance

    prov = run_provenance(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    fh = logging.FileHandler(out_dir / "ptypinn.log")
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for msg, arg in (("provenance: %s", provenance_line(prov)),
                     ("provenance (full): %s", json.dumps(prov, default=str))):
        fh.handle(logging.LogRecord(log.name, logging.INFO, __file__, 0, msg, (arg,), None))
    fh.close()
    return prov


def _progress() -> bool:
    """Progress bars only on a terminal: output redirected to a file stays free of
    carriage-return fragments (Lightning's bar writes to stdout, ours to stderr)."""
    return sys.stdout.isatty() and sys.stderr.isatty()


def _quiet_training(cfg: Any) -> Any:
    """``cfg`` with Lightning's progress bar off when not on a terminal."""
    return cfg if _progress() else _with_flags(cfg, "train", progress_bar=False)


# ------------------------------------------------------------------------------------------------
# refusing bad outputs, devices and sizes before any work is done


_EXISTING_RUN = "pass --resume to continue it or --overwrite to replace it"


def _guard_output(out: str | Path, inputs: Sequence[Any], existing_ok: bool = False,
                  hint: str = "pass --overwrite to replace it", what: str = "-o") -> Path:
    """Refuse (before any work) an output that is or contains an input, that exists already
    (unless ``existing_ok``) or cannot be written; see :func:`ptypinn.io.check_output`."""
    from ptypinn import io

    return io.check_output(out, [i for i in inputs if i], existing_ok=existing_ok, hint=hint,
                           what=what)


def _secondary_rank() -> bool:
    """True in a DDP process other than global rank 0 (Lightning re-runs the command line in
    each rank it launches; rank 0 made the output checks, and the run directory exists now)."""
    for var in ("RANK", "LOCAL_RANK", "NODE_RANK"):
        if os.environ.get(var, "0").strip() not in ("", "0"):
            return True
    return False


def _config_inputs(args: argparse.Namespace, cfg: Any) -> list[Any]:
    """The files a command's config makes it read (the config itself, probe and image files)."""
    sim = cfg.simulation
    return [getattr(args, "config", None),
            sim.probe_file if sim.probe_kind == "file" else None,
            sim.image_path if sim.object_kind == "image" else None]


def _check_devices(cfg: Any, sections: Sequence[str]) -> None:
    """Refuse a ``cuda`` device of ``sections`` (``infer``, ``refine``, ``iterative``) that this
    machine does not have, before any work."""
    wanted = [(s, getattr(cfg, s).device) for s in sections]
    if not any(d.startswith("cuda") for _, d in wanted):
        return
    import torch

    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for section, d in wanted:
        if d.startswith("cuda") and (int(d[5:]) if d[5:] else 0) >= have:
            raise ValueError(f"{section}.device: expected an available device, got {d!r} "
                             f"({have} CUDA device(s) available)")


def _check_simulation_size(sim: Any) -> None:
    """Refuse a simulation whose arrays would not fit in memory, before allocating them."""
    from ptypinn import io

    n = sim.probe_size_px
    side = max(sim.object_size_px - n, 0) / max(sim.effective_step_px, 1e-9) + 1
    n_pos = sim.n_random_positions if sim.scan_kind == "random" else side**2
    # counts (float32) with their float64 intermediate, and a handful of complex object canvases
    n_bytes = n_pos * n * n * 12.0 + 8 * float(sim.object_size_px) ** 2 * 16
    io.check_memory(n_bytes, f"simulation.object_size_px={sim.object_size_px}, "
                    f"probe_size_px={n}, step {sim.effective_step_px:g} px ({n_pos:.3g} patterns)")


def _error_line(e: BaseException) -> str:
    """One line for a user error (the first line of its message)."""
    if isinstance(e, OSError) and not str(e).startswith("["):
        text = str(e)
    elif isinstance(e, OSError):
        text = (f"{e.filename}: {e.strerror}" if e.filename else (e.strerror or str(e)))
    elif isinstance(e, MemoryError):
        text = f"out of memory ({e})" if str(e) else "out of memory"
    else:
        text = str(e)
    text = text.strip()
    return text.splitlines()[0] if text else type(e).__name__


# ------------------------------------------------------------------------------------------------
# commands


def cmd_simulate(args: argparse.Namespace) -> int:
    from ptypinn import io
    from ptypinn.workflows.outputs import write_scan_with_preview

    cfg = _config(args)
    out = Path(args.output)
    if out.suffix != ".npz":
        raise ValueError(f"-o: expected a .npz file name, got {out}")
    test_out = Path(args.test_output) if args.test_output else None
    if test_out is not None and test_out.resolve() == out.resolve():
        raise ValueError(f"--test-output {test_out}: the same file as -o")
    inputs = _config_inputs(args, cfg)
    for o, what in ((out, "-o"), (test_out, "--test-output")):
        if o is not None:
            for path in (o, o.with_suffix(".png")):
                _guard_output(path, inputs, existing_ok=args.overwrite, what=what)
    _guard_output(out.parent / (out.stem + ".config.yaml"), inputs, existing_ok=args.overwrite)
    sim = cfg.simulation
    _check_simulation_size(sim)
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
    cfg = _quiet_training(_config(args))
    if args.resume and args.overwrite:
        raise ValueError("train: expected --resume or --overwrite, got both")
    if len(args.train) > 1 and not cfg.model.probe_input:
        raise ValueError(f"train: expected one --train/--scan, got {len(args.train)}; training "
                         "on several scans (several probes) needs model.probe_input=true "
                         "(--set model.probe_input=true)")
    out = _guard_output(args.output, [*args.train, *_config_inputs(args, cfg)],
                        existing_ok=args.resume or args.overwrite or _secondary_rank(),
                        hint=_EXISTING_RUN)
    scans = [_read_scan(path, args.measurement, args.photons_per_pattern, args=args)
             for path in args.train]
    scan = scans[0] if len(scans) == 1 else scans
    ptypinn.check_training(cfg, scan, out, resume=args.resume)
    _log_to_file(out)
    from ptypinn import io

    prov = _provenance(out, cfg)
    if not args.resume:  # a resume rewrites config and provenance only once it succeeded
        _write_config(out, cfg)
        io.write_json(out / "provenance.json", prov)
    res = ptypinn.train_model(cfg, scan, out, resume=args.resume)
    if args.resume:
        _write_config(out, cfg)
        io.write_json(out / "provenance.json", prov)
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
    from ptypinn import io
    from ptypinn.workflows.outputs import write_outputs

    cfg = _with_refine_flags(_config(args), args)
    out = _guard_output(args.output, [args.run, args.scan, *_config_inputs(args, cfg)],
                        existing_ok=args.overwrite)
    _check_devices(cfg, ("infer", "refine"))
    bundle = ptypinn.load_bundle(args.run)
    scan = _read_scan(args.scan, args.measurement, args.photons_per_pattern, bundle, args)
    formats = _formats(args, scan)
    _bound_heap_growth(scan)
    recon = ptypinn.reconstruct(bundle, scan, cfg.infer, progress=_progress(),
                                allocate=io.scratch_array)
    refined = _refine_pinn(recon, scan, cfg)
    _log_to_file(out)
    _write_config(out, cfg)
    prov = _provenance(out, cfg)
    _print_summary(write_outputs(out, recon, scan, {"bundle": str(args.run)}, refined=refined,
                                 formats=formats, provenance=prov))
    return 0


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from ptypinn import io
    from ptypinn.workflows.outputs import write_outputs

    cfg = _quiet_training(_with_refine_flags(_config(args), args))
    out = _guard_output(args.output, [args.scan, *_config_inputs(args, cfg)],
                        existing_ok=args.overwrite or _secondary_rank())
    _check_devices(cfg, ("infer", "refine"))
    scan = _read_scan(args.scan, args.measurement, args.photons_per_pattern, args=args)
    # a probe estimated from the data is always learned, unless --no-learn-probe says otherwise
    learn = args.learn_probe
    if learn is None:
        learn = cfg.model.learn_probe or "probe_estimated" in scan.meta
    cfg = _with_flags(cfg, "model", learn_probe=learn, probe_modes=args.probe_modes)
    if learn:
        log.info("learning the probe (%s modes) jointly with the network",
                 cfg.model.probe_modes or scan.probe_modes.shape[0])
    formats = _formats(args, scan)
    ptypinn.check_training(cfg, scan, out / "run")
    _log_to_file(out)
    _write_config(out, cfg)
    prov = _provenance(out, cfg)
    t0 = time.perf_counter()
    bundle = ptypinn.train_model(cfg, scan, out / "run").bundle
    train_s = time.perf_counter() - t0
    if cfg.model.learn_probe:  # stitching, data NLL and refinement use the learned probe
        scan = scan.replace(probe=bundle.model.probe.detach().cpu().numpy())
    _bound_heap_growth(scan)
    recon = ptypinn.reconstruct(bundle, scan, cfg.infer, progress=_progress(),
                                allocate=io.scratch_array)
    refined = _refine_pinn(recon, scan, cfg)
    _print_summary(write_outputs(out, recon, scan, {"train_time_s": train_s}, refined=refined,
                                 formats=formats, provenance=prov))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from ptypinn.workflows.compare import compare, run_arms, summary_table

    cfg = _config(args)
    cfg = _with_flags(cfg, "iterative", iterations=args.ptychi_iterations,
                      optimize_probe=True if args.ptychi_refine_probe else None)
    cfg = _with_refine_flags(cfg, args)
    engines = list(dict.fromkeys(args.ptychi or []))
    ptychi = [dataclasses.replace(cfg.iterative, algorithm=e) for e in engines] or None
    out = _guard_output(args.output, [args.scan, args.pinn, args.baseline,
                                      *_config_inputs(args, cfg)], existing_ok=args.overwrite)
    _check_devices(cfg, ("infer", "refine") + (("iterative",) if ptychi else ()))
    scan = _read_scan(args.scan, args.measurement, args.photons_per_pattern,
                      ptypinn.load_bundle(args.pinn) if args.pinn else None, args)
    formats = _formats(args, scan)
    arms = run_arms(scan, pinn=args.pinn, baseline=args.baseline, ptychi=ptychi,
                    infer_cfg=cfg.infer, refine=cfg.refine if cfg.refine.epochs > 0 else None,
                    progress=_progress())
    _log_to_file(out)
    _write_config(out, cfg)
    prov = _provenance(out, cfg)
    print(summary_table(compare(scan, arms, out, formats=formats, provenance=prov)))
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    from ptypinn.workflows.studies import run_study
    from ptypinn.workflows.study_results import write_report

    # re-running a study resumes it: an existing study directory is expected
    out = _guard_output(args.output, [] if args.report_only else [args.config],
                        existing_ok=True)
    _log_to_file(out)
    _provenance(out, None)
    # train.progress_bar is left as configured: it is part of each cell's resume key
    summary = (write_report(out) if args.report_only
               else run_study(args.config, out, args.set, progress=_progress()))
    print(summary["table"])
    print(f"finding: {summary['finding']}")
    print(f"report: {out / 'report.html'} ({summary['n_cells']} cells)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ptypinn.workflows.demo import run_demo

    out = _guard_output(args.output, [], existing_ok=True)  # the demo's own directory
    _log_to_file(out)
    _provenance(out, None)
    overrides = list(args.set) + ([] if _progress() else ["train.progress_bar=false"])
    summary = run_demo(out, quick=args.quick, overrides=overrides)
    print(summary["text"])
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    """Print every config field (or one section's) with its default, unit and description."""
    from ptypinn.config import config_reference

    print(config_reference(args.section), end="")
    return 0


def _add_config_command(sub: Any) -> None:
    from ptypinn.config import SECTIONS

    g = sub.add_parser("config", help="show the configuration fields, defaults, units and "
                       "descriptions")
    gs = g.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = gs.add_parser("show", help="print every field of every section (or of SECTION) as "
                         "commented YAML; the output is a valid config holding the defaults")
    show.add_argument("section", nargs="?", metavar="SECTION",
                      help=f"one of {', '.join(SECTIONS)} (default: all)")
    show.set_defaults(func=cmd_config_show)


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
    s.add_argument("--overwrite", action="store_true", help="replace existing output files")
    s.set_defaults(func=cmd_simulate)

    measurement = dict(choices=["amplitude", "counts"], default=None,
                       help="what a reference-format NPZ 'diffraction' array holds")

    def _add_input(q: argparse.ArgumentParser, truth: bool = False) -> None:
        q.add_argument("--measurement", **measurement)
        q.add_argument("--flip-positions", action="store_true",
                       help="negate the scan positions read from the file (CXI translations "
                       "that are beam rather than sample positions; see docs/formats.md)")
        if truth:
            q.add_argument("--truth", choices=["objectGuess"], default=None,
                           help="reference (PtychoPINN) NPZ from simulation: its objectGuess "
                           "is the ground truth, score against it (default: an initial guess)")

    t = sub.add_parser("train", help="train a model (PINN or baseline) on a scan")
    _add_common(t)
    t.add_argument("config_positional", nargs="?", metavar="CONFIG",
                   help="deprecated: use --config")
    t.add_argument("--train", "--scan", dest="train", action="append", required=True,
                   help="training scan file (any supported format, or a ptychodus directory: "
                   "diffraction.h5 + product.h5); repeat it to train on several scans with "
                   "different probes (needs model.probe_input=true)")
    t.add_argument("-o", "--output", required=True, help="run directory")
    t.add_argument("--resume", action="store_true", help="continue from RUN/checkpoints/last.ckpt "
                   "(metrics.csv keeps its rows)")
    t.add_argument("--overwrite", action="store_true",
                   help="train afresh into an existing run directory, replacing its bundle")
    _add_input(t)
    _add_scale(t)
    t.set_defaults(func=cmd_train)

    i = sub.add_parser("infer", help="reconstruct a scan with a trained bundle")
    i.add_argument("run", help="run directory or bundle directory")
    _add_common(i, config_positional=False)
    i.add_argument("--scan", required=True,
                   help="scan file to reconstruct (NPZ, reference NPZ, CXI, or a ptychodus "
                   "directory: diffraction.h5 + product.h5)")
    i.add_argument("-o", "--output", required=True, help="output directory")
    i.add_argument("--overwrite", action="store_true",
                   help="write into an existing output directory, replacing its files")
    _add_input(i, truth=True)
    _add_scale(i)
    _add_refine(i)
    _add_format(i)
    i.set_defaults(func=cmd_infer)

    r = sub.add_parser("reconstruct", help="self-supervised: train on a scan, then reconstruct it")
    r.add_argument("scan", help="scan file (or a ptychodus directory: diffraction.h5 + "
                   "product.h5)")
    _add_common(r, config_positional=False)
    r.add_argument("-o", "--output", required=True, help="output directory")
    r.add_argument("--overwrite", action="store_true",
                   help="write into an existing output directory, replacing its files")
    _add_input(r, truth=True)
    _add_scale(r)
    r.add_argument("--learn-probe", action=argparse.BooleanOptionalAction, default=None,
                   help="learn the probe jointly with the network (model.learn_probe; default: "
                   "the config's, and on when the file has no probe and it is estimated from "
                   "the data)")
    r.add_argument("--probe-modes", type=int, default=None, metavar="K",
                   help="incoherent probe modes to learn (model.probe_modes, 1-8; default: the "
                   "file probe's)")
    _add_refine(r)
    _add_format(r)
    r.set_defaults(func=cmd_reconstruct)

    c = sub.add_parser("compare", help="run PINN / baseline / pty-chi on one scan and compare them")
    c.add_argument("scan", help="test scan file (or a ptychodus directory: diffraction.h5 "
                   "+ product.h5)")
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
    c.add_argument("--overwrite", action="store_true",
                   help="write into an existing output directory, replacing its files")
    _add_input(c, truth=True)
    _add_scale(c)
    _add_refine(c)
    _add_format(c, "every arm's reconstruction (under OUTPUT/arms/; npz is always written)")
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
    _add_config_command(sub)
    return p


MMAP_THRESHOLD_BYTES = 1 << 20
"""Process setting of the command line (glibc only): buffers of at least 1 MiB get their own
memory mappings, returned to the system when freed.  Without it glibc's adaptive threshold puts
the per-batch buffers of a streamed scan (counts read from the file, FFT temporaries) on the
heap, whose fragmentation kept about 10 kB per pattern: 1.5 GiB of RSS after 100,000 patterns
instead of 0.35 (``bench/stream_memory.py``, docs/benchmarks.md).  Applied only before the
inference of a scan read lazily (a large file): a fixed threshold also turns off glibc's
adaptation for everything else, and training under it took twice as long (measured: 2 epochs of
the demo scan, 37.2 s against 18.0 s)."""


def _bound_heap_growth(scan: Any) -> None:
    """Apply :data:`MMAP_THRESHOLD_BYTES` (``mallopt(M_MMAP_THRESHOLD)``) on glibc when the
    ``scan``'s counts are read lazily; a no-op otherwise, elsewhere, or when
    ``MALLOC_MMAP_THRESHOLD_`` is set in the environment (the user's own)."""
    if not isinstance(scan.counts, ptypinn.LazyCounts) or not sys.platform.startswith("linux") \
            or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, MMAP_THRESHOLD_BYTES)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc (musl, ...): its own allocator rules
        pass


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except ptypinn.TrainingDiverged as e:  # light: resolving it does not import Lightning
        print(f"ptypinn: training diverged: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    except ptypinn.TrainingCollapsed as e:
        print(f"ptypinn: training collapsed: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    except (ValueError, OSError, MemoryError) as e:
        # bad input (ConfigError is a ValueError), unreadable or unwritable files, full disks,
        # sizes beyond the machine: one line naming the file or key, no traceback
        if args.verbose:
            log.debug("traceback of the error below", exc_info=True)
        print(f"ptypinn {args.command}: error: {_error_line(e)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("ptypinn: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug, not bad input: one line too, the traceback with -v
        if args.verbose:
            raise
        print(f"ptypinn {args.command}: internal error: {type(e).__name__}: "
              f"{_error_line(e)} (please report it; -v shows the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
