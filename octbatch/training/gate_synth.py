"""Synthetic negatives for the gate: images that are not B-scans (blank, saturated, noise, dark speckle,
text, shapes, gradients, disks with vessels, vessel networks, grids, and real B-scans turned 90 degrees
or cut into shuffled tiles), so that "horizontal retinal layers" is what the CNN has to learn."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .gate_data import BASE_HEIGHT

__all__ = ["SYNTH_KINDS", "synth_negative"]

SYNTH_KINDS = (
    "constant",
    "saturated",
    "gradient",
    "noise",
    "dark_speckle",
    "text",
    "shapes",
    "disk",
    "vessels",
    "clouds",
    "grid",
    "oct_rotated",
    "oct_tiles",
    "oct_background",
)


def _smooth_noise(rng, h, w, scale):
    import cv2

    small = rng.random((max(2, h // scale), max(2, w // scale))).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def _constant(rng: np.random.Generator, h: int, w: int, oct_bases: Sequence[np.ndarray], kind: str) -> Any:
    """Constant."""
    img = np.full((h, w), rng.choice([0, 255, rng.uniform(0, 255)]), np.float32) + rng.normal(
        0, rng.uniform(0, 2), (h, w)
    )
    return img


def _saturated(rng: np.random.Generator, h: int, w: int, oct_bases: Sequence[np.ndarray], kind: str) -> Any:
    """Saturated."""
    img = np.where(
        _smooth_noise(rng, h, w, int(rng.integers(4, 40))) > rng.uniform(0.3, 0.7), 255.0, rng.uniform(0, 80)
    )
    return img


def _gradient(rng: np.random.Generator, h: int, w: int, oct_bases: Sequence[np.ndarray], kind: str) -> Any:
    """Gradient."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a = rng.uniform(0, 2 * np.pi)
    t = (np.cos(a) * xx + np.sin(a) * yy) / max(h, w)
    if rng.random() < 0.4:
        t = np.hypot(xx - rng.uniform(0, w), yy - rng.uniform(0, h)) / max(h, w)
    img = 255 * (t - t.min()) / max(1e-6, float(np.ptp(t)))
    return img


def _noise(rng: np.random.Generator, h: int, w: int, oct_bases: Sequence[np.ndarray], kind: str) -> Any:
    """Noise."""
    img = rng.uniform(0, 255, (h, w)) if rng.random() < 0.5 else rng.normal(128, rng.uniform(10, 80), (h, w))
    return img


def _dark_speckle(rng: np.random.Generator, h: int, w: int, oct_bases: Sequence[np.ndarray], kind: str) -> Any:
    """A B-scan with nothing in view: dim speckle, maybe a faint band."""
    img = rng.uniform(5, 30) * rng.gamma(2.0, 0.5, (h, w))
    return img


