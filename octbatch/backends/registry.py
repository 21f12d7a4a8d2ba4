"""The one registry of backend and precision names, and backend names -> runner classes (imported only when selected).

``BACKENDS``/``PRECISIONS`` are what an engine can be; the ``*_CHOICES`` add what a user may ask
for: ``auto`` (pick the backend for this machine) and ``best`` (the fastest precision that passes the
accuracy guard).
"""

from __future__ import annotations

from ..errors import OctbatchError

__all__ = [
    "BACKENDS",
    "BACKEND_CHOICES",
    "RUNNERS",
    "RUNNER_CHOICES",
    "PRECISIONS",
    "PRECISION_CHOICES",
    "make_runner",
]

BACKENDS = ("onnxruntime", "tensorrt")
BACKEND_CHOICES = ("auto", *BACKENDS)
RUNNERS = (*BACKENDS, "torch")
RUNNER_CHOICES = ("auto", *RUNNERS)
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
PRECISION_CHOICES = (*PRECISIONS, "best")


def make_runner(backend: str, model, *, threads: int = 0, engine_path: str | None = None, precision: str | None = None):
    if backend == "onnxruntime":
        from .onnxrt import OnnxRuntimeRunner

        return OnnxRuntimeRunner(model, threads=threads, path=engine_path, precision=precision)
    if backend == "tensorrt":
        from .tensorrt import TensorRTRunner

        if engine_path is None:
            raise OctbatchError(
                "the tensorrt backend runs a built engine",
                "Build one with octbatch build-engine MODEL.onnx --backend tensorrt, then pass --engine PATH.",
            )
        return TensorRTRunner(model, engine_path=engine_path, precision=precision)
    if backend == "torch":
        from .torch_backend import TorchRunner

        return TorchRunner(model, threads=threads, precision=precision)
    raise OctbatchError(f"unknown backend {backend!r}", f"Use one of {', '.join(RUNNERS)}.")
