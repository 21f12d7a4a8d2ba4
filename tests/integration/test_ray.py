"""`--executor ray` (issue 4): same table as the local executor, no loss or duplicate when actors die,
failing shards reported, and a clear error when ray is not installed.

Ray starts twice per module: once by the executor itself (the path users take: local Ray on
loopback, shut down after the run) and once by a module fixture that the other tests share.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from octbatch._deps import is_available
from octbatch.cli import cli

pytestmark = pytest.mark.ray
needs_ray = pytest.mark.skipif(not is_available("ray"), reason="ray is not installed (pip install 'octbatch[cluster]')")

N_SCANS = 300  # + 3 broken files from make_archive
SHARD = 32


def invoke(*args, env=None):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False, env=env)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    from octbatch.synth import make_archive

    root = tmp_path_factory.mktemp("ray-archive") / "scans"
    make_archive(root, N_SCANS)
    return root


@pytest.fixture(scope="module")
def n_files(archive):
    return sum(1 for p in archive.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def local_table(archive, tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("ray-local") / "local.parquet"
    # module-scoped: set up before the autouse OCTBATCH_GATE=off fixture (conftest), so the gate is turned off here
    res = invoke("run", archive, "--out", out, "--model", tiny_model, "--shard-size", SHARD, "--gate", "off", "-q")
    assert res.exit_code == 3, res.output  # the 3 broken files
    return rows_by_path(out)


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray for the tests below; RayExecutor joins it instead of starting its own."""
    import ray

    from octbatch.ray_executor import start_local_ray

    if ray.is_initialized():
        ray.shutdown()
    start_local_ray(num_cpus=2)
    assert ray.util.get_node_ip_address() == "127.0.0.1"
    yield ray
    ray.shutdown()


def rows_by_path(out) -> dict:
    t = pq.read_table(out)
    paths = t.column("path").to_pylist()
    assert len(paths) == len(set(paths)), "duplicate rows"
    return {r["path"]: r for r in t.to_pylist()}


def assert_same_table(rows: dict, expected: dict) -> None:
    assert sorted(rows) == sorted(expected)
    probs = [k for k in next(iter(expected.values())) if k.startswith("p_")]
    assert probs
    for path, want in expected.items():
        got = rows[path]
        assert (got["status"], got["pred"], got["error"]) == (want["status"], want["pred"], want["error"]), path

        def as_array(r):
            return np.array([r[k] for k in probs], dtype=float)

        np.testing.assert_allclose(as_array(got), as_array(want), rtol=0, atol=1e-6, err_msg=path)


def capture_executor(monkeypatch) -> list:
    """The RayExecutor that the pipeline builds, for tests that reach into a run."""
    from octbatch import executors

    made = []
    real = executors.make_executor

    def make(name, **kw):
        ex = real(name, **kw)
        made.append(ex)
        return ex

    monkeypatch.setattr(executors, "make_executor", make)
    return made


def wait_for_free_cpus(ray, want: float, timeout: float = 20) -> float:
    deadline = time.time() + timeout
    free = 0.0
    while time.time() < deadline:
        free = ray.available_resources().get("CPU", 0.0)
        if free >= want:
            break
        time.sleep(0.2)
    return free


@needs_ray
def test_ray_table_equals_local_table(archive, tiny_model, local_table, n_files, tmp_path, monkeypatch):
    """Runs first: the executor starts its own Ray (loopback, no dashboard) and stops it after."""
    import ray

    from octbatch.ray_executor import RayExecutor

    if ray.is_initialized():
        ray.shutdown()
    seen = {}
    connect = RayExecutor._connect

    def spy(self):
        mod, started = connect(self)
        seen["started"] = started
        seen["node_ip"] = mod.util.get_node_ip_address()
        return mod, started

    monkeypatch.setattr(RayExecutor, "_connect", spy)
    out = tmp_path / "ray.parquet"
    res = invoke(
        "run",
        archive,
        "--out",
        out,
        "--model",
        tiny_model,
        "--executor",
        "ray",
        "--workers",
        2,
        "--shard-size",
        SHARD,
        "--json",
        "-q",
    )
    assert res.exit_code == 3, res.output
    summary = json.loads(res.stdout)  # stdout holds the JSON only: Ray's own messages must not land there
    assert summary["executor"] == "ray"
    assert summary["rows"] == n_files
    assert len(summary["workers"]) == 2 and sum(summary["workers"].values()) == n_files
    assert summary["startup_seconds"] > 0
    assert seen == {"started": True, "node_ip": "127.0.0.1"}
    assert not ray.is_initialized(), "the Ray it started must be shut down"
    assert_same_table(rows_by_path(out), local_table)


