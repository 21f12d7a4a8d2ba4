"""CPU decoders.

The default (`CpuDecoder`) decodes JPEG with libjpeg-turbo through simplejpeg, scaled in the DCT
domain to the smallest size that still covers the model's input (3/8 of full size for a 512x496 scan
and a 128 px model), then crops and resizes with OpenCV INTER_AREA. Anything simplejpeg cannot
turn into grayscale (PNG, TIFF, CMYK/YCCK JPEG, 16-bit images) goes through Pillow. Measured
choice: benchmarks/BENCHMARKS.md ("Decoders").

`PillowDecoder` is the plain reference (full decode, convert("L"), crop, box resize) used for
parity tests and the naive baseline.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO

import numpy as np

from ..preprocess import Preprocessing, crop_box, dct_min_size
from .base import DecodedBatch, DecodeError, per_file, read_bytes
from .sniff import JPEG_MAGIC, NOT_AN_IMAGE, check_pixels, jpeg_header, sniff_image, sniff_pillow

__all__ = ["CpuDecoder", "PillowDecoder", "decode_image", "decode_reference", "check_pixels"]


def _resize(region: np.ndarray, spec: Preprocessing) -> np.ndarray:
    import cv2

    h, w = region.shape
    if (h, w) == spec.input_size:
        return np.ascontiguousarray(region)
    shrinking = h >= spec.height and w >= spec.width
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(region, (spec.width, spec.height), interpolation=interp)


def _crop_resize(img: np.ndarray, spec: Preprocessing) -> np.ndarray:
    h, w = img.shape
    l, t, r, b = crop_box(w, h, spec)
    return _resize(img[t:b, l:r], spec)


def _decode_jpeg_fast(data: bytes, spec: Preprocessing, max_pixels: int):
    """simplejpeg path; returns None when the JPEG needs Pillow (CMYK/YCCK colour spaces)."""
    import simplejpeg

    w, h, colorspace = jpeg_header(data, max_pixels)
    if colorspace in ("CMYK", "YCCK"):
        return None
    mw, mh = dct_min_size(w, h, spec)
    try:
        img = simplejpeg.decode_jpeg(data, colorspace="GRAY", min_width=mw, min_height=mh, strict=True)
    except ValueError as exc:
        msg = str(exc)
        if "Premature end" in msg or "premature" in msg.lower():
            raise DecodeError(f"truncated JPEG ({msg.strip()})") from None
        raise DecodeError(f"corrupt JPEG: {msg.strip()}") from None
    if img.ndim == 3:
        img = img[:, :, 0]
    return _crop_resize(img, spec), (w, h)


def _to_gray_u8(im) -> np.ndarray:
    """Any Pillow image -> uint8 grayscale, scaling 16-bit and float images instead of clipping them."""
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(im, dtype=np.uint32 if mode == "I" else np.uint16)
        if mode == "I" and a.max(initial=0) > 65535:
            a = a.astype(np.float64) * (255.0 / max(1, a.max()))
            return a.astype(np.uint8)
        return (a.astype(np.uint32) >> 8).astype(np.uint8) if a.max(initial=0) > 255 else a.astype(np.uint8)
    if mode == "F":
        fa = np.asarray(im, dtype=np.float32)
        lo, hi = float(np.nanmin(fa)), float(np.nanmax(fa))
        if hi <= 1.0 and lo >= 0.0:
            return (fa * 255.0 + 0.5).astype(np.uint8)
        return ((fa - lo) * (255.0 / max(hi - lo, 1e-12))).astype(np.uint8)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
        im = im.convert("LA" if mode == "LA" else "RGBA")
    if mode == "1":
        im = im.convert("L")
    return np.asarray(im.convert("L"))


def _decode_pillow(data: bytes, spec: Preprocessing, max_pixels: int, *, draft: bool):
    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise DecodeError(NOT_AN_IMAGE) from None
    except Image.DecompressionBombError as exc:
        raise DecodeError(f"decompression bomb refused: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for bad headers
        raise DecodeError(f"unreadable image header: {exc}") from None
    w, h = im.size
    check_pixels(w, h, max_pixels)
    try:
        if draft and im.format == "JPEG":
            mw, mh = dct_min_size(w, h, spec)
            im.draft("L", (mw, mh))
        if getattr(im, "n_frames", 1) > 1:
            im.seek(0)
        gray = _to_gray_u8(im)
    except Image.DecompressionBombError as exc:
        raise DecodeError(f"decompression bomb refused: {exc}") from None
    except OSError as exc:
        msg = str(exc)
        if "truncated" in msg.lower() or "premature" in msg.lower():
            raise DecodeError(f"truncated image ({msg})") from None
        raise DecodeError(f"corrupt image: {msg}") from None
    except Exception as exc:  # noqa: BLE001
        raise DecodeError(f"corrupt image: {type(exc).__name__}: {exc}") from None
    return _crop_resize(gray, spec), (w, h)


def decode_image(data: bytes, spec: Preprocessing, *, max_pixels: int = 64_000_000):
    """Encoded bytes -> (uint8 image of spec.input_size, (orig_width, orig_height)). Raises DecodeError."""
    if data[:3] == JPEG_MAGIC:
        out = _decode_jpeg_fast(data, spec, max_pixels)
        if out is not None:
            return out
    return _decode_pillow(data, spec, max_pixels, draft=False)


def decode_reference(data: bytes, spec: Preprocessing, *, max_pixels: int = 64_000_000):
    """Full-resolution Pillow decode + convert("L") + crop + area resize: the parity reference."""
    return _decode_pillow(data, spec, max_pixels, draft=False)


class _ThreadedDecoder:
    name = "base"

    def __init__(self, spec: Preprocessing, *, threads: int = 2, max_pixels: int = 64_000_000):
        self.spec = spec
        self.max_pixels = max_pixels
        self.threads = max(1, int(threads))
        self._pool = (
            ThreadPoolExecutor(self.threads, thread_name_prefix=f"octbatch-{self.name}") if self.threads > 1 else None
        )
        try:
            import cv2

            cv2.setNumThreads(1)  # parallelism comes from our pool; nested pools oversubscribe
        except ImportError:
            pass

    def _one(self, path: str):
        raise NotImplementedError

    def decode_batch(self, paths: Sequence[str]) -> DecodedBatch:
        n = len(paths)
        images = np.empty((n, self.spec.height, self.spec.width), np.uint8)
        sizes: list = [None] * n
        errors: list = [None] * n

        def work(i: int) -> None:
            images[i], sizes[i] = self._one(paths[i])

        per_file(work, range(n), errors, self._pool)
        return DecodedBatch(images, sizes, errors)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class CpuDecoder(_ThreadedDecoder):
    """simplejpeg DCT-scaled decode + OpenCV area resize, Pillow for everything else."""

    name = "cpu"

    def _sniff(self, f: BinaryIO) -> None:
        sniff_image(f, self.max_pixels)

    def _one(self, path: str):
        return decode_image(read_bytes(path, sniff=self._sniff), self.spec, max_pixels=self.max_pixels)


class PillowDecoder(_ThreadedDecoder):
    """Pillow only (full decode): the reference and the naive baseline's decoder."""

    name = "pillow"

    def _sniff(self, f: BinaryIO) -> None:
        sniff_pillow(f, self.max_pixels)

    def _one(self, path: str):
        return decode_reference(read_bytes(path, sniff=self._sniff), self.spec, max_pixels=self.max_pixels)
