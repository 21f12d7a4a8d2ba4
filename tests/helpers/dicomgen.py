"""Build DICOM OCT volumes and multi-page TIFF stacks in temp folders, from real scans (tests only).

Nothing made here is committed: tests call these helpers on tmp_path. Patient-like tags hold
made-up values so that the tests can check none of them reaches a results table.
"""

from __future__ import annotations

import io
import os

import numpy as np

OCT_SOP = "1.2.840.10008.5.1.4.1.1.77.1.5.4"
FUNDUS_SOP = "1.2.840.10008.5.1.4.1.1.77.1.5.1"  # Ophthalmic Photography 8 Bit Image Storage
PDF_SOP = "1.2.840.10008.5.1.4.1.1.104.1"  # Encapsulated PDF Storage

FAKE_PATIENT = {
    "PatientID": "PID-4711-SECRET",
    "PatientName": "Doe^Jane^Secret",
    "PatientBirthDate": "19500101",
    "PatientSex": "F",
    "PatientAddress": "1 Secret Street",
    "OtherPatientIDs": "OTHER-ID-SECRET",
}


def gray(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("L"))


def _base(
    sop: str,
    ts: str,
    *,
    rows: int,
    cols: int,
    n_frames: int | None,
    series_uid: str | None = None,
    patient: dict | None = None,
    laterality: str = "R",
):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop
    sop_uid = generate_uid()
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ts
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.Modality = "OPT"
    ds.Manufacturer = "Acme Optics"
    ds.ManufacturerModelName = "OCT-9000"
    ds.ImageLaterality = laterality
    ds.AcquisitionDateTime = "20240315103000.250000"
    for k, v in (patient or FAKE_PATIENT).items():
        setattr(ds, k, v)
    ds.InstitutionName = "Secret Eye Hospital"
    ds.ReferringPhysicianName = "Who^Doctor"
    ds.Rows, ds.Columns = rows, cols
    if n_frames is not None:
        ds.NumberOfFrames = n_frames
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelSpacing = [0.0039, 0.0117]
    return ds


def _save(ds, path: str) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def jpeg_volume(path: str, jpeg_paths: list[str], *, has_bot: bool = True, fragments_per_frame: int = 1, **kw) -> str:
    """A JPEG-baseline volume whose frames are the very bytes of the given JPEG files."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    frames = [open(p, "rb").read() for p in jpeg_paths]
    h, w = gray(jpeg_paths[0]).shape
    ds = _base(OCT_SOP, JPEGBaseline8Bit, rows=h, cols=w, n_frames=len(frames), **kw)
    ds.PixelData = encapsulate(frames, fragments_per_frame=fragments_per_frame, has_bot=has_bot)
    ds["PixelData"].VR = "OB"
    ds.LossyImageCompression = "01"
    return _save(ds, path)


def native_volume(path: str, images: list[np.ndarray], *, implicit: bool = False, bits: int = 8, **kw) -> str:
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    h, w = images[0].shape
    ds = _base(
        OCT_SOP,
        ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian,
        rows=h,
        cols=w,
        n_frames=len(images),
        **kw,
    )
    arr = np.stack(images)
    if bits == 16:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        arr = arr.astype(np.uint16) << 4
    ds.PixelData = arr.astype("<u2" if bits == 16 else np.uint8).tobytes()
    ds["PixelData"].VR = "OW" if bits == 16 else "OB"
    return _save(ds, path)


def compressed_volume(path: str, images: list[np.ndarray], ts: str, **kw) -> str:
    """RLE, JPEG-LS or JPEG 2000 (lossless) through pydicom's encoders (pylibjpeg / pyjpegls plugins)."""
    from pydicom.uid import ExplicitVRLittleEndian

    h, w = images[0].shape
    ds = _base(OCT_SOP, ExplicitVRLittleEndian, rows=h, cols=w, n_frames=len(images), **kw)
    arr = np.stack(images).astype(np.uint8)
    ds.PixelData = arr.tobytes()
    ds.compress(ts, arr if len(images) > 1 else arr[0])
    return _save(ds, path)


def fundus_photo(path: str, jpeg_path: str) -> str:
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    h, w = gray(jpeg_path).shape
    ds = _base(FUNDUS_SOP, JPEGBaseline8Bit, rows=h, cols=w, n_frames=None)
    ds.PixelData = encapsulate([open(jpeg_path, "rb").read()])
    ds["PixelData"].VR = "OB"
    return _save(ds, path)


def encapsulated_pdf(path: str) -> str:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = PDF_SOP
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = PDF_SOP
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID = FAKE_PATIENT["PatientID"]
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = b"%PDF-1.4\n%fake report\n%%EOF\n"
    return _save(ds, path)


def tiff_stack(path: str, images: list[np.ndarray]) -> str:
    from PIL import Image

    pages = [Image.fromarray(a) for a in images]
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    pages[0].save(path, save_all=True, append_images=pages[1:], compression="tiff_lzw")
    return path


def truncate(path: str, keep: int, out: str | None = None) -> str:
    data = open(path, "rb").read()
    out = out or path
    with open(out, "wb") as f:
        f.write(data[:keep])
    return out


def set_frames(path: str, n_frames: int, out: str, *, rows: int | None = None, cols: int | None = None) -> str:
    """Copy of a volume whose header claims another NumberOfFrames (and size)."""
    import pydicom

    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = n_frames
    if rows:
        ds.Rows = rows
    if cols:
        ds.Columns = cols
    return _save(ds, out)


def without_pixels(path: str, out: str) -> str:
    import pydicom

    ds = pydicom.dcmread(path)
    del ds.PixelData
    return _save(ds, out)


def jpeg_bytes(img: np.ndarray, quality: int = 90) -> bytes:
    from PIL import Image

    b = io.BytesIO()
    Image.fromarray(img).save(b, format="JPEG", quality=quality)
    return b.getvalue()
