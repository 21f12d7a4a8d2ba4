"""The torch backend: the ONNX model as a torch module, against ONNX Runtime on the shipped model and
on a graph of the other ops the loader supports; refusals (unsupported op, fp16 on the CPU); the
device-input entry point on the CPU; CUDA (fp16, CUDA graphs) when a GPU is present."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.helpers.files import SHIPPED_MODEL

pytest.importorskip("torch", reason="torch is not installed (pip install 'octbatch[torch]')")
pytest.importorskip("onnx", reason="onnx is not installed (pip install 'octbatch[torch]')")

from octbatch.backends import make_runner  # noqa: E402
from octbatch.backends.onnx_torch import load_onnx_module, unsupported_ops  # noqa: E402
from octbatch.errors import OctbatchError  # noqa: E402
from octbatch.model import load_model_info  # noqa: E402

# Stated tolerance, fp32 on the CPU vs ONNX Runtime (measured: ~1e-6 on the shipped model).
PROB_TOL = 1e-4


def _batch(info, n=32, seed=1):
    s = info.preprocessing
    return np.random.default_rng(seed).normal(size=(n, s.channels, s.height, s.width)).astype(np.float32)


def test_shipped_model_matches_onnxruntime():
    info = load_model_info(str(SHIPPED_MODEL))
    x = _batch(info)
    with make_runner("onnxruntime", info) as ort, make_runner("torch", info, threads=2) as tr:
        ref, got = ort.infer(x), tr.infer(x)
        assert tr.device == "cpu" and tr.precision == "fp32" and tr.name == "torch"
        assert tr.load_diff is not None and tr.load_diff <= PROB_TOL
    assert got.shape == ref.shape == (32, 4) and got.dtype == np.float32
    assert float(np.abs(got - ref).max()) <= PROB_TOL
    assert (got.argmax(1) == ref.argmax(1)).all()
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)  # softmax once, by Runner._postprocess


def test_infer_device_reads_a_host_pointer_on_the_cpu():
    info = load_model_info(str(SHIPPED_MODEL))
    x = np.ascontiguousarray(_batch(info, 5))
    with make_runner("torch", info) as tr:
        np.testing.assert_allclose(tr.infer_device(x.ctypes.data, 5), tr.infer(x), atol=1e-6)
        import torch

        np.testing.assert_allclose(tr.infer_device(torch.from_numpy(x), 5), tr.infer(x), atol=1e-6)
        assert tr.infer_device(0, 0).shape == (0, 4)


def _other_ops_model(path):
    """A classifier made of the loader's other ops (BatchNorm, pools, reshapes, activations, Softmax)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def w(*shape):
        return rng.normal(0, 0.5, shape).astype(np.float32)

    inits = {
        "wc": w(6, 1, 3, 3),
        "bc": w(6),
        "sc": np.abs(w(6)) + 0.5,
        "bb": w(6),
        "mu": w(6),
        "var": np.abs(w(6)) + 0.5,
        "wm": w(12, 3),
        "shape": np.array([0, -1], np.int64),
        "axes": np.array([2, 3], np.int64),
        "ax1": np.array([1], np.int64),
        "half": np.array(0.5, np.float32),
    }
    n = helper.make_node
    nodes = [
        n("Conv", ["input", "wc", "bc"], ["c"], pads=[0, 0, 1, 1], strides=[2, 2]),  # asymmetric pads
        n("BatchNormalization", ["c", "sc", "bb", "mu", "var"], ["bn"], epsilon=1e-3),
        n("LeakyRelu", ["bn"], ["lr"], alpha=0.1),
        n("MaxPool", ["lr"], ["mp"], kernel_shape=[2, 2], strides=[2, 2]),
        n("AveragePool", ["mp"], ["ap"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1]),
        n("Sigmoid", ["ap"], ["sg"]),
        n("Mul", ["sg", "half"], ["m"]),
        n("GlobalAveragePool", ["m"], ["gap"]),
        n("GlobalMaxPool", ["ap"], ["gmp"]),
        n("Concat", ["gap", "gmp"], ["cat"], axis=1),
        n("Reshape", ["cat", "shape"], ["flat"]),
        n("MatMul", ["flat", "wm"], ["mm"]),
        n("Tanh", ["mm"], ["t"]),
        n("ReduceMean", ["ap", "axes"], ["rm"], keepdims=0),
        n("ReduceMax", ["rm", "ax1"], ["rmax"], keepdims=1),
        n("Sub", ["t", "rmax"], ["z"]),
        n("Softmax", ["z"], ["probs"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "other",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 32, 32])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 3])],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    pre = {"input_size": [32, 32], "channels": 1, "mean": [0.5], "std": [0.25]}
    for k, v in {
        "octbatch.classes": json.dumps(["A", "B", "C"]),
        "octbatch.preprocessing": json.dumps(pre),
        "octbatch.output": "probabilities",
    }.items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(path))
    return str(path)


def test_the_loaders_other_ops_match_onnxruntime(tmp_path):
    info = load_model_info(_other_ops_model(tmp_path / "other.onnx"))
    x = _batch(info, 7)
    with make_runner("onnxruntime", info) as ort, make_runner("torch", info) as tr:
        assert float(np.abs(tr.infer(x) - ort.infer(x)).max()) <= PROB_TOL


def test_an_unsupported_op_is_refused_by_name(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Erf", ["input"], ["e"]), helper.make_node("LRN", ["e"], ["out"], size=3)],
        "bad",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 1, 8, 8])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "bad.onnx"
    onnx.save(model, str(path))
    assert unsupported_ops(model.graph) == ["Erf", "LRN"]
    with pytest.raises(OctbatchError) as err:
        load_onnx_module(str(path))
    assert err.value.what == f"model {path}: op Erf is not supported by the torch backend (nor LRN)"
    assert err.value.fix == "Use --backend onnxruntime (or tensorrt with a built engine)."


def test_half_precision_on_the_cpu_is_refused():
    info = load_model_info(str(SHIPPED_MODEL))
    with pytest.raises(OctbatchError) as err:
        make_runner("torch", info, precision="fp16").load()
    assert err.value.what == "the torch backend runs fp16 on CUDA only"
    with pytest.raises(OctbatchError, match="runs fp32, fp16 or bf16, not int8"):
        make_runner("torch", info, precision="int8").load()


def test_outputs_that_drift_from_onnxruntime_are_refused(monkeypatch):
    import octbatch.backends.torch_backend as tb

    monkeypatch.setitem(tb.LOAD_TOLERANCE, "fp32", -1.0)
    with pytest.raises(OctbatchError, match=r"the torch backend's fp32 outputs differ from ONNX Runtime's by"):
        make_runner("torch", load_model_info(str(SHIPPED_MODEL))).load()


@pytest.mark.gpu
def test_cuda_fp16_with_cuda_graphs_matches_onnxruntime():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA GPU: the fp16 / CUDA-graph path needs one")
    info = load_model_info(str(SHIPPED_MODEL))
    x = _batch(info, 64)
    with make_runner("onnxruntime", info) as ort, make_runner("torch", info) as tr:
        assert tr.device == "cuda" and tr.precision == "fp16"
        ref = ort.infer(x)
        for _ in range(2):  # capture, then replay
            got = tr.infer(x)
            assert float(np.abs(got - ref).max()) <= 2e-2 and (got.argmax(1) == ref.argmax(1)).mean() >= 0.99
        assert tr._graphs.get(64) is not None  # captured
        d = torch.from_numpy(x).cuda()
        np.testing.assert_allclose(tr.infer_device(d, 64), got, atol=1e-3)
