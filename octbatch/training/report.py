"""`octbatch train --report-dir`: metrics.json and the pictures of every evaluated set."""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["write_report"]


def write_report(metrics: dict, out_dir: str | os.PathLike, *, predictions: dict | None = None) -> None:
    """metrics.json, training curves, confusion matrices and reliability diagrams per evaluated set,
    and a grid of sample predictions (a few correct per class and the worst mistakes)."""
    from .figures import draw_confusion_png, draw_curves_png, draw_reliability_png, draw_samples_png

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    classes = metrics["classes"]
    if metrics.get("history"):
        draw_curves_png(
            metrics["history"], out_dir / "training_curves.png", best_epoch=metrics["settings"].get("best_epoch")
        )
    titles = {
        "test_v3": "Kermany official test set (split_hint test-v3)",
        "test_val": "report-only split_hint test + val",
        "validation": "held-out validation patients",
        "width_holdout": "held-out scan widths",
    }
    for name, m in metrics.get("evaluation", {}).items():
        draw_confusion_png(
            m["confusion_matrix"], classes, out_dir / f"confusion_{name}.png", f"{titles.get(name, name)}, n={m['n']}"
        )
        if "reliability_uncalibrated" in m:
            draw_reliability_png(
                {
                    "before (T=1)": (m["reliability_uncalibrated"], m["ece_uncalibrated"]),
                    f"after (T={metrics.get('temperature', 1):.2f})": (m["reliability"], m["ece"]),
                },
                out_dir / f"reliability_{name}.png",
                title=f"reliability, {titles.get(name, name)}",
            )
    for name, preds in (predictions or {}).items():
        if name not in ("test_v3", "validation") or not preds:
            continue
        items = []
        for c in classes:  # the two most confident correct predictions per class
            right = sorted((p for p in preds if p["true"] == c and p["pred"] == c), key=lambda p: -p["confidence"])
            items += right[:2]
        wrong = sorted((p for p in preds if p["true"] != p["pred"]), key=lambda p: -p["confidence"])
        items += [dict(p, note="confident mistake") for p in wrong[:10]]
        unsure = sorted(preds, key=lambda p: p["confidence"])[:4]
        items += [dict(p, note="least confident") for p in unsure]
        for p in items:
            p.setdefault("note", f"{p['width']} px wide")
        draw_samples_png(
            items,
            out_dir / f"samples_{name}.png",
            title=f"sample predictions, {titles.get(name, name)}: "
            "2 correct per class, the 10 most confident mistakes, the 4 least confident",
        )
