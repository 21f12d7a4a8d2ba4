"""The report's pictures, drawn with matplotlib and returned as PNG data URIs (inlined in the HTML).

Uses matplotlib's object API (Figure + Agg canvas), never pyplot: no global state, no GUI backend.
"""

from __future__ import annotations

import base64
import io
from typing import Literal

import numpy as np

from .._deps import require

__all__ = [
    "png_data_uri",
    "figure",
    "predicted_bars",
    "confidence_histograms",
    "confusion_matrices",
    "reliability_diagram",
]

_BLUE, _GREY, _RED = "#3b6ea5", "#9aa5b1", "#c0504d"


def figure(w: float, h: float, layout: Literal["constrained", "compressed", "tight"] | None = "constrained"):
    require("matplotlib", purpose="the pictures of the HTML report")
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=100, layout=layout)


def _text_in(labels, pt: float) -> float:
    """Rough width in inches of the longest label at font size pt (DejaVu Sans averages ~0.6 em per character)."""
    return max((len(str(x)) for x in labels), default=1) * pt * 0.62 / 72


def _fixed(
    w: float,
    h: float,
    *,
    left: float,
    right: float,
    top: float,
    bottom: float,
    wgap: float = 0.0,
    hgap: float = 0.0,
    cols: int = 1,
    rows: int = 1,
):
    """A figure with margins and gaps given in inches: the report's charts have known labels, so they skip
    constrained layout (which measures every text twice and was half of the report's chart time)."""
    fig = figure(w, h, layout=None)
    aw = (w - left - right - wgap * (cols - 1)) / cols
    ah = (h - top - bottom - hgap * (rows - 1)) / rows
    fig.subplots_adjust(
        left=left / w,
        right=1 - right / w,
        top=1 - top / h,
        bottom=bottom / h,
        wspace=wgap / aw if cols > 1 else 0.2,
        hspace=hgap / ah if rows > 1 else 0.2,
    )
    return fig


def png_data_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def predicted_bars(predicted: dict[str, int]) -> str:
    names = list(predicted)
    fig = _fixed(6, 0.45 * len(names) + 1.2, left=_text_in(names, 10) + 0.25, right=0.15, top=0.35, bottom=0.55)
    ax = fig.add_subplot()
    ys = np.arange(len(names))
    vals = [predicted[n] for n in names]
    ax.barh(ys, vals, color=_BLUE)
    ax.set_yticks(ys, names)
    ax.invert_yaxis()
    total = sum(vals) or 1
    for y, v in zip(ys, vals):
        ax.text(v, y, f" {v:,} ({100 * v / total:.1f}%)", va="center", fontsize=9)
    ax.set_xlim(0, max(vals or [1]) * 1.3 or 1)
    ax.set_xlabel("classified scans (status ok)")
    ax.set_title("Predicted class", fontsize=11)
    return png_data_uri(fig)


def confidence_histograms(classes: list[str], hist: np.ndarray) -> str:
    k, bins = hist.shape
    cols = min(k, 4)
    rows = -(-k // cols)
    fig = _fixed(
        2.6 * cols + 0.5,
        2.1 * rows + 0.4,
        left=0.5,
        right=0.3,
        top=0.6,
        bottom=0.45,
        wgap=0.5,
        hgap=0.75,
        cols=cols,
        rows=rows,
    )
    edges = np.linspace(0, 1, bins + 1)
    for i, c in enumerate(classes):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.bar(edges[:-1], hist[i], width=1 / bins, align="edge", color=_BLUE, edgecolor="white", linewidth=0.5)
        ax.set_xlim(0, 1)
        if not hist[i].sum():
            ax.set_ylim(0, 1)
            ax.text(0.5, 0.5, "never predicted", ha="center", va="center", fontsize=8, color="#555")
        ax.set_title(f"{c} (n={int(hist[i].sum()):,})", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("confidence", fontsize=8)
    fig.suptitle("Confidence of the predicted class, per predicted class", fontsize=11)
    return png_data_uri(fig)


def confusion_matrices(classes: list[str], cm: np.ndarray) -> str:
    k = len(classes)
    lab = _text_in(classes, 8) + 0.45  # tick labels + the "true" axis label
    tilt = k > 4  # many classes: predicted-class labels at 30 degrees
    fig = _fixed(
        2 * (0.8 * k + 1.6),
        0.8 * k + 1.4,
        left=lab,
        right=0.1,
        top=0.3,
        bottom=0.6 + (0.5 * _text_in(classes, 8) if tilt else 0),
        wgap=lab + 0.1,
        cols=2,
    )
    row = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, row, out=np.zeros(cm.shape, float), where=row > 0)
    for j, (mat, title, fmt) in enumerate(
        ((cm, "counts", "{:,}"), (norm, "row-normalised (recall on the diagonal)", "{:.2f}"))
    ):
        ax = fig.add_subplot(1, 2, j + 1)
        shown = mat / mat.max() if mat.max() else mat
        ax.imshow(shown, cmap="Blues", vmin=0, vmax=1)
        for a in range(k):
            for b in range(k):
                ax.text(
                    b,
                    a,
                    fmt.format(mat[a, b]),
                    ha="center",
                    va="center",
                    fontsize=9,
                    color="white" if shown[a, b] > 0.55 else "black",
                )
        ax.set_xticks(
            range(k),
            classes,
            fontsize=8,
            rotation=30 if tilt else 0,
            ha="right" if tilt else "center",
            rotation_mode="anchor",
        )
        ax.set_yticks(range(k), classes, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true (from the file name or folder)")
        ax.set_title(title, fontsize=10)
    return png_data_uri(fig)


def reliability_diagram(bins: list[dict], ece: float) -> str:
    fig = _fixed(6.2, 3.2, left=0.6, right=0.3, top=0.3, bottom=0.55, wgap=0.65, cols=2)
    ax, ax2 = fig.subplots(1, 2, width_ratios=[3, 2])
    lo = [b["lo"] for b in bins]
    w = bins[0]["hi"] - bins[0]["lo"]
    full = [b for b in bins if b["n"]]  # an empty bin has no accuracy: draw nothing there
    acc = np.array([b["accuracy"] for b in full])
    conf = np.array([b["confidence"] for b in full])
    ax.bar([b["lo"] for b in full], acc, width=w, align="edge", color=_BLUE, edgecolor="white", label="accuracy")
    ax.bar(
        [b["lo"] for b in full],
        conf - acc,
        bottom=acc,
        width=w,
        align="edge",
        color=_RED,
        alpha=0.35,
        edgecolor=_RED,
        label="gap to mean confidence",
    )
    ax.plot([0, 1], [0, 1], "--", color="k", lw=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title(f"Reliability (ECE {ece:.3f})", fontsize=10)
    ax2.bar(lo, [b["n"] for b in bins], width=w, align="edge", color=_GREY, edgecolor="white")
    ax2.set_xlim(0, 1)
    counts = [b["n"] for b in bins if b["n"]]
    if counts and max(counts) > 50 * min(counts):
        ax2.set_yscale("log")
    ax2.set_xlabel("confidence")
    ax2.set_title("labelled scans per bin", fontsize=10)
    return png_data_uri(fig)
