"""Model bundles: everything needed for inference in one directory, no pickle.

Layout of ``BUNDLE/``::

    weights.safetensors   model tensors (generator, probe as probe.real/probe.imag, scale, ...)
    manifest.json         format_version, package_version, kind, group_size, pattern_size,
                          amplitude_scale, probe shape, training summary
    config.yaml           the full resolved config of the run

Loading checks the format version first and rebuilds the model from the stored config only -
nothing is read from global or module state.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ptypinn import __version__, io
from ptypinn.config import Config, from_dict, to_dict
from ptypinn.pinn.models import build_model

__all__ = ["BUNDLE_FORMAT_VERSION", "Bundle", "save_bundle", "load_bundle"]

BUNDLE_FORMAT_VERSION = 1


@dataclass(frozen=True)
class Bundle:
    """A loaded bundle: the model in eval mode, its config and manifest."""

    model: nn.Module
    config: Config
    manifest: dict[str, Any]

    @property
    def amplitude_scale(self) -> float:
        return float(self.manifest["amplitude_scale"])

    @property
    def group_size(self) -> int:
        return int(self.manifest["group_size"])

    @property
    def pattern_size(self) -> int:
        return int(self.manifest["pattern_size"])


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu().contiguous()
        if v.is_complex():
            out[f"{k}.real"] = v.real.contiguous()
            out[f"{k}.imag"] = v.imag.contiguous()
        else:
            out[k] = v
    return out


def _untensors(flat: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for k, v in flat.items():
        if k.endswith(".real"):
            base = k[: -len(".real")]
            out[base] = torch.complex(v, flat[base + ".imag"])
        elif not k.endswith(".imag"):
            out[k] = v
    return out


def save_bundle(path: str | os.PathLike, model: nn.Module, config: Config, group_size: int,
                extra: dict[str, Any] | None = None) -> Path:
    """Write a bundle directory (each file atomically) and return its path."""
    path = Path(path)
    probe = model.probe
    manifest = {
        "format": "ptypinn-bundle",
        "format_version": BUNDLE_FORMAT_VERSION,
        "package_version": __version__,
        "kind": config.model.kind,
        "group_size": int(group_size),
        "pattern_size": int(probe.shape[-1]),
        "probe_modes": int(probe.shape[0]),
        "amplitude_scale": float(model.amplitude_scale),
        "intensity_scale": float(getattr(model, "log_intensity_scale", torch.zeros(())).exp()),
        **(extra or {}),
    }
    io.write_safetensors(path / "weights.safetensors", _tensors(model))
    io.write_yaml(path / "config.yaml", to_dict(config))
    io.write_json(path / "manifest.json", manifest)
    return path


def load_bundle(path: str | os.PathLike, device: str | torch.device = "cpu") -> Bundle:
    """Load a bundle directory; the model is returned in eval mode on ``device``.

    Raises
    ------
    ValueError
        If the directory is not a bundle or has an unknown format version.
    """
    path = Path(path)
    if (path / "bundle").is_dir() and not (path / "manifest.json").exists():
        path = path / "bundle"  # accept a run directory
    if not (path / "manifest.json").is_file():
        raise ValueError(f"{path}: not a model bundle (no manifest.json)")
    manifest = io.read_json(path / "manifest.json")
    version = manifest.get("format_version")
    if version != BUNDLE_FORMAT_VERSION:
        raise ValueError(
            f"{path}: bundle format_version expected {BUNDLE_FORMAT_VERSION}, got {version!r} "
            "(re-train or convert the bundle with a matching ptypinn version)"
        )
    config = from_dict(Config, io.read_yaml(path / "config.yaml"))
    state = _untensors(io.read_safetensors(path / "weights.safetensors"))
    model = build_model(config.model, state["probe"], float(state["amplitude_scale"]),
                        int(manifest["group_size"]))
    model.load_state_dict(state)
    model.eval().to(device)
    return Bundle(model=model, config=config, manifest=manifest)
