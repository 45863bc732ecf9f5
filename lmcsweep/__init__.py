"""lmcsweep: linear mode connectivity and lottery-ticket sweeps, tracked in MLflow."""

__version__ = "0.1.0"
