"""Tiny ONNX classifiers built with onnx.helper, for tests that must not depend on the shipped model."""

from __future__ import annotations

import json

import numpy as np


def tiny_classifier(
    path, *, classes=("A", "B", "C"), size=32, channels=1, metadata=True, seed=0, output_probs=False, mean=0.5, std=0.25
):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    k = len(classes)
    w_conv = rng.normal(0, 0.5, (4, channels, 3, 3)).astype(np.float32)
    w_fc = rng.normal(0, 1.0, (4, k)).astype(np.float32)
    b_fc = rng.normal(0, 0.1, (k,)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["input", "w_conv"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("GlobalAveragePool", ["r1"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "w_fc", "b_fc"], ["logits" if not output_probs else "z"]),
    ]
    out_name = "logits"
    if output_probs:
        nodes.append(helper.make_node("Softmax", ["z"], ["probs"], axis=1))
        out_name = "probs"
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", channels, size, size])],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["N", k])],
        initializer=[
            numpy_helper.from_array(w_conv, "w_conv"),
            numpy_helper.from_array(w_fc, "w_fc"),
            numpy_helper.from_array(b_fc, "b_fc"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if metadata:
        pre = {
            "input_size": [size, size],
            "channels": channels,
            "mean": [mean],
            "std": [std],
            "resize": "center_crop",
            "interpolation": "area",
            "layout": "NCHW",
        }
        for key, val in (
            ("octbatch.classes", json.dumps(list(classes))),
            ("octbatch.preprocessing", json.dumps(pre)),
            ("octbatch.output", "probs" if output_probs else "logits"),
            ("octbatch.model_card", "tiny test model"),
        ):
            p = model.metadata_props.add()
            p.key, p.value = key, val
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)
