"""The training recipe of the shipped model (`octbatch train` with no options reproduces it), and the
checks of train()'s arguments that fail before anything is read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import OctbatchError

__all__ = ["DEFAULTS", "check_arguments"]

# Training settings of the shipped model; `octbatch train` with no options reproduces it.
DEFAULTS: dict[str, Any] = dict(
    epochs=40,
    batch_size=64,
    lr=3e-3,
    weight_decay=5e-4,
    label_smoothing=0.05,
    val_fraction=0.25,
    widths=(16, 32, 64, 128),
    stem=16,
    near_dup=0.97,
    resize="center_crop",
    lateral_scale=(0.6, 1.6),
    density=(512, 1536),  # chosen by the width experiment (engines/README.md)
    input_size=128,
)


def check_arguments(out: Path, *, epochs: int, resize: str, train_fraction: float) -> None:
    """Refuse what train() cannot do (creating the output's folder on the way, as it always has)."""
    if out.suffix.lower() != ".onnx":
        raise OctbatchError(
            f"--out {out} should end in .onnx", "Give the path of the model file to write, e.g. model.onnx."
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    if epochs < 1:
        raise OctbatchError("epochs must be at least 1", "Pass --epochs 1 or more.")
    if resize not in ("stretch", "center_crop"):
        raise OctbatchError(f"unknown resize rule {resize!r}", "Use stretch or center_crop.")
    if not 0.0 < train_fraction <= 1.0:
        raise OctbatchError(f"train fraction {train_fraction} is out of range", "Give a fraction in (0, 1].")
