"""Parts and commits of an s3:// --out (octbatch.objstore_out) on obstore's in-memory store: the first
attempt of a shard to commit wins, except over a `failed` part, which a retry replaces (as on disk)."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

pytest.importorskip("obstore")

import obstore  # noqa: E402
from obstore.store import MemoryStore  # noqa: E402

import octbatch.objstore_out as oo  # noqa: E402

PARTS = "s3://bkt/results/run.parquet.parts"


@pytest.fixture
def store(monkeypatch):
    store = MemoryStore()
    monkeypatch.setattr(oo, "_store", lambda bucket: store)
    return store


def table(status: str, n: int = 3) -> pa.Table:
    return pa.table({"path": [f"f{i}.jpeg" for i in range(n)], "status": [status] * n})


def listed(store) -> list[str]:
    return sorted(m["path"] for chunk in obstore.list(store, "results/", chunk_size=1000) for m in chunk)


def commit_of(store, shard: str) -> dict:
    return json.loads(bytes(obstore.get(store, f"results/run.parquet.parts/commit-{shard}.json").bytes()))


def test_first_commit_wins_but_a_failed_part_is_replaced_by_its_retry(store):
    failed = oo.write_part_object(table("failed"), PARTS, "s1")
    assert commit_of(store, "s1")["failed"] is True
    good = oo.write_part_object(table("ok"), PARTS, "s1")  # the rerun that retries the failed shard
    c = commit_of(store, "s1")
    assert c["failed"] is False and good.endswith(c["part"])
    assert not any(failed.endswith(k) for k in listed(store))  # the failed part is gone
    late = oo.write_part_object(table("ok"), PARTS, "s1")  # a second attempt of the same shard: loses
    assert commit_of(store, "s1") == c and not any(late.endswith(k) for k in listed(store))
    again = oo.write_part_object(table("failed"), PARTS, "s1")  # a failed part never replaces a real one
    assert commit_of(store, "s1") == c and not any(again.endswith(k) for k in listed(store))
    assert len([k for k in listed(store) if "/part-" in k]) == 1


def test_the_stage_pulls_a_commit_again_when_a_retry_replaced_it(store, monkeypatch, tmp_path):
    import pyarrow.parquet as pq

    monkeypatch.setattr(oo.tempfile, "gettempdir", lambda: str(tmp_path))
    remote = oo.RemoteOut("s3://bkt/results/run.parquet")
    monkeypatch.setattr(remote, "_store", lambda: store)
    oo.write_part_object(table("failed"), PARTS, "s1")
    staged = remote.stage(overwrite=False)
    local = staged + ".parts/part-s1.parquet"
    assert pq.read_table(local).column("status").to_pylist() == ["failed"] * 3
    oo.write_part_object(table("ok"), PARTS, "s1")
    assert remote.pull_parts() == 1 and remote.pull_parts() == 0
    assert pq.read_table(local).column("status").to_pylist() == ["ok"] * 3