@needs_ray
def test_actor_killed_mid_run_loses_and_duplicates_nothing(
    archive, tiny_model, local_table, n_files, ray_session, tmp_path, monkeypatch
):
    from octbatch.config import RunConfig
    from octbatch.pipeline import NullReporter, run

    ray = ray_session
    made = capture_executor(monkeypatch)
    killed = []

    class KillOnFirstShard(NullReporter):
        def advance(self, files, errors):
            if not killed:
                victim = made[0]._slots[0]
                killed.append(victim.name)
                ray.kill(victim.handle)  # interrupts the shard it is running and drops its queue

    out = tmp_path / "killed.parquet"
    cfg = RunConfig(
        archive=str(archive),
        out=str(out),
        model=tiny_model,
        executor="ray",
        workers=2,
        gpus_per_worker=-1.0,
        shard_size=SHARD,
        max_shard_retries=2,
        gate="off",
    )  # as the CLI runs of these tests (conftest)
    s = run(cfg, KillOnFirstShard())
    ex = made[0]
    assert killed and ex.stats["deaths"] >= 1 and ex.stats["actors_started"] >= 3
    assert s.failed_files == 0 and s.exit_code == 3
    rows = rows_by_path(out)
    assert len(rows) == n_files == s.rows
    assert_same_table(rows, local_table)
    # Ray was already running: the executor leaves it up but kills its actors (their CPUs come back).
    assert ray.is_initialized()
    assert wait_for_free_cpus(ray, 2.0) == 2.0


@needs_ray
def test_worker_processes_that_exit_are_replaced(
    archive, tiny_model, local_table, n_files, ray_session, tmp_path, monkeypatch
):
    made = capture_executor(monkeypatch)
    out = tmp_path / "exits.parquet"
    # Each worker process calls os._exit after 2 shards (as an OOM kill or a segfault would end it).
    res = invoke(
        "run",
        archive,
        "--out",
        out,
        "--model",
        tiny_model,
        "--executor",
        "ray",
        "--workers",
        2,
        "--shard-size",
        SHARD,
        "--max-shard-retries",
        4,
        "-q",
        env={"OCTBATCH_FAULT": "exit-after:2"},
    )
    assert res.exit_code == 3, res.output
    rows = rows_by_path(out)
    assert len(rows) == n_files
    assert_same_table(rows, local_table)
    # ~10 shards, 2 per process: several processes died and were replaced along the way.
    assert made[0].stats["deaths"] >= 2


