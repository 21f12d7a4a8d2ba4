"""`octbatch inspect`: an engine's or model's metadata, fingerprint, inputs/outputs, and whether it runs here."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import OctbatchError
from .fingerprint import check_fingerprint, machine_facts, read_fingerprint

__all__ = ["inspect_engine", "trt_io"]


def inspect_engine(path: str) -> dict:
    """Metadata, fingerprint, inputs/outputs and whether it can run here, for an engine or a plain model."""
    p = Path(path)
    if not p.is_file():
        raise OctbatchError(f"{p} does not exist", "Pass an .onnx model or an engine built by octbatch build-engine.")
    fp = read_fingerprint(p)
    out: dict = {"path": str(p), "bytes": p.stat().st_size, "fingerprint": fp}
    is_onnx = p.suffix == ".onnx" or (fp or {}).get("backend") == "onnxruntime"
    if is_onnx:
        out.update(_onnx_part(p, fp))
    else:
        out.update(_trt_part(p, fp))
    if fp:
        here = machine_facts(fp.get("backend", "onnxruntime"), strict=False)
        diffs = check_fingerprint(fp, here)
        out["can_run_here"] = not diffs
        out["differences"] = diffs
    else:
        out["can_run_here"] = bool(is_onnx)
        out["differences"] = [] if is_onnx else ["no fingerprint: cannot tell what it was built for"]
    return out


def _onnx_part(p: Path, fp: dict | None) -> dict:
    from .._deps import require

    ort = require("onnxruntime", purpose="reading ONNX models")
    so = ort.SessionOptions()
    so.log_severity_level = 4
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        sess = ort.InferenceSession(str(p), sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT's own exception types
        raise OctbatchError(
            f"{p} is not a valid ONNX model ({str(exc).splitlines()[0][:200]})",
            "Pass an .onnx file or a built engine.",
        ) from None
    meta = dict(sess.get_modelmeta().custom_metadata_map)
    return {
        "kind": "onnx engine" if fp else "onnx model",
        "inputs": [{"name": i.name, "shape": list(i.shape), "dtype": i.type} for i in sess.get_inputs()],
        "outputs": [{"name": o.name, "shape": list(o.shape), "dtype": o.type} for o in sess.get_outputs()],
        "metadata": {
            "classes": _maybe_json(meta.get("octbatch.classes")),
            "preprocessing": _maybe_json(meta.get("octbatch.preprocessing")),
            "output": meta.get("octbatch.output"),
            "precision": meta.get("octbatch.precision", (fp or {}).get("precision", "fp32")),
            "card": meta.get("octbatch.model_card"),
        },
    }


def _trt_part(p: Path, fp: dict | None) -> dict:
    model = (fp or {}).get("model", {})
    out: dict = {
        "kind": "tensorrt engine",
        "metadata": {
            "classes": model.get("classes"),
            "preprocessing": model.get("preprocessing"),
            "output": model.get("output"),
            "precision": (fp or {}).get("precision"),
            "card": model.get("card"),
        },
        "inputs": None,
        "outputs": None,
    }
    try:
        out["inputs"], out["outputs"] = trt_io(str(p))
    except Exception as exc:  # noqa: BLE001 - no TensorRT / incompatible engine: say why
        out["io_note"] = f"inputs/outputs not shown: {str(exc).splitlines()[0][:200]}"
    return out


def _maybe_json(text: str | None) -> object:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def trt_io(path: str) -> tuple[list[dict], list[dict]]:
    """(inputs, outputs) of a serialized TensorRT engine: name, shape and dtype of each tensor."""
    from ..backends.tensorrt import _trt

    trt = _trt()
    runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
    with open(path, "rb") as f:
        engine = runtime.deserialize_cuda_engine(f.read())
    if engine is None:
        raise RuntimeError("TensorRT could not deserialize it on this machine")
    ins: list[dict] = []
    outs: list[dict] = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        row = {"name": name, "shape": list(engine.get_tensor_shape(name)), "dtype": str(engine.get_tensor_dtype(name))}
        (ins if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outs).append(row)
    return ins, outs
