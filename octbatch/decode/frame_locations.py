"""Where each frame of a DICOM file lies, as (offset, length) fragments, so a frame can be read (and
decoded) on its own: from the header for native Pixel Data, by walking the encapsulated item
sequence's headers once otherwise. `None` means only pydicom's frame splitting can tell."""

from __future__ import annotations

import struct
from typing import Any, BinaryIO

from .base import DecodeError

__all__ = ["JPEG_BASELINE", "reads_bytes", "native_locations", "walk_items"]

JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
_NATIVE_PHOTOMETRIC = ("MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL")
Fragments = list[tuple[int, int]]  # (offset, length) of the pieces that hold one frame


def reads_bytes(info: Any) -> bool:
    """Files whose frames octbatch reads as bytes itself (then decodes one task per frame)."""
    if info.encapsulated:
        return info.transfer_syntax == JPEG_BASELINE
    return info.photometric in _NATIVE_PHOTOMETRIC


def native_locations(info: Any) -> list[Fragments]:
    """Native Pixel Data: frame k is frame_bytes bytes at pixel_offset + k * frame_bytes."""
    nb = info.frame_bytes
    return [[(info.pixel_offset + k * nb, nb)] for k in range(info.n_frames)]


def walk_items(f: BinaryIO, info: Any, size: int) -> list[Fragments] | None:
    """The fragments of each frame of encapsulated Pixel Data, from the item headers read from `f`
    (a file of `size` bytes); None when several fragments per frame have no offset table to split them."""
    frags: Fragments = []
    f.seek(info.pixel_offset)
    bot = b""
    first = True
    while True:
        head = f.read(8)
        if len(head) < 8:
            break  # truncated: the fragments so far are all there is
        group, elem, length = struct.unpack("<HHI", head)
        if (group, elem) == (0xFFFE, 0xE0DD):
            break  # sequence delimiter
        if (group, elem) != (0xFFFE, 0xE000) or length == 0xFFFFFFFF:
            if first:
                raise DecodeError("encapsulated Pixel Data does not start with an item (damaged file)")
            break
        pos = f.tell()
        if first:
            bot = f.read(length)
            first = False
        else:
            if pos + length > size:
                break  # the last fragment is cut off
            frags.append((pos, length))
            if len(frags) > 4 * info.n_frames + 16:
                return None
        f.seek(pos + length)
    if bot:
        return _split_by_offsets(bot, frags, info.n_frames)
    if info.n_frames == 1:
        return [frags] if frags else []
    if len(frags) <= info.n_frames:
        return [[fr] for fr in frags]  # one fragment per frame (the norm without an offset table)
    return None


def _split_by_offsets(bot: bytes, frags: Fragments, n_frames: int) -> list[Fragments] | None:
    """Group the fragments into frames by the Basic Offset Table (frame starts relative to the first item)."""
    starts = struct.unpack(f"<{len(bot) // 4}I", bot[: len(bot) // 4 * 4])
    if len(starts) != n_frames or not frags:
        return None
    base = frags[0][0] - 8
    index = {p - 8 - base: j for j, (p, _) in enumerate(frags)}
    if any(st not in index for st in starts):
        return None
    bounds = [index[st] for st in starts] + [len(frags)]
    return [frags[bounds[k] : bounds[k + 1]] for k in range(len(starts)) if bounds[k] < bounds[k + 1]]
