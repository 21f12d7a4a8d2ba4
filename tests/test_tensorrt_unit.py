"""The TensorRT backend against a stand-in of the TensorRT 10 / cuda-python APIs.

TensorRT cannot be installed here, so these tests install small fakes of exactly the calls the
backend makes (as documented for TensorRT 10: Builder, OnnxParser, IBuilderConfig, optimization
profiles, timing cache, Runtime, named I/O tensors, execute_async_v3; cuda-python's cudaMalloc /
cudaMemcpyAsync / streams). "Device" memory is host memory here, and the fake engine runs the ONNX
model with ONNX Runtime, so the runner's buffer, shape and partial-batch logic is checked against
real numbers. What the fakes cannot check is TensorRT itself: see the gpu-marked test.
"""

from __future__ import annotations

import ctypes
import enum
import json
import sys
import types

import numpy as np
import pytest

from octbatch import engines


class _Rec(list):
    def __call__(self, item):
        self.append(item)


def _fake_cudart(calls):
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


def _fake_trt(calls, onnx_path, max_batch=16):
    """Builder side records calls; runtime side runs ``onnx_path`` with ONNX Runtime."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.3.0"
    trt.Logger = type("Logger", (), {"WARNING": 2, "ERROR": 1, "__init__": lambda self, sev=2: None})
    trt.BuilderFlag = enum.Enum("BuilderFlag", "FP16 BF16 INT8")
    trt.MemoryPoolType = enum.Enum("MemoryPoolType", "WORKSPACE")
    trt.TensorIOMode = enum.Enum("TensorIOMode", "INPUT OUTPUT")
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", {"EXPLICIT_BATCH": 0})

    class Input:
        name, shape = "input", (-1, 1, 32, 32)

    class Network:
        def get_input(self, i):
            return Input()

    class Parser:
        def __init__(self, network, logger):
            self.num_errors = 0

        def parse_from_file(self, path):
            calls(("parse_from_file", str(path)))
            return True

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            calls(("set_shape", name, lo, opt, hi))

    class Cache:
        def __init__(self, data):
            self.data = bytes(data) + b"+tuned"

        def serialize(self):
            return self.data

    class Config:
        def set_memory_pool_limit(self, pool, size):
            calls(("set_memory_pool_limit", pool.name, size))

        def set_flag(self, flag):
            calls(("set_flag", flag.name))

        def add_optimization_profile(self, p):
            calls(("add_optimization_profile",))

        def create_timing_cache(self, data):
            calls(("create_timing_cache", bytes(data)))
            return Cache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache

        def get_timing_cache(self):
            return self.cache

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            calls(("create_network", flags))
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            calls(("build_serialized_network",))
            return b"PLAN"

    class Context:
        def __init__(self):
            import onnxruntime as ort

            self.sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
            self.addr, self.shape = {}, None

        def set_input_shape(self, name, shape):
            calls(("set_input_shape", name, tuple(shape)))
            self.shape = tuple(shape)

        def set_tensor_address(self, name, ptr):
            self.addr[name] = ptr

        def execute_async_v3(self, stream):
            n = int(np.prod(self.shape))
            x = np.ctypeslib.as_array((ctypes.c_float * n).from_address(self.addr["input"])).reshape(self.shape).copy()
            y = self.sess.run(None, {"input": x})[0].astype(np.float32)
            ctypes.memmove(self.addr["logits"], y.ctypes.data, y.nbytes)
            return True

    class Engine:
        num_io_tensors = 2

        def get_tensor_name(self, i):
            return ("input", "logits")[i]

        def get_tensor_mode(self, name):
            return trt.TensorIOMode.INPUT if name == "input" else trt.TensorIOMode.OUTPUT

        def get_tensor_shape(self, name):
            return (-1, 1, 32, 32) if name == "input" else (-1, 4)

        def get_tensor_dtype(self, name):
            return "FLOAT"

        def get_tensor_profile_shape(self, name, profile):
            return (1, 1, 32, 32), (8, 1, 32, 32), (max_batch, 1, 32, 32)

        def create_execution_context(self):
            return Context()

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            calls(("deserialize_cuda_engine", bytes(data)))
            return Engine() if bytes(data) == b"PLAN" else None

    trt.Builder, trt.OnnxParser, trt.Runtime = Builder, Parser, Runtime
    return trt


@pytest.fixture
def fakes(monkeypatch, tiny_model):
    calls = _Rec()
    cuda = types.ModuleType("cuda")
    bindings = types.ModuleType("cuda.bindings")
    rt = _fake_cudart(calls)
    cuda.bindings, bindings.runtime = bindings, rt
    trt = _fake_trt(calls, tiny_model)
    for name, mod in (("tensorrt", trt), ("cuda", cuda), ("cuda.bindings", bindings), ("cuda.bindings.runtime", rt)):
        monkeypatch.setitem(sys.modules, name, mod)
    return calls


def test_builder_uses_one_batch_profile_precision_flags_and_a_timing_cache(fakes, tiny_model, tmp_path):
    from octbatch.backends.tensorrt import build_serialized_engine

    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"old")
    plan = build_serialized_engine(tiny_model, precision="fp16", batch=(1, 8, 16), workspace_gb=2, timing_cache=str(cache))
    assert plan == b"PLAN"
    assert ("create_network", 0) in fakes  # TensorRT 10: explicit batch is the only mode, flags 0
    assert ("set_shape", "input", (1, 1, 32, 32), (8, 1, 32, 32), (16, 1, 32, 32)) in fakes
    assert ("set_memory_pool_limit", "WORKSPACE", 2 << 30) in fakes
    assert [c for c in fakes if c[0] == "set_flag"] == [("set_flag", "FP16")]
    assert ("create_timing_cache", b"old") in fakes and cache.read_bytes() == b"old+tuned"

    fakes.clear()
    build_serialized_engine(tiny_model, precision="int8", batch=(1, 8, 16))
    assert {c[1] for c in fakes if c[0] == "set_flag"} == {"INT8", "FP16"}


def test_runner_matches_onnxruntime_with_partial_and_oversized_batches(fakes, tiny_model, tmp_path):
    from octbatch.backends import make_runner
    from octbatch.model import load_model_info

    plan = tmp_path / "t.engine"
    plan.write_bytes(b"PLAN")
    info = load_model_info(tiny_model)
    x = np.random.default_rng(0).normal(0, 1, (21, 1, 32, 32)).astype(np.float32)  # 16 + a partial 5
    with make_runner("onnxruntime", info) as ref, make_runner("tensorrt", info, engine_path=str(plan), precision="fp16") as r:
        assert r.name == "tensorrt" and r.precision == "fp16" and r.max_batch == 16
        want, got = ref.infer(x), r.infer(x)
        assert got.shape == (21, 4) and np.allclose(want, got, atol=1e-5)
        assert [c[2][0] for c in fakes if c[0] == "set_input_shape"] == [16, 5]
        # Input already on the "GPU": only the probabilities travel back.
        dev = x[:3].copy()
        fakes.clear()
        p = r.infer_device(dev.ctypes.data, 3)
        assert np.allclose(p, want[:3], atol=1e-5)
        assert not any(c[0] == "cudaMemcpyAsync" and c[1] == 1 for c in fakes)  # no host->device copy
        with pytest.raises(ValueError, match="profile maximum"):
            r.infer_device(dev.ctypes.data, 17)
    assert any(c[0] == "cudaFree" for c in fakes)


def test_an_incompatible_plan_is_a_user_error(fakes, tiny_model, tmp_path):
    from octbatch.backends.tensorrt import TensorRTRunner
    from octbatch.errors import OctbatchError
    from octbatch.model import load_model_info

    plan = tmp_path / "other.engine"
    plan.write_bytes(b"built elsewhere")
    with pytest.raises(OctbatchError, match="could not load engine"):
        TensorRTRunner(load_model_info(tiny_model), engine_path=str(plan)).load()


def test_build_engine_fingerprints_the_gpu_and_resolves_for_run(fakes, tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("OCTBATCH_ENGINE_CACHE", str(tmp_path / "cache"))
    msgs = []
    res = engines.build_engine(tiny_model, backend="auto", precision="fp16", batch="1:8:16", out=str(tmp_path / "t.engine"), log=msgs.append)
    assert any("picked tensorrt" in m and "Fake GPU 9000" in m for m in msgs)
    fp = json.loads((tmp_path / "t.engine.fingerprint.json").read_text())
    assert fp["machine"]["gpu"] == "Fake GPU 9000" and fp["machine"]["compute_capability"] == "9.0"
    assert fp["machine"]["tensorrt"] == "10.3.0" and fp["machine"]["cuda_runtime"] == "12.6" and fp["batch_profile"] == [1, 8, 16]
    assert (tmp_path / "cache" / "timing-Fake_GPU_9000-10.3.0.cache").exists()  # default timing cache lives in the engine cache
    r = engines.resolve_engine_for_run(res.out, backend="auto", rebuild=False, model=None)
    assert r.backend == "tensorrt" and r.precision == "fp16" and r.model_path == tiny_model
    # Another TensorRT version on "this machine": refused, naming both.
    monkeypatch.setattr(sys.modules["tensorrt"], "__version__", "10.7.0")
    from octbatch.errors import OctbatchError

    with pytest.raises(OctbatchError, match=r"built for GPU 'Fake GPU 9000' \(sm_90\) with TensorRT 10.3.0; this machine has .* TensorRT 10.7.0"):
        engines.resolve_engine_for_run(res.out, backend="auto", rebuild=False, model=None)
    r = engines.resolve_engine_for_run(res.out, backend="auto", rebuild=True, model=None, log=msgs.append)
    assert json.loads((tmp_path / "t.engine.fingerprint.json").read_text())["machine"]["tensorrt"] == "10.7.0"
