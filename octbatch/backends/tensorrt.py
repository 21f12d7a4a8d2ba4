"""TensorRT backend: build a serialized engine from ONNX, and run one on an NVIDIA GPU.

Written to the TensorRT 10 Python API (trt.Builder / OnnxParser / IBuilderConfig / Runtime /
IExecutionContext with named I/O tensors and ``execute_async_v3``). CUDA memory and streams come
from cuda-python (``cuda.bindings.runtime``, older releases ``cuda.cudart``), the package the
``octbatch[tensorrt]`` extra installs. Everything here is kept thin on purpose: it cannot be run on
machines without TensorRT, so all the logic that can be tested elsewhere (profiles, fingerprints,
calibration feed, guard) lives in ``octbatch.engines``.

INT8: TensorRT 10.1 deprecated implicit quantization (``IInt8EntropyCalibrator2`` +
``BuilderFlag.INT8``) in favour of explicit quantization (Q/DQ nodes in the ONNX graph). octbatch
therefore builds INT8 engines from a Q/DQ ONNX model that it calibrates itself on real scans
(``octbatch.engines`` makes it with ONNX Runtime's static quantizer, symmetric int8 as TensorRT
requires). The entropy calibrator below remains for TensorRT releases before 10.1
(``int8_mode="implicit"``).
"""

from __future__ import annotations

import importlib
import os
from typing import Iterable, Iterator

import numpy as np

from .._deps import require
from ..errors import OctbatchError
from .base import Runner

__all__ = ["TensorRTRunner", "build_serialized_engine", "tensorrt_version", "cuda_facts", "PRECISIONS"]

PRECISIONS = ("fp32", "fp16", "bf16", "int8")


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
    raise OctbatchError("cuda-python is installed but has neither cuda.bindings.runtime nor cuda.cudart", "Install a current release: pip install -U cuda-python.")


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


# --------------------------------------------------------------------------- build

def _make_calibrator(trt, batches: Iterable[np.ndarray], batch_size: int, cache_path: str | None):
    """An IInt8EntropyCalibrator2 fed from host batches (only for TensorRT < 10.1, implicit INT8)."""
    cudart = _cudart()

    class _Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)  # the documented way to subclass
            self._it: Iterator[np.ndarray] = iter(batches)
            self._dev = None

        def get_batch_size(self):
            return batch_size

        def get_batch(self, names):
            try:
                b = np.ascontiguousarray(next(self._it), dtype=np.float32)
            except StopIteration:
                return None
            if self._dev is None:
                self._dev = _check(cudart.cudaMalloc(b.nbytes))
            _check(cudart.cudaMemcpy(self._dev, b.ctypes.data, b.nbytes, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice))
            return [int(self._dev)]

        def read_calibration_cache(self):
            if cache_path and os.path.exists(cache_path):
                with open(cache_path, "rb") as f:
                    return f.read()
            return None

        def write_calibration_cache(self, cache):
            if cache_path:
                with open(cache_path, "wb") as f:
                    f.write(bytes(cache))

    return _Calibrator()


