"""Convert an fp32 ONNX classifier to fp16 or bf16 with its inputs and outputs kept fp32.

What strongly typed TensorRT builds need (TensorRT 11 has no FP16/BF16 builder flags; precision is
the graph's tensor types). fp16 is ONNX Runtime's own converter
(``onnxruntime.transformers.float16.convert_float_to_float16``, ``keep_io_types=True``): it keeps
numerically touchy ops in fp32 behind Cast nodes and clamps weights to the fp16 range. bf16 starts
from that graph and retypes every fp16 tensor as bf16, taking the weights from the original fp32
values (rounded to nearest even), so bf16 keeps fp32's range.
"""

from __future__ import annotations

import os

import numpy as np

from ._deps import require
from .errors import OctbatchError

__all__ = ["CASTS", "cast_model", "float_types"]

CASTS = ("fp16", "bf16")
_FLOAT, _FLOAT16, _BFLOAT16 = 1, 10, 16  # onnx.TensorProto data types


def _fp32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bit patterns (uint16), round to nearest even; NaN stays NaN."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        rounded[nan] = np.uint16(0x7FC0)
    return rounded


def _bf16_tensor(onnx, name: str, values: np.ndarray):
    t = onnx.TensorProto()
    t.name = name
    t.data_type = _BFLOAT16
    t.dims.extend(values.shape)
    t.raw_data = _fp32_to_bf16_bits(values).tobytes()
    return t


def _retype_fp16_as_bf16(onnx, model, originals: dict) -> None:
    from onnx import numpy_helper

    def convert(t):
        vals = originals.get(t.name)
        if vals is None or vals.shape != tuple(t.dims):
            vals = numpy_helper.to_array(t).astype(np.float32)
        return _bf16_tensor(onnx, t.name, vals)

    g = model.graph
    for i, t in enumerate(list(g.initializer)):
        if t.data_type == _FLOAT16:
            g.initializer[i].CopyFrom(convert(t))
    for node in g.node:
        for a in node.attribute:
            if node.op_type == "Cast" and a.name == "to" and a.i == _FLOAT16:
                a.i = _BFLOAT16
            elif a.type == onnx.AttributeProto.TENSOR and a.t.data_type == _FLOAT16:
                a.t.CopyFrom(convert(a.t))
    for vi in list(g.value_info) + list(g.input) + list(g.output):
        tt = vi.type.tensor_type
        if tt.elem_type == _FLOAT16:
            tt.elem_type = _BFLOAT16


def cast_model(src: str | os.PathLike, dst: str | os.PathLike, precision: str) -> str:
    """Write ``src`` converted to ``precision`` (fp16 or bf16) to ``dst``; inputs/outputs stay fp32.
    The model's metadata_props (octbatch's classes, preprocessing, ...) are kept."""
    if precision not in CASTS:
        raise OctbatchError(f"cannot convert a model to {precision!r}", f"Use one of {', '.join(CASTS)}.")
    onnx = require("onnx", purpose=f"converting the model to {precision} for TensorRT")
    f16 = require("onnxruntime.transformers.float16", purpose=f"converting the model to {precision} for TensorRT")
    from onnx import numpy_helper

    model = onnx.load(os.fspath(src))
    originals = {t.name: numpy_helper.to_array(t).copy() for t in model.graph.initializer if t.data_type == _FLOAT}
    try:
        converted = f16.convert_float_to_float16(model, keep_io_types=True)
    except Exception as exc:  # noqa: BLE001 - the converter's own errors
        raise OctbatchError(
            f"could not convert {src} to fp16 ({type(exc).__name__}: {str(exc)[:200]})",
            "Build an fp32 engine (--precision fp32), or convert the model yourself (e.g. NVIDIA ModelOpt AutoCast).",
        ) from None
    if precision == "bf16":
        _retype_fp16_as_bf16(onnx, converted, originals)
    onnx.save(converted, os.fspath(dst))
    return os.fspath(dst)


def float_types(path: str | os.PathLike) -> dict:
    """Counts of float initializer types and the I/O element types of a model (for checks and logs)."""
    onnx = require("onnx", purpose="reading ONNX models")
    m = onnx.load(os.fspath(path))
    names = {_FLOAT: "fp32", _FLOAT16: "fp16", _BFLOAT16: "bf16"}
    counts: dict = {}
    for t in m.graph.initializer:
        if t.data_type in names:
            counts[names[t.data_type]] = counts.get(names[t.data_type], 0) + 1
    io = {
        vi.name: names.get(vi.type.tensor_type.elem_type, str(vi.type.tensor_type.elem_type))
        for vi in list(m.graph.input) + list(m.graph.output)
    }
    return {"initializers": counts, "io": io}
