"""Scans decoded once for training and evaluation, through the very decoder inference uses
(``octbatch.decode.cpu.decode_image``): at the model's preprocessing (decode_all, decode_cache), or as
aspect-kept strips that training crops per sample (decode_strips)."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..preprocess import Preprocessing
from .data import Record

__all__ = ["decode_all", "decode_cache", "decode_strips"]


def decode_all(
    paths: Sequence[str], spec: Preprocessing, *, threads: int = 2
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode every file once, exactly as inference does: (uint8 images (N,H,W), ok mask (N,), original
    (width, height) per file (N,2), 0 where unreadable). An unreadable file is left out (ok False), never fatal."""
    from ..decode.base import read_bytes
    from ..decode.cpu import decode_image

    n = len(paths)
    images = np.zeros((n, spec.height, spec.width), np.uint8)
    ok = np.zeros(n, bool)
    sizes = np.zeros((n, 2), int)

    def work(i: int) -> None:
        try:
            img, (w, h) = decode_image(read_bytes(paths[i]), spec)
        except Exception:  # noqa: BLE001 - an unreadable scan is left out, never fatal
            return
        images[i] = img
        ok[i] = True
        sizes[i] = (w, h)

    if threads > 1:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(work, range(n)))
    else:
        for i in range(n):
            work(i)
    return images, ok, sizes


def decode_cache(records: Sequence[Record], spec: Preprocessing, *, threads: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Decode every scan once, exactly as inference does: (uint8 images (N,H,W), ok mask (N,)).
    Fills in ``width``/``height`` of records that lack them."""
    images, ok, sizes = decode_all([r.path for r in records], spec, threads=threads)
    for r, good, (w, h) in zip(records, ok, sizes):
        if good and not r.width:
            r.width, r.height = int(w), int(h)
    return images, ok


def decode_strips(
    records: Sequence[Record], height: int, *, threads: int = 2
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every scan decoded once at ``height`` rows with its aspect ratio kept (a "strip"), through the
    inference decoder (``resize="stretch"`` to the scan's own aspect): (uint8 (N, height, Wmax) left-aligned,
    widths (N,), ok mask (N,)). Training crops and rescales these strips per sample, which is how one
    cache serves every resize rule and the lateral-scale augmentation."""
    from PIL import Image

    from ..decode.base import read_bytes
    from ..decode.cpu import decode_image

    n = len(records)
    sizes = []
    for r in records:
        if not (r.width and r.height):
            try:
                with Image.open(r.path) as im:
                    r.width, r.height = im.size
            except Exception:  # noqa: BLE001 - unreadable: left out below
                r.width, r.height = 0, 0
        sizes.append(max(1, round(height * r.width / r.height)) if r.height else 0)
    wmax = max([w for w in sizes if w] or [height])
    strips = np.zeros((n, height, wmax), np.uint8)
    ok = np.zeros(n, bool)

    def work(i: int) -> None:
        if not sizes[i]:
            return
        spec = Preprocessing(input_size=(height, max(8, sizes[i])), resize="stretch")
        try:
            img, _ = decode_image(read_bytes(records[i].path), spec)
        except Exception:  # noqa: BLE001 - an unreadable scan is left out, never fatal
            return
        strips[i, :, : img.shape[1]] = img
        ok[i] = True

    with ThreadPoolExecutor(max(1, threads)) as pool:
        list(pool.map(work, range(n)))
    return strips, np.asarray([max(8, w) if w else 0 for w in sizes], int), ok
