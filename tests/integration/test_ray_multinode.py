"""A real multi-node Ray cluster (issue 18): a head and a second node, each its own raylet on
127.0.0.1 with token authentication on, and `octbatch run --ray-address` as a user runs it.

- actors land on both nodes (seen from the node ids the actors report);
- the driver SIGKILLed mid-run, then the same command again: resumes, every file exactly once;
- the second node SIGKILLed mid-run (its raylet and its actor processes): the run finishes, every file exactly once, the table
  equals the local executor's, and the summary lists the shards that were redone;
- a request no node can hold fails at once with the nodes' sizes (not after a 600 s wait);
- a driver without the cluster's token is refused with `Error: ...`, exit 1.

The cluster runs in a process of its own (tests/helpers/ray_cluster.py) so that Ray's token settings and
processes stay out of pytest. Every wait has a timeout: nothing here can hang CI.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from octbatch._deps import is_available

pytestmark = [
    pytest.mark.ray,
    pytest.mark.slow,
    pytest.mark.skipif(not is_available("ray"), reason="ray is not installed (pip install 'octbatch[cluster]')"),
]

HELPERS = Path(__file__).resolve().parents[1] / "helpers"
N_SCANS = 600  # + 3 broken files
SHARD = 16
TOKEN = "0123456789abcdef0123456789abcdef"
OCTBATCH = [sys.executable, "-m", "octbatch"]


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    from octbatch.synth import make_archive

    root = tmp_path_factory.mktemp("mn-archive") / "scans"
    make_archive(root, N_SCANS)
    return root


@pytest.fixture(scope="module")
def n_files(archive):
    return sum(1 for p in archive.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def local_table(archive, tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("mn-local") / "local.parquet"
    p = subprocess.run(
        OCTBATCH + ["run", str(archive), "--out", str(out), "--model", tiny_model, "--shard-size", str(SHARD), "-q"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 3, p.stderr  # the 3 broken files
    return rows_by_path(out)


@pytest.fixture(scope="module")
def s3():
    """A loopback S3 server when moto and obstore are installed (else None: the S3 test skips)."""
    if not (is_available("obstore") and is_available("moto") and is_available("boto3")):
        yield None
        return
    from tests.helpers.s3_server import moto_server

    with moto_server() as srv:
        yield srv


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, s3):
    """Head (1 CPU) + one more node (1 CPU), token authentication on; torn down after the module.
    The nodes get the S3 server's AWS_* variables, as cluster nodes get credentials of their own."""
    home = tmp_path_factory.mktemp("mn-home")  # no ~/.ray/auth_token of the real user leaks in
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))} | {"HOME": str(home)}
    if s3 is not None:
        env |= s3.env()
    proc = subprocess.Popen(
        [sys.executable, str(HELPERS / "ray_cluster.py"), "--cpus", "1", "--cpus", "1", "--token", TOKEN],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 180)
        line = proc.stdout.readline() if ready else ""
        if not line:
            pytest.fail("the Ray test cluster did not start within 180 s")
        info = json.loads(line)
        info["home"] = str(home)
        yield info
    finally:
        proc.stdin.close()  # the helper shuts the cluster down
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


def driver_env(cluster, *, token: bool = True) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env |= {"HOME": cluster["home"], "OCTBATCH_RAY_STARTUP_TIMEOUT": "120", "RAY_USAGE_STATS_ENABLED": "0"}
    if token:  # what docs/RAY.md tells users to set for a cluster with token authentication
        env |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": TOKEN}
    return env


def run_args(archive, out, tiny_model, cluster, *extra) -> list[str]:
    return OCTBATCH + [
        "run",
        str(archive),
        "--out",
        str(out),
        "--model",
        tiny_model,
        "--ray-address",
        cluster["address"],
        "--shard-size",
        str(SHARD),
        "--json",
        "-q",
        *map(str, extra),
    ]


