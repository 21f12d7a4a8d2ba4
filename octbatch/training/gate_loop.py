"""Training the gate's two halves: the tiny CNN (torch, imported inside functions) and the logistic
regression on image statistics (numpy); their scores, the blank rule, and the ONNX export."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .gate_data import BASE_HEIGHT, random_view
from .gate_synth import SYNTH_KINDS, synth_negative

__all__ = [
    "GATE_DEFAULTS",
    "apply_rules",
    "build_gate_model",
    "export_gate",
    "fit_logreg",
    "torch_scores",
    "train_gate",
    "train_stats",
]

GATE_DEFAULTS = dict(
    epochs=8,
    batch_size=128,
    lr=3e-3,
    weight_decay=1e-4,
    synth_per_epoch=1600,
    real_neg_repeat=8,
    val_fraction=0.1,
    target_false_flag=0.002,
    max_threshold=0.5,
)


def build_gate_model():
    """Four 3x3/2 conv layers (64 -> 4 px), averaged along the width (a B-scan's layers run
    horizontally; the vertical layout is kept), one linear logit. About 15k parameters."""
    from .._deps import require

    torch = require("torch", purpose="training the gate")
    nn: Any = torch.nn

    def cbr(i, o):
        return nn.Sequential(nn.Conv2d(i, o, 3, 2, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True))

    class GateNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(cbr(1, 8), cbr(8, 16), cbr(16, 32), cbr(32, 32))
            self.drop = nn.Dropout(0.2)
            self.head = nn.Linear(32 * 4, 1)

        def forward(self, x):
            f = self.features(x - 0.25).mean(dim=3)  # (N, 32, 4): pooled along the width
            return self.head(self.drop(f.flatten(1)))

    return GateNet()


def _epoch_batch(pos_bases, neg_bases, oct_bases, rng, cfg):
    xs, ys = [], []
    for b in pos_bases:
        xs.append(random_view(b, rng))
        ys.append(1.0)
    for _ in range(cfg["real_neg_repeat"]):
        for b in neg_bases:
            xs.append(random_view(b, rng))
            ys.append(0.0)
    for k in range(cfg["synth_per_epoch"]):
        kind = SYNTH_KINDS[k % len(SYNTH_KINDS)]
        img = synth_negative(kind, rng, oct_bases, BASE_HEIGHT, int(rng.choice([BASE_HEIGHT, 2 * BASE_HEIGHT])))
        xs.append(random_view(img, rng))
        ys.append(0.0)
    return np.stack(xs)[:, None].astype(np.float32) / 255.0, np.array(ys, np.float32)


def train_gate(
    pos_bases: Sequence[np.ndarray],
    neg_bases: Sequence[np.ndarray],
    *,
    seed: int = 0,
    threads: int = 2,
    log=None,
    **overrides,
):
    """Train the gate CNN; returns the torch model (eval mode). Positives and negatives are base images."""
    from .._deps import require

    torch = require("torch", purpose="training the gate")
    cfg = {**GATE_DEFAULTS, **overrides}
    torch.manual_seed(seed)
    torch.set_num_threads(max(1, threads))
    rng = np.random.default_rng(seed)
    model = build_gate_model()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    steps_per_epoch = None
    sched = None
    oct_bases = list(pos_bases)
    for epoch in range(cfg["epochs"]):
        t0 = time.perf_counter()
        x, y = _epoch_batch(pos_bases, neg_bases, oct_bases, rng, cfg)
        n_pos, n_neg = float(y.sum()), float(len(y) - y.sum())
        w = np.where(y > 0, 0.5 / n_pos, 0.5 / n_neg).astype(np.float32) * len(y)
        order = rng.permutation(len(y))
        bs = cfg["batch_size"]
        if sched is None:
            steps_per_epoch = (len(y) + bs - 1) // bs
            sched = torch.optim.lr_scheduler.OneCycleLR(
                opt, max_lr=cfg["lr"], total_steps=steps_per_epoch * cfg["epochs"] + 10
            )
        model.train()
        total = 0.0
        for i in range(0, len(y), bs):
            idx = order[i : i + bs]
            xb, yb, wb = torch.from_numpy(x[idx]), torch.from_numpy(y[idx]), torch.from_numpy(w[idx])
            logit = model(xb).view(-1)
            loss = (torch.nn.functional.binary_cross_entropy_with_logits(logit, yb, reduction="none") * wb).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        if log:
            log(
                f"gate epoch {epoch + 1}/{cfg['epochs']}: loss {total / len(y):.4f} ({time.perf_counter() - t0:.1f} s, {len(y)} views)"
            )
    model.eval()
    return model


def fit_logreg(X: np.ndarray, y: np.ndarray, w: np.ndarray, *, iters: int = 600, lr: float = 0.5, l2: float = 1e-3):
    """Weighted logistic regression on standardised features by gradient descent (numpy, deterministic).
    Returns (predict function, model dict for the gate's metadata)."""
    from ..gate import stats_probability

    mu, sd = X.mean(0), X.std(0) + 1e-6
    Z = (X - mu) / sd
    beta, b0 = np.zeros(Z.shape[1]), 0.0
    for _ in range(iters):
        p = 1 / (1 + np.exp(-np.clip(Z @ beta + b0, -60, 60)))
        g = w * (p - y)
        beta -= lr * (Z.T @ g / w.sum() + l2 * beta)
        b0 -= lr * g.sum() / w.sum()
    model = {
        "mu": [float(v) for v in mu],
        "sd": [float(v) for v in sd],
        "beta": [float(v) for v in beta],
        "b0": float(b0),
    }
    return (lambda Xn: stats_probability(Xn, model)), model


def train_stats(pos_bases, neg_bases, *, seed: int = 0, **overrides):
    """The statistics half of the gate: stats_features of random views (two per training B-scan, the
    real negatives repeated like the CNN's, the same kinds of synthetic negatives), class-balanced."""
    from ..gate import stats_features

    cfg = {**GATE_DEFAULTS, **overrides}
    rng = np.random.default_rng(seed + 1000)
    xs, ys = [], []
    for _ in range(2):
        x, y = _epoch_batch(pos_bases, neg_bases, list(pos_bases), rng, cfg)
        xs.append(stats_features(x))
        ys.append(y)
    X, y = np.concatenate(xs), np.concatenate(ys)
    w = np.where(y > 0, 0.5 / y.sum(), 0.5 / (len(y) - y.sum()))
    return fit_logreg(X.astype(np.float64), y, w)


def torch_scores(model, x01: np.ndarray) -> np.ndarray:
    """Gate probabilities of float inputs (N,1,64,64) with the torch model (rule 1 not applied)."""
    import torch

    with torch.no_grad():
        out = []
        for i in range(0, len(x01), 512):
            out.append(torch.sigmoid(model(torch.from_numpy(np.ascontiguousarray(x01[i : i + 512])))).view(-1).numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def apply_rules(p: np.ndarray, x01: np.ndarray) -> np.ndarray:
    """Rule 1 of octbatch.gate (blank frames score 0) on CNN probabilities."""
    from ..gate import blank_mask, image_stats

    p = p.copy()
    p[blank_mask(*image_stats(x01))] = 0.0
    return p


def export_gate(model, out: str | os.PathLike, info: dict) -> None:
    """Write the gate to ONNX (input `input` (N,1,64,64) float 0..1, output `logit` (N,1)) with its
    metadata (`octbatch.gate`: threshold, version, what it was trained on) next to the weights."""
    import warnings

    import torch

    from .._deps import require
    from ..gate import GATE_SIZE, META_GATE
    from .export import set_metadata

    onnx = require("onnx", purpose="exporting the gate")
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(1, 1, *GATE_SIZE),),
            str(tmp),
            input_names=["input"],
            output_names=["logit"],
            dynamic_axes={"input": {0: "batch"}, "logit": {0: "batch"}},
            opset_version=17,
            do_constant_folding=True,
            dynamo=False,
        )
    m = onnx.load(str(tmp))
    set_metadata(onnx, m, {META_GATE: json.dumps(info, sort_keys=True)})
    m.producer_name = "octbatch.train-gate"
    onnx.checker.check_model(m)
    onnx.save(m, str(tmp))
    os.replace(tmp, out)
