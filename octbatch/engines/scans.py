"""Real scans for int8 calibration and the accuracy guard: samples, their identity, and model input.

Samples are spread evenly over an archive's deterministic order (so every class folder shows up);
``iter_scan_batches`` decodes and normalizes them exactly as ``run`` does.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..errors import OctbatchError
from ..preprocess import Preprocessing

if TYPE_CHECKING:
    from ..model import ModelInfo

__all__ = ["sample_entries", "split_sample", "calibration_hash", "iter_scan_batches", "calib_batches"]


def _discover(archive: str | os.PathLike, hint: str) -> list:
    from ..archive import discover

    entries = list(discover(archive))
    if not entries:
        raise OctbatchError(f"no images found under {archive}", hint)
    return entries


def _spread(n_items: int, n: int) -> np.ndarray:
    return np.unique(np.linspace(0, n_items - 1, n).round().astype(int))


def sample_entries(archive: str | os.PathLike, n: int) -> list:
    """n files spread evenly over the archive's deterministic order (so every class folder shows up)."""
    entries = _discover(archive, "Point --calib/--guard-archive at a folder of scans.")
    if n >= len(entries):
        return entries
    return [entries[i] for i in _spread(len(entries), n)]


def split_sample(archive: str | os.PathLike, n_calib: int, n_guard: int) -> tuple[list, list]:
    """Disjoint (calibration, guard) samples from one archive, each spread evenly over it, so the
    guard judges int8 on scans it was not calibrated on. The guard sample is empty when the
    calibration sample takes every file."""
    entries = _discover(archive, "Point --calib at a folder of scans.")
    if n_calib >= len(entries):
        return entries, []
    idx = _spread(len(entries), n_calib)
    taken = set(idx.tolist())
    rest = [e for i, e in enumerate(entries) if i not in taken]
    if n_guard < len(rest):
        rest = [rest[i] for i in _spread(len(rest), n_guard)]
    return [entries[i] for i in idx], rest


def calibration_hash(entries: Sequence) -> str:
    """Identity of a scan sample: paths, sizes and mtimes (cheap; a changed file changes it)."""
    h = hashlib.sha256()
    for e in entries:
        h.update(f"{e.path}\t{e.size}\t{e.mtime_ns}\n".encode())
    return h.hexdigest()


def iter_scan_batches(
    entries: Sequence, spec: Preprocessing, batch: int, *, drop_last: bool = False
) -> Iterator[tuple[np.ndarray, list]]:
    """(float32 NCHW input, labels) per batch, decoded exactly as ``run`` decodes; unreadable files are skipped."""
    from ..decode import make_decoder
    from ..preprocess import normalize_into

    decoder = make_decoder("cpu", spec)
    try:
        pending_x: list[np.ndarray] = []
        pending_y: list = []
        for start in range(0, len(entries), batch):
            chunk = entries[start : start + batch]
            d = decoder.decode_batch([e.abspath for e in chunk])
            ok = d.ok
            if not ok.any():
                continue
            x = np.empty((int(ok.sum()), spec.channels, spec.height, spec.width), np.float32)
            normalize_into(x, d.images[ok], spec)
            pending_x.append(x)
            pending_y.extend(e.label for e, good in zip(chunk, ok) if good)
            while sum(len(a) for a in pending_x) >= batch:
                allx = np.concatenate(pending_x)
                yield allx[:batch], pending_y[:batch]
                pending_x, pending_y = [allx[batch:]], pending_y[batch:]
        rest = sum(len(a) for a in pending_x)
        if rest and not drop_last:
            yield np.concatenate(pending_x), pending_y
    finally:
        close = getattr(decoder, "close", None)
        if close:
            close()


def calib_batches(info: ModelInfo, entries: Sequence, batch: int) -> Iterator[np.ndarray]:
    """The model inputs alone (labels dropped), as quantization calibration reads them."""
    for x, _ in iter_scan_batches(entries, info.preprocessing, batch):
        yield x
