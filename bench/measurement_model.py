"""The truth's data NLL under the exact sub-pixel measurement model vs bilinear windows.

Run::

    PYTHONPATH=src python bench/measurement_model.py

On the demo's test scan (jittered positions, exact sub-pixel simulation) at 1e4 and 1e6 photons
per pattern, prints the ground truth's excess data NLL per pixel with the measurement model the
data NLL and the refinement use (:func:`ptypinn.physics.scan_intensity`, via
:func:`ptypinn.physics.data_nll`) and with bilinear windows (:func:`ptypinn.physics.extract_patches`),
whose smoothing charges the true object an error that grows with the dose (docs/conventions.md).
"""

from __future__ import annotations

import numpy as np
import torch

from ptypinn import physics
from ptypinn.config import SimulationConfig, from_dict
from ptypinn.simulate import simulate_train_test
from ptypinn.workflows.demo import DEMO_SETTINGS


def main() -> None:
    torch.set_num_threads(1)
    for dose in (1e4, 1e6):
        sim = dict(DEMO_SETTINGS["simulation"], photons_per_pattern=dose)
        _, test = simulate_train_test(from_dict(SimulationConfig, sim))
        exact = float(physics.data_nll(test.object_true, test).mean())
        obj = torch.from_numpy(test.object_true.astype(np.complex64))
        probe = torch.from_numpy(np.asarray(test.probe))
        pos = torch.from_numpy(np.asarray(test.positions_px))
        patches = physics.extract_patches(obj[None], pos[None], test.pattern_size)[0]
        intensity = physics.predicted_intensity(probe, patches)
        counts = torch.from_numpy(np.asarray(test.counts, dtype=np.float32))
        bilinear = float(physics.excess_nll_per_pixel(intensity, counts).mean())
        print(f"{dose:.0e} photons/pattern: truth excess NLL/px exact {exact:.4f}, "
              f"bilinear windows {bilinear:.4f}")


if __name__ == "__main__":
    main()
