"""octbatch.plan and octbatch.shards: what a run has left to do, walked once, and pure sharding."""

from __future__ import annotations

import os

from octbatch.plan import Plan, Selection, keyed_entries
from octbatch.shards import in_slice, make_shards


def _archive(root, n: int) -> str:
    for i in range(n):
        d = root / ("CNV" if i % 2 else "NORMAL")
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{d.name}-{1000 + i}-1.jpeg").write_bytes(b"\xff\xd8\xff" + bytes([i]))
    return str(root)


def test_keyed_entries_limits_and_skips_the_work_folder(tmp_path):
    root = _archive(tmp_path / "a", 6)
    os.makedirs(os.path.join(root, "r.parquet.parts"))
    (tmp_path / "a" / "r.parquet.parts" / "part-x.jpeg").write_bytes(b"\xff\xd8\xff")
    every = [e.path for e, _ in keyed_entries(Selection(root), os.path.join(root, "r.parquet.parts"), lambda p: None)]
    assert len(every) == 6 and not any("parts" in p for p in every)
    first = [e.path for e, _ in keyed_entries(Selection(root, limit=4), "/none", lambda p: None)]
    assert first == every[:4]


def test_pending_skips_committed_and_other_slices_and_records_what_it_saw(tmp_path):
    root = _archive(tmp_path / "a", 8)
    keyed = list(keyed_entries(Selection(root), "/none", lambda p: None))
    committed = {keyed[0][1], keyed[1][1]}
    p = Plan(Selection(root), "/none", committed=committed, retry=set(), slice=(0, 2))
    pending = [e.path for e in p.pending()]
    want = [e.path for e, k in keyed if k not in committed and in_slice(e.path, (0, 2))]
    assert pending == want
    assert p.count_pending() == len(want)
    assert p.n_discovered == 8 and p.skipped == 2 and p.discovered == {k for _, k in keyed}
    assert not p.unchanged


def test_selection_from_run_json_state():
    sel = Selection.from_state({"include": ["*/CNV/*"], "limit": 3, "max_pixels": None}, "/a")
    assert sel == Selection("/a", include=("*/CNV/*",), limit=3)


def test_shards_are_deterministic(tmp_path):
    root = _archive(tmp_path / "a", 5)
    entries = [e for e, _ in keyed_entries(Selection(root), "/none", lambda p: None)]
    a = [(s.id, len(s)) for s in make_shards(entries, 2)]
    assert a == [(s.id, len(s)) for s in make_shards(list(entries), 2)]
    assert [n for _, n in a] == [2, 2, 1]
