"""Volumes into frames: one row per B-scan of a DICOM volume or a multi-page TIFF stack.

Discovery (octbatch.archive) yields files; ``expand`` turns each DICOM file and each multi-page
TIFF into one ``FrameEntry`` per frame, reading only its header. JPEG, PNG and single-page TIFF
files pass through untouched, so a JPEG archive pays one name check per file and nothing else.
A file that cannot give frames (not DICOM, no Pixel Data, unsupported transfer syntax, not an
OCT SOP class, a header claiming more than --max-volume-pixels) becomes one entry with its error,
hence one row with status=error.

A row's identity for exactly-once runs is (path, frame, size, mtime): ``row_key``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from .archive import FileEntry, parse_name
from .dicom import DICOM_EXTENSIONS
from .errors import OctbatchError
from .shards import entry_key

__all__ = [
    "FrameEntry",
    "TiffInfo",
    "FORMATS",
    "discovery_filters",
    "expand",
    "row_key",
    "PROVENANCE_FIELDS",
    "provenance_values",
    "DEFAULT_MAX_VOLUME_PIXELS",
]

FORMATS = {"jpeg": (".jpeg", ".jpg"), "png": (".png",), "tiff": (".tif", ".tiff"), "dicom": DICOM_EXTENSIONS}
DEFAULT_MAX_VOLUME_PIXELS = 4_000_000_000  # 4 G pixels: e.g. 1,000 frames of 2048x2048
_TIFF_EXT = (".tif", ".tiff")
_PLAIN_EXT = (".jpeg", ".jpg", ".png")
_PLAIN_CASED = _PLAIN_EXT + tuple(x.upper() for x in _PLAIN_EXT)


@dataclass(frozen=True, slots=True)
class TiffInfo:
    kind: str  # "tiff"
    n_frames: int


@dataclass(frozen=True, slots=True)
class FrameEntry:
    """One frame of a volume file (or, with `error`, a volume file that gives no frame)."""

    path: str
    abspath: str
    size: int
    mtime_ns: int
    frame: int | None  # None for a single-image file
    info: Any = None  # DicomInfo | TiffInfo
    error: str | None = None
    etag: str | None = None  # of the volume's object, when it lives on S3

    def names(self) -> tuple[str | None, str | None, int | None]:
        label, patient, image_no = parse_name(self.path)
        if getattr(self.info, "kind", None) == "dicom":
            return label, self.info.patient_id, None
        return label, patient, image_no

    @property
    def index(self) -> int:
        return self.frame or 0


def row_key(path: str, frame: int | None, size: int, mtime_us: int, etag: str | None = None) -> int:
    """Identity of one row: a file version, and the frame within it when it has frames. A file's
    version is (size, mtime); an S3 object's is (size, ETag) when the store gives an ETag: an object
    overwritten within the same second with other bytes of the same size is a new version."""
    if etag is not None:
        return hash((path, -1 if frame is None else int(frame), int(size), etag))
    if frame is None:
        return entry_key(path, size, mtime_us)
    return hash((path, int(frame), int(size), int(mtime_us)))


def entry_row_key(e) -> int:
    if type(e) is FileEntry and e.etag is None:  # the common case, as cheap as entry_key (1M files: 1M calls)
        return hash((e.path, e.size, e.mtime_ns // 1000))
    return row_key(e.path, getattr(e, "frame", None), e.size, e.mtime_ns // 1000, e.etag)


def _no_extension_or_numeric(name: str) -> bool:
    """DICOM files from a PACS often have no extension, or a UID as name (1.2.840....123)."""
    dot = name.rfind(".")
    return dot <= 0 or name[dot + 1 :].isdigit()


def discovery_filters(formats: Sequence[str] | None) -> tuple[tuple[str, ...], Callable[[str, str], bool] | None]:
    """(extensions, sniff) for archive.discover from --formats (None: every format)."""
    chosen = list(formats) if formats else list(FORMATS)
    bad = [f for f in chosen if f not in FORMATS]
    if bad:
        raise OctbatchError(f"unknown format(s) {', '.join(bad)}", f"Use --formats with any of {', '.join(FORMATS)}.")
    exts = tuple(e for f in chosen for e in FORMATS[f])
    return exts, (_sniff_dicom if "dicom" in chosen else None)


def _sniff_dicom(name: str, path: str) -> bool:
    from .dicom import has_dicm_magic

    return _no_extension_or_numeric(name) and has_dicm_magic(path)


def expand(
    entries: Iterable, *, pseudonymize, max_pixels: int, max_volume_pixels: int = DEFAULT_MAX_VOLUME_PIXELS
) -> Iterator:
    """Yield each JPEG/PNG/single-page TIFF entry as it is and each volume as its frames."""
    for e in entries:
        if e.path.endswith(_PLAIN_CASED):  # a JPEG archive pays this one test per file
            yield e
            continue
        low = e.path.lower()
        if low.endswith(_PLAIN_EXT):
            yield e
        elif low.endswith(_TIFF_EXT):
            yield from _expand_tiff(e, max_pixels, max_volume_pixels)
        else:
            yield from _expand_dicom(e, pseudonymize, max_pixels, max_volume_pixels)


def _expand_dicom(e, pseudonymize, max_pixels, max_volume_pixels) -> Iterator[FrameEntry]:
    from .dicom import HeaderError, native_frames_present, read_dicom_header

    def one(error=None, info=None, frame=None):
        return FrameEntry(e.path, e.abspath, e.size, e.mtime_ns, frame, info, error, e.etag)

    try:
        info = read_dicom_header(e.abspath, pseudonymize, max_pixels=max_pixels, max_volume_pixels=max_volume_pixels)
    except HeaderError as exc:
        yield one(str(exc))
        return
    except OctbatchError:
        raise  # pydicom missing: the whole run needs the dicom extra
    except Exception as exc:  # noqa: BLE001 - one file never stops discovery
        yield one(f"unreadable DICOM header: {type(exc).__name__}: {str(exc)[:200]}")
        return
    n = info.n_frames
    present = n if info.encapsulated else native_frames_present(info, e.size)
    if n == 1:
        yield one(None if present else "DICOM Pixel Data is truncated (the frame is incomplete)", info)
        return
    for i in range(n):
        err = None
        if i >= present:
            err = f"frame {i} is missing: NumberOfFrames is {n} but the Pixel Data holds only {present} whole frame(s) (truncated file?)"
        yield one(err, info, i)


def _expand_tiff(e, max_pixels, max_volume_pixels) -> Iterator:
    """A multi-page TIFF as its pages; single-page or unreadable TIFFs go to the normal decoder."""
    try:
        from PIL import Image

        with Image.open(e.abspath) as im:
            w, h = im.size
            n = getattr(im, "n_frames", 1)
    except Exception:  # noqa: BLE001 - the decoder reports what is wrong with it
        yield e
        return
    if n <= 1:
        yield e
        return
    if w * h * n > max_volume_pixels:
        yield FrameEntry(
            e.path,
            e.abspath,
            e.size,
            e.mtime_ns,
            None,
            None,
            f"TIFF stack of {n} pages of {w}x{h} is over the {max_volume_pixels / 1e9:.1f} G pixel volume limit "
            "(raise --max-volume-pixels if genuine)",
            e.etag,
        )
        return
    info = TiffInfo("tiff", n)
    for i in range(n):
        yield FrameEntry(e.path, e.abspath, e.size, e.mtime_ns, i, info, None, e.etag)


# --- the extra columns of the results table ---------------------------------------------------
PROVENANCE_FIELDS = (
    pa.field("frame", pa.int32()),
    pa.field("study_uid", pa.string()),
    pa.field("series_uid", pa.string()),
    pa.field("sop_uid", pa.string()),
    pa.field("laterality", pa.string()),
    pa.field("acquired_at", pa.timestamp("us")),  # as recorded by the device (its local time)
    pa.field("manufacturer", pa.string()),
    pa.field("model_name", pa.string()),
    pa.field("pixel_spacing_row_mm", pa.float32()),
    pa.field("pixel_spacing_col_mm", pa.float32()),
)
PROVENANCE_NAMES = tuple(f.name for f in PROVENANCE_FIELDS)
_DICOM_ATTRS = PROVENANCE_NAMES[1:]
_NONE = (None,) * len(_DICOM_ATTRS)


def provenance_values(e) -> tuple:
    """Values of PROVENANCE_FIELDS for one entry (all None for a plain image file)."""
    frame = getattr(e, "frame", None)
    info = getattr(e, "info", None)
    if getattr(info, "kind", None) != "dicom":
        return (frame, *_NONE)
    vals = tuple(getattr(info, a) for a in _DICOM_ATTRS)
    return (frame, *vals)
