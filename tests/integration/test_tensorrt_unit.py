"""The TensorRT backend against stand-ins of the TensorRT 10 / 11 and cuda-python APIs.

These fakes check what the real-bindings tests (test_tensorrt_api.py) cannot: the ORDER of calls
(the profile is added before the build, the stream is synchronised before outputs are read) and the
runner's numbers, with "device" memory as host memory and the fake engine running the ONNX model with
ONNX Runtime. They are parametrised over a 10.x-shaped and an 11.x-shaped module (11 has no
BuilderFlag.FP16/BF16/INT8 and no EXPLICIT_BATCH; STRONGLY_TYPED is bit 1 in 10.x, bit 0 in 11.x, as
in the real bindings). What no fake can check is TensorRT itself: see the gpu-marked test.
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
from tests.helpers.trt_fakes import Calls, cuda_modules

FAKE_VERSIONS = ("10.3.0", "11.4.0")


def _fake_trt(calls, onnx_path, max_batch=16, version="10.3.0"):
    """Builder side records calls; runtime side runs ``onnx_path`` with ONNX Runtime. The enums have
    the members the real release has (checked against the real bindings in test_tensorrt_api.py)."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    ten = version.startswith("10.")
    trt.Logger = type("Logger", (), {"WARNING": 2, "ERROR": 1, "__init__": lambda self, sev=2: None})
    trt.BuilderFlag = enum.Enum("BuilderFlag", "FP16 BF16 INT8 TF32" if ten else "TF32 REFIT")
    trt.MemoryPoolType = enum.Enum("MemoryPoolType", "WORKSPACE")
    trt.TensorIOMode = enum.Enum("TensorIOMode", "INPUT OUTPUT")
    trt.DataType = enum.Enum("DataType", "FLOAT HALF")
    trt.NetworkDefinitionCreationFlag = enum.IntEnum(
        "NetworkDefinitionCreationFlag", {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1} if ten else {"STRONGLY_TYPED": 0}
    )

    class Input:
        name, shape = "input", (-1, 1, 32, 32)

    class Network:
        num_inputs = 1

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
        profiles = 0

        def set_memory_pool_limit(self, pool, size):
            calls(("set_memory_pool_limit", pool.name, size))

        def set_flag(self, flag):
            calls(("set_flag", flag.name))

        def add_optimization_profile(self, p):
            calls(("add_optimization_profile",))
            self.profiles += 1
            return self.profiles - 1

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
            return b"PLAN" if config.profiles else None  # TensorRT refuses a dynamic input without a profile

    class Context:
        def __init__(self):
            import onnxruntime as ort

            self.sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
            self.addr, self.shape = {}, None

        def set_input_shape(self, name, shape):
            calls(("set_input_shape", name, tuple(shape)))
            self.shape = tuple(shape)
            return True

        def set_tensor_address(self, name, ptr):
            self.addr[name] = ptr
            return True

        def execute_async_v3(self, stream):
            calls(("execute_async_v3", stream))
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
            return trt.DataType.FLOAT

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


@pytest.fixture(params=FAKE_VERSIONS)
def fakes(request, monkeypatch, tiny_model):
    calls = Calls()
    calls.version = request.param
    trt = _fake_trt(calls, tiny_model, version=request.param)
    for name, mod in {"tensorrt": trt, **cuda_modules(calls)}.items():
        monkeypatch.setitem(sys.modules, name, mod)
    return calls


def test_builder_adds_the_profile_before_building_and_sets_no_precision_flags(fakes, tiny_model, tmp_path):
    from octbatch.engines.build_trt import build_serialized_engine

    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"old")
    plan = build_serialized_engine(
        tiny_model, precision="fp16", batch=(1, 8, 16), workspace_gb=2, timing_cache=str(cache)
    )
    assert plan == b"PLAN"
    strongly_typed = 2 if fakes.version.startswith("10.") else 1  # 1 << STRONGLY_TYPED of that release
    assert ("create_network", strongly_typed) in fakes
    assert ("set_shape", "input", (1, 1, 32, 32), (8, 1, 32, 32), (16, 1, 32, 32)) in fakes
    assert ("set_memory_pool_limit", "WORKSPACE", 2 << 30) in fakes
    assert not [c for c in fakes if c[0] == "set_flag"]  # strongly typed: the precision is in the graph
    assert ("create_timing_cache", b"old") in fakes and cache.read_bytes() == b"old+tuned"
    order = [c[0] for c in fakes if c[0] in ("set_shape", "add_optimization_profile", "build_serialized_network")]
    assert order == ["set_shape", "add_optimization_profile", "build_serialized_network"]


