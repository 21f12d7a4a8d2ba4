"""`octbatch run s3://bucket/prefix` against a real S3 server on loopback (issue 18).

The server is moto's standalone server (tests/helpers/s3_server.py), started by the fixture and stopped after,
with S3's credential checks on. The archive holds a few hundred scans (the real OCT2017 ones when
present, else synthetic) and the hostile-archive files that an object store can hold. Each run is an
`octbatch` process, configured as a user configures it: AWS_ENDPOINT_URL, AWS_REGION, AWS_* keys.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from octbatch._deps import is_available
from tests.helpers.files import DATA_DIR

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (is_available("obstore") and is_available("moto") and is_available("boto3")),
        reason="needs obstore, moto[server] and boto3 (pip install 'octbatch[s3]' 'moto[server]')",
    ),
]

N_GOOD = 300
SHARD = 16
OCTBATCH = [sys.executable, "-m", "octbatch"]


@pytest.fixture(scope="module")
def s3():
    from tests.helpers.s3_server import moto_server

    with moto_server(auth=True) as srv:
        yield srv


@pytest.fixture(scope="module")
def local_archive(tmp_path_factory):
    """Good scans + the awkward files, on disk: uploaded as they are, and the local run's input."""
    from tests.helpers.files import make_bad_archive

    root = tmp_path_factory.mktemp("s3-src") / "archive"
    root.mkdir()
    make_bad_archive(root, good=0 if (DATA_DIR / "manifest.csv").exists() else N_GOOD)
    if (DATA_DIR / "manifest.csv").exists():  # real scans when present (never copied into the repo)
        for src in sorted(DATA_DIR.rglob("*.jpeg"))[:N_GOOD]:
            dst = root / src.relative_to(DATA_DIR)
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(src.read_bytes())
    # What an object store cannot hold goes: a fifo, a folder named x.jpeg, links, a non-UTF-8 name.
    for dirpath, dirs, files in os.walk(os.fsencode(root), topdown=False):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            if os.path.islink(p) or not (os.path.isfile(p) or os.path.isdir(p)):
                os.unlink(p)
            elif os.path.isdir(p) and name.endswith(b".jpeg"):
                os.rmdir(p)
            else:
                try:
                    name.decode("utf-8")
                except UnicodeDecodeError:
                    os.unlink(p)
    return root


def objects_of(root: Path) -> dict[str, Path]:
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def bucket(s3, local_archive):
    s3.upload_folder("scans", "oct/", local_archive)
    return "s3://scans/oct"


def env_for(s3, **extra) -> dict:
    base = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return base | s3.env(**extra)


def octbatch(args, env, timeout=300):
    p = subprocess.run(OCTBATCH + [str(a) for a in args], capture_output=True, text=True, env=env, timeout=timeout)
    return p.returncode, (json.loads(p.stdout) if p.stdout.strip().startswith("{") else {}), p.stderr


def rows_by_path(out) -> dict:
    t = pq.read_table(out)
    paths = t.column("path").to_pylist()
    assert len(paths) == len(set(paths)), "duplicate rows"
    return {r["path"]: r for r in t.to_pylist()}


def assert_same_rows(rows: dict, expected: dict) -> None:
    assert sorted(rows) == sorted(expected)
    probs = [k for k in next(iter(expected.values())) if k.startswith("p_")]
    for path, want in expected.items():
        got = rows[path]
        assert (got["status"], got["pred"], got["error"], got["label"], got["patient_id"], got["bytes"]) == (
            want["status"],
            want["pred"],
            want["error"],
            want["label"],
            want["patient_id"],
            want["bytes"],
        ), path

        def as_array(r):
            return np.array([r[k] for k in probs], dtype=float)

        np.testing.assert_allclose(as_array(got), as_array(want), rtol=0, atol=1e-6, err_msg=path)


