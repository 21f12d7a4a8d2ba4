"""`octbatch train-gate`: train the gate, choose its threshold on training-side validation B-scans, write
it, and measure it: false flags on the report-only scans, and (holdout) the catch rate of each non-OCT
source or category scored by a gate trained without it."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from ..errors import OctbatchError
from .gate_data import TRAIN_HINTS, OctImage, load_base, load_non_oct, load_oct, runtime_views
from .gate_loop import GATE_DEFAULTS, apply_rules, export_gate, torch_scores, train_gate, train_stats
from .gate_synth import SYNTH_KINDS

__all__ = ["evaluate_holdout", "rates", "train_gate_file"]


def _choose_threshold(val_scores: np.ndarray, cfg) -> float:
    """The largest threshold <= max_threshold that flags at most target_false_flag of the training-side
    validation B-scans (never a report-only scan)."""
    q = float(np.quantile(val_scores, cfg["target_false_flag"])) if len(val_scores) else cfg["max_threshold"]
    return float(min(cfg["max_threshold"], max(0.02, q * 0.999)))


def rates(scores: np.ndarray, threshold: float) -> float:
    return float((scores < threshold).mean()) if len(scores) else float("nan")


def evaluate_holdout(
    oct_items,
    oct_bases,
    neg_items,
    neg_bases,
    *,
    spec,
    by: str = "source",
    seed: int = 0,
    threads: int = 2,
    neg_views=None,
    log=None,
    only: Sequence[str] | None = None,
    **overrides,
) -> dict:
    """One gate per held-out group (by="source": source_repo; by="category"), trained without that
    group's real negatives; each held-out image scored by the gate that never saw its group.
    Returns per-image scores and catch rates per group and per category."""
    cfg = {**GATE_DEFAULTS, **overrides}
    # the same training B-scans as the shipped gate (its validation tenth left out)
    pool = [i for i, it in enumerate(oct_items) if it.split in TRAIN_HINTS and oct_bases[i] is not None]
    pool = list(np.random.default_rng(seed).permutation(pool))
    pos = [oct_bases[i] for i in sorted(pool[max(1, int(len(pool) * cfg["val_fraction"])) :])]
    if neg_views is None:
        neg_views, _ = runtime_views(neg_items, spec, threads=threads)
    groups = sorted({getattr(it, by) for it in neg_items} if only is None else only)
    from ..gate import stats_features

    scores = np.full(len(neg_items), np.nan, np.float32)
    cnn, st = scores.copy(), scores.copy()
    for g in groups:
        keep = [b for it, b in zip(neg_items, neg_bases) if getattr(it, by) != g and b is not None]
        model = train_gate(pos, keep, seed=seed, threads=threads, **cfg)
        stats_fn, _ = train_stats(pos, keep, seed=seed, **cfg)
        rows = [i for i, it in enumerate(neg_items) if getattr(it, by) == g]
        cnn[rows] = apply_rules(torch_scores(model, neg_views[rows]), neg_views[rows])
        st[rows] = apply_rules(stats_fn(stats_features(neg_views[rows])), neg_views[rows])
        scores[rows] = np.minimum(cnn[rows], st[rows])
        if log:
            log(
                f"held out {by} {g}: {len(rows)} images, median score {float(np.median(scores[rows])):.3f} "
                f"(CNN {float(np.median(cnn[rows])):.3f}, statistics {float(np.median(st[rows])):.3f})"
            )
    return {
        "by": by,
        "groups": groups,
        "scores": scores.tolist(),
        "cnn_scores": cnn.tolist(),
        "stats_scores": st.tolist(),
    }


def _by(items, scores, key, threshold):
    out: dict[str, list[bool]] = {}
    for it, s in zip(items, scores):
        out.setdefault(getattr(it, key), []).append(float(s) < threshold)
    return {k: {"n": len(v), "flagged": int(sum(v)), "rate": round(sum(v) / len(v), 4)} for k, v in sorted(out.items())}


def train_gate_file(
    oct_dir: str | os.PathLike,
    non_oct_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    seed: int = 0,
    threads: int = 2,
    model: str | None = None,
    holdout: bool = False,
    log=None,
    **overrides,
) -> dict:
    """Train the gate on ``oct_dir`` (B-scans, manifest with split_hint) and ``non_oct_dir`` (manifest with
    category and source_repo), write it to ``out`` with its threshold, and measure it: false flags on
    every report-only split of ``oct_dir`` (through the runtime path, with the classifier's
    preprocessing and with a stretch rule), and, with holdout=True, the catch rate of every non-OCT
    source scored by a gate trained without that source (minutes more). Returns the metrics."""
    from ..gate import Gate
    from ..model import load_model_info

    cfg = {**GATE_DEFAULTS, **overrides}
    t0 = time.perf_counter()
    spec = load_model_info(model).preprocessing
    d = _GateData.load(oct_dir, non_oct_dir, seed=seed, threads=threads, val_fraction=cfg["val_fraction"])
    if log:
        log(
            f"gate: {len(d.train_rows)} training B-scans, {len(d.val_rows)} validation B-scans, {len(d.negs)} real negatives, "
            f"{cfg['synth_per_epoch']} synthetic negatives per epoch; report-only scans kept out: {len(d.report_rows)}"
        )
    threshold, info, oct_ok, val_scores = _fit_and_export(d, spec, out, cfg, seed=seed, threads=threads, log=log)
    gate = Gate(out)
    metrics = {
        "gate": str(out),
        "threshold": gate.threshold,
        "validation_false_flag": rates(val_scores, threshold),
        "classifier_preprocessing": json.loads(spec.to_json()),
    }
    rep_items = [d.oct_items[i] for i in d.report_rows if oct_ok[i]]
    metrics.update(_report_only_false_flags(gate, rep_items, spec, threshold, threads))
    neg_views, _ = runtime_views(d.neg_items, spec, threads=threads)
    s, _ = _score_views(gate, neg_views)
    metrics["non_oct_caught_in_sample"] = _by(d.neg_items, s, "category", threshold)
    if holdout:
        for by in ("source", "category"):
            h = evaluate_holdout(
                d.oct_items,
                d.oct_bases,
                d.neg_items,
                d.neg_bases,
                spec=spec,
                by=by,
                seed=seed,
                threads=threads,
                neg_views=neg_views,
                log=log,
                **cfg,
            )
            metrics.update(_holdout_metrics(h, d.neg_items, by, threshold))
    metrics["seconds"] = round(time.perf_counter() - t0, 1)
    return metrics


@dataclass
class _GateData:
    """The gate's images, decoded once, and which OCT rows train, validate, or are report-only."""

    oct_items: list[OctImage]
    neg_items: list[OctImage]
    oct_bases: list
    neg_bases: list
    train_rows: list[int]
    val_rows: list[int]
    report_rows: list[int]
    negs: list[np.ndarray]  # the readable real negatives

    @classmethod
    def load(cls, oct_dir, non_oct_dir, *, seed: int, threads: int, val_fraction: float) -> _GateData:
        oct_items, neg_items = load_oct(oct_dir), load_non_oct(non_oct_dir)
        oct_bases, neg_bases = load_base(oct_items, threads=threads), load_base(neg_items, threads=threads)
        pool = [i for i, it in enumerate(oct_items) if it.split in TRAIN_HINTS and oct_bases[i] is not None]
        report_rows = [i for i, it in enumerate(oct_items) if it.split not in TRAIN_HINTS]
        if not pool:
            raise OctbatchError(
                f"no training B-scans in {oct_dir} (split_hint train or unknown)",
                "Give the OCT folder whose manifest has train/unknown rows.",
            )
        rng = np.random.default_rng(seed)
        pool = list(rng.permutation(pool))
        n_val = max(1, int(len(pool) * val_fraction))
        negs = [b for b in neg_bases if b is not None]
        return cls(
            oct_items, neg_items, oct_bases, neg_bases, sorted(pool[n_val:]), sorted(pool[:n_val]), report_rows, negs
        )


