"""pack_shard / unpack_shard: a shard as it travels to a Ray actor (moved here from tests/integration/test_ray.py)."""


def test_shards_travel_packed_and_come_back_identical(tmp_path):
    """The driver sends shards as compressed columns; the actor must rebuild the very same entries,
    including a name that is not valid UTF-8 (its abspath is not root + path)."""
    import os

    from octbatch.archive import discover
    from octbatch.executors.packing import pack_shard, unpack_shard
    from octbatch.shards import make_shards
    from tests.helpers.files import jpeg_bytes, scan

    (tmp_path / "CNV").mkdir()
    for i in range(5):
        (tmp_path / "CNV" / f"CNV-100-{i}.jpeg").write_bytes(jpeg_bytes(scan(i, 64, 64)))
    with open(os.path.join(os.fsencode(tmp_path), b"CNV/odd-\xff.jpeg"), "wb") as f:
        f.write(jpeg_bytes(scan(9, 64, 64)))
    shard = next(make_shards(discover(str(tmp_path)), 100))
    assert len(shard) == 6 and any(e.abspath != str(tmp_path) + "/" + e.path for e in shard.entries)
    back = unpack_shard(pack_shard(shard))
    assert back.id == shard.id and back.entries == shard.entries
