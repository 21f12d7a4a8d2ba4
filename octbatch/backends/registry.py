"""Backend names -> runner classes, imported only when selected."""

from __future__ import annotations

from ..errors import OctbatchError

__all__ = ["BACKENDS", "make_runner"]

BACKENDS = ("onnxruntime", "tensorrt")


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
    raise OctbatchError(f"unknown backend {backend!r}", f"Use one of {', '.join(BACKENDS)}.")
