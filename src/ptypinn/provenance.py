"""What produced a result: package versions, device, git commit, command line, resolved config.

:func:`run_provenance` returns one JSON-friendly dict; the command line logs it and stores it in
the metadata of every output it writes (``summary.json``, ``metrics.json``, the NPZ, product,
CXI and TIFF files; see ``docs/formats.md``).  Nothing here writes files or configures logging.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

from ptypinn.config import Config, to_dict

__all__ = ["run_provenance", "provenance_line"]

GIT_TIMEOUT_S = 5.0


def _git(args: Sequence[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                             timeout=GIT_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _git_commit() -> dict[str, Any] | None:
    """Commit (and whether the work tree differs from it) of the checkout holding ptypinn's
    source, or None for an installed package outside a git work tree."""
    here = Path(__file__).resolve().parent
    top = _git(["rev-parse", "--show-toplevel"], here)
    if not top or not (Path(top) / "src" / "ptypinn").is_dir():  # not our repository
        return None
    commit = _git(["rev-parse", "HEAD"], here)
    if commit is None:
        return None
    status = _git(["status", "--porcelain", "--untracked-files=no"], here)
    return {"commit": commit, "dirty": bool(status)}


def _version() -> str | None:
    """The installed ptypinn's version (package metadata; core modules do not import the
    package's ``__init__``)."""
    try:
        return importlib.metadata.version("ptypinn")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return None


def _device() -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {"cuda_available": torch.cuda.is_available(),
                           "cpu": platform.processor() or platform.machine()}
    if out["cuda_available"]:
        out["cuda_devices"] = [torch.cuda.get_device_name(i)
                               for i in range(torch.cuda.device_count())]
    return out


def run_provenance(config: Config | None = None, argv: Sequence[str] | None = None
                   ) -> dict[str, Any]:
    """A JSON-friendly record of what is running.

    Parameters
    ----------
    config : Config, optional
        The resolved configuration of the run (stored with :func:`ptypinn.config.to_dict`).
    argv : sequence of str, optional
        The command line; default ``sys.argv``.

    Returns
    -------
    dict
        ``ptypinn``, ``python``, ``numpy``, ``torch`` and ``cuda`` (torch's CUDA build, None on a
        CPU build) versions; ``device`` (``cuda_available``, the CUDA device names, the CPU);
        ``platform``; ``git`` (``commit`` and ``dirty`` of the source checkout, or None when
        ptypinn is not run from one); ``command_line`` (list of str); ``time_utc`` (ISO 8601);
        and ``config`` (the resolved config as a dict) when given.
    """
    import numpy
    import torch

    out: dict[str, Any] = {
        "ptypinn": _version(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": _device(),
        "platform": platform.platform(),
        "git": _git_commit(),
        "command_line": list(sys.argv if argv is None else argv),
        "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if config is not None:
        out["config"] = to_dict(config)
    return out


def provenance_line(prov: dict[str, Any]) -> str:
    """One readable line of :func:`run_provenance`'s record (without the config)."""
    git = prov.get("git")
    dev = prov["device"]
    device = ", ".join(dev.get("cuda_devices", [])) or f"CPU {dev['cpu']}"
    return (f"ptypinn {prov['ptypinn']}, torch {prov['torch']} (CUDA {prov['cuda'] or 'none'}), "
            f"python {prov['python']}, device {device}, git "
            + (f"{git['commit'][:12]}{' (modified)' if git['dirty'] else ''}" if git else "none")
            + f"; command: {' '.join(prov['command_line'])}")
