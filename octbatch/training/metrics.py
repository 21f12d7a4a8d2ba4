"""Classification metrics of predicted against true class indices (numpy only)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

__all__ = ["classification_metrics"]


def classification_metrics(
    y_true: Sequence[int] | np.ndarray,
    y_pred: Sequence[int] | np.ndarray,
    classes: Sequence[str],
    groups: Sequence | np.ndarray | None = None,
) -> dict:
    """Accuracy, balanced accuracy, macro F1, per-class precision/recall/F1/support, confusion matrix
    (rows = true class, columns = predicted), and accuracy per group (e.g. original scan width)."""
    yt = np.asarray(y_true, int)
    yp = np.asarray(y_pred, int)
    k = len(classes)
    cm = np.zeros((k, k), int)
    for t, p in zip(yt, yp):
        cm[t, p] += 1
    per = {}
    f1s, recs = [], []
    for i, c in enumerate(classes):
        tp = cm[i, i]
        support = int(cm[i].sum())
        predicted = int(cm[:, i].sum())
        prec = tp / predicted if predicted else 0.0
        rec = tp / support if support else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        per[c] = {
            "precision": round(float(prec), 4),
            "recall": round(float(rec), 4),
            "f1": round(float(f1), 4),
            "support": support,
        }
        if support:
            f1s.append(f1)
            recs.append(rec)
    out = {
        "n": int(len(yt)),
        "accuracy": round(float((yt == yp).mean()) if len(yt) else 0.0, 4),
        "balanced_accuracy": round(float(np.mean(recs)) if recs else 0.0, 4),
        "macro_f1": round(float(np.mean(f1s)) if f1s else 0.0, 4),
        "per_class": per,
        "confusion_matrix": cm.tolist(),
    }
    if groups is not None:
        g = np.asarray(groups)
        by = {}
        for key in sorted(set(g.tolist()), key=lambda v: (str(type(v)), v)):
            m = g == key
            by[str(key)] = {
                "n": int(m.sum()),
                "accuracy": round(float((yt[m] == yp[m]).mean()), 4),
                "classes": dict(sorted(Counter(classes[t] for t in yt[m]).items())),
            }
        out["accuracy_by_width"] = by
    return out
