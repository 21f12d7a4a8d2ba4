"""The per-worker loop: overlap across shard boundaries never changes what is written.

A ShardWorker is called once per shard (`process` is the older name of the same call)."""

import pyarrow.parquet as pq

from octbatch.archive import discover
from octbatch.shards import make_shards
from octbatch.synth import make_archive
from octbatch.worker import ShardWorker, WorkerConfig


def test_next_shard_prefetch_is_used_or_dropped_without_changing_rows(tmp_path, tiny_model):
    make_archive(tmp_path / "a", 30, broken=True)
    a, b, c = list(make_shards(discover(tmp_path / "a"), 11))
    parts = tmp_path / "parts"
    parts.mkdir()
    with ShardWorker(WorkerConfig(model_path=tiny_model, batch_size=4, decode_threads=1, infer_threads=1)) as w:
        calls = []
        real = w.decoder.decode_batch
        w.decoder.decode_batch = lambda paths: calls.append(list(paths)) or real(paths)
        w(a, str(parts), next_shard=b)
        assert calls[-1] == [e.abspath for e in b.entries[:4]]  # b's first batch decoded ahead
        n_before = len(calls)
        w(b, str(parts), next_shard=b)  # prefetch of b again while processing b: nothing reused wrongly
        # b has 3 batches of 4, 4, 3: its first came from the prefetch, so 2 decodes, plus the look-ahead.
        assert len(calls) - n_before == 2 + 1
        w.process(c, str(parts))  # the stale prefetch (b) is dropped, c decoded from its start
        assert calls[-3][0] == c.entries[0].abspath
    rows = {}
    for p in parts.iterdir():
        for r in pq.read_table(p).to_pylist():
            rows[r["path"]] = r
    assert len(rows) == 33
    assert sum(r["status"] == "error" for r in rows.values()) == 3
    ok = [r for r in rows.values() if r["status"] == "ok"]
    assert all(r["pred"] for r in ok) and len(ok) == 30
