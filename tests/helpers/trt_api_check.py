"""octbatch's TensorRT builder and runner against the REAL tensorrt Python bindings, without a GPU.

Run in a subprocess per TensorRT version (two versions cannot share a process) by
tests/integration/test_tensorrt_api.py, with ``tensorrt_bindings`` (the ``tensorrt-cu12-bindings`` wheel) on
PYTHONPATH and a gcc-built stub of the libnvinfer*/libnvonnxparser symbols it links on
LD_LIBRARY_PATH (tests/helpers/trt_real.py). Prints one JSON object: scenario -> result.

    python tests/helpers/trt_api_check.py MODEL.onnx ARCHIVE WORKDIR

Builder, OnnxParser, Runtime and the objects they return are ``unittest.mock.create_autospec``
mocks of the real classes with ``spec_set``: reading or setting an attribute the real class lacks
raises. pybind11 methods have no introspectable signature, so every method mock also checks its
call against the overloads in the method's own pybind11 docstring (parameter names, count and simple
types): a wrong argument name or type raises TypeError as the real binding would. On top of the
API, a small model of what real TensorRT refuses (a dynamic input without an optimization profile,
precision builder flags on a strongly typed network) makes build_serialized_network return None as
TensorRT does. What this cannot show: kernels, accuracy, speed, and anything the GPU decides.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import sys
import traceback
from unittest import mock

import numpy as np
import tensorrt_bindings

# The tensorrt-cu12 wheel's ``tensorrt`` package is ``from tensorrt_bindings import *`` (+ __version__).
sys.modules["tensorrt"] = tensorrt_bindings
trt = tensorrt_bindings
CLASSES = {n: getattr(trt, n) for n in dir(trt) if isinstance(getattr(trt, n), type)}
PRECISION_FLAGS = ("FP16", "BF16", "INT8", "FP8", "INT4", "FP4")

# ---------------------------------------------------------------------------------- strict mocks
_HEAD = re.compile(r"^\s*(?:\d+\.\s+)?(?P<name>\w+)\((?P<params>.*)\)\s*->\s*(?P<ret>.+?)\s*$")


def _split(params: str) -> list[str]:
    out, depth, cur = [], 0, ""
    for ch in params:
        if ch in "[(<":
            depth += 1
        elif ch in "])>":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur.strip())
    return out


def overloads(func, name: str) -> list[list[tuple[str, str, bool]]]:
    """[(param, annotation, has_default), ...] per overload, from a pybind11 docstring (self dropped)."""
    sigs = []
    for line in (getattr(func, "__doc__", None) or "").splitlines():
        m = _HEAD.match(line)
        if not m or m.group("name") != name:
            continue
        parts = _split(m.group("params"))
        if any(p.startswith("*") for p in parts):
            continue
        params = []
        for p in parts[1:]:
            head, _, default = p.partition(" = ")
            pname, _, ann = head.partition(": ")
            params.append((pname.strip(), ann.strip(), bool(default)))
        sigs.append(params)
    return sigs


def _ok(value, ann: str) -> bool:
    a = ann.replace("typing.", "")
    if a == "str":
        return isinstance(value, str)
    if a in ("int", "SupportsInt"):
        return not isinstance(value, float) and (isinstance(value, int) or hasattr(type(value), "__index__"))
    if a == "bool":
        return isinstance(value, (bool, np.bool_))
    if a in ("float", "SupportsFloat"):
        return isinstance(value, (int, float))
    if a == "buffer" or a.endswith("Buffer"):
        try:
            memoryview(value)
            return True
        except TypeError:
            return False
    if a == "tuple":
        return isinstance(value, tuple)
    if a == "list" or a.startswith(("List[", "list[")):
        return isinstance(value, list)
    if a.startswith("tensorrt_bindings.tensorrt."):
        cls = CLASSES.get(a.rsplit(".", 1)[1])
        if cls is None:
            return True
        if cls is trt.Dims:
            return isinstance(value, trt.Dims) or (
                isinstance(value, (tuple, list)) and all(isinstance(v, int) for v in value)
            )
        return isinstance(value, cls)
    return True  # annotations we do not model (capsule, object, ...)


def _checker(qual: str, sigs):
    P = inspect.Parameter

    def side(*args, **kwargs):
        for params in sigs:
            sig = inspect.Signature(
                [P(n, P.POSITIONAL_OR_KEYWORD, default=None if d else P.empty) for n, _, d in params]
            )
            try:
                bound = sig.bind(*args, **kwargs)
            except TypeError:
                continue
            if all(_ok(bound.arguments[n], ann) for n, ann, _ in params if n in bound.arguments):
                return mock.DEFAULT
        shown = [", ".join(f"{n}: {a}" for n, a, _ in p) for p in sigs]
        raise TypeError(
            f"{qual}(): incompatible function arguments. Supported: {shown}; invoked with {args!r} {kwargs!r}"
        )

    return side


def strict(cls_name: str, **props):
    """An autospec (spec_set) instance of the real class whose methods check their arguments."""
    cls = CLASSES[cls_name]
    m = mock.create_autospec(cls, instance=True, spec_set=True)
    for name in dir(cls):
        if name.startswith("_") or type(inspect.getattr_static(cls, name, None)).__name__ != "instancemethod":
            continue
        sigs = overloads(getattr(cls, name), name)
        if sigs:
            getattr(m, name).side_effect = _checker(f"{cls_name}.{name}", sigs)
    for k, v in props.items():
        setattr(m, k, v)
    return m


def behave(m, name: str, fn) -> None:
    """Keep the argument check of ``m.name`` and make it return ``fn(*args, **kwargs)``."""
    check = getattr(m, name).side_effect

    def side(*args, **kwargs):
        if check is not None:
            check(*args, **kwargs)
        return fn(*args, **kwargs)

    getattr(m, name).side_effect = side


def constructor(cls_name: str, make):
    """Stands in for ``trt.<cls_name>(...)``: checks the real __init__ overloads, returns make()."""
    check = _checker(f"{cls_name}.__init__", overloads(CLASSES[cls_name].__init__, "__init__"))

    def ctor(*args, **kwargs):
        check(*args, **kwargs)
        return make()

    return ctor


# ------------------------------------------------------------------------------ TensorRT model
class FakeBuild:
    """Builder + network + parser + config mocks, and what real TensorRT refuses at build time."""

    def __init__(self, input_shape=(-1, 1, 32, 32), drop_profiles=False):
        self.errors: list[str] = []
        self.flags_given = None
        self.set_flags: list[str] = []
        self.profiles: list = []
        self.added: list = []
        self.shapes: dict = {}
        tensor = strict("ITensor", name="input", shape=input_shape)
        self.network = strict("INetworkDefinition", num_inputs=1, num_outputs=1)
        behave(self.network, "get_input", lambda i: tensor)
        self.parser = strict("OnnxParser", num_errors=0)
        behave(self.parser, "parse_from_file", lambda path: os.path.exists(path))
        self.cache = strict("ITimingCache")
        behave(self.cache, "serialize", lambda: b"timing-cache")
        self.config = strict("IBuilderConfig")
        behave(self.config, "set_flag", lambda f: self.set_flags.append(f.name))
        behave(
            self.config,
            "add_optimization_profile",
            (lambda p: 0) if drop_profiles else (lambda p: (self.added.append(p), len(self.added) - 1)[1]),
        )
        behave(self.config, "create_timing_cache", lambda data: self.cache)
        behave(self.config, "set_timing_cache", lambda cache, ignore_mismatch: True)
        behave(self.config, "get_timing_cache", lambda: self.cache)
        behave(self.config, "set_memory_pool_limit", lambda pool, size: None)
        self.builder = strict("Builder")
        behave(self.builder, "create_network", self._create_network)
        behave(self.builder, "create_builder_config", lambda: self.config)
        behave(self.builder, "create_optimization_profile", self._profile)
        behave(self.builder, "build_serialized_network", self._build)
        self.input_shape = tuple(input_shape)

    def _create_network(self, flags=0):
        self.flags_given = int(flags)
        return self.network

    def _profile(self):
        p = strict("IOptimizationProfile")
        self.profiles.append(p)
        behave(
            p,
            "set_shape",
            lambda input, min, opt, max: self.shapes.setdefault(id(p), {}).update(
                {input: (tuple(min), tuple(opt), tuple(max))}
            ),
        )
        return p

    def _build(self, network, config):
        strong = hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED") and bool(
            self.flags_given & (1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
        )
        if network is not self.network or config is not self.config:
            self.errors.append("network/config not made by this builder")
        if strong and any(f in PRECISION_FLAGS for f in self.set_flags):
            self.errors.append(f"precision builder flags {self.set_flags} on a strongly typed network")
        if -1 in self.input_shape:
            covered = [self.shapes.get(id(p), {}).get("input") for p in self.added]
            covered = [c for c in covered if c]
            if not covered:
                self.errors.append("network has dynamic inputs but no optimization profile has been defined")
            for lo, opt, hi in covered:
                static_ok = all(d == -1 or d == a == b == c for d, a, b, c in zip(self.input_shape, lo, opt, hi))
                if (
                    not static_ok
                    or not all(a <= b <= c for a, b, c in zip(lo, opt, hi))
                    or len(lo) != len(self.input_shape)
                ):
                    self.errors.append(f"profile {lo}/{opt}/{hi} does not fit input {self.input_shape}")
        return None if self.errors else b"PLAN:" + trt.__version__.encode()

    def install(self):
        trt.Builder = constructor("Builder", lambda: self.builder)
        trt.OnnxParser = constructor("OnnxParser", lambda: self.parser)


class FakeRun:
    """Runtime/engine/context mocks; the context runs ``model`` with ONNX Runtime on fake device memory."""

    def __init__(self, model: str, max_batch=16, dtype=None):
        import onnxruntime as ort

        from tests.helpers.trt_fakes import host_array

        self.sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        self.addr: dict = {}
        self.shape = None
        self.shapes: list = []
        self.in_addrs: list = []
        names = ("input", "logits")
        self.engine = strict("ICudaEngine", num_io_tensors=2)
        behave(self.engine, "get_tensor_name", lambda i: names[i])
        behave(
            self.engine,
            "get_tensor_mode",
            lambda n: trt.TensorIOMode.INPUT if n == "input" else trt.TensorIOMode.OUTPUT,
        )
        behave(self.engine, "get_tensor_dtype", lambda n: dtype or trt.DataType.FLOAT)
        behave(self.engine, "get_tensor_shape", lambda n: trt.Dims([-1, 1, 32, 32] if n == "input" else [-1, 4]))
        behave(
            self.engine,
            "get_tensor_profile_shape",
            lambda n, i: [trt.Dims([1, 1, 32, 32]), trt.Dims([8, 1, 32, 32]), trt.Dims([max_batch, 1, 32, 32])],
        )
        self.context = strict("IExecutionContext")
        behave(self.engine, "create_execution_context", lambda *a, **k: self.context)

        def set_shape(name, shape):
            self.shape = tuple(shape)
            self.shapes.append(self.shape)
            return True

        def set_addr(name, memory):
            self.addr[name] = memory
            if name == "input":
                self.in_addrs.append(memory)
            return True

        def execute(stream_handle):
            x = host_array(self.addr["input"], self.shape).copy()
            y = self.sess.run(None, {"input": x})[0].astype(np.float32)
            host_array(self.addr["logits"], y.shape)[...] = y
            return True

        behave(self.context, "set_input_shape", set_shape)
        behave(self.context, "set_tensor_address", set_addr)
        behave(self.context, "execute_async_v3", execute)
        self.runtime = strict("Runtime")
        behave(
            self.runtime,
            "deserialize_cuda_engine",
            lambda data: self.engine if bytes(data).startswith(b"PLAN") else None,
        )

    def install(self):
        trt.Runtime = constructor("Runtime", lambda: self.runtime)


# --------------------------------------------------------------------------------- scenarios
def _run(fn):
    try:
        return {"ok": True, **(fn() or {})}
    except Exception as exc:  # noqa: BLE001 - reported to the test
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc(limit=6)[-1500:]}


def scenario_build(model: str, work: str, precision: str, **fake_kw) -> dict:
    from octbatch.engines.build_trt import build_serialized_engine, network_flags

    fb = FakeBuild(**fake_kw)
    fb.install()
    cache = os.path.join(work, f"timing-{precision}.cache")
    result = {"expected_flags": network_flags(trt)}

    def go():
        plan = build_serialized_engine(model, precision=precision, batch=(1, 8, 16), workspace_gb=1, timing_cache=cache)
        return {"plan": plan.decode()}

    result.update(_run(go))
    result.update(
        flags=fb.flags_given,
        set_flags=fb.set_flags,
        trt_errors=fb.errors,
        profiles=[fb.shapes.get(id(p)) for p in fb.added],
        timing_cache=open(cache, "rb").read().decode() if os.path.exists(cache) else None,
    )
    return result


def scenario_runtime(model: str, work: str, dtype=None) -> dict:
    from octbatch.backends import make_runner
    from octbatch.model import load_model_info
    from tests.helpers.trt_fakes import Calls, install_cuda

    calls = Calls()
    install_cuda(calls)
    fr = FakeRun(model, max_batch=16, dtype=dtype)
    fr.install()
    plan = os.path.join(work, "t.engine")
    with open(plan, "wb") as f:
        f.write(b"PLAN")

    def go():
        info = load_model_info(model)
        x = np.random.default_rng(0).normal(0, 1, (40, 1, 32, 32)).astype(np.float32)
        with (
            make_runner("onnxruntime", info) as ref,
            make_runner("tensorrt", info, engine_path=plan, precision="fp16") as r,
        ):
            want = ref.infer(x)
            got_host = r.infer(x[:21])
            host_shapes = [s[0] for s in fr.shapes]
            fr.shapes.clear()
            fr.in_addrs.clear()
            calls.clear()
            dev = np.ascontiguousarray(x)
            got_dev = r.infer_device(dev.ctypes.data, 40)
            from octbatch.engines.inspect import trt_io  # what `octbatch inspect` shows for an engine

            ins, outs = trt_io(plan)
            return {
                "host_max_diff": float(np.abs(got_host - want[:21]).max()),
                "host_batches": host_shapes,
                "device_max_diff": float(np.abs(got_dev - want).max()),
                "device_batches": [s[0] for s in fr.shapes],
                "device_offsets": [a - dev.ctypes.data for a in fr.in_addrs],
                "row_bytes": 32 * 32 * 4,
                "device_h2d_copies": sum(1 for c in calls if c[0] == "cudaMemcpyAsync" and c[1] == 1),
                "inspect_io": [ins, outs],
            }

    return _run(go)


def scenario_cli(model: str, archive: str, work: str, precision: str) -> dict:
    """`octbatch build-engine MODEL --backend tensorrt --precision P` through the real CLI."""
    from click.testing import CliRunner

    from octbatch.cli import cli
    from tests.helpers.trt_fakes import Calls, install_cuda

    install_cuda(Calls())
    builds: list = []
    seen: list = []

    class Recording(FakeBuild):
        def __init__(self):
            super().__init__()
            parse = self.parser.parse_from_file.side_effect

            def record(path):
                from octbatch.onnx_cast import float_types

                seen.append({"file": os.path.basename(path), **float_types(path)})
                return parse(path)

            self.parser.parse_from_file.side_effect = record

        def _build(self, network, config):
            out = super()._build(network, config)
            builds.append({"errors": self.errors, "flags": self.flags_given, "set_flags": self.set_flags})
            return out

    current: list = []

    def new_builder():  # a fresh builder (and parser) per build, as real TensorRT gives
        current[:] = [Recording()]
        return current[0].builder

    trt.Builder = constructor("Builder", new_builder)
    trt.OnnxParser = constructor("OnnxParser", lambda: current[0].parser)
    FakeRun(model).install()
    args = [
        "build-engine",
        model,
        "--backend",
        "tensorrt",
        "--precision",
        precision,
        "--batch",
        "1:8:16",
        "--cache-dir",
        os.path.join(work, f"cache-{precision}"),
        "--out",
        os.path.join(work, f"cli-{precision}.engine"),
        "--json",
    ]
    if precision in ("int8", "best"):
        args += ["--calib", archive, "--calib-size", "16", "--guard-size", "8", "--force"]
    r = CliRunner().invoke(cli, args)
    out = {
        "ok": r.exit_code == 0,
        "exit_code": r.exit_code,
        "builds": builds,
        "precision_inputs": seen,
        "stderr_tail": (r.stderr if hasattr(r, "stderr") else r.output)[-1500:],
    }
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        out["error"] = f"{type(r.exception).__name__}: {r.exception}"
    if r.exit_code == 0:
        res = json.loads(r.stdout)
        fp = json.loads(open(res["fingerprint"]).read())
        out.update(
            precision=res["precision"],
            selection=res["selection"],
            guard=res["guard"],
            options=fp["options"],
            machine_tensorrt=fp["machine"]["tensorrt"],
        )
    return out


def checker_self_test() -> dict:
    """The mocks bite: wrong names, wrong keywords and wrong types raise as the real bindings do."""
    out = {}
    cfg = strict("IBuilderConfig")
    cache = strict("ITimingCache")
    for label, call in {
        "wrong_keyword": lambda: cfg.set_timing_cache(cache, ignore_mismatches=False),
        "wrong_type": lambda: cfg.set_memory_pool_limit("WORKSPACE", 1 << 30),
        "missing_argument": lambda: strict("IOptimizationProfile").set_shape("input", (1, 1), (1, 1)),
        "unknown_method": lambda: strict("ICudaEngine").get_binding_shape(0),
        "unknown_attribute_set": lambda: setattr(strict("ICudaEngine"), "max_batch_size", 8),
        "right_call": lambda: cfg.set_timing_cache(cache, ignore_mismatch=False),
    }.items():
        try:
            call()
            out[label] = "accepted"
        except (TypeError, AttributeError) as exc:
            out[label] = f"{type(exc).__name__}"
    return out


def main() -> int:
    model, archive, work = sys.argv[1:4]
    from octbatch.engines.build_trt import trt_features
    from octbatch.onnx_cast import cast_model

    fp16 = cast_model(model, os.path.join(work, "fp16.onnx"), "fp16")
    results = {"version": trt.__version__, "features": trt_features(trt), "self_test": checker_self_test()}
    for prec in ("fp32", "fp16", "bf16", "int8"):
        results[f"build_{prec}"] = scenario_build(fp16 if prec == "fp16" else model, work, prec)
    results["build_without_profile"] = scenario_build(model, work, "fp16", drop_profiles=True)
    results["runtime"] = scenario_runtime(model, work)
    results["runtime_half_io"] = scenario_runtime(model, work, dtype=trt.DataType.HALF)
    for prec in ("fp16", "int8", "best"):
        results[f"cli_{prec}"] = scenario_cli(model, archive, work, prec)
    print(json.dumps(results, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
