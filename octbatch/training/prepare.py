"""From a data folder to what the training loop needs: records decoded once (strips for training crops,
the inference decode for validation and the near-duplicate check), split, extra roles (held-out widths,
the learning curve's unused scans), labels, and the normalisation measured on the training scans."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from ..archive import CLASS_NAMES
from ..errors import OctbatchError
from ..preprocess import Preprocessing
from .cache import decode_cache, decode_strips
from .data import Record, load_records, split_records

__all__ = ["TrainingData", "prepare_data"]


@dataclass
class TrainingData:
    records: list[Record]  # the readable scans, each with its role
    strips: np.ndarray  # (N, input_size, Wmax) uint8, aspect kept (decode_strips)
    strip_w: np.ndarray  # width of each strip
    scan_w: np.ndarray  # original scan widths
    exact: np.ndarray  # (N, H, W) uint8: what inference decodes with the base rule
    split: dict  # split_records' summary with counts per role (and per width)
    bad: list[str]  # unreadable scans, left out
    held_widths: set[int]
    y: np.ndarray  # class index per record
    tr: np.ndarray  # training rows
    va: np.ndarray  # validation rows
    spec: Preprocessing  # the model's preprocessing: the rule, plus mean/std of the training scans


def prepare_data(
    data_dir: str | os.PathLike,
    *,
    input_size: int,
    resize: str,
    threads: int,
    val_fraction: float,
    seed: int,
    near_dup: float,
    holdout_widths: Sequence[int],
    train_fraction: float,
    rng: np.random.Generator,
    log: Callable[[str], None],
) -> TrainingData:
    classes = list(CLASS_NAMES)
    records = load_records(data_dir)
    t0 = time.perf_counter()
    strips, strip_w, ok = decode_strips(records, input_size, threads=threads)
    bad = [r.rel for r, good in zip(records, ok) if not good]
    keep = np.flatnonzero(ok)
    records = [records[i] for i in keep]
    strips, strip_w = strips[keep], strip_w[keep]
    scan_w = np.array([r.width for r in records], float)
    base_spec = Preprocessing(input_size=(input_size, input_size), resize=resize)
    # The images inference produces for this rule: validation, near-duplicate check, normalisation.
    exact, _ = decode_cache(records, base_spec, threads=threads)
    log(f"decoded {len(records)} scans in {time.perf_counter() - t0:.1f}s ({len(bad)} unreadable, left out)")
    split = split_records(records, val_fraction=val_fraction, seed=seed, images=exact, near_dup=near_dup)
    held_widths = {int(w) for w in holdout_widths}
    _extra_roles(records, held_widths, train_fraction, rng, len(classes))
    _role_counts(records, split)
    log(f"split: {json.dumps(split['counts'])}")
    roles = np.array([r.role for r in records])
    y = np.array([classes.index(r.label) for r in records])
    tr = np.flatnonzero(roles == "train")
    va = np.flatnonzero(roles == "val")
    if len(tr) == 0:
        raise OctbatchError("no scans left for training", "Check the data folder and its manifest.")
    spec = _normalisation(base_spec, exact, tr)
    return TrainingData(records, strips, strip_w, scan_w, exact, split, bad, held_widths, y, tr, va, spec)


def _extra_roles(
    records: list[Record], held_widths: set[int], train_fraction: float, rng: np.random.Generator, n_classes: int
) -> None:
    """Scans of held-out widths become width_holdout; with train_fraction < 1, the training scans not
    drawn become unused (the learning curve)."""
    for r in records:
        if held_widths and r.role in ("train", "val") and r.width in held_widths:
            r.role = "width_holdout"
    if train_fraction < 1.0:
        tr_all = [r for r in records if r.role == "train"]
        pick = set(
            rng.choice(len(tr_all), size=max(n_classes, round(train_fraction * len(tr_all))), replace=False).tolist()
        )
        for k, r in enumerate(tr_all):
            if k not in pick:
                r.role, r.why = "unused", f"left out by train_fraction={train_fraction}"


def _role_counts(records: list[Record], split: dict) -> None:
    split["counts"] = {
        role: dict(sorted(Counter(r.label for r in records if r.role == role).items()))
        for role in ("train", "val", "report", "excluded", "width_holdout", "unused")
    }
    split["counts_by_width"] = {
        role: dict(sorted(Counter(f"{r.label} {r.width}x{r.height}" for r in records if r.role == role).items()))
        for role in ("train", "val", "report", "excluded", "width_holdout")
    }


def _normalisation(base_spec: Preprocessing, exact: np.ndarray, tr: np.ndarray) -> Preprocessing:
    """Normalisation from the training scans (0..1 pixel scale), stored in the model's metadata."""
    px = exact[tr].astype(np.float64) / 255.0
    mean, std = float(px.mean()), float(px.std())
    del px
    return replace(base_spec, mean=(round(mean, 5),), std=(round(max(std, 1e-3), 5),))
