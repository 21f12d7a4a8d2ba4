"""DICOM headers: is this file an OCT volume, how are its frames stored, and what provenance goes into its rows.

Only the header is parsed here (pydicom, ``stop_before_pixels``); the Pixel Data element's position
and length are noted so that decoding can later read one frame at a time without loading the
volume. Only the tags listed in ``DicomInfo`` are kept; the patient's ID is pseudonymised
(octbatch.phi) before it is stored, and no other identifying tag is ever read into a row.

pydicom is imported only when a DICOM file is met (the `dicom` extra).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from datetime import datetime

__all__ = [
    "DicomInfo",
    "DICOM_EXTENSIONS",
    "OCT_SOP_CLASS",
    "ACCEPTED_SOP_CLASSES",
    "SUPPORTED_TRANSFER_SYNTAXES",
    "has_dicm_magic",
    "read_dicom_header",
    "HeaderError",
]

DICOM_EXTENSIONS = (".dcm", ".dicom")
OCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.5.4"  # Ophthalmic Tomography Image Storage
# Secondary Capture classes are how many research tools and device exports write OCT B-scans;
# they are accepted too (a classifier cannot tell anyway what an arbitrary image shows).
ACCEPTED_SOP_CLASSES = {
    OCT_SOP_CLASS: "Ophthalmic Tomography Image Storage",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.3": "Multi-frame Grayscale Word Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.4": "Multi-frame True Color Secondary Capture Image Storage",
}
NATIVE = {"1.2.840.10008.1.2": "Implicit VR Little Endian", "1.2.840.10008.1.2.1": "Explicit VR Little Endian"}
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
# Transfer syntax -> name. JPEG baseline goes straight to octbatch's JPEG decoder; the others are
# decoded by pydicom's pixel handlers (RLE built in; pylibjpeg-libjpeg, -openjpeg, pyjpegls plugins).
SUPPORTED_TRANSFER_SYNTAXES = {
    **NATIVE,
    JPEG_BASELINE: "JPEG Baseline (Process 1)",
    "1.2.840.10008.1.2.4.51": "JPEG Extended (Process 2 & 4)",
    "1.2.840.10008.1.2.4.57": "JPEG Lossless, Non-Hierarchical (Process 14)",
    "1.2.840.10008.1.2.4.70": "JPEG Lossless, First-Order Prediction",
    "1.2.840.10008.1.2.4.80": "JPEG-LS Lossless",
    "1.2.840.10008.1.2.4.81": "JPEG-LS Near-Lossless",
    "1.2.840.10008.1.2.4.90": "JPEG 2000 (Lossless Only)",
    "1.2.840.10008.1.2.4.91": "JPEG 2000",
    "1.2.840.10008.1.2.4.201": "High-Throughput JPEG 2000 (Lossless Only)",
    "1.2.840.10008.1.2.4.202": "High-Throughput JPEG 2000 with RPCL (Lossless Only)",
    "1.2.840.10008.1.2.4.203": "High-Throughput JPEG 2000",
    "1.2.840.10008.1.2.5": "RLE Lossless",
}
_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) little endian
_UNDEFINED = 0xFFFFFFFF


class HeaderError(Exception):
    """The file cannot give any frame; the message goes into its one row."""


@dataclass(frozen=True, slots=True)
class DicomInfo:
    """What octbatch keeps of one DICOM file's header: provenance for the rows and how to find the frames."""

    kind: str  # "dicom"
    sop_class: str
    transfer_syntax: str
    n_frames: int
    rows: int
    columns: int
    samples: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    photometric: str
    planar_configuration: int
    pixel_offset: int  # file offset of the Pixel Data value (first byte after the element header)
    pixel_length: int  # bytes of the value (native), or -1 when encapsulated
    extended_offsets: tuple | None  # (ExtendedOffsetTable, ExtendedOffsetTableLengths) raw bytes
    # provenance (no identifying tag other than the pseudonymised patient ID)
    patient_id: str | None
    study_uid: str | None
    series_uid: str | None
    sop_uid: str | None
    laterality: str | None
    acquired_at: datetime | None
    manufacturer: str | None
    model_name: str | None
    pixel_spacing_row_mm: float | None
    pixel_spacing_col_mm: float | None

    @property
    def encapsulated(self) -> bool:
        return self.pixel_length < 0

    @property
    def frame_bytes(self) -> int:
        return self.rows * self.columns * self.samples * (self.bits_allocated // 8)


def has_dicm_magic(path: str) -> bool:
    """True when the file has the DICOM Part 10 marker: 'DICM' at byte 128. Never raises."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _str(ds, keyword: str) -> str | None:
    v = ds.get(keyword)
    if v is None or v == "":
        return None
    s = str(v).strip()
    return s or None


def _parse_dt(date: str | None, time: str | None) -> datetime | None:
    """DICOM DA + TM (or a DT) -> naive datetime as recorded (the device's local time)."""
    if not date:
        return None
    text = date.strip()
    if len(text) > 8:  # a DT: YYYYMMDDHHMMSS.FFFFFF&ZZXX
        text, time = text[:8], text[8:]
    try:
        d = datetime.strptime(text[:8], "%Y%m%d")
    except ValueError:
        return None
    t = (time or "").strip().split("+")[0].split("-")[0]
    if t:
        main, _, frac = t.partition(".")
        try:
            hh, mm, ss = int(main[0:2] or 0), int(main[2:4] or 0), int(main[4:6] or 0)
            us = int((frac + "000000")[:6]) if frac else 0
            d = d.replace(hour=hh, minute=mm, second=min(ss, 59), microsecond=us)
        except ValueError:
            pass
    return d


def _acquired_at(ds) -> datetime | None:
    if ds.get("AcquisitionDateTime"):
        return _parse_dt(str(ds.AcquisitionDateTime), None)
    for d, t in (
        ("AcquisitionDate", "AcquisitionTime"),
        ("ContentDate", "ContentTime"),
        ("SeriesDate", "SeriesTime"),
        ("StudyDate", "StudyTime"),
    ):
        if ds.get(d):
            return _parse_dt(str(ds.get(d)), str(ds.get(t) or ""))
    return None


def _pixel_spacing(ds) -> tuple[float | None, float | None]:
    """(row, column) spacing in mm: top level, else the shared functional groups' Pixel Measures."""
    ps = ds.get("PixelSpacing")
    if ps is None:
        try:
            ps = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
        except (AttributeError, IndexError, KeyError, TypeError):
            ps = None
    try:
        return float(ps[0]), float(ps[1])
    except (TypeError, IndexError, ValueError):
        return None, None


def _int(ds, keyword: str, default: int) -> int:
    v = ds.get(keyword)
    if v is None or v == "":
        return default
    try:
        return int(v)
    except (TypeError, ValueError):
        raise HeaderError(f"invalid {keyword} {str(v)[:40]!r} in the DICOM header") from None


def read_dicom_header(path: str, pseudonymize, *, max_pixels: int, max_volume_pixels: int) -> DicomInfo:
    """Parse the header of one DICOM file and check it can give OCT frames. Raises HeaderError."""
    ds, size, pos, head = _read_header(path)
    sop, ts = _check_syntax(ds)
    offset, length, encapsulated = _pixel_data(ts, head, pos)
    rows, cols, n_frames, samples, bits_allocated = _check_geometry(
        ds, size - offset, encapsulated, max_pixels=max_pixels, max_volume_pixels=max_volume_pixels
    )
    ext = None
    if ds.get("ExtendedOffsetTable") is not None and ds.get("ExtendedOffsetTableLengths") is not None:
        ext = (bytes(ds.ExtendedOffsetTable), bytes(ds.ExtendedOffsetTableLengths))
    row_mm, col_mm = _pixel_spacing(ds)
    return DicomInfo(
        kind="dicom",
        sop_class=sop,
        transfer_syntax=ts,
        n_frames=n_frames,
        rows=rows,
        columns=cols,
        samples=samples,
        bits_allocated=bits_allocated,
        bits_stored=_int(ds, "BitsStored", bits_allocated),
        pixel_representation=_int(ds, "PixelRepresentation", 0),
        photometric=_str(ds, "PhotometricInterpretation") or ("MONOCHROME2" if samples == 1 else "RGB"),
        planar_configuration=_int(ds, "PlanarConfiguration", 0),
        pixel_offset=offset,
        pixel_length=-1 if encapsulated else length,
        extended_offsets=ext,
        patient_id=pseudonymize(_str(ds, "PatientID")),
        study_uid=_str(ds, "StudyInstanceUID"),
        series_uid=_str(ds, "SeriesInstanceUID"),
        sop_uid=_str(ds, "SOPInstanceUID"),
        laterality=_str(ds, "ImageLaterality") or _str(ds, "Laterality"),
        acquired_at=_acquired_at(ds),
        manufacturer=_str(ds, "Manufacturer"),
        model_name=_str(ds, "ManufacturerModelName"),
        pixel_spacing_row_mm=row_mm,
        pixel_spacing_col_mm=col_mm,
    )


def _read_header(path: str):
    """(dataset without pixels, file size, offset after the header, the 12 bytes there)."""
    from ._deps import require

    pydicom = require("pydicom", purpose="reading DICOM files")
    from pydicom.errors import InvalidDicomError

    try:
        f = open(path, "rb")
    except OSError as exc:
        raise HeaderError(f"cannot open file: {exc.strerror or exc}") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except InvalidDicomError as exc:
            raise HeaderError(f"not a DICOM file ({str(exc).splitlines()[0][:200]})") from None
        except (EOFError, struct.error):
            raise HeaderError("truncated DICOM header (file ends inside the header)") from None
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types for bad headers
            raise HeaderError(f"unreadable DICOM header: {type(exc).__name__}: {str(exc)[:200]}") from None
        pos = f.tell()
        head = f.read(12)
    return ds, size, pos, head


def _check_syntax(ds) -> tuple[str, str]:
    """(SOP class, transfer syntax), refusing what octbatch does not classify or decode."""
    from pydicom.uid import UID

    meta = getattr(ds, "file_meta", None)
    ts = str(getattr(meta, "TransferSyntaxUID", "") or "") if meta is not None else ""
    sop = _str(ds, "SOPClassUID") or (str(getattr(meta, "MediaStorageSOPClassUID", "") or "") or None)
    if sop not in ACCEPTED_SOP_CLASSES:
        name = UID(sop).name if sop else "none"
        raise HeaderError(
            f"not an OCT image: DICOM SOP class {sop or '(missing)'} ({name}); octbatch classifies "
            f"{ACCEPTED_SOP_CLASSES[OCT_SOP_CLASS]} ({OCT_SOP_CLASS}) and Secondary Capture images"
        )
    if not ts:
        raise HeaderError("DICOM file has no Transfer Syntax UID in its file meta information")
    if ts not in SUPPORTED_TRANSFER_SYNTAXES:
        raise HeaderError(f"unsupported DICOM transfer syntax {ts} ({UID(ts).name})")
    return sop, ts


def _pixel_data(ts: str, head: bytes, pos: int) -> tuple[int, int, bool]:
    """(offset of the pixels, Pixel Data length, encapsulated?) from the bytes after the header."""
    if len(head) < 8 or head[:4] != _PIXEL_DATA_TAG:
        raise HeaderError("DICOM file has no Pixel Data (truncated before the image, or not an image)")
    implicit = ts == "1.2.840.10008.1.2"
    if implicit:
        (length,) = struct.unpack("<I", head[4:8])
        offset = pos + 8
    else:
        if len(head) < 12:
            raise HeaderError("truncated DICOM file (ends inside the Pixel Data header)")
        (length,) = struct.unpack("<I", head[8:12])
        offset = pos + 12
    encapsulated = length == _UNDEFINED
    if (ts in NATIVE) == encapsulated:
        raise HeaderError(
            f"Pixel Data is {'encapsulated' if encapsulated else 'native'}, which the transfer syntax {ts} does not allow"
        )
    return offset, length, encapsulated


def _check_geometry(ds, pixel_bytes: int, encapsulated: bool, *, max_pixels: int, max_volume_pixels: int):
    """(rows, columns, frames, samples, bits allocated), refusing sizes octbatch will not decode."""
    rows, cols = _int(ds, "Rows", 0), _int(ds, "Columns", 0)
    n_frames = _int(ds, "NumberOfFrames", 1)
    samples = _int(ds, "SamplesPerPixel", 1)
    bits_allocated = _int(ds, "BitsAllocated", 8)
    if rows <= 0 or cols <= 0:
        raise HeaderError(f"invalid image size {cols}x{rows} in the DICOM header")
    if n_frames <= 0:
        raise HeaderError(f"invalid NumberOfFrames {n_frames} in the DICOM header")
    if samples not in (1, 3):
        raise HeaderError(f"{samples} samples per pixel are not supported (1 or 3)")
    if bits_allocated not in (8, 16):
        raise HeaderError(f"BitsAllocated {bits_allocated} is not supported (8 or 16)")
    if rows * cols > max_pixels:
        raise HeaderError(
            f"DICOM frames are {cols}x{rows} = {rows * cols / 1e6:.0f} MP, over the {max_pixels / 1e6:.0f} MP "
            "limit (raise --max-pixels if genuine)"
        )
    if rows * cols * n_frames > max_volume_pixels:
        raise HeaderError(
            f"DICOM header claims {n_frames} frames of {cols}x{rows} = {rows * cols * n_frames / 1e9:.1f} G pixels, "
            f"over the {max_volume_pixels / 1e9:.1f} G pixel volume limit (raise --max-volume-pixels if genuine)"
        )
    if encapsulated and n_frames * 8 > pixel_bytes:
        raise HeaderError(
            f"NumberOfFrames {n_frames} cannot fit in the {max(0, pixel_bytes)} bytes of encapsulated Pixel Data "
            "(truncated file or a wrong header)"
        )
    return rows, cols, n_frames, samples, bits_allocated


def native_frames_present(info: DicomInfo, file_size: int) -> int:
    """How many whole frames the native Pixel Data really holds (a truncated file holds fewer)."""
    have = min(info.pixel_length, max(0, file_size - info.pixel_offset))
    return have // info.frame_bytes if info.frame_bytes else 0