@pytest.fixture(scope="module")
def local_rows(local_archive, tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("s3-local") / "local.parquet"
    p = subprocess.run(
        OCTBATCH + ["run", str(local_archive), "--out", str(out), "--model", tiny_model, "-q"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 3, p.stderr
    return rows_by_path(out)


def test_s3_archive_gives_the_table_of_the_same_files_on_disk(
    s3, bucket, local_archive, local_rows, tiny_model, tmp_path
):
    out = tmp_path / "from-s3.parquet"
    code, summary, err = octbatch(["run", bucket, "--out", out, "--model", tiny_model, "--json", "-q"], env_for(s3))
    assert code == 3, err  # the unreadable files, as on disk
    n = len(objects_of(local_archive))
    assert summary["discovered"] == summary["rows"] == n
    rows = rows_by_path(out)
    assert_same_rows(rows, local_rows)
    assert rows["bad/empty.jpeg"]["error"] == "empty file (0 bytes)"
    assert "decompression bomb" in rows["bad/bomb.jpeg"]["error"]
    assert sum(r["status"] == "ok" for r in rows.values()) >= N_GOOD
    assert pq.read_schema(out).metadata  # an octbatch table
    assert json.loads(pq.read_schema(out).metadata[b"octbatch"])["archive_root"] == bucket


def test_killed_mid_run_resumes_then_reruns_incrementally(s3, bucket, local_archive, tiny_model, tmp_path):
    out = tmp_path / "resume.parquet"
    args = OCTBATCH + [
        "run",
        bucket,
        "--out",
        str(out),
        "--model",
        tiny_model,
        "--shard-size",
        str(SHARD),
        "--json",
        "-q",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env_for(s3))
    parts = Path(str(out) + ".parts")
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and len(list(parts.glob("part-*.parquet"))) < 3:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed: " + proc.communicate()[1][-2000:]
    committed = len(list(parts.glob("part-*.parquet")))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert committed >= 3 and not out.exists()

    n = len(objects_of(local_archive))
    code, summary, err = octbatch(args[3:], env_for(s3))
    assert code == 3, err
    assert summary["rows"] == n and summary["skipped"] >= committed * SHARD
    assert summary["skipped"] + summary["processed"] == n
    first = rows_by_path(out)
    assert len(first) == n

    # The bucket changes: 20 new objects, one overwritten with other bytes, one deleted.
    c = s3.client()
    good = [k for k, r in first.items() if r["status"] == "ok"]
    try:
        check_incremental(s3, c, args, out, good, first, local_archive, n)
    finally:  # the other tests expect the bucket as uploaded
        for i in range(20):
            c.delete_object(Bucket="scans", Key=f"oct/NEW/CNV-{9000 + i}-1.jpeg")
        for k in good[1], good[3]:
            c.put_object(Bucket="scans", Key="oct/" + k, Body=(local_archive / k).read_bytes())


def check_incremental(s3, c, args, out, good, first, local_archive, n):
    """20 new objects, one overwritten with other bytes, one deleted: exactly those are redone."""
    body = (local_archive / good[0]).read_bytes()
    for i in range(20):
        c.put_object(Bucket="scans", Key=f"oct/NEW/CNV-{9000 + i}-1.jpeg", Body=body)
    c.put_object(Bucket="scans", Key="oct/" + good[1], Body=(local_archive / good[2]).read_bytes())
    c.delete_object(Bucket="scans", Key="oct/" + good[3])
    code, summary, err = octbatch(args[3:], env_for(s3))
    assert code == 0, err  # only readable scans were redone this time
    assert summary["processed"] == 21  # the new and the changed objects only
    assert summary["dropped_deleted"] == 2  # the deleted object's row and the overwritten one's old row
    rows = rows_by_path(out)
    assert len(rows) == summary["rows"] == n + 20 - 1
    assert good[3] not in rows and rows["NEW/CNV-9000-1.jpeg"]["patient_id"] == "9000"
    assert rows[good[1]]["bytes"] == len((local_archive / good[2]).read_bytes())
    assert all(rows[k]["processed_at"] == first[k]["processed_at"] for k in good[4:])  # not redone

    # Nothing changed: nothing is redone.
    code, summary, err = octbatch(args[3:], env_for(s3))
    assert code == 0 and summary["processed"] == 0 and summary["skipped"] == summary["rows"] == n + 19, err


def test_wrong_credentials_and_missing_bucket_are_user_errors(s3, bucket, tiny_model, tmp_path):
    code, _, err = octbatch(
        ["run", bucket, "--out", tmp_path / "a.parquet", "--model", tiny_model],
        env_for(s3, AWS_ACCESS_KEY_ID="AKIAWRONGWRONGWRONG1", AWS_SECRET_ACCESS_KEY="not-the-secret"),
    )
    assert code == 1, err
    assert err.startswith("Error: S3 refused to list s3://scans/oct (credentials rejected or no permission: 403")
    assert "InvalidAccessKeyId" in err and "Traceback" not in err
    assert "not-the-secret" not in err and s3.secret_key not in err  # secrets are never printed

    code, _, err = octbatch(
        ["run", "s3://no-such-bucket/oct", "--out", tmp_path / "b.parquet", "--model", tiny_model], env_for(s3)
    )
    assert code == 1 and err.startswith("Error: bucket of s3://no-such-bucket/oct does not exist"), err
    assert "Traceback" not in err


def test_storage_options_reach_the_store(s3, bucket, tiny_model, tmp_path):
    """Without AWS_ENDPOINT_URL, --storage-option endpoint=... points octbatch at the server."""
    env = env_for(s3)
    endpoint = env.pop("AWS_ENDPOINT_URL")
    code, summary, err = octbatch(
        [
            "run",
            bucket,
            "--out",
            tmp_path / "c.parquet",
            "--model",
            tiny_model,
            "--limit",
            20,
            "--storage-option",
            f"endpoint={endpoint}",
            "--storage-option",
            "allow_http=true",
            "--json",
            "-q",
        ],
        env,
    )
    assert code == 0 and summary["rows"] == 20, err
    code, _, err = octbatch(
        ["run", bucket, "--out", tmp_path / "d.parquet", "--model", tiny_model, "--storage-option", "endpoint"], env
    )
    assert code == 1 and "Error: --storage-option 'endpoint' is not key=value" in err


def bucket_keys(s3, bucket: str, prefix: str) -> list[str]:
    return sorted(o["Key"] for o in s3.client().list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []))


def table_in_bucket(s3, bucket: str, key: str) -> dict:
    import io

    data = s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    return rows_by_path(io.BytesIO(data))


def test_s3_in_and_out_kill_resume_incremental_exactly_once(s3, bucket, local_archive, local_rows, tiny_model):
    """No rename on S3: parts under unique names, a commit object written last; the table in one PUT."""
    out = "s3://scans/results/run.parquet"
    args = OCTBATCH + ["run", bucket, "--out", out, "--model", tiny_model, "--shard-size", str(SHARD), "--json", "-q"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env_for(s3))
    deadline = time.time() + 240
    commits = []
    while time.time() < deadline and proc.poll() is None:
        commits = [k for k in bucket_keys(s3, "scans", "results/") if "/commit-" in k]
        if len(commits) >= 3:
            break
        time.sleep(0.1)
    assert proc.poll() is None, "the run ended before it could be killed: " + proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    keys = bucket_keys(s3, "scans", "results/")
    assert "results/run.parquet" not in keys  # a reader sees no table until the whole one is put
    # A dead attempt that wrote its part but never committed it: must be ignored, then removed.
    s3.client().put_object(
        Bucket="scans",
        Key="results/run.parquet.parts/part-0123456789abcdef0123-deadbeef0000.parquet",
        Body=b"not parquet",
    )

    n = len(objects_of(local_archive))
    code, summary, err = octbatch(args[3:], env_for(s3))
    assert code == 3, err
    assert summary["out"] == out and summary["rows"] == n and summary["skipped"] >= len(commits) * SHARD
    assert summary["skipped"] + summary["processed"] == n
    # Only the table and the settings are left; every part and commit was merged and removed.
    # the table, the settings and the random per-table pseudonym key (octbatch.phi) stay; parts and commits go
    assert bucket_keys(s3, "scans", "results/") == [
        "results/run.parquet",
        "results/run.parquet.parts/phi.key",
        "results/run.parquet.parts/run.json",
    ]
    assert_same_rows(table_in_bucket(s3, "scans", "results/run.parquet"), local_rows)

    # Incremental: 5 new objects -> exactly those are classified, the table grows by 5.
    body = next(
        p for p in objects_of(local_archive).values() if p.suffix == ".jpeg" and p.stat().st_size > 5000
    ).read_bytes()
    for i in range(5):
        s3.client().put_object(Bucket="scans", Key=f"oct/LATE/DME-{7000 + i}-1.jpeg", Body=body)
    code, summary, err = octbatch(args[3:], env_for(s3))
    assert code == 0 and summary["processed"] == 5 and summary["rows"] == n + 5, err
    rows = table_in_bucket(s3, "scans", "results/run.parquet")
    assert len(rows) == n + 5 and rows["LATE/DME-7000-1.jpeg"]["label"] == "DME"
    for i in range(5):
        s3.client().delete_object(Bucket="scans", Key=f"oct/LATE/DME-{7000 + i}-1.jpeg")


def test_local_archive_to_s3_out(s3, bucket, local_archive, local_rows, tiny_model):
    code, summary, err = octbatch(
        ["run", local_archive, "--out", "s3://scans/results/from-disk.parquet", "--model", tiny_model, "--json", "-q"],
        env_for(s3),
    )
    assert code == 3, err
    assert summary["rows"] == len(local_rows)
    assert_same_rows(table_in_bucket(s3, "scans", "results/from-disk.parquet"), local_rows)
    code, _, err = octbatch(
        ["run", local_archive, "--out", "s3://no-such-bucket/r.parquet", "--model", tiny_model], env_for(s3)
    )
    assert code == 1 and err.startswith("Error: bucket of s3://no-such-bucket/r.parquet does not exist"), err
    assert "Traceback" not in err


def wait_for_commits(s3, proc, prefix: str, n: int, timeout: float = 240) -> int:
    """Wait until the run has committed n parts under prefix; returns how many it had."""
    deadline = time.time() + timeout
    commits = 0
    while time.time() < deadline and proc.poll() is None:
        commits = sum("/commit-" in k for k in bucket_keys(s3, "scans", prefix))
        if commits >= n:
            break
        time.sleep(0.1)
    assert proc.poll() is None, "the run ended before it could be killed: " + proc.communicate()[1][-2000:]
    return commits


def test_slices_into_s3_out_killed_rerun_merged_exactly_once(s3, bucket, local_archive, local_rows, tiny_model):
    """Two --slice runs into one s3:// --out, one SIGKILLed mid-run and rerun; merge trusts only the
    committed manifests: every object has exactly one row, the same as the local table."""
    out = "s3://scans/results/sliced.parquet"
    base = ["run", bucket, "--out", out, "--model", tiny_model, "--shard-size", str(SHARD), "--json", "-q"]
    code, summary, err = octbatch(base + ["--slice", "0/2"], env_for(s3))
    assert code in (0, 3), err
    assert summary["merged"] is False and summary["out"] == out
    first = summary["processed"]
    assert "results/sliced.parquet.parts/slice-0-of-2.json" in bucket_keys(s3, "scans", "results/sliced")

    code, _, err = octbatch(["merge", out], env_for(s3))  # slice 1 has not run: refused
    assert code == 1 and "Error: slice(s) 1/2 of 2 have not finished" in err, err

    proc = subprocess.Popen(
        OCTBATCH + base + ["--slice", "1/2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env_for(s3)
    )
    before = sum("/commit-" in k for k in bucket_keys(s3, "scans", "results/sliced"))
    wait_for_commits(s3, proc, "results/sliced", before + 2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    keys = bucket_keys(s3, "scans", "results/sliced")
    assert "results/sliced.parquet" not in keys and "results/sliced.parquet.parts/slice-1-of-2.json" not in keys
    # A part whose attempt died before its commit: never trusted, removed by the merge.
    s3.client().put_object(
        Bucket="scans", Key="results/sliced.parquet.parts/part-00000000000000000000-deadbeef0000.parquet", Body=b"x"
    )

    code, summary, err = octbatch(base + ["--slice", "1/2"], env_for(s3))  # the rerun: resumes the slice
    assert code in (0, 3), err
    n = len(objects_of(local_archive))
    assert summary["skipped"] >= first + 2 * SHARD  # slice 0's rows and slice 1's committed parts
    assert summary["skipped"] + summary["processed"] == n

    code, summary, err = octbatch(["merge", out, "--json"], env_for(s3))
    assert code == 0, err
    assert summary["out"] == out and summary["rows"] == n
    assert_same_rows(table_in_bucket(s3, "scans", "results/sliced.parquet"), local_rows)
    assert bucket_keys(s3, "scans", "results/sliced") == [
        "results/sliced.parquet",
        "results/sliced.parquet.parts/phi.key",
        "results/sliced.parquet.parts/run.json",
    ]


def test_incremental_keys_on_etag_not_on_the_second(s3, bucket, local_archive, tiny_model, tmp_path):
    """An object overwritten with other bytes of the same size within the same LastModified second is
    reclassified (its ETag changed); the same bytes put again later are not (same ETag)."""
    import datetime as dt

    import pyarrow as pa

    c = s3.client()
    scans = [p for p in objects_of(local_archive).values() if p.suffix == ".jpeg" and p.stat().st_size > 5000][:6]
    for p in scans:
        c.put_object(Bucket="scans", Key="etag/CNV/" + p.name, Body=p.read_bytes())
    out = tmp_path / "etag.parquet"
    args = ["run", "s3://scans/etag", "--out", out, "--model", tiny_model, "--json", "-q"]
    try:
        code, summary, err = octbatch(args, env_for(s3))
        assert code == 0 and summary["processed"] == 6, err
        target, body = scans[0].name, bytearray(scans[0].read_bytes())
        assert rows_by_path(out)["CNV/" + target]["etag"] == c.head_object(Bucket="scans", Key="etag/CNV/" + target)[
            "ETag"
        ].strip('"')
        mid = len(body) // 2
        body[mid : mid + 64] = bytes(b ^ 0x5A for b in body[mid : mid + 64])  # other bytes, same size
        c.put_object(Bucket="scans", Key="etag/CNV/" + target, Body=bytes(body))
        head = c.head_object(Bucket="scans", Key="etag/CNV/" + target)
        # As if the first put had happened in the same second: the table's mtime is the new LastModified.
        t = pq.read_table(out)
        lm = int(head["LastModified"].astimezone(dt.UTC).timestamp() * 1_000_000)
        mt = [
            lm if p == "CNV/" + target else m
            for p, m in zip(t.column("path").to_pylist(), t.column("mtime").cast(pa.int64()).to_pylist())
        ]
        t = t.set_column(
            t.schema.get_field_index("mtime"),
            t.schema.field("mtime"),
            pa.array(mt, pa.int64()).cast(t.schema.field("mtime").type),
        )
        pq.write_table(t, out)
        code, summary, err = octbatch(args, env_for(s3))
        assert code in (0, 3) and summary["processed"] == 1 and summary["rows"] == 6, err
        assert rows_by_path(out)["CNV/" + target]["etag"] == head["ETag"].strip('"')

        c.put_object(Bucket="scans", Key="etag/CNV/" + target, Body=bytes(body))  # same bytes, later: same ETag
        code, summary, err = octbatch(args, env_for(s3))
        assert code in (0, 3) and summary["processed"] == 0 and summary["skipped"] == 6, err
    finally:
        for p in scans:
            c.delete_object(Bucket="scans", Key="etag/CNV/" + p.name)


def lock_keys(s3, key: str) -> list[str]:
    return bucket_keys(s3, "scans", key + ".lock/")


def test_s3_out_lock_keeps_a_second_run_out_and_stale_locks_are_taken_over(s3, bucket, local_archive, tiny_model):
    out = "s3://scans/results/locked.parquet"
    args = ["run", bucket, "--out", out, "--model", tiny_model, "--shard-size", str(SHARD), "--json", "-q"]
    proc = subprocess.Popen(OCTBATCH + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env_for(s3))
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not lock_keys(s3, "results/locked.parquet"):
        time.sleep(0.05)
    assert lock_keys(s3, "results/locked.parquet") == ["results/locked.parquet.lock/run.json"]
    t0 = time.time()
    code, _, err = octbatch(args, env_for(s3))  # a second run into the same table: refused, nothing written
    assert code == 1, err
    assert err.startswith(
        f"Error: another octbatch run is writing {out} (pid {proc.pid} on {os.uname().nodename}, run, last heartbeat"
    ), err
    assert "Wait for it to finish, or give a different --out." in err and "Traceback" not in err
    code, _, err = octbatch(args + ["--slice", "0/2"], env_for(s3))  # nor a slice beside it
    assert code == 1 and err.startswith(f"Error: another octbatch run is writing {out} (pid {proc.pid}"), err
    code, _, err = octbatch(["merge", out], env_for(s3))  # nor a merge
    assert code == 1 and err.startswith(f"Error: another octbatch run is writing {out} (pid {proc.pid}"), err
    assert time.time() - t0 < 60

    # The owner is killed: the rerun on this machine takes its lock over at once (its pid is gone).
    wait_for_commits(s3, proc, "results/locked", 2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert lock_keys(s3, "results/locked.parquet")  # a dead run's lock stays behind
    code, summary, err = octbatch(args, env_for(s3))
    assert code == 3, err
    assert (
        f"octbatch: warning: taking over the lock results/locked.parquet.lock/run.json of {out} held by pid "
        f"{proc.pid} on {os.uname().nodename}: its process {proc.pid} on this machine is gone" in err
    ), err
    n = len(objects_of(local_archive))
    assert summary["rows"] == n and summary["skipped"] >= 2 * SHARD
    assert len(table_in_bucket(s3, "scans", "results/locked.parquet")) == n
    assert lock_keys(s3, "results/locked.parquet") == []  # released at the end

    # A lock of a run on another machine: alive while its heartbeat is fresh, stale after the timeout.
    lock = "results/locked.parquet.lock/run.json"
    body = {"token": "x", "pid": 4242, "host": "other-node", "what": "run", "started_at": 0}
    s3.client().put_object(Bucket="scans", Key=lock, Body=json.dumps(body | {"heartbeat_at": time.time()}).encode())
    code, _, err = octbatch(args, env_for(s3))
    assert code == 1 and err.startswith(f"Error: another octbatch run is writing {out} (pid 4242 on other-node"), err
    s3.client().put_object(
        Bucket="scans", Key=lock, Body=json.dumps(body | {"heartbeat_at": time.time() - 1000}).encode()
    )
    code, summary, err = octbatch(args, env_for(s3))
    assert code == 0 and summary["processed"] == 0 and summary["rows"] == n, err
    assert re.search(
        r"held by pid 4242 on other-node: no heartbeat for 100\d s \(over OCTBATCH_S3_LOCK_STALE_S=300\)", err
    )
    assert lock_keys(s3, "results/locked.parquet") == []


def test_a_slice_s_failed_shard_is_replaced_by_its_retry_then_merged_once(
    s3, bucket, local_archive, local_rows, tiny_model, monkeypatch
):
    """A shard that fails every attempt in a slice gets `failed` rows committed to the bucket; the rerun
    of the slice retries it and its part replaces the failed one; the merge has each object once, ok."""
    import octbatch.objstore as objstore
    from octbatch import RunConfig, merge, run
    from octbatch.executors.local import LocalExecutor
    from octbatch.plan import Selection, keyed_entries
    from octbatch.shards import make_shards
    from tests.helpers.faulty_workers import FailShard

    for k, v in env_for(s3).items():
        if k.startswith("AWS_"):
            monkeypatch.setenv(k, v)
    objstore._stores.clear()
    out = "s3://scans/results/retried.parquet"
    try:
        entries = [e for e, _ in keyed_entries(Selection(bucket), "/none", lambda pid: None)]
        bad = list(make_shards(entries, SHARD))[1]
        cfg = RunConfig(archive=bucket, out=out, model=tiny_model, shard_size=SHARD, slice="0/1", max_shard_retries=0)
        s = run(cfg, executor=LocalExecutor(max_shard_retries=0, worker_factory=FailShard(bad.id)))
        assert s.failed_files == len(bad) and not s.merged
        commit = f"results/retried.parquet.parts/commit-{bad.id}.json"
        body = s3.client().get_object(Bucket="scans", Key=commit)["Body"].read()
        assert json.loads(body)["failed"] is True

        s = run(cfg)  # the rerun retries exactly the failed shard's files
        assert s.failed_files == 0 and s.processed == len(bad)
        assert json.loads(s3.client().get_object(Bucket="scans", Key=commit)["Body"].read())["failed"] is False

        s = merge(out)
        assert s.rows == len(local_rows) and s.out == out
        rows = table_in_bucket(s3, "scans", "results/retried.parquet")
        assert not [p for p, r in rows.items() if r["status"] == "failed"]
        assert_same_rows(rows, local_rows)
        assert [k for k in bucket_keys(s3, "scans", "results/retried") if "/part-" in k or "/commit-" in k] == []
    finally:
        objstore._stores.clear()
