"""Decoding the frames of volumes: DICOM (any supported transfer syntax) and multi-page TIFF.

A batch may mix plain files (handed to the run's decoder as usual) and frames:

* native (uncompressed) DICOM: each frame is one task that reads the frame's bytes at its offset
  and reshapes them here.
* JPEG baseline DICOM: the item sequence's headers are walked once per file (cached), then each
  frame is one task that reads its fragment(s) and hands the bytes straight to octbatch's JPEG
  decoder (simplejpeg, DCT-scaled), as a .jpeg file's bytes would be: same bytes, same pixels.
  Several fragments per frame without an offset table fall back to pydicom's frame splitting.
* every other transfer syntax: pydicom's pixel handlers (`pydicom.pixels.iter_pixels`, which reads
  from the file frame by frame; plugins from the `dicom` extra), on contiguous chunks of a file's
  frames, two chunks per decode thread.
* TIFF pages: Pillow, page by page, in chunks likewise.

Where the frames lie is decode/frame_locations.py; native pixels to grayscale, decode/frame_pixels.py.
Memory is one batch of frames, whatever the size of the volume. A frame that fails gets its own
error; the other frames of the file are still decoded.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..preprocess import Preprocessing
from .base import DecodedBatch, DecodeError, per_file
from .cpu import _crop_resize, _to_gray_u8, decode_image
from .frame_locations import native_locations, reads_bytes, walk_items
from .frame_pixels import native_gray, pydicom_message, to_gray_u8

__all__ = ["FrameDecoder", "has_frames", "to_gray_u8"]


def has_frames(entries: Sequence) -> bool:
    return any(hasattr(e, "frame") for e in entries)


class FrameDecoder:
    """Decodes batches that hold frames of volumes (and plain files, through `decoder`)."""

    def __init__(self, spec: Preprocessing, *, threads: int = 2, max_pixels: int = 64_000_000):
        self.spec = spec
        self.max_pixels = max_pixels
        self.threads = max(1, int(threads))
        self._pool = (
            ThreadPoolExecutor(self.threads, thread_name_prefix="octbatch-frames") if self.threads > 1 else None
        )
        self._locs: dict = {}  # (path, size, mtime) -> frame locations (see _locations)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def decode_entries(self, decoder, entries: Sequence) -> DecodedBatch:
        n = len(entries)
        images = np.empty((n, self.spec.height, self.spec.width), np.uint8)
        sizes: list = [None] * n
        errors: list = [None] * n
        groups = self._decode_plain_then_group(decoder, entries, images, sizes, errors)
        tasks, pending = self._plan(entries, groups, errors)
        self._run_chunks(entries, tasks, images, sizes, errors, pending)
        if pending:
            order = sorted(pending)

            def work(i: int) -> None:
                images[i], sizes[i] = pending[i]()

            per_file(work, order, errors, self._pool)
        return DecodedBatch(images, sizes, errors)

    def _decode_plain_then_group(self, decoder, entries: Sequence, images, sizes, errors) -> dict[str, list[int]]:
        """Plain files through the run's decoder; the frames' rows grouped by file (errors noted)."""
        plain = [i for i, e in enumerate(entries) if not hasattr(e, "frame")]
        if plain:
            sub = decoder.decode_batch([entries[i].abspath for i in plain])
            for j, i in enumerate(plain):
                images[i], sizes[i], errors[i] = sub.images[j], sub.sizes[j], sub.errors[j]
        groups: dict[str, list[int]] = {}
        for i, e in enumerate(entries):
            if not hasattr(e, "frame"):
                continue
            if e.error is not None:
                errors[i] = e.error
            elif e.info is None:
                errors[i] = "no frame information for this file"
            else:
                groups.setdefault(e.abspath, []).append(i)
        return groups

    def _plan(self, entries: Sequence, groups: dict[str, list[int]], errors: list) -> tuple[list, dict]:
        """Native and JPEG-baseline frames whose place in the file is known: one task per frame (read
        + decode, like a .jpeg file), returned in `pending` (row -> callable giving (image, (w, h))).
        Other syntaxes, TIFF, and item sequences that need pydicom's frame splitting: contiguous
        chunks of rows (pydicom/Pillow open the file once per chunk), returned in `tasks`."""
        tasks: list[list[int]] = []
        pending: dict = {}
        for rows in groups.values():
            rows.sort(key=lambda i: entries[i].index)
            e0 = entries[rows[0]]
            info = e0.info
            if info.kind == "dicom" and reads_bytes(info):
                try:
                    locs = self._locations(e0)
                except DecodeError as exc:
                    for i in rows:
                        errors[i] = str(exc)
                    continue
                if locs is None:
                    tasks.append(rows)
                    continue
                for i in rows:
                    k = entries[i].index
                    if k < len(locs):
                        pending[i] = lambda e=entries[i], loc=locs[k]: self._read_frame(e, loc)
                    else:
                        errors[i] = (
                            f"frame {k} is missing from the encapsulated Pixel Data (NumberOfFrames is "
                            f"{info.n_frames}, the data holds {len(locs)}; truncated file?)"
                        )
                continue
            k = min(2 * self.threads, len(rows))
            step = -(-len(rows) // k)
            tasks.extend(rows[j : j + step] for j in range(0, len(rows), step))
        return tasks, pending

    def _run_chunks(self, entries: Sequence, tasks: list, images, sizes, errors, pending) -> None:
        """Decode each chunk of rows on the pool; whatever a chunk raises becomes its rows' error."""

        def fail(rows, msg: str) -> None:
            for i in rows:
                if errors[i] is None and sizes[i] is None:
                    pending.pop(i, None)
                    errors[i] = msg

        def run(rows: list[int]) -> None:
            try:
                self._chunk(entries, rows, images, sizes, errors, pending)
            except MemoryError:
                fail(rows, "out of memory while decoding")
            except DecodeError as exc:
                fail(rows, str(exc))
            except Exception as exc:  # noqa: BLE001 - one file never fails its batch
                fail(rows, f"decode failed: {type(exc).__name__}: {str(exc)[:300]}")

        if self._pool is None or len(tasks) < 2:
            for t in tasks:
                run(t)
        else:
            list(self._pool.map(run, tasks))

    # -- frames whose bytes octbatch reads itself ------------------------------------------------
    def _locations(self, e) -> list | None:
        """Per frame, the (offset, length) fragments holding it; None when only pydicom's splitting
        of the item sequence can tell (several fragments per frame without an offset table).
        Cached per file version: the item headers of a volume are walked once per worker."""
        info = e.info
        key = (e.abspath, e.size, e.mtime_ns)
        if key in self._locs:
            return self._locs[key]
        if not info.encapsulated:
            locs = native_locations(info)
        elif info.extended_offsets is not None:
            locs = None
        else:
            with self._open(e) as f:
                locs = walk_items(f, info, e.size)
        if len(self._locs) > 256:
            self._locs.clear()
        self._locs[key] = locs
        return locs

    def _open(self, e):
        try:
            f = open(e.abspath, "rb")
        except FileNotFoundError:
            raise DecodeError("file disappeared after discovery (not found when read)") from None
        except OSError as exc:
            raise DecodeError(f"cannot open file: {exc.strerror or exc}") from None
        st = os.fstat(f.fileno())
        if st.st_size != e.size or st.st_mtime_ns != e.mtime_ns:
            f.close()
            raise DecodeError(
                "file changed since discovery (size or mtime differ); run again to classify the new version"
            )
        return f

    def _read_frame(self, e, loc):
        with self._open(e) as f:
            parts = []
            for pos, length in loc:
                f.seek(pos)
                b = f.read(length)
                if len(b) < length:
                    raise DecodeError(f"frame {e.index} is truncated ({len(b)} of {length} bytes)")
                parts.append(b)
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        if e.info.encapsulated:
            return self._jpeg_frame(data, e.index)
        return self._native_frame(data, e.info)

    # -- one contiguous chunk of one file's frames --------------------------------------------
    def _chunk(self, entries, rows, images, sizes, errors, pending) -> None:
        e0 = entries[rows[0]]
        if e0.info.kind == "tiff":
            return self._tiff(entries, rows, images, sizes, errors)
        info = e0.info
        try:
            f = open(e0.abspath, "rb")
        except FileNotFoundError:
            raise DecodeError("file disappeared after discovery (not found when read)") from None
        except OSError as exc:
            raise DecodeError(f"cannot open file: {exc.strerror or exc}") from None
        with f:
            st = os.fstat(f.fileno())
            if st.st_size != e0.size or st.st_mtime_ns != e0.mtime_ns:
                raise DecodeError(
                    "file changed since discovery (size or mtime differ); run again to classify the new version"
                )
            if reads_bytes(info):  # JPEG baseline whose frames only pydicom's splitting can find
                self._jpeg(f, info, entries, rows, images, sizes, errors, pending)
            else:
                self._pydicom(e0.abspath, info, entries, rows, images, sizes, errors)

    def _put(self, i, gray: np.ndarray, images, sizes) -> None:
        h, w = gray.shape
        images[i] = _crop_resize(gray, self.spec)
        sizes[i] = (w, h)

    def _native_frame(self, buf: bytes, info):
        g = native_gray(buf, info)
        return _crop_resize(g, self.spec), (g.shape[1], g.shape[0])

    def _jpeg(self, f, info, entries, rows, images, sizes, errors, pending) -> None:
        """Walk the item sequence up to the last frame wanted, keeping the wanted frames' bytes."""
        from pydicom.encaps import generate_frames

        wanted = {entries[i].index: i for i in rows}
        last = max(wanted)
        f.seek(info.pixel_offset)
        got = 0
        try:
            for k, data in enumerate(
                generate_frames(f, number_of_frames=info.n_frames, extended_offsets=info.extended_offsets)
            ):
                if k in wanted:
                    got += 1
                    pending[wanted[k]] = lambda data=data, k=k: self._jpeg_frame(data, k)
                if k >= last:
                    break
        except Exception as exc:  # noqa: BLE001 - a broken item sequence ends the frames it holds
            msg = f"encapsulated Pixel Data is damaged after frame {got}: {type(exc).__name__}: {str(exc)[:200]}"
            for i in rows:
                if i not in pending and errors[i] is None:
                    errors[i] = msg
        for idx, i in wanted.items():
            if i not in pending and errors[i] is None:
                errors[i] = (
                    f"frame {idx} is missing from the encapsulated Pixel Data (NumberOfFrames is {info.n_frames}; truncated file?)"
                )

    def _jpeg_frame(self, data: bytes, k: int):
        try:
            return decode_image(data, self.spec, max_pixels=self.max_pixels)
        except DecodeError as exc:
            raise DecodeError(f"frame {k}: {exc}") from None

    def _pydicom(self, path, info, entries, rows, images, sizes, errors) -> None:
        from pydicom.pixels import iter_pixels, pixel_array

        idx = [entries[i].index for i in rows]
        signed = bool(info.pixel_representation)
        try:
            for i, a in zip(rows, iter_pixels(path, indices=idx)):
                self._put(
                    i,
                    to_gray_u8(a, photometric=info.photometric, bits_stored=info.bits_stored, signed=signed),
                    images,
                    sizes,
                )
            return
        except Exception:  # noqa: BLE001 - find which frames fail, one by one
            pass
        for i in rows:
            if sizes[i] is not None:
                continue
            try:
                a = pixel_array(path, index=entries[i].index)
                self._put(
                    i,
                    to_gray_u8(a, photometric=info.photometric, bits_stored=info.bits_stored, signed=signed),
                    images,
                    sizes,
                )
            except Exception as exc:  # noqa: BLE001
                errors[i] = pydicom_message(entries[i].index, info, exc)

    def _tiff(self, entries, rows, images, sizes, errors) -> None:
        import io

        from PIL import Image

        from .base import read_bytes

        data = read_bytes(entries[rows[0]].abspath)
        with Image.open(io.BytesIO(data)) as im:
            for i in rows:
                try:
                    im.seek(entries[i].index)
                    w, h = im.size
                    if w * h > self.max_pixels:
                        raise DecodeError(
                            f"TIFF page {entries[i].index} is {w}x{h}, over the {self.max_pixels / 1e6:.0f} MP limit"
                        )
                    self._put(i, _to_gray_u8(im), images, sizes)
                except DecodeError as exc:
                    errors[i] = str(exc)
                except Exception as exc:  # noqa: BLE001
                    errors[i] = f"TIFF page {entries[i].index}: {type(exc).__name__}: {str(exc)[:300]}"
