"""Lazy imports of heavy optional libraries, with an install hint when they are missing.

`import octbatch` and every `--help` must not load tensorrt, nvidia.dali, ray, torch or onnxruntime:
they take seconds to import and several are optional extras.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import OctbatchError

__all__ = ["require", "is_available"]

# module -> (pip extra, what to install by hand, note)
_HINTS: dict[str, tuple[str, str, str]] = {
    "onnxruntime": ("", "pip install onnxruntime", ""),
    "simplejpeg": ("", "pip install simplejpeg", ""),
    "tensorrt": (
        "tensorrt",
        "pip install 'octbatch[tensorrt]'",
        " TensorRT wheels download from NVIDIA's package index (pypi.nvidia.com); it must be reachable, "
        "and the machine needs an NVIDIA GPU and driver",
    ),
    "nvidia.dali": ("dali", "pip install 'octbatch[dali]'", ""),
    "ray": ("cluster", "pip install 'octbatch[cluster]'", ""),
    "obstore": ("s3", "pip install 'octbatch[s3]'", ""),
    "torch": (
        "train",
        "pip install 'octbatch[train]'  (CPU-only: pip install torch --index-url https://download.pytorch.org/whl/cpu)",
        "",
    ),
    "torchvision": (
        "torch",
        "pip install 'octbatch[torch]'  (the torchvision built for your torch; CUDA builds: "
        "--index-url https://download.pytorch.org/whl/cu126, cu128 or cu130)",
        "",
    ),
    "torchvision.io": (
        "torch",
        "pip install 'octbatch[torch]'  (the torchvision built for your torch; CUDA builds: "
        "--index-url https://download.pytorch.org/whl/cu126, cu128 or cu130)",
        "",
    ),
    "onnx": ("train", "pip install onnx", ""),
    "cuda": ("tensorrt", "pip install cuda-python", ""),
    "jinja2": ("report", "pip install 'octbatch[report]'", ""),
    "matplotlib": ("report", "pip install 'octbatch[report]'", ""),
}


def require(module: str, *, purpose: str = "") -> ModuleType:
    """Import ``module`` or raise OctbatchError saying how to install it (the import error is chained)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        _, cmd, note = _HINTS.get(module, ("", f"pip install {module.split('.')[0]}", ""))
        why = f" (needed for {purpose})" if purpose else ""
        raise OctbatchError(
            f"{module} is not installed or failed to import{why}: {exc}",
            f"Install it with: {cmd}.{note}",
        ) from exc


def is_available(module: str) -> bool:
    """True when ``module`` imports; never raises."""
    try:
        importlib.import_module(module)
        return True
    except Exception:  # noqa: BLE001 - a broken install counts as unavailable
        return False
