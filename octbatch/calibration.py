"""Calibration and clinical-view metrics on predicted probabilities (numpy only).

* ``fit_temperature``: temperature scaling (Guo et al., ICML 2017): one scalar T > 0 that minimises
  the negative log-likelihood of softmax(logits / T) on held-out scans. It never changes the argmax.
* ``expected_calibration_error`` / ``reliability_bins``: ECE with equal-width confidence bins (the
  usual 15), and the per-bin table a reliability diagram draws.
* ``referral_metrics``: the referral view of Kermany et al. 2018 (urgent: CNV or DME; routine:
  DRUSEN; observation: NORMAL), with sensitivity/specificity of "urgent referral".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "REFERRAL",
    "softmax",
    "log_softmax",
    "nll",
    "fit_temperature",
    "reliability_bins",
    "expected_calibration_error",
    "referral_metrics",
]

# Kermany et al. 2018: CNV and DME need urgent referral, drusen routine, normal observation.
REFERRAL = {"CNV": "urgent", "DME": "urgent", "DRUSEN": "routine", "NORMAL": "observation"}


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def softmax(z: np.ndarray) -> np.ndarray:
    return np.exp(log_softmax(z))


def nll(logits: np.ndarray, y: Sequence[int], temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of softmax(logits / temperature)."""
    labels = np.asarray(y, int)
    lp = log_softmax(np.asarray(logits, np.float64) / float(temperature))
    return float(-lp[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, y: Sequence[int], *, lo: float = 0.05, hi: float = 20.0) -> float:
    """The T in [lo, hi] minimising NLL, by golden-section search on log T (NLL is convex in 1/T)."""
    logits = np.asarray(logits, np.float64)
    if len(logits) == 0:
        return 1.0
    a, b = np.log(lo), np.log(hi)
    g = (np.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = nll(logits, y, np.exp(c)), nll(logits, y, np.exp(d))
    for _ in range(80):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = nll(logits, y, np.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = nll(logits, y, np.exp(d))
    return float(np.exp((a + b) / 2))


def reliability_bins(probs: np.ndarray, y: Sequence[int], n_bins: int = 15) -> list[dict]:
    """Per confidence bin (top-1 probability, equal width on [0, 1]): count, mean confidence, accuracy."""
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(y, int)
    conf = probs.max(axis=1) if len(probs) else np.zeros(0)
    correct = (probs.argmax(axis=1) == labels) if len(probs) else np.zeros(0, bool)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # A confidence of exactly 1.0 belongs to the last bin.
    which = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, n_bins - 1)
    out = []
    for k in range(n_bins):
        m = which == k
        n = int(m.sum())
        out.append(
            {
                "lo": round(float(edges[k]), 4),
                "hi": round(float(edges[k + 1]), 4),
                "n": n,
                "confidence": round(float(conf[m].mean()), 4) if n else None,
                "accuracy": round(float(correct[m].mean()), 4) if n else None,
            }
        )
    return out


def expected_calibration_error(probs: np.ndarray, y: Sequence[int], n_bins: int = 15) -> float:
    """sum over bins of (n_bin / n) * |accuracy_bin - confidence_bin|."""
    bins = reliability_bins(probs, y, n_bins)
    n = sum(b["n"] for b in bins)
    if not n:
        return 0.0
    return float(sum(b["n"] / n * abs(b["accuracy"] - b["confidence"]) for b in bins if b["n"]))


def referral_metrics(y_true: Sequence[int], y_pred: Sequence[int], classes: Sequence[str]) -> dict:
    """Urgent-referral sensitivity/specificity and the accuracy of the three-level referral decision."""
    level = np.array([REFERRAL.get(c, "unknown") for c in classes])
    t = level[np.asarray(y_true, int)]
    p = level[np.asarray(y_pred, int)]
    urgent_t, urgent_p = t == "urgent", p == "urgent"
    tp = int((urgent_t & urgent_p).sum())
    tn = int((~urgent_t & ~urgent_p).sum())
    sens = tp / int(urgent_t.sum()) if urgent_t.any() else None
    spec = tn / int((~urgent_t).sum()) if (~urgent_t).any() else None
    return {
        "urgent_sensitivity": round(sens, 4) if sens is not None else None,
        "urgent_specificity": round(spec, 4) if spec is not None else None,
        "urgent_n": int(urgent_t.sum()),
        "non_urgent_n": int((~urgent_t).sum()),
        "referral_accuracy": round(float((t == p).mean()), 4) if len(t) else None,
    }