def _fit_and_export(d: _GateData, spec, out, cfg: dict, *, seed: int, threads: int, log):
    """Train both halves, choose the threshold on the validation B-scans, write the gate with its metadata.
    Returns (threshold, metadata, readable-OCT mask, validation scores)."""
    from ..gate import STATS_NAMES, stats_features

    train_bases = [d.oct_bases[i] for i in d.train_rows]
    net = train_gate(train_bases, d.negs, seed=seed, threads=threads, log=log, **cfg)
    stats_fn, stats_model = train_stats(train_bases, d.negs, seed=seed, **cfg)
    oct_views, oct_ok = runtime_views(d.oct_items, spec, threads=threads)
    vv = oct_views[d.val_rows]
    val_scores = apply_rules(np.minimum(torch_scores(net, vv), stats_fn(stats_features(vv))), vv)
    threshold = _choose_threshold(val_scores, cfg)
    info = {
        "version": 1,
        "threshold": round(threshold, 4),
        "input_size": [64, 64],
        "seed": seed,
        "stats_model": {**stats_model, "features": list(STATS_NAMES)},
        "combine": "min(CNN probability, statistics probability)",
        "trained_on": {
            "oct_scans": len(d.train_rows),
            "oct_splits": list(TRAIN_HINTS),
            "non_oct_images": len(d.negs),
            "synthetic_kinds": list(SYNTH_KINDS),
        },
        "rules": "octbatch.gate rules: blank (std < 6 or 99th percentile < 40 of 255, at 64x64) scores 0; "
        "reason 'blank or no retina visible' when the 99th percentile is below 64",
    }
    export_gate(net, out, info)
    return threshold, info, oct_ok, val_scores


