"""Model bundles: everything needed for inference in one directory, no pickle.

Layout of ``BUNDLE/``::

    weights.safetensors   model tensors (generator, probe as probe.real/probe.imag, ...)
    manifest.json         format_version, package_version, kind, pattern_size, probe modes,
                          training summary (incl. the training scan's photons per pattern)
    config.yaml           the full resolved config of the run (the one source of the group
                          size: ``grouping.gridsize``)

Loading checks the format version first and rebuilds the model from the stored config only -
nothing is read from global or module state.  Format 1 (before the model took counts directly)
still loads: its derived buffers (the dataset scale, the back-propagation kernel, the merge
window) are dropped and rebuilt from the probe, which gives the same outputs.
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

__all__ = ["BUNDLE_FORMAT_VERSION", "Bundle", "save_bundle", "load_bundle", "check_manifest"]

BUNDLE_FORMAT_VERSION = 2
_READABLE_VERSIONS = (1, 2)
_V1_DERIVED = ("amplitude_scale", "window", "generator.backprop.kernel",
               "generator.backprop.inverse_probe")


@dataclass(frozen=True)
class Bundle:
    """A loaded bundle: the model in eval mode, its config and manifest."""

    model: nn.Module
    config: Config
    manifest: dict[str, Any]

    @classmethod
    def create(cls, model: nn.Module, config: Config,
               extra: dict[str, Any] | None = None) -> "Bundle":
        """A bundle of ``model`` (put in eval mode) built with ``config``; ``extra`` goes into
        the manifest (e.g. ``{"training": {...}}``)."""
        return cls(model=model.eval(), config=config,
                   manifest=_manifest(model, config, extra))

    @property
    def group_size(self) -> int:
        """C, from the bundle's config (``grouping.gridsize ** 2``)."""
        return self.config.grouping.group_size

    @property
    def pattern_size(self) -> int:
        """N, the probe's (and every pattern's) size, as recorded in the manifest."""
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


def _manifest(model: nn.Module, config: Config,
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest of a bundle of ``model`` trained with ``config`` (``extra`` merged in)."""
    probe = model.probe
    return {
        "format": "ptypinn-bundle",
        "format_version": BUNDLE_FORMAT_VERSION,
        "package_version": __version__,
        "kind": config.model.kind,
        "pattern_size": int(probe.shape[-1]),
        "probe_modes": int(probe.shape[0]),
        "intensity_scale": float(getattr(model, "log_intensity_scale", torch.zeros(())).exp()),
        **(extra or {}),
    }


def save_bundle(path: str | os.PathLike, bundle: Bundle) -> Path:
    """Write a bundle directory (each file atomically) and return its path."""
    path = Path(path)
    io.write_safetensors(path / "weights.safetensors", _tensors(bundle.model))
    io.write_yaml(path / "config.yaml", to_dict(bundle.config))
    io.write_json(path / "manifest.json", bundle.manifest)
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
    manifest = check_manifest(io.read_json_object(path / "manifest.json"),
                              path / "manifest.json")
    version = manifest["format_version"]
    data = io.read_yaml(path / "config.yaml")
    if not isinstance(data, dict):
        raise ValueError(f"{path / 'config.yaml'}: expected a mapping of config sections, got "
                         f"{type(data).__name__}")
    if version == 1 and isinstance(data.get("model"), dict):
        data["model"].pop("object_big", None)  # a field format 1 had and never read
    try:
        config = from_dict(Config, data)
    except ValueError as e:
        raise ValueError(f"{path / 'config.yaml'}: {e}") from None
    weights = path / "weights.safetensors"
    flat = io.read_safetensors(weights)
    for k in flat:
        if k.endswith(".real") and k[: -len(".real")] + ".imag" not in flat:
            raise ValueError(f"{weights}: tensor '{k}' has no matching "
                             f"'{k[: -len('.real')]}.imag'")
    state = _untensors(flat)
    if version == 1:
        state = {k: v for k, v in state.items() if k not in _V1_DERIVED}
    probe = state.get("probe")
    if probe is None:
        raise ValueError(f"{weights}: tensor 'probe': missing")
    if probe.ndim not in (2, 3) or probe.shape[-1] != manifest["pattern_size"]:
        raise ValueError(f"{weights}: tensor 'probe': expected (modes, N, N) with N = "
                         f"manifest pattern_size {manifest['pattern_size']}, got "
                         f"{tuple(probe.shape)}")
    try:
        model = build_model(config.model, probe, config.grouping.group_size)
        model.load_state_dict(state)
    except (RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()
        detail = " ".join(x.strip() for x in first[:3]) if first else type(e).__name__
        raise ValueError(f"{weights}: weights do not match config.yaml ({detail})") from None
    model.eval().to(device)
    return Bundle(model=model, config=config, manifest=manifest)


_MANIFEST_KEYS = {"format_version": int, "pattern_size": int, "kind": str}


def check_manifest(manifest: dict[str, Any], where: str | os.PathLike) -> dict[str, Any]:
    """Check a bundle manifest's required keys and format version; return it.

    Raises
    ------
    ValueError
        Naming ``where`` and the key: missing, of the wrong type, or an unknown format version.
    """
    for k, tp in _MANIFEST_KEYS.items():
        v = manifest.get(k)
        if v is None:
            raise ValueError(f"{where}: key '{k}': missing")
        if not isinstance(v, tp) or isinstance(v, bool):
            raise ValueError(f"{where}: key '{k}': expected {tp.__name__}, got {v!r}")
    version = manifest["format_version"]
    if version not in _READABLE_VERSIONS:
        raise ValueError(
            f"{where}: bundle format_version expected one of {list(_READABLE_VERSIONS)}, got "
            f"{version!r} (re-train or convert the bundle with a matching ptypinn version)"
        )
    if manifest["pattern_size"] < 2:
        raise ValueError(f"{where}: key 'pattern_size': expected >= 2, got "
                         f"{manifest['pattern_size']}")
    return manifest
