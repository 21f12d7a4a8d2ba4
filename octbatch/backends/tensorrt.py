"""TensorRT backend: run a serialized engine on an NVIDIA GPU.

Written to the TensorRT 10/11 runtime API (Runtime / ICudaEngine / IExecutionContext with named I/O
tensors and ``execute_async_v3``), which is the same in both: tests check it against the real
Python bindings of 10.0, 10.16 and 11.4 (tests/integration/test_tensorrt_api.py). This is the runner;
building engines (the loader side, as Polygraphy separates them) lives in ``octbatch.engines.build_trt``. CUDA memory and streams come from cuda-python
(``cuda.bindings.runtime``, older releases ``cuda.cudart``), which the ``octbatch[tensorrt]`` extra
installs. Kept thin: the logic that can be tested without a GPU (profiles, fingerprints, calibration
scans, guard) lives in ``octbatch.engines``.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from .._deps import require
from ..errors import OctbatchError
from .base import Runner

__all__ = ["TensorRTRunner", "tensorrt_version", "cuda_facts"]


def _trt():
    return require("tensorrt", purpose="the TensorRT backend")


def _cudart():
    """cuda-python's runtime module; the package moved it to cuda.bindings.runtime in 12.6."""
    require("cuda", purpose="CUDA memory for the TensorRT backend")
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise OctbatchError(
        "cuda-python is installed but has neither cuda.bindings.runtime nor cuda.cudart",
        "Install a current release: pip install -U cuda-python.",
    )


def _check(result):
    """cuda-python returns (err, *values); raise on a non-zero error, else return the values."""
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA runtime call failed: {err}")
    return rest[0] if len(rest) == 1 else (tuple(rest) if rest else None)


def tensorrt_version() -> str | None:
    try:
        return importlib.import_module("tensorrt").__version__
    except Exception:  # noqa: BLE001 - absent or broken: no version
        return None


def cuda_facts(device: int = 0) -> dict:
    """GPU name, compute capability, CUDA runtime and driver versions, via cuda-python."""
    cudart = _cudart()
    props = _check(cudart.cudaGetDeviceProperties(device))
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    rt = _check(cudart.cudaRuntimeGetVersion())
    drv = _check(cudart.cudaDriverGetVersion())
    return {
        "gpu": name.strip("\x00").strip(),
        "compute_capability": f"{props.major}.{props.minor}",
        "cuda_runtime": f"{rt // 1000}.{(rt % 1000) // 10}",
        "cuda_driver_api": f"{drv // 1000}.{(drv % 1000) // 10}",
    }


# --------------------------------------------------------------------------- run


