"""``train(data_dir, out)``: the steps in order, data -> loop -> export -> evaluate -> metrics (and
speed, report). Every step is its own module; this one only sequences them and gathers what they return.
torch (and onnx) are imported inside functions only: ``import octbatch`` must never load them."""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..archive import CLASS_NAMES
from .card import card_facts, card_text
from .data import REPORT_SETS
from .evaluate import benchmark_fresh, evaluate_onnx
from .export import export_onnx, update_card
from .prepare import TrainingData, prepare_data
from .recipe import DEFAULTS, check_arguments

__all__ = ["train"]

_NOT_SETTINGS = ("data_dir", "out", "log", "report_dir", "benchmark", "evaluate_report_only")
_DATA_SETTINGS = (
    "input_size",
    "resize",
    "threads",
    "val_fraction",
    "seed",
    "near_dup",
    "holdout_widths",
    "train_fraction",
)


@contextmanager
def _torch_threads(torch, threads: int):
    """torch's intra-op threads set to ``threads`` for the block, restored after it."""
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(threads)))
    try:
        yield
    finally:
        torch.set_num_threads(prev_threads)


def train(
    data_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    epochs: int = DEFAULTS["epochs"],
    seed: int = 0,
    input_size: int = DEFAULTS["input_size"],
    batch_size: int = DEFAULTS["batch_size"],
    threads: int = 2,
    log: Callable[[str], None] = print,
    lr: float = DEFAULTS["lr"],
    weight_decay: float = DEFAULTS["weight_decay"],
    val_fraction: float = DEFAULTS["val_fraction"],
    widths: Sequence[int] = DEFAULTS["widths"],
    stem: int = DEFAULTS["stem"],
    near_dup: float = DEFAULTS["near_dup"],
    resize: str = DEFAULTS["resize"],
    lateral_scale: tuple[float, float] | None = DEFAULTS["lateral_scale"],
    density: tuple[float, float] | None = DEFAULTS["density"],
    holdout_widths: Sequence[int] = (),
    train_fraction: float = 1.0,
    report_dir: str | os.PathLike | None = None,
    benchmark: bool = True,
    evaluate_report_only: bool = True,
) -> dict:
    """Train, export ``out`` (ONNX with octbatch metadata), evaluate it with ONNX Runtime; return metrics.

    The epoch kept is the one with the best macro F1 on the patient-wise validation split (ties:
    lower validation loss); a temperature fitted on the same validation scans is baked into the
    exported graph, so every backend outputs calibrated probabilities. Report-only scans (manifest
    split_hint test-v3/test/val) are evaluated once, at the end, on the exported file.

    ``resize``: the preprocessing rule stored in the model (``stretch`` or ``center_crop``).
    ``lateral_scale``: range of the random lateral scale factor (None: off).
    ``density``: (lo, hi) A-scan counts: show every scan at a density drawn log-uniformly from this range
    instead (overrides ``lateral_scale``).
    ``holdout_widths``: scan widths never trained or validated on; scans of those widths (not report-only)
    are evaluated at the end as ``width_holdout`` (the width experiment of engines/README.md).
    ``train_fraction``: train on this fraction of the training scans (the learning curve).
    """
    settings = {k: v for k, v in locals().items() if k not in _NOT_SETTINGS}
    from .._deps import require

    # OpenMP's default spin-wait makes torch's 2-thread training ~10x slower as soon as another process
    # competes for the cores (measured: 4.3 s vs 0.37 s per batch); passive waiting costs nothing alone.
    # Only effective before torch is first imported.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    torch = require("torch", purpose="training")
    t_start = time.perf_counter()
    out = Path(out)
    check_arguments(out, epochs=epochs, resize=resize, train_fraction=train_fraction)
    with _torch_threads(torch, threads):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        rng = np.random.default_rng(seed)
        data = prepare_data(data_dir, **{k: settings[k] for k in _DATA_SETTINGS}, rng=rng, log=log)
        run = _train_and_export(torch, data, out, settings, gen=gen, rng=rng, log=log, t_start=t_start)
    evaluation, predictions = _evaluate_sets(out, data, run["temperature"], threads, evaluate_report_only, log)
    if "validation" in evaluation:
        update_card(out, card_text(card_facts(**{**run["card"], "validation": evaluation["validation"]})))
    metrics = _metrics(out, data, run, settings, evaluation, torch.__version__)
    if benchmark:
        metrics["speed"] = benchmark_fresh(out, threads=threads)
        log(f"speed: {metrics['speed']}")
    if report_dir is not None:
        from .report import write_report

        write_report(metrics, report_dir, predictions=predictions)
    return metrics


