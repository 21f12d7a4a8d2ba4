"""Deterministic shards (the unit of work and of resume) and slices (`--slice i/N`). Pure: no I/O.

A shard's id is a hash of the (path, size, mtime) of its files, so the same pending work always
yields the same ids, and nothing depends on which shard finishes first.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from .archive import FileEntry

__all__ = [
    "Shard",
    "make_shards",
    "in_slice",
    "entry_key",
]


def entry_key(path: str, size: int, mtime_us: int) -> int:
    """Identity of one version of one file, as held in memory for the committed/discovered sets."""
    return hash((path, int(size), int(mtime_us)))


@dataclass
class Shard:
    id: str
    entries: list[FileEntry]

    def __len__(self) -> int:
        return len(self.entries)


def shard_id(entries: list[FileEntry]) -> str:
    h = hashlib.blake2b(digest_size=10)
    for e in entries:
        h.update(e.path.encode("utf-8", "surrogateescape"))
        h.update(b"\0%d\0%d\n" % (e.size, e.mtime_ns // 1000))
    return h.hexdigest()


def make_shards(entries: Iterable[FileEntry], size: int) -> Iterator[Shard]:
    buf: list[FileEntry] = []
    for e in entries:
        buf.append(e)
        if len(buf) >= size:
            yield Shard(shard_id(buf), buf)
            buf = []
    if buf:
        yield Shard(shard_id(buf), buf)


def in_slice(path: str, sl: tuple[int, int] | None) -> bool:
    """Stable slice membership by path hash: a file keeps its slice as the archive grows."""
    if sl is None:
        return True
    return zlib.crc32(path.encode("utf-8", "surrogateescape")) % sl[1] == sl[0]
