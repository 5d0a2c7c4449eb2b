"""ptypinn: physics-informed neural network reconstruction for ptychography."""

__version__ = "0.1.0"

__all__ = ["__version__"]
