"""Synthetic OCT-like archives for demos, tests and benchmarks when no real scans are at hand.

The B-scans are cartoons (layered retina band, speckle, class-typical lesions), labelled by
Kermany-style names. They exercise every stage; they say nothing about accuracy on real scans.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from .archive import CLASS_NAMES

__all__ = ["make_scan", "make_archive", "BROKEN_FILES"]

BROKEN_FILES = ("broken/truncated.jpeg", "broken/random-bytes.jpeg", "broken/empty.jpeg")


def make_scan(cls: str, rng: np.random.Generator, width: int = 512, height: int = 496) -> np.ndarray:
    x = np.arange(width, dtype=np.float32)
    y = np.arange(height, dtype=np.float32)[:, None]
    centre = height * rng.uniform(0.38, 0.5) + 18 * np.sin(
        x / width * np.pi * rng.uniform(0.5, 1.5) + rng.uniform(0, 6)
    )
    thickness = rng.uniform(70, 95) - (
        22 * np.exp(-(((x - width / 2) / (width * 0.06)) ** 2)) if cls == "NORMAL" else 0
    )
    top = centre - thickness / 2
    rpe = centre + thickness / 2
    img = np.full((height, width), 12.0, np.float32)
    inside = (y > top) & (y < rpe)
    img += inside * (70 + 40 * np.sin((y - top) / 9.0) ** 2)
    img += 170 * np.exp(-(((y - rpe) / 4.0) ** 2))  # bright RPE line
    img += 110 * np.exp(-(((y - top) / 3.0) ** 2))  # inner limiting membrane
    if cls == "DRUSEN":
        for _ in range(rng.integers(3, 7)):
            cx, r = rng.uniform(0.2, 0.8) * width, rng.uniform(12, 30)
            bump = 14 * np.exp(-(((x - cx) / r) ** 2))
            img += 150 * np.exp(-(((y - (rpe - bump)) / 4.0) ** 2)) - 150 * np.exp(-(((y - rpe) / 4.0) ** 2)) * (
                bump > 3
            )
    elif cls == "DME":
        for _ in range(rng.integers(3, 8)):
            cx, cy = rng.uniform(0.3, 0.7) * width, centre[int(rng.uniform(0.3, 0.7) * width)] + rng.uniform(-15, 15)
            rx, ry = rng.uniform(8, 25), rng.uniform(6, 16)
            img -= 90 * (((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 < 1)
    elif cls == "CNV":
        cx, r = rng.uniform(0.35, 0.65) * width, rng.uniform(30, 70)
        lift = 35 * np.exp(-(((x - cx) / r) ** 2))
        img += 120 * np.exp(-(((y - (rpe - lift)) / 10.0) ** 2)) * (lift > 2)
        img -= 60 * ((y > rpe - lift - 25) & (y < rpe - lift) & (lift > 10))
    img *= rng.gamma(4.0, 0.25, size=img.shape).astype(np.float32)  # speckle
    return np.clip(img, 0, 255).astype(np.uint8)


def _jpeg(img: np.ndarray, quality: int = 90) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def make_archive(
    root: str | os.PathLike, n: int = 500, *, seed: int = 0, broken: bool = True, widths=(512, 768)
) -> dict:
    """Write n labelled synthetic scans (and, with broken=True, three broken files) under root."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    counts = {c: 0 for c in CLASS_NAMES}
    for i in range(n):
        cls = CLASS_NAMES[i % len(CLASS_NAMES)]
        patient = 1000 + (i // 8)
        w = int(widths[i % len(widths)])
        d = root / cls
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{cls}-{patient}-{i}.jpeg").write_bytes(_jpeg(make_scan(cls, rng, width=w)))
        counts[cls] += 1
    if broken:
        (root / "broken").mkdir(parents=True, exist_ok=True)
        good = _jpeg(make_scan("NORMAL", rng))
        (root / BROKEN_FILES[0]).write_bytes(good[: len(good) // 2])
        (root / BROKEN_FILES[1]).write_bytes(rng.bytes(20000))
        (root / BROKEN_FILES[2]).write_bytes(b"")
    return {"scans": n, "broken": len(BROKEN_FILES) if broken else 0, "per_class": counts, "root": str(root)}
