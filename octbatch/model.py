"""Self-describing models: class names and preprocessing read from the ONNX file's metadata_props.

``read_onnx_metadata`` is the one place an ONNX file is opened to read its metadata and inputs and
outputs (``load_model_info`` and ``octbatch inspect`` both use it). ``load_model_info`` refuses a
model whose declared preprocessing octbatch would not honour (an NHWC layout, another interpolation).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from .errors import OctbatchError
from .preprocess import INTERPOLATIONS, LAYOUTS, Preprocessing

__all__ = [
    "ModelInfo",
    "OnnxMetadata",
    "OnnxTensor",
    "InvalidOnnxModel",
    "read_onnx_metadata",
    "load_model_info",
    "default_model_path",
    "file_sha256",
    "META_CLASSES",
    "META_PREPROC",
    "META_OUTPUT",
    "META_CARD",
    "META_PRECISION",
]

META_CLASSES = "octbatch.classes"
META_PREPROC = "octbatch.preprocessing"
META_OUTPUT = "octbatch.output"  # "logits" | "probs"
META_CARD = "octbatch.model_card"
META_PRECISION = "octbatch.precision"

DEFAULT_MODEL_NAME = "oct4-default.onnx"


@dataclass(frozen=True)
class ModelInfo:
    path: str
    sha256: str
    classes: tuple[str, ...]
    preprocessing: Preprocessing
    output_kind: str = "logits"
    card: str = ""
    input_name: str = "input"
    precision: str = "fp32"
    metadata: dict | None = None

    @property
    def settings_key(self) -> dict:
        """What a result depends on: resuming with anything else is refused."""
        return {
            "model_sha256": self.sha256,
            "classes": list(self.classes),
            "preprocessing": json.loads(self.preprocessing.to_json()),
        }


def default_model_path() -> Path:
    env = os.environ.get("OCTBATCH_MODEL")
    if env:
        return Path(env)
    return Path(__file__).parent / "models" / DEFAULT_MODEL_NAME


def file_sha256(path: str | os.PathLike, _cache: dict = {}) -> str:  # noqa: B006 - per-process memo
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _cache:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _cache[key] = h.hexdigest()
    return _cache[key]


@dataclass(frozen=True)
class OnnxTensor:
    name: str
    shape: list  # ints for fixed dimensions, names (or None) for dynamic ones
    dtype: str  # as ONNX Runtime spells it, e.g. "tensor(float)"


@dataclass(frozen=True)
class OnnxMetadata:
    """What an ONNX file says about itself: its metadata_props and its inputs and outputs."""

    metadata: dict[str, str]
    inputs: list[OnnxTensor]
    outputs: list[OnnxTensor]


class InvalidOnnxModel(ValueError):
    """The file is not an ONNX model ONNX Runtime can open; ``reason`` is the first line of why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def read_onnx_metadata(path: str | os.PathLike) -> OnnxMetadata:
    """Open ``path`` with ONNX Runtime (no graph optimization) and read its metadata and I/O."""
    from ._deps import require

    ort = require("onnxruntime", purpose="reading ONNX models")
    try:
        so = ort.SessionOptions()
        so.log_severity_level = 4
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sess = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types for bad models
        raise InvalidOnnxModel(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None

    def tensors(items) -> list[OnnxTensor]:
        return [OnnxTensor(t.name, list(t.shape), t.type) for t in items]

    return OnnxMetadata(
        dict(sess.get_modelmeta().custom_metadata_map), tensors(sess.get_inputs()), tensors(sess.get_outputs())
    )


def _model_path(path: str | os.PathLike | None) -> Path:
    p = Path(path) if path is not None else default_model_path()
    if not p.exists():
        hint = (
            "Pass --model PATH to an ONNX classifier."
            if path is not None
            else ("The shipped default model is missing from this install; reinstall octbatch or pass --model PATH.")
        )
        raise OctbatchError(f"model {p} does not exist", hint)
    if p.is_dir():
        raise OctbatchError(f"model {p} is a directory", "Pass the .onnx file itself.")
    return p


def _read(p: Path) -> OnnxMetadata:
    try:
        return read_onnx_metadata(p)
    except InvalidOnnxModel as exc:
        raise OctbatchError(
            f"model {p} is not a valid ONNX model ({exc.reason[:300]})",
            "Pass an .onnx file exported from a classifier.",
        ) from None


def _input_shape(p: Path, m: OnnxMetadata) -> list:
    if len(m.inputs) != 1:
        raise OctbatchError(
            f"model {p} has {len(m.inputs)} inputs", "octbatch runs image classifiers with one NCHW input."
        )
    shape = m.inputs[0].shape
    if len(shape) != 4:
        raise OctbatchError(
            f"model input has shape {shape}, not N x C x H x W", "Export the classifier with a 4-D NCHW input."
        )
    return shape


def _declared_spec(p: Path, meta: dict, shape: list, input_size: tuple[int, int] | None) -> Preprocessing:
    """The preprocessing the metadata declares, else what the input shape implies."""
    if META_PREPROC in meta:
        return Preprocessing.from_json(meta[META_PREPROC])
    c = shape[1] if isinstance(shape[1], int) else 1
    h = shape[2] if isinstance(shape[2], int) else None
    w = shape[3] if isinstance(shape[3], int) else None
    if (h is None or w is None) and not input_size:
        raise OctbatchError(
            f"model {p} has no octbatch metadata and a dynamic input size",
            "Pass --input-size HxW (and --mean/--std/--classes).",
        )
    return Preprocessing(input_size=(h or 224, w or 224), channels=c, mean=(0.0,), std=(1.0,))


def _with_overrides(
    spec: Preprocessing,
    input_size: tuple[int, int] | None,
    mean: tuple[float, ...] | None,
    std: tuple[float, ...] | None,
    resize: str | None,
) -> Preprocessing:
    if input_size:
        spec = replace(spec, input_size=input_size)
    if mean:
        spec = replace(spec, mean=mean)
    if std:
        spec = replace(spec, std=std)
    if resize:
        spec = replace(spec, resize=resize)
    return spec


def _fit_to_input(spec: Preprocessing, shape: list) -> Preprocessing:
    """Channels follow the model's input when it is fixed; a fixed H x W must match the spec."""
    if isinstance(shape[1], int) and shape[1] != spec.channels:
        spec = replace(spec, channels=shape[1])
    spec = Preprocessing(
        **{k: getattr(spec, k) for k in ("input_size", "channels", "mean", "std", "resize", "interpolation", "layout")}
    )
    for dim, want in ((2, spec.height), (3, spec.width)):
        if isinstance(shape[dim], int) and shape[dim] != want:
            raise OctbatchError(
                f"the model takes {shape[3]}x{shape[2]} inputs but preprocessing says {spec.width}x{spec.height}",
                "Drop --input-size or give the model's own size.",
            )
    return spec


def _refuse_unhonoured(p: Path, spec: Preprocessing) -> None:
    """Every decoder feeds NCHW and resizes with area interpolation: a model declaring otherwise
    would silently get input it was not trained on."""
    if spec.layout not in LAYOUTS:
        raise OctbatchError(
            f"model {p} declares layout {spec.layout}, which octbatch does not feed",
            "Export the model with an NCHW input (N x C x H x W float32) and layout NCHW in its octbatch.preprocessing metadata.",
        )
    if spec.interpolation not in INTERPOLATIONS:
        raise OctbatchError(
            f"model {p} declares interpolation {spec.interpolation!r}, which octbatch does not use",
            "octbatch resizes with area interpolation (linear when enlarging): retrain or re-export the model "
            'with "interpolation": "area" in its octbatch.preprocessing metadata.',
        )


def _class_names(p: Path, meta: dict, classes: tuple[str, ...] | None, outputs: list[OnnxTensor]) -> tuple[str, ...]:
    if classes:
        names = classes
    elif META_CLASSES in meta:
        try:
            names = tuple(json.loads(meta[META_CLASSES]))
        except ValueError:
            names = tuple(c.strip() for c in meta[META_CLASSES].split(","))
    else:
        raise OctbatchError(
            f"model {p} does not name its classes",
            "Pass --classes NAME1,NAME2,... in the order of the model's outputs.",
        )
    out_shape = outputs[0].shape
    if len(out_shape) == 2 and isinstance(out_shape[1], int) and out_shape[1] != len(names):
        raise OctbatchError(
            f"the model has {out_shape[1]} outputs but {len(names)} class names",
            "Give one class name per model output.",
        )
    if len(set(names)) != len(names):
        raise OctbatchError("class names are not unique", "Give each class a distinct name.")
    return names


def load_model_info(
    path: str | os.PathLike | None = None,
    *,
    classes: Sequence[str] | str | None = None,
    input_size: tuple[int, int] | str | None = None,
    mean: Sequence[float] | str | None = None,
    std: Sequence[float] | str | None = None,
    resize: str | None = None,
) -> ModelInfo:
    """Open an ONNX model, read its octbatch metadata, apply overrides, and validate it can be run.
    Overrides are typed (RunConfig's fields) or the CLI's strings, parsed by octbatch.config's parsers."""
    from .config import parse_classes, parse_floats, parse_input_size

    classes = parse_classes(classes) if isinstance(classes, str) else (tuple(classes) if classes else None)
    input_size = parse_input_size(input_size) if isinstance(input_size, str) else input_size
    mean = parse_floats(mean, "--mean") if isinstance(mean, str) else (tuple(mean) if mean else None)
    std = parse_floats(std, "--std") if isinstance(std, str) else (tuple(std) if std else None)
    p = _model_path(path)
    m = _read(p)
    meta = m.metadata
    shape = _input_shape(p, m)
    spec = _declared_spec(p, meta, shape, input_size)
    spec = _fit_to_input(_with_overrides(spec, input_size, mean, std, resize), shape)
    _refuse_unhonoured(p, spec)
    names = _class_names(p, meta, classes, m.outputs)
    return ModelInfo(
        path=str(p),
        sha256=file_sha256(p),
        classes=names,
        preprocessing=spec,
        output_kind=meta.get(META_OUTPUT, "logits" if META_CLASSES in meta else "auto"),
        card=meta.get(META_CARD, ""),
        input_name=m.inputs[0].name,
        precision=meta.get(META_PRECISION, "fp32"),
        metadata=meta,
    )
