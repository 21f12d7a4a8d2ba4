"""ONNX Runtime backend (CPU): the default, and the reference every other backend is compared with."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._deps import require
from .base import Runner

__all__ = ["OnnxRuntimeRunner", "make_session"]


def make_session(path: str, *, threads: int = 0, optimize: bool = True, spinning: bool = False):
    """An ORT CPU session. threads=0 lets ORT pick (one per core).

    spinning=False: ORT's idle intra-op threads would otherwise busy-wait for the next batch and
    steal the cores that decode the next batch meanwhile (measured: BENCHMARKS.md, "ORT spinning")."""
    ort = require("onnxruntime", purpose="the ONNX Runtime backend")
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    so.log_severity_level = 3
    return ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])


class OnnxRuntimeRunner(Runner):
    name = "onnxruntime"

    def __init__(self, model, *, threads: int = 0, path: str | None = None, precision: str | None = None):
        super().__init__(model, threads=threads)
        self.path = path or model.path
        self.precision = precision or model.precision or "fp32"
        self._sess: Any = None
        self._input = self._output = ""

    def _load(self) -> None:
        self._sess = make_session(self.path, threads=self.threads)
        self._input = self._sess.get_inputs()[0].name
        self._output = self._sess.get_outputs()[0].name

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        return self._sess.run([self._output], {self._input: np.ascontiguousarray(batch, dtype=np.float32)})[0]

    def _close(self) -> None:
        self._sess = None