def test_builder_without_strong_typing_falls_back_to_the_flags_that_exist(fakes, tiny_model, monkeypatch):
    """Feature detection, not version strings: a TensorRT lacking STRONGLY_TYPED gets the builder
    flags if it has them, and a clear error if it has neither."""
    from octbatch.engines.build_trt import build_serialized_engine
    from octbatch.errors import OctbatchError

    trt = sys.modules["tensorrt"]
    monkeypatch.setattr(
        trt, "NetworkDefinitionCreationFlag", enum.IntEnum("NetworkDefinitionCreationFlag", {"EXPLICIT_BATCH": 0})
    )
    if fakes.version.startswith("10."):
        build_serialized_engine(tiny_model, precision="int8", batch=(1, 8, 16))
        assert ("create_network", 0) in fakes and {c[1] for c in fakes if c[0] == "set_flag"} == {"INT8", "FP16"}
    else:
        with pytest.raises(OctbatchError, match="neither strongly typed networks nor BuilderFlag.FP16"):
            build_serialized_engine(tiny_model, precision="fp16", batch=(1, 8, 16))


def test_runner_matches_onnxruntime_with_partial_and_oversized_batches(fakes, tiny_model, tmp_path):
    from octbatch.backends import make_runner
    from octbatch.model import load_model_info

    plan = tmp_path / "t.engine"
    plan.write_bytes(b"PLAN")
    info = load_model_info(tiny_model)
    x = np.random.default_rng(0).normal(0, 1, (21, 1, 32, 32)).astype(np.float32)  # 16 + a partial 5
    with (
        make_runner("onnxruntime", info) as ref,
        make_runner("tensorrt", info, engine_path=str(plan), precision="fp16") as r,
    ):
        assert r.name == "tensorrt" and r.precision == "fp16" and r.max_batch == 16
        fakes.clear()
        want, got = ref.infer(x), r.infer(x)
        assert got.shape == (21, 4) and np.allclose(want, got, atol=1e-5)
        assert [c[2][0] for c in fakes if c[0] == "set_input_shape"] == [16, 5]
        # Outputs are read only after the device->host copy was synchronised on the stream.
        seq = [
            c[0]
            for c in fakes
            if c[0] in ("execute_async_v3", "cudaStreamSynchronize") or c[:2] == ("cudaMemcpyAsync", 2)
        ]
        assert seq == ["execute_async_v3", "cudaMemcpyAsync", "cudaStreamSynchronize"] * 2
        # Input already on the "GPU": only the probabilities travel back, in profile-sized slices.
        dev = x.copy()
        fakes.clear()
        p = r.infer_device(dev.ctypes.data, 21)
        assert p.shape == (21, 4) and np.allclose(p, want, atol=1e-5)
        assert not any(c[:2] == ("cudaMemcpyAsync", 1) for c in fakes)  # no host->device copy
        assert [c[2][0] for c in fakes if c[0] == "set_input_shape"] == [16, 5]
        assert r.infer_device(dev.ctypes.data, 0).shape == (0, 4)
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
    res = engines.build_engine(
        tiny_model, backend="auto", precision="fp16", batch="1:8:16", out=str(tmp_path / "t.engine"), log=msgs.append
    )
    assert any("picked tensorrt" in m and "Fake GPU 9000" in m for m in msgs)
    fp = json.loads((tmp_path / "t.engine.fingerprint.json").read_text())
    assert fp["machine"]["gpu"] == "Fake GPU 9000" and fp["machine"]["compute_capability"] == "9.0"
    assert (
        fp["machine"]["tensorrt"] == fakes.version
        and fp["machine"]["cuda_runtime"] == "12.6"
        and fp["batch_profile"] == [1, 8, 16]
    )
    assert fp["options"]["typing"] == "strong"
    assert (
        tmp_path / "cache" / f"timing-Fake_GPU_9000-{fakes.version}.cache"
    ).exists()  # default timing cache lives in the engine cache
    r = engines.resolve_engine_for_run(res.out, backend="auto", rebuild=False, model=None)
    assert r.backend == "tensorrt" and r.precision == "fp16" and r.model_path == tiny_model
    # Another TensorRT version on "this machine": refused, naming both.
    monkeypatch.setattr(sys.modules["tensorrt"], "__version__", "10.7.0")
    from octbatch.errors import OctbatchError

    with pytest.raises(
        OctbatchError,
        match=rf"built for GPU 'Fake GPU 9000' \(sm_90\) with TensorRT {fakes.version}; this machine has .* TensorRT 10.7.0",
    ):
        engines.resolve_engine_for_run(res.out, backend="auto", rebuild=False, model=None)
    r = engines.resolve_engine_for_run(res.out, backend="auto", rebuild=True, model=None, log=msgs.append)
    assert json.loads((tmp_path / "t.engine.fingerprint.json").read_text())["machine"]["tensorrt"] == "10.7.0"
