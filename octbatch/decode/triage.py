"""Triage before a GPU decoder: read one file and decide from its header whether the GPU decodes it.

Shared by the DALI and nvjpeg decoders, which both fail a whole batch on one bad sample and differ
from the CPU decoder on some inputs. A file that is bad already (unreadable, empty, corrupt JPEG
header, decompression bomb) raises DecodeError here, before any batch is built. A plain 8-bit
grayscale/colour JPEG ending in an EOI marker goes to the GPU with its crop box; everything else
(PNG, TIFF, CMYK/YCCK JPEGs, truncated or padded JPEGs) goes to `decode_image`, the CPU decoder's
own function, so it gets exactly the CPU path's result or error message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO

from ..preprocess import Preprocessing, crop_box
from .base import read_bytes
from .sniff import JPEG_MAGIC, jpeg_header, sniff_image

__all__ = ["Triaged", "triage_file", "EOI", "TRAILING_PAD"]

EOI = b"\xff\xd9"
# Bytes some writers leave after the EOI marker; anything else after EOI goes to the CPU decoder.
TRAILING_PAD = b"\x00\r\n\x1a "


@dataclass
class Triaged:
    data: bytes
    box: tuple[int, int, int, int] | None  # (left, top, right, bottom) crop; None: decode on the CPU
    size: tuple[int, int] | None  # (width, height) from the header, for GPU rows


def triage_file(path: str, spec: Preprocessing, max_pixels: int) -> Triaged:
    """Read `path` and decide where it is decoded; raises DecodeError for a file that is bad already."""

    def sniff(f: BinaryIO) -> None:
        sniff_image(f, max_pixels)  # non-JPEG files go to decode_image: its sniffer for all

    data = read_bytes(path, sniff=sniff)
    if data[:3] != JPEG_MAGIC:
        return Triaged(data, None, None)  # PNG, TIFF, or not an image at all: the CPU decoder says which
    w, h, colorspace = jpeg_header(data, max_pixels)
    if colorspace in ("CMYK", "YCCK"):
        return Triaged(data, None, None)  # a GPU's GRAY conversion of CMYK differs from Pillow's
    if not data[-64:].rstrip(TRAILING_PAD).endswith(EOI):
        return Triaged(data, None, None)  # truncated (or extra data after EOI): the strict CPU decode decides
    return Triaged(data, crop_box(w, h, spec), (w, h))
