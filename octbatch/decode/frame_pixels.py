"""DICOM pixels -> uint8 grayscale: native frame bytes reshaped, any bit depth scaled, MONOCHROME1
inverted, colour converted; and the message for a frame pydicom cannot decode."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["to_gray_u8", "native_gray", "pydicom_message"]


def to_gray_u8(
    arr: np.ndarray, *, photometric: str = "MONOCHROME2", bits_stored: int = 8, signed: bool = False
) -> np.ndarray:
    """A decoded DICOM frame (rows, cols) or (rows, cols, 3 RGB) -> uint8 grayscale."""
    import cv2

    a = arr
    if a.ndim == 3:
        if a.dtype != np.uint8:
            a = _scale_u8(a, bits_stored, signed)
        return cv2.cvtColor(np.ascontiguousarray(a[..., :3]), cv2.COLOR_RGB2GRAY)
    if a.dtype != np.uint8:
        a = _scale_u8(a, bits_stored, signed)
    if photometric == "MONOCHROME1":
        a = 255 - a
    return np.ascontiguousarray(a)


def _scale_u8(a: np.ndarray, bits_stored: int, signed: bool) -> np.ndarray:
    bits = max(1, min(int(bits_stored), 16))
    x = a.astype(np.int32)
    if signed:
        x = x + (1 << (bits - 1))
    if bits > 8:
        x = x >> (bits - 8)
    return np.clip(x, 0, 255).astype(np.uint8)


def native_gray(buf: bytes, info: Any) -> np.ndarray:
    """One native (uncompressed) frame's bytes -> uint8 grayscale of the frame's size."""
    dtype = np.uint8 if info.bits_allocated == 8 else np.dtype("<i2" if info.pixel_representation else "<u2")
    a = np.frombuffer(buf, dtype)
    if info.samples == 1:
        a = a.reshape(info.rows, info.columns)
    elif info.planar_configuration == 1:
        a = a.reshape(3, info.rows, info.columns).transpose(1, 2, 0)
    else:
        a = a.reshape(info.rows, info.columns, 3)
    if info.samples == 3 and info.photometric == "YBR_FULL":
        a = a[..., 0]  # luminance
    return to_gray_u8(
        a, photometric=info.photometric, bits_stored=info.bits_stored, signed=bool(info.pixel_representation)
    )


def pydicom_message(index: int, info, exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
    if (
        "plugin" in text.lower()
        or "missing required dependencies" in text.lower()
        or "no pixel data decoders" in text.lower()
    ):
        return (
            f"frame {index}: cannot decode transfer syntax {info.transfer_syntax}: {text} "
            "(install the dicom extra: pip install 'octbatch[dicom]')"
        )
    return f"frame {index}: {type(exc).__name__}: {text}"
