"""The pictures `octbatch train --report-dir` writes beside metrics.json, drawn with Pillow only
(the `train` extra has no matplotlib): confusion matrices, training curves, reliability diagrams and a
grid of sample predictions."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

__all__ = ["draw_confusion_png", "draw_curves_png", "draw_reliability_png", "draw_samples_png"]


def _fonts():
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=15), ImageFont.load_default(size=12)
    except TypeError:  # old Pillow: one bitmap font
        f = ImageFont.load_default()
        return f, f


def _panel(d, box, series: dict, title: str, ylim: tuple[float, float] | None, font, small) -> None:
    """One line chart: series {name: (color, values per epoch)} inside box (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    d.rectangle(box, outline="black")
    d.text((x0, y0 - 22), title, fill="black", font=font)
    vals = [v for _, ys in series.values() for v in ys if v is not None]
    if not vals:
        return
    lo, hi = ylim if ylim else (min(vals), max(vals))
    if hi - lo < 1e-9:
        hi = lo + 1.0
    n = max(len(ys) for _, ys in series.values())
    for k in range(5):  # horizontal grid with labels
        v = lo + (hi - lo) * k / 4
        yy = y1 - (y1 - y0) * k / 4
        d.line([(x0, yy), (x1, yy)], fill=(225, 225, 225))
        d.text((x0 - 44, yy - 7), f"{v:.2f}", fill="black", font=small)
    for _name, (color, ys) in series.items():
        pts = [
            (x0 + (x1 - x0) * (i / max(1, n - 1)), y1 - (y1 - y0) * (v - lo) / (hi - lo))
            for i, v in enumerate(ys)
            if v is not None
        ]
        if len(pts) > 1:
            d.line(pts, fill=color, width=2)
    d.text((x0, y1 + 6), "epoch 1", fill="black", font=small)
    d.text((x1 - 50, y1 + 6), f"epoch {n}", fill="black", font=small)
    for k, (name, (color, _)) in enumerate(series.items()):
        d.text((x0 + 8 + 150 * k, y0 + 6), name, fill=color, font=small)


def draw_curves_png(history: Sequence[dict], path: str | os.PathLike, *, best_epoch: int | None = None) -> None:
    """Train/validation loss and accuracy per epoch, side by side; the kept epoch marked."""
    from PIL import Image, ImageDraw

    font, small = _fonts()
    im = Image.new("RGB", (1000, 420), "white")
    d = ImageDraw.Draw(im)
    get = lambda k: [h.get(k) for h in history]  # noqa: E731
    boxes = [(70, 50, 470, 370), (570, 50, 970, 370)]
    _panel(
        d,
        boxes[0],
        {"train loss": ((30, 90, 200), get("train_loss")), "validation loss": ((220, 60, 30), get("val_loss"))},
        "loss (cross-entropy)",
        None,
        font,
        small,
    )
    _panel(
        d,
        boxes[1],
        {
            "train accuracy": ((30, 90, 200), get("train_accuracy")),
            "validation accuracy": ((220, 60, 30), get("val_accuracy")),
            "val macro F1": ((40, 150, 60), get("val_macro_f1")),
        },
        "accuracy",
        (0.0, 1.0),
        font,
        small,
    )
    if best_epoch and len(history) > 1:
        for x0, y0, x1, y1 in boxes:
            x = x0 + (x1 - x0) * (best_epoch - 1) / (len(history) - 1)
            d.line([(x, y0), (x, y1)], fill=(120, 120, 120), width=1)
            d.text((x + 3, y1 - 18), f"kept {best_epoch}", fill=(90, 90, 90), font=small)
    im.save(path)


def draw_reliability_png(curves: dict, path: str | os.PathLike, *, title: str = "") -> None:
    """Reliability diagram: accuracy vs mean confidence per bin, one line per curve
    ({name: (bins from calibration.reliability_bins, ece)}), the diagonal for perfect calibration."""
    from PIL import Image, ImageDraw

    font, small = _fonts()
    im = Image.new("RGB", (560, 560), "white")
    d = ImageDraw.Draw(im)
    x0, y0, x1, y1 = 70, 60, 530, 500
    d.rectangle((x0, y0, x1, y1), outline="black")
    d.line([(x0, y1), (x1, y0)], fill=(170, 170, 170), width=1)
    d.text((x0, 12), title, fill="black", font=font)
    for k in range(6):
        v = k / 5
        d.text((x0 - 36, y1 - (y1 - y0) * v - 7), f"{v:.1f}", fill="black", font=small)
        d.text((x0 + (x1 - x0) * v - 10, y1 + 6), f"{v:.1f}", fill="black", font=small)
    d.text(((x0 + x1) // 2 - 60, y1 + 26), "mean confidence (top-1)", fill="black", font=small)
    d.text((6, y0 - 20), "accuracy", fill="black", font=small)
    colors = [(220, 60, 30), (30, 90, 200), (40, 150, 60)]
    for k, (name, (bins, ece)) in enumerate(curves.items()):
        c = colors[k % len(colors)]
        pts = [(x0 + (x1 - x0) * b["confidence"], y1 - (y1 - y0) * b["accuracy"]) for b in bins if b["n"]]
        if len(pts) > 1:
            d.line(pts, fill=c, width=2)
        for (px, py), b in zip(pts, [b for b in bins if b["n"]]):
            r = 2 + min(6, int(np.sqrt(b["n"]) / 3))
            d.ellipse((px - r, py - r, px + r, py + r), outline=c, width=2)
        d.text((x0 + 10, y0 + 10 + 18 * k), f"{name}: ECE {ece:.3f}", fill=c, font=small)
    im.save(path)


def draw_samples_png(
    items: Sequence[dict], path: str | os.PathLike, *, title: str = "", columns: int = 6, thumb: int = 150
) -> None:
    """A grid of scans with true/predicted class and confidence. ``items``: dicts with ``image``
    (uint8 HxW), ``true``, ``pred``, ``confidence``, optional ``note``; mistakes are framed red."""
    from PIL import Image, ImageDraw

    font, small = _fonts()
    rows = max(1, -(-len(items) // columns))
    cell_w, cell_h = thumb + 16, thumb + 54
    im = Image.new("RGB", (columns * cell_w + 16, rows * cell_h + 40), "white")
    d = ImageDraw.Draw(im)
    d.text((10, 10), title, fill="black", font=font)
    for k, it in enumerate(items):
        x, y = 8 + (k % columns) * cell_w, 36 + (k // columns) * cell_h
        tile = Image.fromarray(np.asarray(it["image"], np.uint8), "L").resize((thumb, thumb))
        im.paste(tile.convert("RGB"), (x, y))
        ok = it["true"] == it["pred"]
        d.rectangle(
            (x - 2, y - 2, x + thumb + 1, y + thumb + 1), outline=(40, 150, 60) if ok else (220, 30, 30), width=3
        )
        d.text((x, y + thumb + 4), f"true {it['true']}", fill="black", font=small)
        d.text(
            (x, y + thumb + 19),
            f"pred {it['pred']} {it['confidence']:.2f}",
            fill="black" if ok else (200, 20, 20),
            font=small,
        )
        if it.get("note"):
            d.text((x, y + thumb + 34), str(it["note"])[:24], fill=(90, 90, 90), font=small)
    im.save(path)


def draw_confusion_png(
    cm: Sequence[Sequence[int]], classes: Sequence[str], path: str | os.PathLike, title: str = ""
) -> None:
    """A labelled confusion-matrix grid (rows: true class, columns: predicted) drawn with Pillow."""
    from PIL import Image, ImageDraw, ImageFont

    grid = np.asarray(cm, int)
    k = len(classes)
    cell, left, top = 96, 130, 90
    w, h = left + k * cell + 20, top + k * cell + 60
    im = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(im)
    try:
        font = ImageFont.load_default(size=16)
        small = ImageFont.load_default(size=13)
    except TypeError:  # old Pillow: fixed-size bitmap font
        font = small = ImageFont.load_default()
    if title:
        d.text((10, 8), title, fill="black", font=font)
    d.text((left + k * cell // 2 - 40, top - 48), "predicted", fill="black", font=font)
    d.text((10, top + k * cell // 2 - 30), "true", fill="black", font=font)
    row_sum = grid.sum(axis=1, keepdims=True).clip(min=1)
    frac = grid / row_sum
    for i in range(k):
        d.text((left + i * cell + 10, top - 24), classes[i], fill="black", font=small)
        d.text((60, top + i * cell + cell // 2 - 8), classes[i], fill="black", font=small)
        for j in range(k):
            v = frac[i, j]
            shade = int(255 - 200 * v)
            color = (shade, shade, 255) if i == j else (255, shade, shade)
            x0, y0 = left + j * cell, top + i * cell
            d.rectangle([x0, y0, x0 + cell, y0 + cell], fill=color, outline="gray")
            txt_color = "white" if v > 0.6 else "black"
            d.text((x0 + cell // 2 - 14, y0 + cell // 2 - 18), str(grid[i, j]), fill=txt_color, font=font)
            d.text((x0 + cell // 2 - 18, y0 + cell // 2 + 4), f"{100 * v:.0f}%", fill=txt_color, font=small)
    d.text((10, h - 40), "cells: count and % of the true class (row)", fill="black", font=small)
    im.save(path)
