"""Every discovered file exactly once, whatever happened to the run (issue: exactly-once results)."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from octbatch.cli import cli
from octbatch.workdir import RunLock


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def octbatch(*args, **kw):
    return subprocess.run(
        [sys.executable, "-m", "octbatch", *[str(a) for a in args]], capture_output=True, text=True, timeout=300, **kw
    )


def linked_archive(root: Path, n: int, seed: int = 0) -> Path:
    """n files made cheaply: 40 real synthetic scans hard-linked under n distinct names."""
    from octbatch.synth import make_archive

    src = root.parent / f"src-{seed}"
    if not src.exists():
        make_archive(src, 40, seed=seed, broken=False)
    scans = sorted(src.rglob("*.jpeg"))
    for i in range(n):
        cls = ("CNV", "DME", "DRUSEN", "NORMAL")[i % 4]
        d = root / cls / f"batch{i // 500:03d}"
        d.mkdir(parents=True, exist_ok=True)
        os.link(scans[i % len(scans)], d / f"{cls}-{2000 + i // 10}-{i}.jpeg")
    return root


def read_rows(out) -> dict:
    t = pq.read_table(out)
    paths = t.column("path").to_pylist()
    assert len(paths) == len(set(paths)), "duplicate rows"
    return {r["path"]: r for r in t.to_pylist()}


def test_kill_minus_9_at_several_points_then_resume(tmp_path, tiny_model):
    archive = linked_archive(tmp_path / "a", 3000)
    out = tmp_path / "r.parquet"
    parts = Path(str(out) + ".parts")
    args = [
        sys.executable,
        "-m",
        "octbatch",
        "run",
        archive,
        "--out",
        out,
        "--model",
        tiny_model,
        "--shard-size",
        100,
        "-q",
    ]
    for wait_parts in (1, 8):  # early (first shard committed) and mid-run
        p = subprocess.Popen([str(a) for a in args])
        deadline = time.time() + 120
        while time.time() < deadline and p.poll() is None:
            if parts.exists() and len([f for f in os.listdir(parts) if f.startswith("part-")]) >= wait_parts:
                break
            time.sleep(0.01)
        p.send_signal(signal.SIGKILL)
        p.wait()
        assert not out.exists(), "the run finished before it could be killed; make the archive bigger"
    committed = len([f for f in os.listdir(parts) if f.startswith("part-")])
    assert committed >= 8
    r = octbatch("run", archive, "--out", out, "--model", tiny_model, "--shard-size", 100, "--json", "-q")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["skipped"] >= committed * 100 - 100 and s["skipped"] + s["processed"] == 3000
    rows = read_rows(out)
    assert len(rows) == 3000 and all(r["status"] == "ok" for r in rows.values())


def test_crash_during_final_merge_leaves_a_valid_state(tmp_path, tiny_model, monkeypatch):
    from octbatch import results

    archive = linked_archive(tmp_path / "a", 300)
    out = tmp_path / "r.parquet"
    assert invoke("run", archive, "--out", out, "--model", tiny_model, "-q").exit_code == 0
    before = out.read_bytes()
    linked_archive(tmp_path / "b", 50, seed=1)
    for p in (tmp_path / "b").rglob("*.jpeg"):
        dest = archive / "new" / p.name
        dest.parent.mkdir(exist_ok=True)
        os.link(p, dest)

    import octbatch.merging as pipeline  # the commit step, where the merge writes

    def killed_mid_merge(path, tables, schema, **kw):
        # What kill -9 leaves behind: a half-written temp file beside the output, no rename.
        tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp-killed")
        with open(tmp, "wb") as f:
            f.write(b"PAR1" + b"\0" * 1000)
        next(iter(tables))
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "atomic_write_parquet", killed_mid_merge)
    res = CliRunner().invoke(cli, ["run", str(archive), "--out", str(out), "--model", tiny_model, "-q"])
    assert res.exit_code == 130
    assert out.read_bytes() == before  # readers still see the old, complete file
    assert any(".tmp-" in n for n in os.listdir(tmp_path))
    monkeypatch.setattr(pipeline, "atomic_write_parquet", results.atomic_write_parquet)
    res = invoke("run", archive, "--out", out, "--model", tiny_model, "-q", "--json")
    s = json.loads(res.stdout)
    assert s["processed"] == 0 and s["skipped"] == 350  # the new files' shards were committed before the crash
    assert len(read_rows(out)) == 350
    assert not any(".tmp-" in n for n in os.listdir(tmp_path))


def test_resume_with_another_model_is_refused_unless_overwrite(tmp_path, tiny_model):
    from tests.helpers.modelgen import tiny_classifier

    archive = linked_archive(tmp_path / "a", 60)
    out = tmp_path / "r.parquet"
    assert invoke("run", archive, "--out", out, "--model", tiny_model, "-q").exit_code == 0
    other = tiny_classifier(tmp_path / "other.onnx", classes=("CNV", "DME", "DRUSEN", "NORMAL"), size=32, seed=7)
    r = octbatch("run", archive, "--out", out, "--model", other)
    assert r.returncode == 1 and "different model" in r.stderr and "--overwrite" in r.stderr
    r = octbatch("run", archive, "--out", out, "--model", other, "--overwrite", "-q")
    assert r.returncode == 0
    rows = read_rows(out)
    assert len(rows) == 60 and len({r["model_sha256"] for r in rows.values()}) == 1


def test_incremental_run_processes_only_new_and_changed_files(tmp_path, tiny_model):
    archive = linked_archive(tmp_path / "a", 400)
    out = tmp_path / "r.parquet"
    r = invoke("run", archive, "--out", out, "--model", tiny_model, "--json", "-q")
    first = read_rows(out)
    # 100 new files, 10 changed (new bytes), 5 deleted
    linked_archive(tmp_path / "extra", 100, seed=2)
    for p in sorted((tmp_path / "extra").rglob("*.jpeg")):
        dest = archive / "night2" / p.name
        dest.parent.mkdir(exist_ok=True)
        os.link(p, dest)
    files = sorted(archive.rglob("CNV-*.jpeg"))
    changed = files[:10]
    for p in changed:
        data = p.read_bytes()
        p.unlink()
        p.write_bytes(data + b"\0" * 16)  # a valid JPEG with trailing bytes: new size, new mtime
    deleted = files[10:15]
    for p in deleted:
        p.unlink()
    r = invoke("run", archive, "--out", out, "--model", tiny_model, "--json", "-q")
    s = json.loads(r.stdout)
    assert s["processed"] == 110
    assert s["skipped"] == 400 - 10 - 5
    assert s["dropped_deleted"] == 15  # 10 old versions of changed files + 5 deleted files
    rows = read_rows(out)
    assert len(rows) == 495
    for p in changed:
        rel = str(p.relative_to(archive))
        assert rows[rel]["bytes"] == first[rel]["bytes"] + 16
        assert rows[rel]["run_id"] == s["run_id"]
    unchanged = next(k for k in first if k.startswith("DME"))
    assert rows[unchanged]["run_id"] == first[unchanged]["run_id"]  # kept, not re-inferred
    for p in deleted:
        assert str(p.relative_to(archive)) not in rows
    # A third run with nothing new does nothing and leaves the file untouched.
    mtime = out.stat().st_mtime_ns
    s3 = json.loads(invoke("run", archive, "--out", out, "--model", tiny_model, "--json", "-q").stdout)
    assert s3["processed"] == 0 and s3["rows"] == 495 and out.stat().st_mtime_ns == mtime


def test_slices_then_merge_equal_a_single_full_run(tmp_path, tiny_model):
    archive = linked_archive(tmp_path / "a", 400)
    full = tmp_path / "full.parquet"
    assert invoke("run", archive, "--out", full, "--model", tiny_model, "-q").exit_code == 0
    out = tmp_path / "sliced.parquet"
    for i in range(4):
        r = invoke("run", archive, "--out", out, "--model", tiny_model, "--shard", f"{i}/4", "--shard-size", 50, "-q")
        assert r.exit_code == 0
        assert not out.exists()
        if i == 2:
            r = CliRunner().invoke(cli, ["merge", str(out)])
            assert r.exit_code == 1 and "3/4" in r.output and "have not finished" in r.output
    r = invoke("merge", out)
    assert r.exit_code == 0, r.output
    a, b = read_rows(full), read_rows(out)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k]["pred"] == b[k]["pred"]
        assert abs(a[k]["p_CNV"] - b[k]["p_CNV"]) < 1e-6


def test_a_plain_run_completes_unfinished_slices(tmp_path, tiny_model):
    archive = linked_archive(tmp_path / "a", 120)
    out = tmp_path / "r.parquet"
    for i in (0, 2):  # slices 1/3 never ran
        assert invoke("run", archive, "--out", out, "--model", tiny_model, "--shard", f"{i}/3", "-q").exit_code == 0
    s = json.loads(invoke("run", archive, "--out", out, "--model", tiny_model, "--json", "-q").stdout)
    assert s["skipped"] + s["processed"] == 120 and 0 < s["processed"] < 120
    assert len(read_rows(out)) == 120
    assert not [n for n in os.listdir(str(out) + ".parts") if n.startswith("slice-")]


def test_second_concurrent_run_is_refused(tmp_path, tiny_model):
    archive = linked_archive(tmp_path / "a", 20)
    out = tmp_path / "r.parquet"
    with RunLock(str(out)):
        r = octbatch("run", archive, "--out", out, "--model", tiny_model)
        assert r.returncode == 1
        assert "another octbatch run is writing" in r.stderr and f"pid {os.getpid()}" in r.stderr
    r = octbatch("run", archive, "--out", out, "--model", tiny_model, "-q")
    assert r.returncode == 0  # the lock went with the holder


def test_slices_of_one_job_share_the_lock_but_not_a_slice(tmp_path, tiny_model):
    archive = linked_archive(tmp_path / "a", 20)
    out = tmp_path / "r.parquet"
    with RunLock(str(out), shared=True, slice_=(0, 2)):
        r = octbatch("run", archive, "--out", out, "--model", tiny_model, "--shard", "1/2", "-q")
        assert r.returncode == 0
        r = octbatch("run", archive, "--out", out, "--model", tiny_model, "--shard", "0/2")
        assert r.returncode == 1 and "slice 0/2" in r.stderr
        r = octbatch("run", archive, "--out", out, "--model", tiny_model)
        assert r.returncode == 1 and "another octbatch run" in r.stderr


def test_out_of_disk_stops_cleanly_and_resumes(tmp_path, tiny_model, monkeypatch):
    from octbatch import results

    archive = linked_archive(tmp_path / "a", 300)
    out = tmp_path / "r.parquet"
    real = results.atomic_write_parquet
    calls = {"n": 0}

    def full_disk(path, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise results._disk_error(OSError(errno.ENOSPC, "No space left on device"), path)
        return real(path, *a, **kw)

    monkeypatch.setattr(results, "atomic_write_parquet", full_disk)
    res = CliRunner().invoke(
        cli, ["run", str(archive), "--out", str(out), "--model", tiny_model, "--shard-size", 50, "-q"]
    )
    assert res.exit_code == 1
    assert "out of disk space" in res.output and "resume" in res.output
    assert not out.exists()
    assert len([p for p in os.listdir(str(out) + ".parts") if p.startswith("part-")]) == 2
    monkeypatch.setattr(results, "atomic_write_parquet", real)
    s = json.loads(
        invoke("run", archive, "--out", out, "--model", tiny_model, "--shard-size", 50, "--json", "-q").stdout
    )
    assert s["skipped"] == 100 and s["processed"] == 200
    assert len(read_rows(out)) == 300


@pytest.mark.parametrize("flag", [None, "--retry-errors"])
def test_error_rows_are_kept_or_retried(tmp_path, tiny_model, flag):
    archive = linked_archive(tmp_path / "a", 10)
    bad = archive / "bad.jpeg"
    bad.write_bytes(b"\0" * 100)
    out = tmp_path / "r.parquet"
    assert invoke("run", archive, "--out", out, "--model", tiny_model, "-q").exit_code == 3
    s = json.loads(
        invoke("run", archive, "--out", out, "--model", tiny_model, "--json", "-q", *([flag] if flag else [])).stdout
    )
    assert s["processed"] == (1 if flag else 0)
    assert len(read_rows(out)) == 11
