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

    from octbatch.executors.ray import start_local_ray

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


def ray_config(archive, model, out, *, max_shard_retries=2):
    """The RunConfig of `octbatch run --executor ray --workers 2` as these tests run it."""
    from octbatch.config import RunConfig

    return RunConfig(
        archive=str(archive),
        out=str(out),
        model=model,
        executor="ray",
        workers=2,
        gpus_per_worker=-1.0,
        shard_size=SHARD,
        max_shard_retries=max_shard_retries,
        gate="off",
    )  # as the CLI runs of these tests (conftest)


def ray_run(archive, model, out, *, max_shard_retries=2, worker_factory=None):
    """That run from Python with the RayExecutor built here, so that the test can give it a faulty
    worker (tests.helpers.faulty_workers) and read its stats afterwards."""
    from octbatch.executors import RayExecutor
    from octbatch.pipeline import run
    from octbatch.worker import ShardWorker

    ex = RayExecutor(
        workers=2,
        gpus_per_worker=-1.0,
        max_shard_retries=max_shard_retries,
        worker_factory=worker_factory or ShardWorker,
    )
    return run(ray_config(archive, model, out, max_shard_retries=max_shard_retries), executor=ex), ex


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

    from octbatch.executors import RayExecutor

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
    archive, tiny_model, local_table, n_files, ray_session, tmp_path
):
    from octbatch.executors import RayExecutor
    from octbatch.pipeline import NullReporter, run

    ray = ray_session
    ex = RayExecutor(workers=2, gpus_per_worker=-1.0, max_shard_retries=2)
    killed = []

    class KillOnFirstShard(NullReporter):
        def advance(self, files, errors):
            if not killed:
                victim = ex.slots[0]
                killed.append(victim.name)
                ray.kill(victim.handle)  # interrupts the shard it is running and drops its queue

    out = tmp_path / "killed.parquet"
    s = run(ray_config(archive, tiny_model, out), KillOnFirstShard(), executor=ex)
    assert killed and ex.stats["deaths"] >= 1 and ex.stats["actors_started"] >= 3
    assert s.failed_files == 0 and s.exit_code == 3
    rows = rows_by_path(out)
    assert len(rows) == n_files == s.rows
    assert_same_table(rows, local_table)
    # Ray was already running: the executor leaves it up but kills its actors (their CPUs come back).
    assert ray.is_initialized()
    assert wait_for_free_cpus(ray, 2.0) == 2.0


@needs_ray
def test_worker_processes_that_exit_are_replaced(archive, tiny_model, local_table, n_files, ray_session, tmp_path):
    from tests.helpers.faulty_workers import ExitAfter

    out = tmp_path / "exits.parquet"
    # Each worker process exits after 2 shards (as an OOM kill or a segfault would end it).
    s, ex = ray_run(archive, tiny_model, out, max_shard_retries=4, worker_factory=ExitAfter(2))
    assert s.exit_code == 3
    rows = rows_by_path(out)
    assert len(rows) == n_files
    assert_same_table(rows, local_table)
    # ~10 shards, 2 per process: several processes died and were replaced along the way.
    assert ex.stats["deaths"] >= 2


@needs_ray
def test_shard_that_always_fails_is_reported_and_the_rest_completes(
    archive, tiny_model, local_table, n_files, ray_session, tmp_path
):
    from octbatch.archive import discover
    from octbatch.shards import make_shards
    from tests.helpers.faulty_workers import FailShard

    shards = list(make_shards(discover(str(archive)), SHARD))
    bad = shards[len(shards) // 2]
    out = tmp_path / "failing.parquet"
    s, _ = ray_run(archive, tiny_model, out, max_shard_retries=1, worker_factory=FailShard(bad.id))
    assert s.exit_code == 4
    summary = json.loads(json.dumps(s.to_dict(), default=str))  # what --json prints
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
