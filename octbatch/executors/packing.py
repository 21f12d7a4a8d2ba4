"""How a shard travels from the Ray driver to an actor: compressed columns, rebuilt into the very same
FileEntry list on the other side (names that are not valid UTF-8 and frames of volumes included)."""

from __future__ import annotations

import pickle
import zlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..shards import Shard

__all__ = ["pack_shard", "unpack_shard"]


def pack_shard(shard: Shard) -> tuple:
    """A shard as (id, root, zlib(pickle(columns))): ~30x cheaper for the driver to serialize than a
    list of FileEntry objects (0.25 ms instead of 7 ms for 2,048 files), and small enough for Ray
    to send inline with the call instead of through the object store."""
    entries = shard.entries
    root = ""
    if entries and entries[0].abspath.endswith(entries[0].path):
        root = entries[0].abspath[: len(entries[0].abspath) - len(entries[0].path)]
    paths = [e.path for e in entries]
    # abspath is root + path except for names that are not valid UTF-8 (path shows them escaped).
    odd = {i: e.abspath for i, e in enumerate(entries) if e.abspath != root + e.path}
    cols: tuple = (paths, [e.size for e in entries], [e.mtime_ns for e in entries], odd)
    frames = {i: e for i, e in enumerate(entries) if hasattr(e, "frame")}  # frames of volumes travel whole
    etags = {i: e.etag for i, e in enumerate(entries) if e.etag is not None}  # S3 objects' ETags
    if frames or etags:
        cols = (*cols, frames, etags)
    return shard.id, root, zlib.compress(pickle.dumps(cols, protocol=5), 1)


def unpack_shard(packed: tuple) -> Shard:
    from ..archive import FileEntry
    from ..shards import Shard

    shard_id, root, blob = packed
    paths, sizes, mtimes, odd, *more = pickle.loads(zlib.decompress(blob))
    frames = more[0] if more else {}
    etags = more[1] if len(more) > 1 else {}
    entries = [
        frames.get(i) or FileEntry(p, odd.get(i) or root + p, sz, mt, etags.get(i))
        for i, (p, sz, mt) in enumerate(zip(paths, sizes, mtimes))
    ]
    return Shard(shard_id, entries)
