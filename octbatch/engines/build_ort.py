"""ONNX Runtime (CPU) engines: the graph optimized once and saved, or statically quantized to int8.

fp32 = the graph optimized at level EXTENDED and saved (portable across CPUs; ALL adds layout
transforms that can tie the file to the CPU it was made on). int8 = static Q/DQ quantization
calibrated on real scans through octbatch's own decode + normalize. Dynamic quantization is never
used: measured ~10x slower than fp32 here. ``quantize_static(symmetric=True)`` also makes the Q/DQ
graph TensorRT's explicit quantization builds from.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from .._deps import require
from ..errors import OctbatchError
from ..model import META_PRECISION, ModelInfo
from .scans import calib_batches

__all__ = ["build_ort_files", "optimize", "quantize_static", "copy_metadata"]

Log = Callable[[str], None]


def copy_metadata(src_meta: dict, dst: str, extra: dict) -> None:
    """Quantized models lose octbatch's metadata_props; put them back so the engine describes itself."""
    onnx = require("onnx", purpose="writing model metadata into built engines")
    m = onnx.load(dst)
    have = {p.key: p for p in m.metadata_props}
    for k, v in {**src_meta, **extra}.items():
        if k in have:
            have[k].value = v
        else:
            p = m.metadata_props.add()
            p.key, p.value = k, v
    onnx.save(m, dst)


def optimize(src: str, dst: str) -> None:
    """Save ``src`` optimized by ONNX Runtime at level EXTENDED to ``dst``."""
    ort = require("onnxruntime", purpose="optimizing ONNX models")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = dst
    so.log_severity_level = 3
    ort.InferenceSession(src, sess_options=so, providers=["CPUExecutionProvider"])
    if not os.path.exists(dst):
        raise OctbatchError(
            f"ONNX Runtime did not write the optimized model {dst}", "Check free disk space and permissions."
        )


def _reader(q, batches: Iterator[np.ndarray], input_name: str):
    """An ORT CalibrationDataReader over ``batches`` (made here: its base class is in onnxruntime)."""

    class ScanReader(q.CalibrationDataReader):
        def __init__(self):
            self._it = iter(batches)

        def get_next(self):
            x = next(self._it, None)
            return None if x is None else {input_name: x}

    return ScanReader()


def quantize_static(
    src: str, dst: str, batches: Iterator[np.ndarray], input_name: str, *, symmetric: bool = False
) -> None:
    """Static Q/DQ int8, calibrated on ``batches``. symmetric=True is the form TensorRT's explicit
    quantization needs (int8 activations and weights, zero point 0); ORT CPU runs u8 activations x s8
    weights fastest (VNNI)."""
    require("onnx", purpose="int8 quantization")
    q = require("onnxruntime.quantization", purpose="int8 quantization")
    work = tempfile.mkdtemp(prefix="octbatch-quant-", dir=os.path.dirname(dst) or None)
    try:
        pre = os.path.join(work, "pre.onnx")
        try:  # shape inference + light optimization make more nodes quantizable; optional
            from onnxruntime.quantization.shape_inference import quant_pre_process

            quant_pre_process(src, pre, skip_symbolic_shape=True)
        except Exception:  # noqa: BLE001 - a model it cannot pre-process still quantizes
            pre = src
        q.quantize_static(
            pre,
            dst,
            _reader(q, batches, input_name),
            quant_format=q.QuantFormat.QDQ,
            per_channel=True,
            activation_type=q.QuantType.QInt8 if symmetric else q.QuantType.QUInt8,
            weight_type=q.QuantType.QInt8,
            calibrate_method=q.CalibrationMethod.MinMax,
            extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True},
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def build_ort_files(info: ModelInfo, precision: str, calib_entries: Sequence | None, dst: str, log: Log) -> None:
    """Write the ONNX Runtime engine of ``info`` at ``precision`` (fp32 or int8) to ``dst``."""
    if precision == "fp32":
        log("optimizing the graph with ONNX Runtime (level extended) and saving it")
        optimize(info.path, dst)
        return
    entries = calib_entries or []
    log(f"int8: static Q/DQ quantization calibrated on {len(entries)} scans")
    quantize_static(info.path, dst, calib_batches(info, entries, 32), info.input_name)
    copy_metadata(dict(info.metadata or {}), dst, {META_PRECISION: "int8"})
