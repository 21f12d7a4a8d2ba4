"""fp16/bf16 conversion of the ONNX graph for strongly typed TensorRT builds (octbatch.onnx_cast)."""

from __future__ import annotations

import numpy as np
import pytest

from octbatch.onnx_cast import _fp32_to_bf16_bits, cast_model, float_types


def test_fp16_graph_keeps_fp32_io_and_metadata_and_matches_fp32(tiny_model, tmp_path):
    import onnx
    import onnxruntime as ort

    out = cast_model(tiny_model, tmp_path / "m.fp16.onnx", "fp16")
    t = float_types(out)
    assert t["initializers"] == {"fp16": 3} and t["io"] == {"input": "fp32", "logits": "fp32"}
    keys = {p.key for p in onnx.load(out).metadata_props}
    assert {"octbatch.classes", "octbatch.preprocessing", "octbatch.output"} <= keys
    x = np.random.default_rng(1).normal(0, 1, (8, 1, 32, 32)).astype(np.float32)
    ref = ort.InferenceSession(tiny_model, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    got = ort.InferenceSession(out, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert got.dtype == np.float32 and (ref.argmax(1) == got.argmax(1)).all() and np.abs(ref - got).max() < 1e-2


def test_bf16_graph_takes_its_weights_from_fp32_rounded_to_nearest_even(tiny_model, tmp_path):
    import onnx
    from onnx import numpy_helper

    out = cast_model(tiny_model, tmp_path / "m.bf16.onnx", "bf16")
    t = float_types(out)
    assert t["initializers"] == {"bf16": 3} and t["io"] == {"input": "fp32", "logits": "fp32"}
    m = onnx.load(out)
    assert all(
        a.i == 16 for n in m.graph.node if n.op_type == "Cast" for a in n.attribute if a.name == "to" and a.i != 1
    )
    src = {i.name: numpy_helper.to_array(i) for i in onnx.load(tiny_model).graph.initializer}
    for init in m.graph.initializer:
        bits = np.frombuffer(init.raw_data, np.uint16).reshape(tuple(init.dims))
        back = (bits.astype(np.uint32) << 16).view(np.float32)
        w = src[init.name]
        assert np.all(np.abs(back - w) <= np.abs(w) * 2.0**-8 + 1e-30)  # bf16 keeps 8 significant bits


def test_bf16_rounding_of_edge_values():
    x = np.array([1.0, -2.5, 1.00390625, 1.01171875, 3.0e38, np.inf, np.nan], np.float32)
    bits = _fp32_to_bf16_bits(x)
    back = (bits.astype(np.uint32) << 16).view(np.float32)
    assert back[0] == 1.0 and back[1] == -2.5
    assert back[2] == 1.0 and back[3] == 1.015625  # ties to even, then up
    assert np.isfinite(back[4]) and np.isinf(back[5]) and np.isnan(back[6])


def test_unknown_precision_is_a_user_error(tiny_model, tmp_path):
    from octbatch.errors import OctbatchError

    with pytest.raises(OctbatchError, match="cannot convert a model to 'int8'"):
        cast_model(tiny_model, tmp_path / "x.onnx", "int8")