def _train_and_export(torch, data: TrainingData, out: Path, s: dict, *, gen, rng, log, t_start: float) -> dict:
    """Build the network, fit it, export it with the temperature baked in and a card without validation
    figures yet. Returns what the later steps need (parameters, history, kept epoch, temperature, card facts)."""
    from .loop import fit
    from .net import build_model, scaled_model

    spec = data.spec
    model = build_model(len(CLASS_NAMES), channels=spec.channels, stem=s["stem"], widths=s["widths"])
    n_params = int(sum(p.numel() for p in model.parameters()))
    log(
        f"model: {n_params:,} parameters; resize={s['resize']} lateral_scale={s['lateral_scale']} density={s['density']}; mean={spec.mean[0]} std={spec.std[0]}"
    )
    res = fit(
        torch,
        model,
        data,
        epochs=s["epochs"],
        lr=s["lr"],
        weight_decay=s["weight_decay"],
        rng=rng,
        log=log,
        hw=(s["input_size"], s["input_size"]),
        batch_size=s["batch_size"],
        resize=s["resize"],
        lateral_scale=s["lateral_scale"],
        density=s["density"],
        gen=gen,
    )
    train_seconds = time.perf_counter() - t_start
    card = dict(
        n_params=n_params,
        spec=spec,
        split=data.split,
        best_epoch=res.best_epoch,
        epochs=s["epochs"],
        seed=s["seed"],
        temperature=res.temperature,
        validation=None,
    )
    scaled = scaled_model(torch, model, res.temperature)
    export_onnx(torch, scaled, spec, out, list(CLASS_NAMES), card_text(card_facts(**card)), temperature=res.temperature)
    log(f"exported {out} ({out.stat().st_size / 1e6:.2f} MB)")
    return {
        "parameters": n_params,
        "history": res.history,
        "best_epoch": res.best_epoch,
        "temperature": res.temperature,
        "card": card,
        "train_seconds": train_seconds,
    }


def _evaluate_sets(out: Path, data: TrainingData, temperature: float, threads: int, report_only: bool, log):
    """Each evaluated set (validation, width hold-out, report-only sets) through the exported file:
    (metrics per set, per-scan predictions per set)."""
    by_role = defaultdict(list)
    for r in data.records:
        by_role[r.role].append(r)
    evaluation: dict = {}
    predictions: dict[str, list] = {}
    sets = {"validation": by_role["val"], "width_holdout": by_role["width_holdout"]}
    if report_only:
        for name, hints in REPORT_SETS.items():
            sets[name] = [r for r in by_role["report"] if r.split_hint in hints]
    for name, recs in sets.items():
        if recs:
            predictions[name] = []
            evaluation[name] = evaluate_onnx(
                out, recs, threads=threads, temperature=temperature, predictions=predictions[name]
            )
            m = evaluation[name]
            log(
                f"{name}: n={m['n']} accuracy={m['accuracy']} balanced={m['balanced_accuracy']} macro_f1={m['macro_f1']} "
                f"urgent sens={m['referral']['urgent_sensitivity']} ece={m['ece']} (uncalibrated {m.get('ece_uncalibrated')})"
            )
    return evaluation, predictions


def _metrics(out: Path, data: TrainingData, run: dict, s: dict, evaluation: dict, torch_version: str) -> dict:
    """metrics.json: the file, the recipe as run, the split, the history, the evaluation."""
    from ..model import file_sha256, load_model_info

    info = load_model_info(out)
    lateral_scale, density = s["lateral_scale"], s["density"]
    return {
        "model": out.name,
        "sha256": file_sha256(out),
        "bytes": out.stat().st_size,
        "classes": list(CLASS_NAMES),
        "parameters": run["parameters"],
        "preprocessing": json.loads(data.spec.to_json()),
        "temperature": round(run["temperature"], 4),
        "card": info.card,
        "settings": {
            "epochs": s["epochs"],
            "best_epoch": run["best_epoch"],
            "seed": s["seed"],
            "input_size": s["input_size"],
            "batch_size": s["batch_size"],
            "lr": s["lr"],
            "weight_decay": s["weight_decay"],
            "label_smoothing": DEFAULTS["label_smoothing"],
            "val_fraction": s["val_fraction"],
            "stem": s["stem"],
            "widths": list(s["widths"]),
            "near_dup_threshold": s["near_dup"],
            "threads": s["threads"],
            "resize": s["resize"],
            "lateral_scale": list(lateral_scale) if lateral_scale else None,
            "density": list(density) if density else None,
            "holdout_widths": sorted(data.held_widths),
            "train_fraction": s["train_fraction"],
            "optimizer": "AdamW",
            "schedule": "OneCycle (15% warm-up, cosine)",
            "sampling": "class-balanced",
            "selection": "best validation macro F1 (ties: lower validation loss)",
            "calibration": "temperature scaling on the validation patients, baked into the graph",
        },
        "split": data.split,
        "unreadable": data.bad,
        "history": run["history"],
        "train_seconds": round(run["train_seconds"], 1),
        "evaluation": evaluation,
        "torch_version": torch_version,
    }
