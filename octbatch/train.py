"""Former home of the classifier's training; it lives in the octbatch.training package. This module
keeps the names callers import (``from octbatch.train import train, DEFAULTS, ...``)."""

from __future__ import annotations

from .training import (
    DEFAULTS,
    REPORT_HINTS,
    REPORT_SETS,
    Record,
    benchmark_onnx,
    classification_metrics,
    decode_cache,
    decode_strips,
    draw_confusion_png,
    evaluate_onnx,
    load_records,
    predict_onnx,
    split_records,
    train,
    write_report,
)
from .training.augment import crop_strips as _crop_strips
from .training.export import update_card
from .training.net import build_model

__all__ = [
    "Record",
    "train",
    "load_records",
    "split_records",
    "decode_cache",
    "evaluate_onnx",
    "classification_metrics",
    "write_report",
    "draw_confusion_png",
    "benchmark_onnx",
    "DEFAULTS",
    "REPORT_HINTS",
    "REPORT_SETS",
    "build_model",
    "decode_strips",
    "predict_onnx",
    "update_card",
    "_crop_strips",
]