@needs_ray
def test_shard_that_always_fails_is_reported_and_the_rest_completes(
    archive, tiny_model, local_table, n_files, ray_session, tmp_path
):
    from octbatch.archive import discover
    from octbatch.shards import make_shards

    shards = list(make_shards(discover(str(archive)), SHARD))
    bad = shards[len(shards) // 2]
    out = tmp_path / "failing.parquet"
    res = invoke(
        "run",
        archive,
        "--out",
        out,
        "--model",
        tiny_model,
        "--executor",
        "ray",
        "--workers",
        2,
        "--shard-size",
        SHARD,
        "--max-shard-retries",
        1,
        "--json",
        "-q",
        env={"OCTBATCH_FAULT": f"fail:{bad.id}"},
    )
    assert res.exit_code == 4, res.output
    summary = json.loads(res.stdout)
    assert [(f["shard"], f["files"], f["attempts"]) for f in summary["failed_shards"]] == [(bad.id, len(bad), 2)]
    assert "injected failure" in summary["failed_shards"][0]["error"]
    rows = rows_by_path(out)
    assert len(rows) == n_files
    bad_paths = {e.path for e in bad.entries}
    assert {p for p, r in rows.items() if r["status"] == "failed"} == bad_paths
    assert all("injected failure" in rows[p]["error"] for p in bad_paths)
    assert_same_table(
        {p: r for p, r in rows.items() if p not in bad_paths},
        {p: r for p, r in local_table.items() if p not in bad_paths},
    )


def test_shards_travel_packed_and_come_back_identical(tmp_path):
    """The driver sends shards as compressed columns; the actor must rebuild the very same entries,
    including a name that is not valid UTF-8 (its abspath is not root + path)."""
    import os

    from octbatch.archive import discover
    from octbatch.ray_executor import pack_shard, unpack_shard
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


def test_worker_plan_one_actor_per_gpu_and_cpu_slots_otherwise():
    from octbatch.errors import OctbatchError
    from octbatch.ray_executor import WorkerPlan, plan_workers

    # A CPU-only head and two 8-GPU nodes: 16 actors, 1 GPU and the GPU nodes' 2 CPUs per GPU each.
    nodes = [{"CPU": 64.0}, {"CPU": 16.0, "GPU": 8.0}, {"CPU": 16.0, "GPU": 8.0}]
    cluster = {"CPU": 96.0, "GPU": 16.0}
    assert plan_workers(cluster, nodes, workers=None, gpus_per_worker=-1.0) == WorkerPlan(16, 1.0, 2)
    assert plan_workers(cluster, nodes, workers=4, gpus_per_worker=0.5) == WorkerPlan(4, 0.5, 1)
    # No GPUs: CPU actors, one per 2 CPUs unless --workers says otherwise.
    assert plan_workers({"CPU": 8.0}, [{"CPU": 8.0}], workers=None, gpus_per_worker=-1.0) == WorkerPlan(4, 0.0, 2)
    assert plan_workers({"CPU": 2.0}, [{"CPU": 2.0}], workers=2, gpus_per_worker=-1.0) == WorkerPlan(2, 0.0, 1)
    with pytest.raises(OctbatchError, match="has no GPUs"):
        plan_workers({"CPU": 8.0}, [{"CPU": 8.0}], workers=None, gpus_per_worker=1.0)


def test_executor_ray_without_ray_installed_says_how_to_install(archive, tiny_model, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` sees when it is not installed
    res = CliRunner().invoke(
        cli,
        ["run", str(archive), "--out", str(tmp_path / "r.parquet"), "--model", tiny_model, "--executor", "ray", "-q"],
    )
    assert res.exit_code == 1
    assert "Error: ray is not installed" in res.stderr
    assert "pip install 'octbatch[cluster]'" in res.stderr
    assert "Traceback" not in res.output


def test_workers_are_sized_per_node_and_requests_no_node_holds_fail_at_once():
    """Issue 18: two 1-CPU nodes used to get 1 worker x 2 CPUs (the cluster's total), which no node can
    hold, and the run waited 600 s. Now each actor fits on one node, and what cannot fit fails here."""
    from octbatch.errors import OctbatchError
    from octbatch.ray_executor import WorkerPlan, plan_workers

    two_small = [{"CPU": 1.0}, {"CPU": 1.0}]
    assert plan_workers({"CPU": 2.0}, two_small, workers=None, gpus_per_worker=-1.0) == WorkerPlan(2, 0.0, 1)
    assert plan_workers({"CPU": 2.0}, two_small, workers=1, gpus_per_worker=-1.0) == WorkerPlan(1, 0.0, 1)
    with pytest.raises(
        OctbatchError,
        match=r"--workers 3 do not fit .* 2 worker\(s\) of 1 CPU\(s\) each \(nodes: 1 CPU/0 GPU, 1 CPU/0 GPU\)",
    ):
        plan_workers({"CPU": 2.0}, two_small, workers=3, gpus_per_worker=-1.0)
    # Uneven nodes: 2 CPUs per actor where a node has them; --workers N takes the most CPUs that still fit.
    uneven = [{"CPU": 4.0}, {"CPU": 3.0}]
    assert plan_workers({"CPU": 7.0}, uneven, workers=None, gpus_per_worker=-1.0) == WorkerPlan(3, 0.0, 2)
    assert plan_workers({"CPU": 7.0}, uneven, workers=2, gpus_per_worker=-1.0) == WorkerPlan(2, 0.0, 3)
    assert plan_workers({"CPU": 7.0}, uneven, workers=5, gpus_per_worker=-1.0) == WorkerPlan(5, 0.0, 1)
    # GPUs: 2 per actor on 1-GPU nodes cannot be placed; 0.5 per actor packs two on each GPU.
    gpu_nodes = [{"CPU": 8.0, "GPU": 1.0}, {"CPU": 8.0, "GPU": 1.0}]
    with pytest.raises(OctbatchError, match="--gpus-per-worker 2 does not fit on any node"):
        plan_workers({"CPU": 16.0, "GPU": 2.0}, gpu_nodes, workers=None, gpus_per_worker=2.0)
    assert plan_workers({"CPU": 16.0, "GPU": 2.0}, gpu_nodes, workers=None, gpus_per_worker=0.5) == WorkerPlan(
        4, 0.5, 4
    )
    with pytest.raises(OctbatchError, match="--workers 3 do not fit"):
        plan_workers({"CPU": 16.0, "GPU": 2.0}, gpu_nodes, workers=3, gpus_per_worker=1.0)