def build_serialized_engine(
    onnx_path: str,
    *,
    precision: str = "fp16",
    batch: tuple[int, int, int] = (1, 64, 256),
    workspace_gb: float = 4.0,
    timing_cache: str | None = None,
    calib_batches: Iterable[np.ndarray] | None = None,
    int8_mode: str = "explicit",
    log=None,
) -> bytes:
    """Parse ``onnx_path`` and return serialized engine bytes with one batch-dimension profile.

    For ``precision="int8"`` with ``int8_mode="explicit"`` the ONNX file must already carry Q/DQ
    nodes (TensorRT 10's explicit quantization); ``"implicit"`` uses the deprecated entropy
    calibrator fed by ``calib_batches``. FP16 is also enabled for int8 so that layers TensorRT keeps
    out of int8 do not fall back to fp32.
    """
    trt = _trt()
    if precision not in PRECISIONS:
        raise OctbatchError(f"unknown precision {precision!r} for TensorRT", f"Use one of {', '.join(PRECISIONS)}.")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # TensorRT 10 networks are always explicit-batch (the EXPLICIT_BATCH flag is deprecated and ignored).
    major = int(trt.__version__.split(".")[0])
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise OctbatchError(f"TensorRT could not parse {onnx_path}: {errors}", "Check the model with polygraphy or re-export it with a supported opset.")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision == "bf16":
        config.set_flag(trt.BuilderFlag.BF16)
    elif precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        config.set_flag(trt.BuilderFlag.FP16)

    # One optimization profile over the batch dimension of the (single) image input.
    inp = network.get_input(0)
    _, c, h, w = tuple(inp.shape)
    lo, opt, hi = batch
    profile = builder.create_optimization_profile()
    profile.set_shape(inp.name, (lo, c, h, w), (opt, c, h, w), (hi, c, h, w))
    config.add_optimization_profile(profile)

    if precision == "int8" and int8_mode == "implicit":
        if calib_batches is None:
            raise OctbatchError("implicit INT8 calibration needs calibration scans", "Pass --calib ARCHIVE.")
        calib_profile = builder.create_optimization_profile()
        calib_profile.set_shape(inp.name, (opt, c, h, w), (opt, c, h, w), (opt, c, h, w))
        config.int8_calibrator = _make_calibrator(trt, calib_batches, opt, None)
        config.set_calibration_profile(calib_profile)

    # A persistent timing cache makes rebuilds (same GPU + TensorRT) take a fraction of the time.
    cache_bytes = b""
    if timing_cache and os.path.exists(timing_cache):
        with open(timing_cache, "rb") as f:
            cache_bytes = f.read()
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)

    if log:
        log(f"TensorRT {trt.__version__}: building {precision} engine, batch profile {lo}:{opt}:{hi} (this can take minutes)")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise OctbatchError(f"TensorRT failed to build an engine from {onnx_path}", "Run again with a larger --workspace, or another --precision; TensorRT's log above says why.")
    if timing_cache:
        data = config.get_timing_cache().serialize()
        tmp = f"{timing_cache}.tmp{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(bytes(memoryview(data)))
        os.replace(tmp, timing_cache)
    return bytes(memoryview(serialized))


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
        self._engine = self._context = self._stream = None
        self._d_in = self._d_out = None

    def _load(self) -> None:
        trt = _trt()
        cudart = self._cudart = _cudart()
        _check(cudart.cudaSetDevice(self.device))
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        with open(self.engine_path, "rb") as f:
            self._engine = self._runtime.deserialize_cuda_engine(f.read())
        if self._engine is None:
            raise OctbatchError(
                f"TensorRT could not load engine {self.engine_path} on this machine",
                "Engines only run on the GPU model and TensorRT version they were built with: rebuild with octbatch build-engine, or run with --rebuild-on-mismatch.",
            )
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise OctbatchError(f"engine has {len(inputs)} inputs and {len(outputs)} outputs", "octbatch runs classifiers with one input and one output.")
        self._in, self._out = inputs[0], outputs[0]
        # (min, opt, max) shapes of profile 0; buffers are sized for max.
        _, _, max_shape = self._engine.get_tensor_profile_shape(self._in, 0)
        self.max_batch = int(max_shape[0])
        self._in_shape = tuple(int(x) for x in max_shape[1:])
        self._classes = int(self._engine.get_tensor_shape(self._out)[-1])
        if self._classes < 0:  # dynamic class dim: fall back to the model's class count
            self._classes = len(self.model.classes)
        in_bytes = self.max_batch * int(np.prod(self._in_shape)) * 4
        self._out_host = np.empty((self.max_batch, self._classes), np.float32)
        self._d_in = _check(cudart.cudaMalloc(in_bytes))
        self._d_out = _check(cudart.cudaMalloc(self._out_host.nbytes))
        self._stream = _check(cudart.cudaStreamCreate())
        self._context.set_tensor_address(self._out, int(self._d_out))

    def _run(self, input_ptr: int, n: int, stream) -> np.ndarray:
        cudart = self._cudart
        self._context.set_input_shape(self._in, (n, *self._in_shape))
        self._context.set_tensor_address(self._in, int(input_ptr))
        if not self._context.execute_async_v3(int(stream)):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        out = self._out_host[:n]
        _check(cudart.cudaMemcpyAsync(out.ctypes.data, self._d_out, out.nbytes, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream))
        _check(cudart.cudaStreamSynchronize(stream))
        return out.copy()

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        cudart = self._cudart
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        parts = []
        for start in range(0, batch.shape[0], self.max_batch):
            chunk = batch[start : start + self.max_batch]
            _check(cudart.cudaMemcpyAsync(self._d_in, chunk.ctypes.data, chunk.nbytes, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self._stream))
            parts.append(self._run(self._d_in, chunk.shape[0], self._stream))
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def infer_device(self, input_ptr: int, n: int, stream: int | None = None) -> np.ndarray:
        """Classify ``n`` images already on the GPU (float32 NCHW, contiguous, at ``input_ptr``):
        the DALI GPU path hands its output over without a host copy; only probabilities come back."""
        if not self._loaded:
            self.load()
        if n > self.max_batch:
            raise ValueError(f"batch of {n} is over the engine's profile maximum {self.max_batch}")
        out = self._run(input_ptr, n, self._stream if stream is None else stream)
        # Same output contract as Runner.infer(): softmax for logits models.
        from .base import _looks_like_probs, softmax

        kind = self.model.output_kind
        return softmax(out) if kind == "logits" or (kind == "auto" and not _looks_like_probs(out)) else out

    def _close(self) -> None:
        cudart = getattr(self, "_cudart", None)
        if cudart is not None:
            for ptr in (self._d_in, self._d_out):
                if ptr is not None:
                    cudart.cudaFree(ptr)
            if self._stream is not None:
                cudart.cudaStreamDestroy(self._stream)
        self._d_in = self._d_out = self._stream = None
        self._context = self._engine = None