def _text(rng: np.random.Generator, h: int, w: int, oct_bases: Sequence[np.ndarray], kind: str) -> Any:
    """Text."""
    import cv2

    bg = int(rng.choice([255, 240, 0, 30]))
    img = np.full((h, w), bg, np.uint8)  # putText draws on 8-bit images only
    fg = 255 - bg
    for _ in range(int(rng.integers(3, 12))):
        s = "".join(rng.choice(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .:%-/"), int(rng.integers(4, 18))))
        cv2.putText(
            img,
            s,
            (int(rng.integers(0, w // 2)), int(rng.integers(8, h))),
            int(rng.integers(0, 4)),
            rng.uniform(0.25, 0.7),
            int(fg * rng.uniform(0.5, 1)),
            1,
        )
    if rng.random() < 0.5:
        for _ in range(int(rng.integers(1, 5))):
            y = int(rng.integers(0, h))
            cv2.line(img, (0, y), (w, y), int(fg * 0.6), 1)
    return img


def _shapes(rng: np.random.Generator, h: int, w: int, oct_bases: Sequence[np.ndarray], kind: str) -> Any:
    """Shapes."""
    import cv2

    img = np.full((h, w), rng.uniform(0, 255), np.float32)
    for _ in range(int(rng.integers(2, 10))):
        c = float(rng.uniform(0, 255))
        p = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        if rng.random() < 0.5:
            cv2.rectangle(
                img, p, (int(rng.integers(0, w)), int(rng.integers(0, h))), c, -1 if rng.random() < 0.6 else 2
            )
        else:
            cv2.circle(img, p, int(rng.integers(3, w // 2)), c, -1 if rng.random() < 0.6 else 2)
    return img


def _disk(rng: np.random.Generator, h: int, w: int, oct_bases: Sequence[np.ndarray], kind: str) -> Any:
    """Fundus-like: bright disk, dark corners, darker vessels, a bright optic disc."""
    import cv2

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = min(h, w) * rng.uniform(0.38, 0.55)
    cx, cy = w / 2 + rng.uniform(-6, 6), h / 2 + rng.uniform(-6, 6)
    d = np.hypot(xx - cx, yy - cy)
    img = np.where(d < r, rng.uniform(70, 200) * (1 - 0.4 * (d / r) ** 2), rng.uniform(0, 15))
    img = img * (0.85 + 0.3 * _smooth_noise(rng, h, w, 16))
    ox, oy = cx + rng.uniform(-0.5, 0.5) * r, cy + rng.uniform(-0.3, 0.3) * r
    img = img + 80 * np.exp(-((xx - ox) ** 2 + (yy - oy) ** 2) / (2 * (r * 0.1) ** 2))
    for _ in range(int(rng.integers(4, 10))):
        a = rng.uniform(0, 2 * np.pi)
        pts = [(ox, oy)]
        for _ in range(6):
            a += rng.uniform(-0.5, 0.5)
            pts.append((pts[-1][0] + np.cos(a) * r / 5, pts[-1][1] + np.sin(a) * r / 5))
        cv2.polylines(img, [np.array(pts, np.int32)], False, float(rng.uniform(20, 60)), int(rng.integers(1, 3)))
    img = np.where(d < r, img, rng.uniform(0, 15))
    return img


def _vessels(rng: np.random.Generator, h: int, w: int, oct_bases: Sequence[np.ndarray], kind: str) -> Any:
    """En-face / angiography-like: a vessel network on a textured background."""
    import cv2

    img = rng.uniform(20, 120) * _smooth_noise(rng, h, w, int(rng.integers(4, 16)))
    for _ in range(int(rng.integers(6, 25))):
        x, y, a = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0, 2 * np.pi)
        pts = []
        for _ in range(12):
            a += rng.uniform(-0.6, 0.6)
            x, y = x + np.cos(a) * 8, y + np.sin(a) * 8
            pts.append((x, y))
        cv2.polylines(img, [np.array(pts, np.int32)], False, float(rng.uniform(120, 255)), int(rng.integers(1, 4)))
    return img


def _clouds(rng: np.random.Generator, h: int, w: int, oct_bases: Sequence[np.ndarray], kind: str) -> Any:
    """Clouds."""
    img = sum(_smooth_noise(rng, h, w, s) * rng.uniform(0.2, 1) for s in (4, 8, 16, 32))
    img = 255 * (img - img.min()) / max(1e-6, float(np.ptp(img)))
    return img


def _grid(rng: np.random.Generator, h: int, w: int, oct_bases: Sequence[np.ndarray], kind: str) -> Any:
    """Grid."""
    import cv2

    img = np.full((h, w), rng.choice([255.0, 0.0]), np.float32)
    step = int(rng.integers(6, 30))
    c = float(255 - img[0, 0])
    for k in range(0, max(h, w), step):
        cv2.line(img, (k, 0), (k, h), c, 1)
        cv2.line(img, (0, k), (w, k), c, 1)
    return img


def _oct_derived(rng: np.random.Generator, h: int, w: int, oct_bases: Sequence[np.ndarray], kind: str) -> Any:
    """Real B-scans made into non-B-scans."""
    img: Any
    import cv2

    if not len(oct_bases):
        return synth_negative("clouds", rng, oct_bases, h, w)
    b = oct_bases[int(rng.integers(0, len(oct_bases)))]
    if kind == "oct_rotated":  # retinal layers vertical: not a B-scan as any device exports it
        img = np.rot90(b, int(rng.choice([1, 3]))).astype(np.float32)
    elif kind == "oct_tiles":
        bh, bw = b.shape
        t = 4
        th, tw = bh // t, bw // t
        tiles = [b[i * th : (i + 1) * th, j * tw : (j + 1) * tw] for i in range(t) for j in range(t)]
        order = rng.permutation(len(tiles))
        img = np.vstack([np.hstack([tiles[order[i * t + j]] for j in range(t)]) for i in range(t)]).astype(np.float32)
    else:  # only the darkest band of rows (above or below the retina): speckle, nothing in view
        band = max(4, b.shape[0] // 6)
        means = [b[i : i + band].mean() for i in range(0, b.shape[0] - band + 1, band // 2)]
        top = int(np.argmin(means)) * (band // 2)
        rows = b[top : top + band]
        img = cv2.resize(rows, (b.shape[1], b.shape[0]), interpolation=cv2.INTER_LINEAR).astype(np.float32)
        img = img * rng.gamma(3.0, 1 / 3.0, img.shape)
    return img


_KINDS: dict[str, Callable[..., Any]] = {
    "constant": _constant,
    "saturated": _saturated,
    "gradient": _gradient,
    "noise": _noise,
    "dark_speckle": _dark_speckle,
    "text": _text,
    "shapes": _shapes,
    "disk": _disk,
    "vessels": _vessels,
    "clouds": _clouds,
    "grid": _grid,
    "oct_rotated": _oct_derived,
    "oct_tiles": _oct_derived,
    "oct_background": _oct_derived,
}


def synth_negative(
    kind: str,
    rng: np.random.Generator,
    oct_bases: Sequence[np.ndarray] = (),
    h: int = BASE_HEIGHT,
    w: int = BASE_HEIGHT,
) -> np.ndarray:
    """One synthetic non-B-scan image (uint8, h x w) of the given kind."""
    make = _KINDS.get(kind)
    if make is None:
        raise ValueError(f"unknown synthetic kind {kind!r}")
    return np.clip(make(rng, h, w, oct_bases, kind), 0, 255).astype(np.uint8)
