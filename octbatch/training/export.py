"""ONNX export of a trained network with octbatch's metadata (classes, preprocessing, output, card), and
metadata edits of an exported file (the weights untouched). torch/onnx are imported inside functions."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from ..preprocess import Preprocessing

__all__ = ["export_onnx", "set_metadata", "update_card"]


def export_onnx(
    torch, model, spec: Preprocessing, out: Path, classes: Sequence[str], card: str, *, temperature: float | None = None
) -> None:
    from .._deps import require
    from ..model import META_CARD, META_CLASSES, META_OUTPUT, META_PREPROC

    onnx = require("onnx", purpose="exporting the trained model")
    model.eval()
    dummy = torch.zeros(1, spec.channels, spec.height, spec.width)
    tmp = out.with_name(out.name + ".tmp")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (dummy,),
            str(tmp),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
            do_constant_folding=True,
            dynamo=False,
        )
    m = onnx.load(str(tmp))  # weights are inline: the model is far below protobuf's 2 GiB limit
    meta = {
        META_CLASSES: json.dumps(list(classes)),
        META_PREPROC: spec.to_json(),
        META_OUTPUT: "logits",
        META_CARD: card,
    }
    if temperature is not None:
        # Informational: the division by T is already in the graph, so no backend applies it again.
        meta["octbatch.temperature"] = f"{temperature:.6f}"
    set_metadata(onnx, m, meta)
    m.producer_name = "octbatch.train"
    onnx.checker.check_model(m)
    onnx.save(m, str(tmp))
    os.replace(tmp, out)


def set_metadata(onnx, m, values: dict) -> None:
    keep = [p for p in m.metadata_props if p.key not in values]
    del m.metadata_props[:]
    for p in keep:
        m.metadata_props.append(p)
    for k, v in values.items():
        entry = m.metadata_props.add()
        entry.key, entry.value = k, v


def update_card(path: str | os.PathLike, card: str) -> None:
    """Rewrite the model-card metadata of an exported model (weights untouched)."""
    from .._deps import require
    from ..model import META_CARD

    onnx = require("onnx", purpose="editing model metadata")
    m = onnx.load(str(path))
    set_metadata(onnx, m, {META_CARD: card})
    tmp = str(path) + ".tmp"
    onnx.save(m, tmp)
    os.replace(tmp, path)
