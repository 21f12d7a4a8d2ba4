"""Self-describing models: class names and preprocessing read from the ONNX file's metadata_props."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

from .errors import OctbatchError
from .preprocess import Preprocessing

__all__ = [
    "ModelInfo",
    "load_model_info",
    "default_model_path",
    "file_sha256",
    "META_CLASSES",
    "META_PREPROC",
    "META_OUTPUT",
    "META_CARD",
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


def _parse_floats(text: str | None, what: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        vals = tuple(float(x) for x in str(text).replace(" ", "").split(",") if x)
    except ValueError:
        raise OctbatchError(
            f"{what} {text!r} is not a list of numbers",
            f"Give {what} as comma-separated numbers, e.g. 0.2 or 0.485,0.456,0.406.",
        ) from None
    if not vals:
        raise OctbatchError(f"{what} is empty", f"Give {what} as comma-separated numbers.")
    return vals


def load_model_info(
    path: str | os.PathLike | None = None,
    *,
    classes: str | None = None,
    input_size: str | None = None,
    mean: str | None = None,
    std: str | None = None,
    resize: str | None = None,
) -> ModelInfo:
    """Open an ONNX model, read its octbatch metadata, apply overrides, and validate it can be run."""
    from ._deps import require

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
    ort = require("onnxruntime", purpose="reading ONNX models")
    try:
        so = ort.SessionOptions()
        so.log_severity_level = 4
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sess = ort.InferenceSession(str(p), sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types for bad models
        raise OctbatchError(
            f"model {p} is not a valid ONNX model ({str(exc).splitlines()[0][:300]})",
            "Pass an .onnx file exported from a classifier.",
        ) from None
    meta = dict(sess.get_modelmeta().custom_metadata_map)
    inputs = sess.get_inputs()
    if len(inputs) != 1:
        raise OctbatchError(
            f"model {p} has {len(inputs)} inputs", "octbatch runs image classifiers with one NCHW input."
        )
    shape = list(inputs[0].shape)
    if len(shape) != 4:
        raise OctbatchError(
            f"model input has shape {shape}, not N x C x H x W", "Export the classifier with a 4-D NCHW input."
        )

    if META_PREPROC in meta:
        spec = Preprocessing.from_json(meta[META_PREPROC])
    else:
        c = shape[1] if isinstance(shape[1], int) else 1
        h = shape[2] if isinstance(shape[2], int) else None
        w = shape[3] if isinstance(shape[3], int) else None
        if (h is None or w is None) and not input_size:
            raise OctbatchError(
                f"model {p} has no octbatch metadata and a dynamic input size",
                "Pass --input-size HxW (and --mean/--std/--classes).",
            )
        spec = Preprocessing(input_size=(h or 224, w or 224), channels=c, mean=(0.0,), std=(1.0,))
    if input_size:
        try:
            parts = [int(x) for x in input_size.lower().replace("x", ",").split(",")]
            hw = (parts[0], parts[0]) if len(parts) == 1 else (parts[0], parts[1])
        except ValueError:
            raise OctbatchError(
                f"--input-size {input_size!r} is not HxW", "Use e.g. --input-size 224 or 224x224."
            ) from None
        spec = replace(spec, input_size=hw)
    m = _parse_floats(mean, "--mean")
    s = _parse_floats(std, "--std")
    if m:
        spec = replace(spec, mean=m)
    if s:
        spec = replace(spec, std=s)
    if resize:
        spec = replace(spec, resize=resize)
    # Channels follow the model's input when it is fixed.
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

    if classes:
        names = tuple(c.strip() for c in classes.split(",") if c.strip())
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
    out_shape = sess.get_outputs()[0].shape
    if len(out_shape) == 2 and isinstance(out_shape[1], int) and out_shape[1] != len(names):
        raise OctbatchError(
            f"the model has {out_shape[1]} outputs but {len(names)} class names",
            "Give one class name per model output.",
        )
    if len(set(names)) != len(names):
        raise OctbatchError("class names are not unique", "Give each class a distinct name.")
    output_kind = meta.get(META_OUTPUT, "logits" if META_CLASSES in meta else "auto")
    return ModelInfo(
        path=str(p),
        sha256=file_sha256(p),
        classes=names,
        preprocessing=spec,
        output_kind=output_kind,
        card=meta.get(META_CARD, ""),
        input_name=inputs[0].name,
        precision=meta.get(META_PRECISION, "fp32"),
        metadata=meta,
    )
