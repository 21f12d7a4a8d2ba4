"""The training loop: class-balanced batches of augmented strip crops, AdamW with a one-cycle schedule,
the epoch with the best validation macro F1 kept (ties: lower validation loss), and the temperature
fitted on the validation patients. torch is passed in (imported by the caller, the `train` extra)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..archive import CLASS_NAMES
from .augment import augment, crop_strips, normalize_t, u8_to_input
from .metrics import classification_metrics
from .prepare import TrainingData
from .recipe import DEFAULTS

__all__ = ["FitResult", "fit"]


@dataclass
class FitResult:
    history: list[dict]
    best_epoch: int
    temperature: float


@dataclass
class _Setup:
    """What every step of one fit uses."""

    torch: object
    data: TrainingData
    hw: tuple[int, int]
    batch_size: int
    resize: str
    lateral_scale: tuple[float, float] | None
    density: tuple[float, float] | None
    gen: object


def _logits(torch, model, x):
    with torch.no_grad():
        return torch.cat([model(x[i : i + 256]) for i in range(0, len(x), 256)])


def fit(
    torch, model, data: TrainingData, *, epochs: int, lr: float, weight_decay: float, rng, log, **setup
) -> FitResult:
    """Train ``model`` in place (left in eval mode with the kept epoch's weights). ``setup``: hw,
    batch_size, resize, lateral_scale, density, gen (the torch generator of the augmentation)."""
    s = _Setup(torch=torch, data=data, **setup)
    y, tr, va = data.y, data.tr, data.va
    # Class-balanced sampling: every class is drawn equally often; an epoch is len(train) draws.
    counts = np.bincount(y[tr], minlength=len(CLASS_NAMES)).astype(float)
    w = 1.0 / np.maximum(counts[y[tr]], 1.0)
    w /= w.sum()
    steps = max(1, math.ceil(len(tr) / s.batch_size))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps, pct_start=0.15)
    xva = u8_to_input(torch, data.exact[va], data.spec) if len(va) else None
    best = None
    history = []
    for ep in range(1, epochs + 1):
        te = time.perf_counter()
        model.train()
        draw = rng.choice(tr, size=steps * s.batch_size, replace=True, p=w)
        entry = {"epoch": ep, **_train_epoch(s, model, opt, sched, draw, steps)}
        score: tuple[float, float] = (ep, 0.0)  # nothing to select on: keep the last epoch
        if xva is not None:
            model.eval()
            score = _validate(torch, model, xva, y[va], entry)
        entry["seconds"] = round(time.perf_counter() - te, 1)
        history.append(entry)
        log(" ".join(f"{k}={v}" for k, v in entry.items()))
        if best is None or score > best[0]:
            best = (score, ep, {k: v.detach().clone() for k, v in model.state_dict().items()})
    assert best is not None
    model.load_state_dict(best[2])
    model.eval()
    temperature = _calibrate(torch, model, xva, y[va], best[1], log) if xva is not None else 1.0
    return FitResult(history, best[1], temperature)


def _train_epoch(s: _Setup, model, opt, sched, draw, steps: int) -> dict:
    torch, d = s.torch, s.data
    F = torch.nn.functional  # type: ignore[attr-defined]
    tot, n_seen, n_right = 0.0, 0, 0
    for k in range(steps):
        idx = draw[k * s.batch_size : (k + 1) * s.batch_size]
        if len(idx) < 2:
            continue
        xb = crop_strips(
            torch,
            d.strips,
            d.strip_w,
            idx,
            out_hw=s.hw,
            resize=s.resize,
            lateral=s.lateral_scale,
            gen=s.gen,
            density=s.density,
            scan_widths=d.scan_w,
        )
        xb = normalize_t(torch, augment(torch, xb, s.gen), d.spec)
        yb = torch.from_numpy(d.y[idx])  # type: ignore[attr-defined]
        logits = model(xb)
        loss = F.cross_entropy(logits, yb, label_smoothing=DEFAULTS["label_smoothing"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        tot += float(loss.detach()) * len(idx)
        n_seen += len(idx)
        n_right += int((logits.detach().argmax(1) == yb).sum())
    return {"train_loss": round(tot / max(1, n_seen), 4), "train_accuracy": round(n_right / max(1, n_seen), 4)}


def _validate(torch, model, xva, y_va: np.ndarray, entry: dict) -> tuple[float, float]:
    """Validation loss and metrics into ``entry``; returns the selection score (macro F1, -loss)."""
    logits = _logits(torch, model, xva)
    with torch.no_grad():
        vloss = float(torch.nn.functional.cross_entropy(logits, torch.from_numpy(y_va)))
    vm = classification_metrics(y_va, logits.argmax(1).numpy(), list(CLASS_NAMES))
    entry.update(
        val_loss=round(vloss, 4),
        val_accuracy=vm["accuracy"],
        val_macro_f1=vm["macro_f1"],
        val_balanced_accuracy=vm["balanced_accuracy"],
    )
    return (vm["macro_f1"], -vloss)


def _calibrate(torch, model, xva, y_va: Any, best_epoch: int, log: Callable[[str], None]) -> float:
    """The temperature that minimises the validation NLL of the kept epoch's logits."""
    from ..calibration import fit_temperature, nll

    vlog = _logits(torch, model, xva).numpy()
    temperature = fit_temperature(vlog, y_va)
    log(
        f"kept epoch {best_epoch}; temperature {temperature:.3f} (validation NLL {nll(vlog, y_va):.4f} -> {nll(vlog, y_va, temperature):.4f})"
    )
    return temperature
