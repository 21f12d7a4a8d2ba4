"""`octbatch inspect`: an engine's or model's metadata, fingerprint, inputs/outputs, and whether it runs here."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import OctbatchError
from ..model import META_CARD, META_CLASSES, META_OUTPUT, META_PRECISION, META_PREPROC
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
    from ..model import InvalidOnnxModel, read_onnx_metadata

    try:
        m = read_onnx_metadata(p)
    except InvalidOnnxModel as exc:
        raise OctbatchError(
            f"{p} is not a valid ONNX model ({exc.reason[:200]})",
            "Pass an .onnx file or a built engine.",
        ) from None
    meta = m.metadata
    return {
        "kind": "onnx engine" if fp else "onnx model",
        "inputs": [{"name": t.name, "shape": t.shape, "dtype": t.dtype} for t in m.inputs],
        "outputs": [{"name": t.name, "shape": t.shape, "dtype": t.dtype} for t in m.outputs],
        "metadata": {
            "classes": _maybe_json(meta.get(META_CLASSES)),
            "preprocessing": _maybe_json(meta.get(META_PREPROC)),
            "output": meta.get(META_OUTPUT),
            "precision": meta.get(META_PRECISION, (fp or {}).get("precision", "fp32")),
            "card": meta.get(META_CARD),
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
