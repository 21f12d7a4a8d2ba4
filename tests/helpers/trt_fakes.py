"""A stand-in for cuda-python's runtime module ("device" memory is host memory), shared by the
fake-module TensorRT tests and the real-bindings subprocess (tests/helpers/trt_api_check.py)."""

from __future__ import annotations

import ctypes
import enum
import sys
import types

import numpy as np


class Calls(list):
    """A call log that is also the recorder: calls(("name", ...))."""

    def __call__(self, item):
        self.append(item)


def fake_cudart(calls):
    rt = types.ModuleType("cuda.bindings.runtime")
    buffers = {}

    class Kind(enum.IntEnum):
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    class Props:
        name, major, minor = b"Fake GPU 9000", 9, 0

    def malloc(n):
        buf = np.zeros(n, np.uint8)
        buffers[buf.ctypes.data] = buf
        calls(("cudaMalloc", n))
        return (0, buf.ctypes.data)

    def memcpy_async(dst, src, n, kind, stream):
        calls(("cudaMemcpyAsync", int(kind), n))
        ctypes.memmove(int(dst), int(src), n)
        return (0,)

    rt.cudaMemcpyKind = Kind
    rt.cudaMalloc = malloc
    rt.cudaFree = lambda p: (calls(("cudaFree",)), buffers.pop(p, None), (0,))[-1]
    rt.cudaMemcpyAsync = memcpy_async
    rt.cudaMemcpy = lambda d, s, n, k: memcpy_async(d, s, n, k, 0)
    rt.cudaStreamCreate = lambda: (0, 7)
    rt.cudaStreamDestroy = lambda s: (0,)
    rt.cudaStreamSynchronize = lambda s: (calls(("cudaStreamSynchronize", s)), (0,))[-1]
    rt.cudaSetDevice = lambda d: (0,)
    rt.cudaGetDeviceProperties = lambda d: (0, Props())
    rt.cudaRuntimeGetVersion = lambda: (0, 12060)
    rt.cudaDriverGetVersion = lambda: (0, 12080)
    return rt


def cuda_modules(calls) -> dict:
    """sys.modules entries that make ``cuda.bindings.runtime`` the fake."""
    cuda = types.ModuleType("cuda")
    bindings = types.ModuleType("cuda.bindings")
    rt = fake_cudart(calls)
    cuda.bindings, bindings.runtime = bindings, rt
    return {"cuda": cuda, "cuda.bindings": bindings, "cuda.bindings.runtime": rt}


def install_cuda(calls) -> None:
    sys.modules.update(cuda_modules(calls))


def host_array(ptr: int, shape) -> np.ndarray:
    """A float32 view of fake "device" memory at ``ptr``."""
    n = int(np.prod(shape))
    return np.ctypeslib.as_array((ctypes.c_float * n).from_address(int(ptr))).reshape(shape)
