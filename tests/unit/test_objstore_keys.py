"""S3 objects are versioned by (key, size, ETag): an object overwritten within the same second with other
bytes of the same size is a new version; the ETag travels to Ray actors, into the table and back."""

from __future__ import annotations

import pyarrow.parquet as pq

from octbatch.archive import FileEntry
from octbatch.executors.packing import pack_shard, unpack_shard
from octbatch.frames import FrameEntry, entry_row_key, row_key
from octbatch.plan import committed_keys
from octbatch.results import ShardRows, make_schema, row_keys, rows_to_table
from octbatch.shards import Shard

MTIME_NS = 1_700_000_000 * 10**9  # whole seconds, as S3's LastModified


def obj(etag, path="CNV/CNV-1-1.jpeg", size=1000):
    return FileEntry(path, "s3://b/oct/" + path, size, MTIME_NS, etag)


def test_same_size_and_second_other_etag_is_another_version():
    assert entry_row_key(obj("aaa")) != entry_row_key(obj("bbb"))
    assert entry_row_key(obj("aaa")) == entry_row_key(obj("aaa"))
    # A re-upload of the same bytes (same ETag) a minute later is the same version.
    later = FileEntry("CNV/CNV-1-1.jpeg", "s3://b/oct/CNV/CNV-1-1.jpeg", 1000, MTIME_NS + 60 * 10**9, "aaa")
    assert entry_row_key(later) == entry_row_key(obj("aaa"))
    # Files on disk (no ETag) keep their (path, size, mtime) key.
    disk = FileEntry("CNV/CNV-1-1.jpeg", "/a/CNV/CNV-1-1.jpeg", 1000, MTIME_NS)
    assert entry_row_key(disk) == hash(("CNV/CNV-1-1.jpeg", 1000, MTIME_NS // 1000))
    frame = FrameEntry("v.tif", "s3://b/v.tif", 10, MTIME_NS, 2, None, None, "aaa")
    assert entry_row_key(frame) == row_key("v.tif", 2, 10, MTIME_NS // 1000, "aaa") != row_key("v.tif", 2, 10, 0, "b")


def test_etag_goes_into_the_table_and_its_keys_match_discovery(tmp_path):
    rows = ShardRows(["CNV", "NORMAL"])
    import numpy as np

    entries = [obj("aaa"), FileEntry("d.jpeg", "/a/d.jpeg", 5, MTIME_NS)]
    rows.add(entries, np.zeros((2, 2), np.float32), [(1, 1), (1, 1)], [None, None], 0)
    table = rows_to_table(
        rows, make_schema(["CNV", "NORMAL"]), model_sha256="x", backend="b", precision="", decoder="d", run_id="r"
    )
    pq.write_table(table, tmp_path / "t.parquet")
    assert pq.read_table(tmp_path / "t.parquet").column("etag").to_pylist() == ["aaa", None]
    assert [k for k, _ in row_keys(str(tmp_path / "t.parquet"))] == [entry_row_key(e) for e in entries]
    committed, _ = committed_keys([str(tmp_path / "t.parquet")], retry_errors=False)
    assert entry_row_key(obj("aaa")) in committed and entry_row_key(obj("bbb")) not in committed


def test_etags_travel_to_actors():
    shard = Shard("s", [obj("aaa"), obj(None, path="x.jpeg"), obj("ccc", path="y.jpeg")])
    back = unpack_shard(pack_shard(shard))
    assert back.entries == shard.entries and [e.etag for e in back.entries] == ["aaa", None, "ccc"]
