"""torch backend: the ONNX model as a torch module (backends/onnx_torch.py), on CUDA or the CPU.

On the CPU it runs fp32 (the twin CI tests). On CUDA it runs fp16 by default (--precision fp32/bf16
honoured), channels-last, and replays one CUDA graph per batch size used (OCTBATCH_TORCH_CUDA_GRAPHS=0
turns them off; a graph that cannot be captured falls back to eager for that size). At load the
module's outputs are checked against ONNX Runtime on a fixed batch and refused above a tolerance.

`infer_device` takes a model input already on the GPU (a torch tensor from the nvjpeg decoder, or a
device pointer from DALI) without a host copy; only the probabilities come back, through pinned memory.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .._deps import require
from ..errors import OctbatchError
from .base import Runner

__all__ = ["TorchRunner", "LOAD_TOLERANCE", "torch_device"]

# Largest max-abs probability difference vs ONNX Runtime accepted at load, per precision.
LOAD_TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2, "bf16": 6e-2}
_CHECK_BATCH = 8


def torch_device(device: str = "auto") -> str:
    """ "auto" -> "cuda" when torch sees a GPU, else "cpu"; "gpu" means "cuda"."""
    torch = require("torch", purpose="the torch backend")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if device == "gpu" else device


class TorchRunner(Runner):
    name = "torch"

    def __init__(self, model, *, threads: int = 0, precision: str | None = None, device: str = "auto"):
        super().__init__(model, threads=threads)
        self._want_precision = precision
        self._want_device = device
        self.device = "cpu"
        self.precision = precision or "fp32"
        self.load_diff: float | None = None  # max abs probability difference vs ONNX Runtime at load
        self.cuda_graphs = os.environ.get("OCTBATCH_TORCH_CUDA_GRAPHS", "1") != "0"
        self._torch: Any = None
        self._module: Any = None
        self._dtype: Any = None
        self._graphs: dict[int, Any] = {}  # batch size -> (graph, static input, static output) or None
        self._pinned: Any = None

    # -- load ---------------------------------------------------------------------------------
    def _load(self) -> None:
        from .onnx_torch import load_onnx_module

        torch = self._torch = require("torch", purpose="the torch backend")
        self.device = torch_device(self._want_device)
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise OctbatchError(
                "the torch backend was asked for CUDA but torch sees no GPU",
                "Run on a GPU machine with a CUDA build of torch, or use --backend onnxruntime.",
            )
        on_gpu = self.device.startswith("cuda")
        self.precision = self._want_precision or ("fp16" if on_gpu else "fp32")
        if self.precision not in LOAD_TOLERANCE:
            raise OctbatchError(
                f"the torch backend runs fp32, fp16 or bf16, not {self.precision}",
                "Use --precision fp32, fp16 or bf16, or an int8 TensorRT engine.",
            )
        if not on_gpu and self.precision != "fp32":
            raise OctbatchError(
                f"the torch backend runs {self.precision} on CUDA only", "Use fp32 on the CPU (the default there)."
            )
        if self.threads and not on_gpu:
            torch.set_num_threads(int(self.threads))
        self._dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[self.precision]
        module = load_onnx_module(self.model.path).to(self.device, self._dtype)
        if on_gpu:
            module = module.to(memory_format=torch.channels_last)
        self._module = module
        self._check_against_ort()

    def _check_against_ort(self) -> None:
        """Refuse a module whose probabilities differ from ONNX Runtime's above LOAD_TOLERANCE."""
        from .onnxrt import OnnxRuntimeRunner

        spec = self.model.preprocessing
        x = np.random.default_rng(0).normal(size=(_CHECK_BATCH, spec.channels, spec.height, spec.width))
        x = x.astype(np.float32)
        with OnnxRuntimeRunner(self.model, threads=self.threads or 1) as ort:
            ref = ort.infer(x)
        got = self._postprocess(self._forward_host(x), len(x))
        self.load_diff = float(np.abs(got - ref).max())
        tol = LOAD_TOLERANCE[self.precision]
        if not self.load_diff <= tol:
            raise OctbatchError(
                f"the torch backend's {self.precision} outputs differ from ONNX Runtime's by {self.load_diff:.3g} "
                f"(tolerance {tol:g}) on {self.model.path}",
                "Use --backend onnxruntime, or --precision fp32.",
            )

    # -- run ----------------------------------------------------------------------------------
    def _run(self, x):
        """Forward a device tensor already in the module's dtype and memory format."""
        torch = self._torch
        if self.device.startswith("cuda") and self.cuda_graphs:
            g = self._graph(x.shape[0], x)
            if g is not None:
                graph, static_in, static_out = g
                static_in.copy_(x)
                graph.replay()
                return static_out
        with torch.inference_mode():
            return self._module(x)

    def _graph(self, n: int, sample):
        """The CUDA graph for batch size n, captured on first use (None: capture failed, run eager)."""
        if n in self._graphs:
            return self._graphs[n]
        torch = self._torch
        try:
            static_in = torch.empty_like(sample)
            static_in.copy_(sample)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side), torch.inference_mode():
                for _ in range(3):  # warm up (cuDNN picks its algorithms) before capture
                    self._module(static_in)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.inference_mode(), torch.cuda.graph(graph):
                static_out = self._module(static_in)
            self._graphs[n] = (graph, static_in, static_out)
        except Exception:  # noqa: BLE001 - an op that cannot be captured: this size runs eager
            self._graphs[n] = None
        return self._graphs[n]

    def _to_input(self, x):
        torch = self._torch
        x = x.to(self.device, self._dtype, non_blocking=True)
        if self.device.startswith("cuda") and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _to_host(self, y) -> np.ndarray:
        """One copy of the outputs to the host per batch (pinned memory on CUDA)."""
        torch = self._torch
        y = y.float()
        if not self.device.startswith("cuda"):
            return y.numpy().copy()
        if self._pinned is None or self._pinned.shape[0] < y.shape[0] or self._pinned.shape[1:] != y.shape[1:]:
            self._pinned = torch.empty(tuple(y.shape), dtype=torch.float32, pin_memory=True)
        out = self._pinned[: y.shape[0]]
        out.copy_(y, non_blocking=True)
        torch.cuda.current_stream().synchronize()
        return out.numpy().copy()

    def _forward_host(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        return self._to_host(self._run(self._to_input(x)))

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        return self._forward_host(batch)

    def infer_device(self, input_ptr, n: int, stream: int | None = None) -> np.ndarray:
        """Classify `n` images already on the device: a torch tensor (n, C, H, W), or a pointer to a
        dense float32 NCHW block (DALI; host memory when this runner is on the CPU)."""
        if not self._loaded:
            self.load()
        if n < 1:
            return np.empty((0, len(self.model.classes)), np.float32)
        x = input_ptr if hasattr(input_ptr, "shape") else self._wrap(int(input_ptr), n)
        return self._postprocess(self._to_host(self._run(self._to_input(x[:n]))), n)

    def _wrap(self, ptr: int, n: int):
        """A tensor over someone else's memory (no copy): __cuda_array_interface__ on CUDA."""
        torch = self._torch
        spec = self.model.preprocessing
        shape = (n, spec.channels, spec.height, spec.width)
        if self.device.startswith("cuda"):

            class _View:
                __cuda_array_interface__ = {"shape": shape, "typestr": "<f4", "data": (ptr, False), "version": 3}

            return torch.as_tensor(_View(), device=self.device)
        import ctypes

        count = int(np.prod(shape))
        buf = (ctypes.c_float * count).from_address(ptr)
        return torch.from_numpy(np.ctypeslib.as_array(buf).reshape(shape))

    def _close(self) -> None:
        self._graphs.clear()
        self._module = None
        self._pinned = None