class TensorRTRunner(Runner):
    """Runs a serialized engine. Device buffers are allocated once for the profile's max batch;
    a smaller (last) batch only changes the input shape."""

    name = "tensorrt"

    def __init__(self, model, *, engine_path: str, precision: str | None = None, threads: int = 0, device: int = 0):
        super().__init__(model, threads=threads)
        self.engine_path = str(engine_path)
        self.precision = precision or "fp16"
        self.device = device
        self._cudart: Any = None
        self._engine: Any = None
        self._context: Any = None
        self._stream: Any = None
        self._d_in: Any = None
        self._d_out: Any = None
        self._in = self._out = ""
        self._in_shape: tuple[int, ...] = ()
        self.max_batch = 0
        self._classes = 0
        self._row_bytes = 0
        self._out_host = np.empty((0, 0), np.float32)

    def _load(self) -> None:
        trt = _trt()
        cudart = self._cudart = _cudart()
        _check(cudart.cudaSetDevice(self.device))
        self._engine = self._deserialize(trt)
        self._context = self._engine.create_execution_context()
        self._in, self._out = self._io_names(trt)
        # (min, opt, max) shapes of profile 0; buffers are sized for max.
        _, _, max_shape = self._engine.get_tensor_profile_shape(self._in, 0)
        self.max_batch = int(max_shape[0])
        self._in_shape = tuple(int(x) for x in max_shape[1:])
        self._classes = int(self._engine.get_tensor_shape(self._out)[-1])
        if self._classes < 0:  # dynamic class dim: fall back to the model's class count
            self._classes = len(self.model.classes)
        self._row_bytes = int(np.prod(self._in_shape)) * 4
        self._out_host = np.empty((self.max_batch, self._classes), np.float32)
        self._d_in = _check(cudart.cudaMalloc(self.max_batch * self._row_bytes))
        self._d_out = _check(cudart.cudaMalloc(self._out_host.nbytes))
        self._stream = _check(cudart.cudaStreamCreate())
        self._context.set_tensor_address(self._out, int(self._d_out))

    def _deserialize(self, trt):
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        with open(self.engine_path, "rb") as f:
            engine = self._runtime.deserialize_cuda_engine(f.read())
        if engine is None:
            raise OctbatchError(
                f"TensorRT could not load engine {self.engine_path} on this machine",
                "Engines only run on the GPU model and TensorRT version they were built with: rebuild with octbatch build-engine, or run with --rebuild-on-mismatch.",
            )
        return engine

    def _io_names(self, trt) -> tuple[str, str]:
        """The one float32 input and the one float32 output, or a clear refusal."""
        engine = self._engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise OctbatchError(
                f"engine has {len(inputs)} inputs and {len(outputs)} outputs",
                "octbatch runs classifiers with one input and one output.",
            )
        for name in (inputs[0], outputs[0]):
            dtype = engine.get_tensor_dtype(name)
            if dtype != trt.DataType.FLOAT:
                raise OctbatchError(
                    f"engine tensor {name!r} is {dtype}, octbatch feeds and reads float32",
                    "Build the engine with octbatch build-engine (it keeps inputs and outputs fp32).",
                )
        return inputs[0], outputs[0]

    def _run(self, input_ptr: int, n: int, stream) -> np.ndarray:
        cudart = self._cudart
        if not self._context.set_input_shape(self._in, (n, *self._in_shape)):
            raise RuntimeError(f"TensorRT refused input shape {(n, *self._in_shape)} (outside the engine's profile?)")
        if not self._context.set_tensor_address(self._in, int(input_ptr)):
            raise RuntimeError("TensorRT refused the input address")
        if not self._context.execute_async_v3(int(stream)):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        out = self._out_host[:n]
        _check(
            cudart.cudaMemcpyAsync(
                out.ctypes.data, self._d_out, out.nbytes, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream
            )
        )
        _check(cudart.cudaStreamSynchronize(stream))
        return out.copy()

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        cudart = self._cudart
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        parts = []
        for start in range(0, batch.shape[0], self.max_batch):
            chunk = batch[start : start + self.max_batch]
            _check(
                cudart.cudaMemcpyAsync(
                    self._d_in,
                    chunk.ctypes.data,
                    chunk.nbytes,
                    cudart.cudaMemcpyKind.cudaMemcpyHostToDevice,
                    self._stream,
                )
            )
            parts.append(self._run(self._d_in, chunk.shape[0], self._stream))
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def infer_device(self, input_ptr: int, n: int, stream: int | None = None) -> np.ndarray:
        """Classify ``n`` images already on the GPU (float32 NCHW, contiguous, at ``input_ptr``):
        the DALI GPU path hands its output over without a host copy; only probabilities come back."""
        if not self._loaded:
            self.load()
        if n < 1:
            return np.empty((0, self._classes), np.float32)
        on = self._stream if stream is None else stream
        # Batches over the profile's maximum run in profile-sized slices of the same device buffer.
        parts = [
            self._run(int(input_ptr) + start * self._row_bytes, min(self.max_batch, n - start), on)
            for start in range(0, n, self.max_batch)
        ]
        return self._postprocess(np.concatenate(parts) if len(parts) > 1 else parts[0], n)

    def _close(self) -> None:
        cudart = self._cudart
        if cudart is not None:
            for ptr in (self._d_in, self._d_out):
                if ptr is not None:
                    cudart.cudaFree(ptr)
            if self._stream is not None:
                cudart.cudaStreamDestroy(self._stream)
        self._d_in = self._d_out = self._stream = None
        self._context = self._engine = None