def _report_only_false_flags(gate, rep_items: list[OctImage], spec, threshold: float, threads: int) -> dict:
    """False flags on the report-only B-scans, with the classifier's rule and with a stretch rule."""
    out = {}
    for name, sp in (("classifier_rule", spec), ("stretch_rule", replace(spec, resize="stretch"))):
        views, ok = runtime_views(rep_items, sp, threads=threads)
        s, _ = _score_views(gate, views[ok])
        out[f"report_only_false_flags_{name}"] = {
            "all": {"n": int(ok.sum()), "flagged": int((s < threshold).sum()), "rate": round(rates(s, threshold), 5)},
            **_by([it for it, o in zip(rep_items, ok) if o], s, "split", threshold),
        }
    return out


def _holdout_metrics(h: dict, neg_items: list[OctImage], by: str, threshold: float) -> dict:
    """Catch rates of the held-out groups (all, per category, per source; each half alone) and the misses."""
    hs = np.array(h["scores"])
    out: dict = {
        f"non_oct_caught_holding_out_{by}": {
            "all": {"n": len(hs), "flagged": int((hs < threshold).sum()), "rate": round(rates(hs, threshold), 4)},
            **{f"category:{k}": v for k, v in _by(neg_items, hs, "category", threshold).items()},
            **{f"source:{k}": v for k, v in _by(neg_items, hs, "source", threshold).items()},
        },
        f"missed_holding_out_{by}": [f"{it.rel} ({v:.3f})" for it, v in zip(neg_items, hs) if v >= threshold],
    }
    for half in ("cnn", "stats"):
        hh = np.array(h[f"{half}_scores"])
        out[f"non_oct_caught_holding_out_{by}_{half}_alone"] = {
            "all": round(rates(hh, threshold), 4),
            **{k: v["rate"] for k, v in _by(neg_items, hh, "category", threshold).items()},
        }
    return out


def _score_views(gate, views01: np.ndarray):
    """Gate.score on float views (what runtime_views made) without a second resize."""
    u8 = np.clip(views01[:, 0] * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return gate.score(u8)
