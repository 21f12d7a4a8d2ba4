"""The decoder contracts (Decoder, DeviceDecoder and the batches they return) and the one reader
every decoder shares."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol, runtime_checkable

import numpy as np

from ..preprocess import Preprocessing

__all__ = [
    "DecodeError",
    "DecodedBatch",
    "DeviceBatch",
    "Decoder",
    "DeviceDecoder",
    "decoder_device",
    "read_bytes",
    "per_file",
    "SNIFF_ABOVE",
]


class DecodeError(Exception):
    """One file could not be turned into an image; the message goes into its row's `error`."""


@dataclass
class DecodedBatch:
    images: np.ndarray  # (n, H, W) uint8; rows of failed files are undefined
    sizes: list  # (width, height) of the original scan, or None where it failed
    errors: list  # None where ok, else the message

    @property
    def ok(self) -> np.ndarray:
        return np.array([e is None for e in self.errors], dtype=bool)


@dataclass
class DeviceBatch:
    """A decoded batch whose rows decoded on the device stay where the decoder put them (GPU memory
    for DALI on device="gpu"): what a DeviceDecoder's `decode_batch_device` returns.

    `ptr` points at a dense float32 (n_device, C, H, W) tensor holding the model input of rows
    `device_rows`; it is valid until `release()`, and its producer has finished (DALI outputs fetched
    with cuda_stream=None are host-synchronous), so a consumer may read it on any CUDA stream.
    Rows that were decoded on the CPU (non-JPEG, CMYK, recovery after a failed DALI run) are in
    `host_images` (uint8, rows `host_rows`). Errors and sizes cover the whole batch."""

    n: int
    ptr: int | None
    device_rows: list
    host_rows: list
    host_images: np.ndarray
    sizes: list
    errors: list
    stream: int | None = None
    gate_images: np.ndarray | None = None  # (n, H, W) uint8 of every decoded row, when the gate asked for them
    _release: Callable[[], None] | None = field(default=None, repr=False)
    _keep: tuple = field(default=(), repr=False)  # DALI handles that must outlive `ptr`

    @property
    def ok(self) -> np.ndarray:
        return np.array([e is None for e in self.errors], dtype=bool)

    def release(self) -> None:
        """Give the device output buffer back; call once the consumer is done with `ptr`."""
        rel, self._release = self._release, None
        self.ptr = None
        self._keep = ()
        if rel is not None:
            rel()

    def __del__(self) -> None:
        # A batch dropped without release (a consumer that raised) must not block its pipeline forever.
        self.release()


class Decoder(Protocol):
    name: str
    spec: Preprocessing

    def decode_batch(self, paths: Sequence[str]) -> DecodedBatch: ...

    def close(self) -> None: ...


@runtime_checkable
class DeviceDecoder(Decoder, Protocol):
    """A decoder that can also leave a batch where it decoded it (DALI: GPU memory on device="gpu"),
    for the worker to hand to the backend by pointer (gpu_path.py) instead of through host memory."""

    device: str  # "cpu" or "gpu": where decode_batch_device leaves the model input

    def decode_batch_device(self, paths: Sequence[str]) -> DeviceBatch: ...


def decoder_device(decoder: Decoder) -> str:
    """Where `decoder` decodes: a DeviceDecoder's `device`, "cpu" for every other decoder."""
    return decoder.device if isinstance(decoder, DeviceDecoder) else "cpu"


def per_file(fn: Callable[[int], None], rows: Iterable[int], errors: list, pool=None) -> None:
    """Run fn(i) for each row, on `pool` when given; whatever one file raises becomes errors[i]
    (a message for its row) so that one file never fails its batch."""

    def guarded(i: int) -> None:
        try:
            fn(i)
        except DecodeError as exc:
            errors[i] = str(exc)
        except MemoryError:
            errors[i] = "out of memory while decoding"
        except Exception as exc:  # noqa: BLE001 - one file must never fail its batch
            errors[i] = f"decode failed: {type(exc).__name__}: {exc}"

    rows = list(rows)
    if pool is None or len(rows) < 2:
        for i in rows:
            guarded(i)
    else:
        list(pool.map(guarded, rows))


# Files up to this size are read whole at once; a larger one goes past the decoder's sniffer first.
SNIFF_ABOVE = 1024 * 1024


def read_bytes(
    path: str, *, max_bytes: int = 512 * 1024 * 1024, sniff: Callable[[BinaryIO], None] | None = None
) -> bytes:
    """Read one file whole, turning every way it can fail into a DecodeError with a useful message.
    `sniff(file)`, given for a file over SNIFF_ABOVE bytes, may refuse it from its first bytes
    (raising DecodeError) before it is read whole (decode/sniff.py)."""
    if path.startswith("s3://"):
        from ..objstore import read_object

        return read_object(path, max_bytes=max_bytes)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise DecodeError("file disappeared after discovery (not found when read)") from None
    except PermissionError:
        raise DecodeError("cannot read file: permission denied") from None
    except OSError as exc:
        raise DecodeError(f"cannot open file: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise DecodeError("not a regular file")
        if st.st_size == 0:
            raise DecodeError("empty file (0 bytes)")
        if st.st_size > max_bytes:
            raise DecodeError(f"file is {st.st_size} bytes, over the {max_bytes}-byte limit")
        if sniff is not None and st.st_size > SNIFF_ABOVE:
            with open(fd, "rb", closefd=False) as f:
                sniff(f)
            os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        remaining = st.st_size
        while remaining > 0:
            b = os.read(fd, remaining)
            if not b:
                break
            chunks.append(b)
            remaining -= len(b)
        data = b"".join(chunks)
        if not data:
            raise DecodeError("empty file (0 bytes)")
        return data
    except OSError as exc:
        if exc.errno == errno.EISDIR:
            raise DecodeError("not a regular file (a directory)") from None
        raise DecodeError(f"read failed: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
