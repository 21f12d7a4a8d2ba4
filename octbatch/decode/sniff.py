"""Refuse a file from its first bytes, before it is read whole.

A decoder reads a file whole before decoding it; for a large file that is no image at all (a 400 MB
file of zeros named `.jpeg`) that costs its size in memory per decode thread. `read_bytes` therefore
hands every file over `SNIFF_ABOVE` bytes to a sniffer first. A sniffer refuses only what the decoder
would refuse anyway, with the decoder's own message, judged from the same header fields the decoder
checks (the magic bytes and what Pillow makes of them; the width and height `check_pixels` limits);
whatever it cannot judge from the head it leaves to the decoder, after the whole file is read.
"""

from __future__ import annotations

from typing import BinaryIO

from .base import DecodeError

__all__ = ["HEAD_BYTES", "JPEG_MAGIC", "NOT_AN_IMAGE", "check_pixels", "jpeg_header", "sniff_image", "sniff_pillow"]

HEAD_BYTES = 64 * 1024  # a JPEG's header (through SOS) almost always fits; EXIF thumbnails included
JPEG_MAGIC = b"\xff\xd8\xff"
NOT_AN_IMAGE = "not a recognised image (expected JPEG, PNG or TIFF)"


def check_pixels(width: int, height: int, max_pixels: int) -> None:
    """Refuse a decompression bomb from its header, before any pixel is allocated."""
    if width <= 0 or height <= 0:
        raise DecodeError(f"invalid image size {width}x{height} in header")
    if width * height > max_pixels:
        raise DecodeError(
            f"image header claims {width}x{height} = {width * height / 1e6:.0f} MP, over the "
            f"{max_pixels / 1e6:.0f} MP limit (possible decompression bomb; raise --max-pixels if genuine)"
        )


def jpeg_header(data: bytes, max_pixels: int) -> tuple[int, int, str]:
    """(width, height, colour space) of a whole JPEG's header, its size checked against max_pixels;
    a header simplejpeg cannot parse is a DecodeError ("corrupt JPEG header: ...")."""
    import simplejpeg

    try:
        h, w, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError as exc:
        raise DecodeError(f"corrupt JPEG header: {exc}") from None
    check_pixels(w, h, max_pixels)
    return w, h, colorspace.upper()


def sniff_pillow(f: BinaryIO, max_pixels: int) -> None:
    """What Pillow refuses from the header: a file it identifies as no image, or too many pixels.
    Pillow reads from `f` only what identification needs (a few KB for a file of zeros)."""
    from PIL import Image, UnidentifiedImageError

    f.seek(0)
    try:
        im = Image.open(f)
    except UnidentifiedImageError:
        raise DecodeError(NOT_AN_IMAGE) from None
    except Exception:  # noqa: BLE001 - any other failure: the decoder gives its message after the full read
        return
    with im:
        w, h = im.size
    check_pixels(w, h, max_pixels)


def sniff_image(f: BinaryIO, max_pixels: int) -> None:
    """The sniffer for `decode_image` (the CPU decoder; DALI's triage): a JPEG's header as simplejpeg
    parses it, anything else as Pillow sees it. Raises DecodeError to refuse; returns to go on reading."""
    head = f.read(HEAD_BYTES)
    if head[:3] != JPEG_MAGIC:
        sniff_pillow(f, max_pixels)
        return
    import simplejpeg

    try:
        h, w, _, _ = simplejpeg.decode_jpeg_header(head)
    except ValueError:
        return  # the header runs past the head, or is corrupt: the full decode decides (and says which)
    # jpeg_read_header stops at the start of scan, so a header complete in the head is the file's header.
    check_pixels(w, h, max_pixels)
