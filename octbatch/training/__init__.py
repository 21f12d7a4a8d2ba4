"""Training (the `train` extra: torch, onnx): the shipped classifier and the OCT gate.

The classifier (``octbatch train``), in data-flow order: data (records, patient-wise split) -> cache
(every scan decoded once with the inference decoder) -> prepare (roles, labels, normalisation) -> net,
augment, loop (fit, select, calibrate) -> export (ONNX + metadata, card) -> evaluate (through the
inference path) -> report, figures; run.train sequences them; recipe holds the shipped settings.
readme_card renders engines/README.md from metrics.json.

The gate (``octbatch train-gate``): gate_data -> gate_synth (synthetic negatives) -> gate_loop (CNN and
statistics halves, export) -> gate_eval (threshold, false flags, held-out sources).

torch and onnx are imported inside functions only: importing this package (or ``octbatch``) loads neither.
"""

from __future__ import annotations

from .cache import decode_all, decode_cache, decode_strips
from .data import REPORT_HINTS, REPORT_SETS, Record, load_records, split_records
from .evaluate import benchmark_onnx, evaluate_onnx, predict_onnx
from .figures import draw_confusion_png
from .metrics import classification_metrics
from .recipe import DEFAULTS
from .report import write_report
from .run import train

__all__ = [
    "DEFAULTS",
    "REPORT_HINTS",
    "REPORT_SETS",
    "Record",
    "benchmark_onnx",
    "classification_metrics",
    "decode_all",
    "decode_cache",
    "decode_strips",
    "draw_confusion_png",
    "evaluate_onnx",
    "load_records",
    "predict_onnx",
    "split_records",
    "train",
    "write_report",
]
