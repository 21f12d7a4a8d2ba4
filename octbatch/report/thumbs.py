"""Small JPEG thumbnails (data URIs) of the few scans a report shows, read from the archive.

One file that cannot be read gets a note instead of a picture; it never stops the report. Paths come from
the table (untrusted): one that leads outside the archive root is not opened.
"""

from __future__ import annotations

import base64
import io
import os

__all__ = ["archive_root", "thumbnail"]

SIZE = 168


def archive_root(given: str | None, metadata: dict) -> tuple[str | None, str]:
    """(root to read scans from or None, a note saying why there are no pictures)."""
    root = given or metadata.get("archive_root")
    if not root:
        return None, "the table does not name its archive; pass --archive DIR to show the scans"
    if not os.path.isdir(root):
        return None, f"the archive {root} is not reachable from here; pass --archive DIR to show the scans"
    return root, ""


def _inside(root: str, rel: str) -> str | None:
    full = os.path.normpath(os.path.join(root, rel))
    base = os.path.normpath(root)
    return full if os.path.isabs(full) and os.path.commonpath([base, full]) == base and not os.path.isabs(rel) else None


def _to_grey(im):
    """8-bit greyscale; 16-bit and float scans are stretched to their own range (convert("L") would clip them)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        import numpy as np
        from PIL import Image

        a = np.asarray(im, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        return Image.fromarray(((a - lo) * (255.0 / (hi - lo)) if hi > lo else a * 0).astype(np.uint8))
    return im.convert("L")


def thumbnail(root: str, rel: str, size: int = SIZE) -> tuple[str | None, str]:
    """(data URI of a greyscale JPEG thumbnail or None, why not)."""
    from PIL import Image

    full = _inside(root, rel)
    if full is None:
        return None, "path leads outside the archive"
    try:
        with Image.open(full) as im:
            im.draft("L", (size * 2, size * 2))  # JPEG: let libjpeg decode at a reduced scale
            im = _to_grey(im)
            im.thumbnail((size, size))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=80)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        return None, f"cannot read the scan ({type(exc).__name__})"
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii"), ""