def rows_by_path(out) -> dict:
    t = pq.read_table(out)
    paths = t.column("path").to_pylist()
    assert len(paths) == len(set(paths)), "duplicate rows"
    return {r["path"]: r for r in t.to_pylist()}


def assert_same_table(rows: dict, expected: dict) -> None:
    assert sorted(rows) == sorted(expected)
    probs = [k for k in next(iter(expected.values())) if k.startswith("p_")]
    for path, want in expected.items():
        got = rows[path]
        assert (got["status"], got["pred"], got["error"]) == (want["status"], want["pred"], want["error"]), path

        def as_array(r):
            return np.array([r[k] for k in probs], dtype=float)  # None (an unreadable file) -> nan

        np.testing.assert_allclose(as_array(got), as_array(want), rtol=0, atol=1e-6, err_msg=path)


def wait_for_parts(out: Path, n: int, proc: subprocess.Popen, timeout: float = 240) -> int:
    parts = Path(str(out) + ".parts")
    deadline = time.time() + timeout
    while time.time() < deadline:
        have = len(list(parts.glob("part-*.parquet"))) if parts.is_dir() else 0
        if have >= n:
            return have
        if proc.poll() is not None:
            pytest.fail(f"the run ended before {n} shards were committed: {proc.communicate()[1][-2000:]}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"fewer than {n} shards committed within {timeout:.0f} s")


def wait_for_shard_on(node: dict, proc: subprocess.Popen, timeout: float = 240) -> None:
    """Until an actor on `node` is inside ShardActor.process (Ray titles a worker process by the task
    it runs): then killing the node certainly interrupts a shard."""
    import psutil

    raylet = psutil.Process(node["raylet_pid"])
    deadline = time.time() + timeout
    while time.time() < deadline:
        for child in raylet.children(recursive=True):
            try:
                if "ShardActor.process" in " ".join(child.cmdline()):
                    return
            except psutil.Error:
                continue
        if proc.poll() is not None:
            pytest.fail(f"the run ended before a shard ran on the second node: {proc.communicate()[1][-2000:]}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"no shard ran on the second node within {timeout:.0f} s")


def kill_node(node: dict) -> None:
    """What losing the machine does: SIGKILL to the node's raylet and every process it started.
    (The raylet alone is not enough: its actor processes talk to the driver directly and were seen
    to finish all their queued shards after their raylet had died.)"""
    import psutil

    raylet = psutil.Process(node["raylet_pid"])
    procs = [raylet] + raylet.children(recursive=True)
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass


def finish(proc: subprocess.Popen, timeout: float = 400) -> tuple[int, dict, str]:
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        pytest.fail(f"the run did not finish within {timeout:.0f} s: {stderr[-3000:]}")
    try:
        summary = json.loads(stdout) if stdout.strip() else {}
    except ValueError:
        pytest.fail(f"stdout must hold the JSON summary only, got: {stdout[-3000:]!r}")
    return proc.returncode, summary, stderr


def test_driver_killed_mid_run_then_rerun_resumes_exactly_once(
    archive, n_files, tiny_model, local_table, cluster, tmp_path
):
    out = tmp_path / "driver-killed.parquet"
    args = run_args(archive, out, tiny_model, cluster)
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=driver_env(cluster))
    committed = wait_for_parts(out, 3, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not out.exists(), "a killed run must not leave a merged table"

    code, summary, stderr = finish(
        subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=driver_env(cluster))
    )
    assert code == 3, stderr  # the 3 broken files, nothing else
    assert summary["rows"] == summary["discovered"] == n_files
    assert summary["skipped"] >= committed * SHARD  # what the killed driver committed is not redone
    assert summary["skipped"] + summary["processed"] == n_files
    # Both actors (1 CPU each on 1-CPU nodes) ran, one on each node.
    assert set(summary["worker_nodes"].values()) == {n["node_id"] for n in cluster["nodes"]}
    assert_same_table(rows_by_path(out), local_table)


def test_infeasible_request_fails_at_once_with_the_reason(archive, tiny_model, cluster, tmp_path):
    p = subprocess.run(
        run_args(archive, tmp_path / "x.parquet", tiny_model, cluster, "--workers", 3),
        capture_output=True,
        text=True,
        env=driver_env(cluster),
        timeout=120,
    )
    assert p.returncode == 1
    assert "Error: --workers 3 do not fit on the Ray cluster: its nodes hold 2 worker(s) of 1 CPU(s) each" in p.stderr
    assert "Traceback" not in p.stderr
    p = subprocess.run(
        run_args(archive, tmp_path / "y.parquet", tiny_model, cluster, "--gpus-per-worker", 1),
        capture_output=True,
        text=True,
        env=driver_env(cluster),
        timeout=120,
    )
    assert p.returncode == 1 and "Error: --gpus-per-worker 1 but the Ray cluster has no GPUs" in p.stderr


def test_driver_without_the_clusters_token_is_refused(archive, tiny_model, cluster, tmp_path):
    p = subprocess.run(
        run_args(archive, tmp_path / "z.parquet", tiny_model, cluster),
        capture_output=True,
        text=True,
        env=driver_env(cluster, token=False),
        timeout=180,
    )
    assert p.returncode == 1
    assert f"Error: cannot join the Ray cluster at {cluster['address']}" in p.stderr
    assert "RAY_AUTH_MODE=token" in p.stderr and "Traceback" not in p.stderr


def test_archive_and_results_on_s3_through_both_nodes(archive, n_files, tiny_model, local_table, cluster, s3, tmp_path):
    """The KubeRay-from-S3 shape: actors on two nodes read the objects and commit their parts to the bucket."""
    if s3 is None:
        pytest.skip("needs obstore, moto[server] and boto3")
    import io

    s3.upload_folder("mn-bucket", "scans/", archive)
    c = s3.client()
    env = driver_env(cluster) | s3.env()
    args = OCTBATCH + [
        "run",
        "s3://mn-bucket/scans",
        "--out",
        "s3://mn-bucket/results/run.parquet",
        "--model",
        tiny_model,
        "--ray-address",
        cluster["address"],
        "--shard-size",
        str(SHARD),
        "--json",
        "-q",
    ]
    code, summary, stderr = finish(
        subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    )
    assert code == 3, stderr
    assert summary["rows"] == n_files
    assert set(summary["worker_nodes"].values()) == {n["node_id"] for n in cluster["nodes"]}
    rows = rows_by_path(io.BytesIO(c.get_object(Bucket="mn-bucket", Key="results/run.parquet")["Body"].read()))
    assert_same_table(rows, local_table)
    left = sorted(o["Key"] for o in c.list_objects_v2(Bucket="mn-bucket", Prefix="results/")["Contents"])
    assert left == [
        "results/run.parquet",
        "results/run.parquet.parts/phi.key",
        "results/run.parquet.parts/run.json",
    ]  # phi.key: the per-table pseudonym key


def test_worker_node_killed_mid_run_loses_and_duplicates_nothing(
    archive, n_files, tiny_model, local_table, cluster, tmp_path
):
    """Last in the module: it takes the second node away for good."""
    out = tmp_path / "node-killed.parquet"
    victim = next(n for n in cluster["nodes"] if not n["head"])
    proc = subprocess.Popen(
        run_args(archive, out, tiny_model, cluster),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=driver_env(cluster),
    )
    wait_for_shard_on(victim, proc)
    kill_node(victim)
    code, summary, stderr = finish(proc)
    assert code == 3, stderr
    assert summary["rows"] == summary["processed"] == n_files
    assert victim["node_id"] in summary["worker_nodes"].values()
    assert set(summary["worker_nodes"].values()) == {n["node_id"] for n in cluster["nodes"]}
    # The shards the dead node held were given again, and the summary names them.
    assert summary["redone_shards"], stderr
    assert summary["failed_shards"] == []
    assert_same_table(rows_by_path(out), local_table)
