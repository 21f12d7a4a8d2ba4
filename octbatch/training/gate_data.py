"""The gate's data: OCT B-scans (positives) and non-OCT images (negatives) from their manifests, each
decoded once in grayscale at BASE_HEIGHT px (aspect kept), random training views of them, and the views
the gate sees at run time (decode_image with the classifier's preprocessing, then gate_input)."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import OctbatchError

__all__ = [
    "BASE_HEIGHT",
    "TRAIN_HINTS",
    "OctImage",
    "load_base",
    "load_non_oct",
    "load_oct",
    "random_view",
    "runtime_views",
]

TRAIN_HINTS = ("train", "unknown")  # everything else (test-v3, test, val, ...) is report-only


BASE_HEIGHT = 128


@dataclass
class OctImage:
    path: str
    rel: str
    positive: bool
    split: str  # OCT: split_hint; non-OCT: "non-oct"
    category: str  # OCT: its label; non-OCT: fundus / chest_xray / grey_enface / other
    source: str  # non-OCT: source_repo (hold-out unit); OCT: "oct2017"


def _read_manifest(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def load_oct(data_dir: str | os.PathLike) -> list[OctImage]:
    root = Path(data_dir)
    m = root / "manifest.csv"
    if not m.is_file():
        raise OctbatchError(
            f"{m} does not exist",
            "Give the OCT folder with a manifest.csv (path,label,...,split_hint), e.g. ../shared/data/oct2017.",
        )
    return [
        OctImage(
            str(root / r["path"]),
            r["path"],
            True,
            (r.get("split_hint") or "unknown").strip() or "unknown",
            r.get("label", ""),
            "oct2017",
        )
        for r in _read_manifest(m)
    ]


def load_non_oct(data_dir: str | os.PathLike) -> list[OctImage]:
    root = Path(data_dir)
    m = root / "manifest.csv"
    if not m.is_file():
        raise OctbatchError(
            f"{m} does not exist",
            "Give the non-OCT folder with a manifest.csv (path,category,source_repo,...), e.g. ../shared/data/non-oct.",
        )
    return [
        OctImage(
            str(root / r["path"]),
            r["path"],
            False,
            "non-oct",
            r["category"],
            r["source_repo"].rstrip("/").rsplit("/", 1)[-1],
        )
        for r in _read_manifest(m)
    ]


def _decode_gray(path: str) -> np.ndarray | None:
    """Full grayscale decode (what any decoder converts to), resized to BASE_HEIGHT px height."""
    import cv2

    from ..decode.base import read_bytes
    from ..decode.cpu import _to_gray_u8

    try:
        data = read_bytes(path)
        if data[:3] == b"\xff\xd8\xff":
            import simplejpeg

            img = simplejpeg.decode_jpeg(data, colorspace="GRAY", min_height=BASE_HEIGHT, min_width=8)
            img = img[:, :, 0] if img.ndim == 3 else img
        else:
            import io

            from PIL import Image

            img = _to_gray_u8(Image.open(io.BytesIO(data)))
    except Exception:  # noqa: BLE001 - an unreadable file is left out of training, never fatal
        return None
    h, w = img.shape
    nw = max(8, min(4 * BASE_HEIGHT, round(w * BASE_HEIGHT / h)))
    return cv2.resize(img, (nw, BASE_HEIGHT), interpolation=cv2.INTER_AREA)


def load_base(items: Sequence[OctImage], *, threads: int = 2) -> list[np.ndarray | None]:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max(1, threads)) as pool:
        return list(pool.map(lambda it: _decode_gray(it.path), items))


def runtime_views(items: Sequence[OctImage], spec, *, threads: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """What the gate sees at run time: decode_image with the classifier's preprocessing -> gate_input.
    Returns (float32 (N,1,64,64), ok mask)."""
    from ..gate import gate_input
    from .cache import decode_all

    imgs, ok, _ = decode_all([it.path for it in items], spec, threads=threads)
    return gate_input(imgs), ok


def random_view(base: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random crop (scale 0.65..1 of the height, aspect 0.45..2.4 clipped to the image), resized to
    64x64, flipped left-right half the time, with gamma/contrast/brightness jitter. uint8 out."""
    import cv2

    from ..gate import GATE_SIZE

    h, w = base.shape
    ch = int(round(h * rng.uniform(0.65, 1.0)))
    aspect = float(np.exp(rng.uniform(np.log(0.45), np.log(2.4))))
    cw = int(min(w, max(8, round(ch * aspect))))
    top = int(rng.integers(0, h - ch + 1))
    left = int(rng.integers(0, w - cw + 1))
    crop = base[top : top + ch, left : left + cw]
    gh, gw = GATE_SIZE
    v = cv2.resize(crop, (gw, gh), interpolation=cv2.INTER_AREA if (ch >= gh and cw >= gw) else cv2.INTER_LINEAR)
    if rng.random() < 0.5:
        v = v[:, ::-1]
    x = v.astype(np.float32) / 255.0
    x = x ** float(np.exp(rng.uniform(-0.3, 0.3)))
    m = x.mean()
    x = (x - m) * rng.uniform(0.75, 1.25) + m + rng.uniform(-0.06, 0.06)
    if rng.random() < 0.15:
        x = cv2.GaussianBlur(x, (3, 3), 0)
    return np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)
