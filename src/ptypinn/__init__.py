"""ptypinn: physics-informed neural network reconstruction for ptychography.

The public API, importable from ``ptypinn`` directly::

    from ptypinn import load_config, simulate_train_test, train_model, reconstruct, evaluate

Names are resolved lazily on first use (PEP 562), so ``import ptypinn`` is cheap and imports
neither torch nor Lightning until a name that needs them is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it (read-only table; nothing is imported here)
_API = {
    # configuration and data
    "Config": "ptypinn.config",
    "ConfigError": "ptypinn.config",
    "load_config": "ptypinn.io",
    "to_dict": "ptypinn.config",
    "ScanData": "ptypinn.data",
    "LazyCounts": "ptypinn.data",
    "calibrate_probe": "ptypinn.data",
    "to_photon_units": "ptypinn.data",
    # simulation, metrics
    "simulate_scan": "ptypinn.simulate",
    "simulate_train_test": "ptypinn.simulate",
    "evaluate": "ptypinn.metrics",
    "data_nll": "ptypinn.physics",
    # refinement (Poisson maximum likelihood on the forward model)
    "refine": "ptypinn.refinement",
    "RefineResult": "ptypinn.refinement",
    "refine_scan": "ptypinn.workflows.refine",
    # what produced a result (versions, device, git commit, command line, config)
    "run_provenance": "ptypinn.provenance",
    # files
    "read_scan": "ptypinn.io",
    "write_scan": "ptypinn.io",
    # the network
    "Bundle": "ptypinn.pinn.bundle",
    "load_bundle": "ptypinn.pinn.bundle",
    "save_bundle": "ptypinn.pinn.bundle",
    "train_model": "ptypinn.pinn.train",
    "check_training": "ptypinn.pinn.train",
    "TrainResult": "ptypinn.pinn.train",
    "TrainingDiverged": "ptypinn.pinn",
    "TrainingCollapsed": "ptypinn.pinn",
    "reconstruct": "ptypinn.pinn.infer",
    "Reconstruction": "ptypinn.pinn.infer",
    "prepare_scan": "ptypinn.pinn.infer",
    "bundle_mismatch": "ptypinn.pinn.infer",
    "write_outputs": "ptypinn.workflows.outputs",
    # the iterative baseline
    "reconstruct_ptychi": "ptypinn.baselines.ptychi",
    # workflows
    "run_arms": "ptypinn.workflows.compare",
    "compare": "ptypinn.workflows.compare",
    "run_study": "ptypinn.workflows.studies",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'ptypinn' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # for type checkers and IDEs only; never executed
    from ptypinn.baselines.ptychi import reconstruct_ptychi
    from ptypinn.config import Config, ConfigError, to_dict
    from ptypinn.data import ScanData, calibrate_probe, to_photon_units
    from ptypinn.io import load_config, read_scan, write_scan
    from ptypinn.metrics import evaluate
    from ptypinn.physics import data_nll
    from ptypinn.provenance import run_provenance
    from ptypinn.refinement import RefineResult, refine
    from ptypinn.pinn import TrainingCollapsed, TrainingDiverged
    from ptypinn.pinn.bundle import Bundle, load_bundle, save_bundle
    from ptypinn.pinn.infer import Reconstruction, bundle_mismatch, prepare_scan, reconstruct
    from ptypinn.workflows.outputs import write_outputs
    from ptypinn.workflows.refine import refine_scan
    from ptypinn.pinn.train import TrainResult, check_training, train_model
    from ptypinn.simulate import simulate_scan, simulate_train_test
    from ptypinn.workflows.compare import compare, run_arms
    from ptypinn.workflows.studies import run_study
