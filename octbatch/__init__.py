"""octbatch: batch classification of retinal OCT scan archives into one Parquet table.

`import octbatch` is light: the heavy libraries (onnxruntime, TensorRT, DALI, Ray, torch) load
only when the stage that needs them runs. The public names load on first use.
"""

from __future__ import annotations

from ._version import __version__

__all__ = ["__version__", "run", "merge", "RunConfig", "RunSummary", "ExitCode", "OctbatchError"]


def __getattr__(name: str):
    if name in ("run", "merge"):
        from . import pipeline

        return getattr(pipeline, name)
    if name == "RunConfig":
        from .config import RunConfig

        return RunConfig
    if name == "RunSummary":
        from .summary import RunSummary

        return RunSummary
    if name in ("OctbatchError", "ExitCode"):
        from . import errors

        return getattr(errors, name)
    raise AttributeError(name)
