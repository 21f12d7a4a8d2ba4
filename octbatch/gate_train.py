"""Former home of the gate's training (``octbatch train-gate``); it lives in octbatch.training.gate_*.
This module keeps the names callers import (``from octbatch import gate_train as gt``)."""

from __future__ import annotations

from .training.gate_data import (
    BASE_HEIGHT,
    TRAIN_HINTS,
    OctImage,
    load_base,
    load_non_oct,
    load_oct,
    random_view,
    runtime_views,
)
from .training.gate_eval import evaluate_holdout, rates, train_gate_file
from .training.gate_loop import (
    GATE_DEFAULTS,
    apply_rules,
    build_gate_model,
    export_gate,
    fit_logreg,
    torch_scores,
    train_gate,
    train_stats,
)
from .training.gate_synth import SYNTH_KINDS, synth_negative

__all__ = [
    "BASE_HEIGHT",
    "TRAIN_HINTS",
    "GATE_DEFAULTS",
    "OctImage",
    "load_oct",
    "load_non_oct",
    "load_base",
    "synth_negative",
    "SYNTH_KINDS",
    "random_view",
    "train_gate",
    "export_gate",
    "runtime_views",
    "evaluate_holdout",
    "fit_logreg",
    "train_stats",
    "train_gate_file",
    "apply_rules",
    "build_gate_model",
    "rates",
    "torch_scores",
]
