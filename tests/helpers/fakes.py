"""Stand-ins for GPU-only parts, used where a test runs the device code path on the CPU."""

from __future__ import annotations

import ctypes

import numpy as np


class HostPointerRunner:
    """Stands in for TensorRTRunner on a machine without a GPU: `infer_device` reads the model input
    through the raw pointer it is given (host memory on the DALI CPU twin) and runs ONNX Runtime."""

    def __init__(self, inner, spec):
        self.inner, self.spec = inner, spec
        self.name, self.precision = "tensorrt", "fp32"
        self.device_calls = self.host_calls = 0

    def load(self):
        self.inner.load()
        return self

    def infer_device(self, ptr, n, stream):
        self.device_calls += 1
        shape = (n, self.spec.channels, self.spec.height, self.spec.width)
        x = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=shape).copy()
        return self.inner.infer(x)

    def infer(self, x):
        self.host_calls += 1
        return self.inner.infer(x)

    def close(self):
        self.inner.close()
