"""The exported model judged the way `octbatch run` would run it: CpuDecoder -> normalize_into -> the ORT
runner; metrics per evaluated set, and its inference speed."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..preprocess import normalize_into
from .data import Record
from .metrics import classification_metrics

__all__ = ["benchmark_onnx", "benchmark_fresh", "evaluate_onnx", "predict_onnx"]


def predict_onnx(model_path: str | os.PathLike, records: Sequence[Record], *, threads: int = 2, batch_size: int = 64):
    """Run the exported model the way inference does (CpuDecoder -> normalize_into -> ORT runner).
    Returns (kept record indices, probabilities (n, classes), original widths, decoded uint8 images)."""
    from ..backends.onnxrt import OnnxRuntimeRunner
    from ..decode.cpu import CpuDecoder
    from ..model import load_model_info

    info = load_model_info(model_path)
    spec = info.preprocessing
    runner = OnnxRuntimeRunner(info, threads=threads)
    kept, probs, widths, images = [], [], [], []
    buf = np.empty((batch_size, spec.channels, spec.height, spec.width), np.float32)
    with CpuDecoder(spec, threads=threads) as dec, runner:
        for s in range(0, len(records), batch_size):
            chunk = records[s : s + batch_size]
            batch = dec.decode_batch([r.path for r in chunk])
            x = normalize_into(buf, batch.images, spec)
            p = runner.infer(x)
            for k, (good, size) in enumerate(zip(batch.ok, batch.sizes)):
                if good:
                    kept.append(s + k)
                    probs.append(p[k])
                    widths.append(int(size[0]))
                    images.append(batch.images[k].copy())
    k = len(info.classes)
    return (
        np.asarray(kept, int),
        np.asarray(probs, np.float64).reshape(-1, k),
        np.asarray(widths, int),
        np.asarray(images, np.uint8).reshape(-1, spec.height, spec.width),
    )


def evaluate_onnx(
    model_path: str | os.PathLike,
    records: Sequence[Record],
    *,
    threads: int = 2,
    batch_size: int = 64,
    temperature: float | None = None,
    predictions: list | None = None,
) -> dict:
    """Metrics of the exported model on ``records`` through the inference path: classification
    metrics, per-width accuracy, urgent-referral sensitivity/specificity, ECE and reliability bins.
    ``temperature``: the one baked into the model, to also report the uncalibrated ECE.
    ``predictions``: a list that receives one dict per scan (for the sample grid)."""
    from ..calibration import expected_calibration_error, referral_metrics, reliability_bins, softmax
    from ..model import load_model_info

    classes = list(load_model_info(model_path).classes)
    kept, probs, widths, images = predict_onnx(model_path, records, threads=threads, batch_size=batch_size)
    # Any: calibration's functions are typed for sequences and take these arrays as they are
    y_true: Any = np.array([classes.index(records[i].label) for i in kept], int)
    y_pred: Any = probs.argmax(axis=1) if len(probs) else np.zeros(0, int)
    m = classification_metrics(y_true, y_pred, classes, groups=widths)
    m["referral"] = referral_metrics(y_true, y_pred, classes)
    m["ece"] = round(expected_calibration_error(probs, y_true), 4)
    m["reliability"] = reliability_bins(probs, y_true)
    if temperature:
        # The model outputs logits / T; T * log p recovers the logits up to a per-row constant.
        raw = softmax(np.log(np.clip(probs, 1e-12, None)) * float(temperature))
        m["ece_uncalibrated"] = round(expected_calibration_error(raw, y_true), 4)
        m["reliability_uncalibrated"] = reliability_bins(raw, y_true)
    m["mean_confidence"] = round(float(probs.max(axis=1).mean()), 4) if len(probs) else None
    if predictions is not None:
        for j, i in enumerate(kept):
            predictions.append(
                {
                    "rel": records[i].rel,
                    "true": records[i].label,
                    "pred": classes[int(y_pred[j])],
                    "confidence": float(probs[j].max()),
                    "p_true": float(probs[j][y_true[j]]),
                    "width": int(widths[j]),
                    "image": images[j],
                }
            )
    return m


def benchmark_onnx(model_path: str | os.PathLike, *, batch_size: int = 64, threads: int = 2, repeats: int = 20) -> dict:
    """Inference throughput of the ORT runner on one (random) batch: median and best img/s."""
    from ..backends.onnxrt import OnnxRuntimeRunner
    from ..bench.measure import repeat_timed, summarize
    from ..model import load_model_info

    info = load_model_info(model_path)
    spec = info.preprocessing
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (batch_size, spec.height, spec.width), dtype=np.uint8)
    x = normalize_into(np.empty((batch_size, spec.channels, spec.height, spec.width), np.float32), u8, spec)
    with OnnxRuntimeRunner(info, threads=threads) as runner:

        def one_batch() -> int:
            runner.infer(x)
            return batch_size

        timed = repeat_timed(one_batch, min_seconds=0.0, repeats=repeats, warmup=3)
    t = summarize([dt for _, dt in timed])  # seconds per batch
    return {
        "batch_size": batch_size,
        "threads": threads,
        "img_per_s_median": round(batch_size / t["median"], 1),
        "img_per_s_best": round(batch_size / t["min"], 1),
        "ms_per_batch_median": round(1000 * t["median"], 2),
    }


def benchmark_fresh(model_path, *, threads: int = 2) -> dict:
    """benchmark_onnx in a fresh interpreter: torch's idle worker threads in this one would skew it."""
    import subprocess
    import sys

    code = (
        "import json,sys; from octbatch.training.evaluate import benchmark_onnx; "
        f"print(json.dumps(benchmark_onnx(sys.argv[1], threads={int(threads)})))"
    )
    root = str(Path(__file__).resolve().parents[2])  # the folder that holds the octbatch package
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        res = subprocess.run(
            [sys.executable, "-c", code, str(model_path)], capture_output=True, text=True, timeout=300, env=env
        )
        if res.returncode == 0:
            d = json.loads(res.stdout.strip().splitlines()[-1])
            d["process"] = "fresh"
            return d
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        pass
    d = benchmark_onnx(model_path, threads=threads)
    d["process"] = "training process"
    return d
