"""The physics-informed network: generators (``networks``), models (``models``), training on
Lightning (``train``), bundles (``bundle``) and streaming inference (``infer``).

Importing this package is cheap: Lightning is imported only by :mod:`ptypinn.pinn.train`.
"""


class TrainingDiverged(RuntimeError):
    """The loss became NaN/Inf; the message names the step and the last good checkpoint.

    Defined here, not in :mod:`ptypinn.pinn.train`, so the command line can catch it without
    importing Lightning.
    """


class TrainingCollapsed(RuntimeError):
    """The generator's output collapsed (a flat amplitude unrelated to the physics estimate);
    raised by the validation check of :class:`ptypinn.pinn.train.LitPtycho` with the numbers and
    what to try.  Defined here so that the command line can catch it without Lightning."""


__all__ = ["TrainingDiverged", "TrainingCollapsed"]
