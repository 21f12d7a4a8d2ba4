"""LocalExecutor against stand-in workers (tests.helpers.fake_workers): order, retries, failures."""

import pytest

from octbatch.errors import OctbatchError
from octbatch.executors import LocalExecutor, make_executor
from octbatch.worker import WorkerConfig
from tests.helpers.fake_workers import FakeWorkers


def run(shards, workers, retries=2):
    progress = []
    res = LocalExecutor(retries, worker_factory=workers).run(
        iter(shards), WorkerConfig(), "/parts", on_progress=lambda n, e: progress.append((n, e))
    )
    return res, progress


def test_every_shard_once_in_order_through_one_worker_told_the_next_shard(shards):
    workers = FakeWorkers()
    res, progress = run(shards, workers)
    assert [s.shard_id for s in res.summaries] == [s.id for s in shards]
    assert len(workers.built) == 1 and workers.built[0].closed
    ids = [s.id for s in shards]
    assert [(sid, nxt) for _, sid, nxt in workers.log] == list(zip(ids, ids[1:] + [None]))
    assert res.workers == {"fake-0": 3 * len(shards)}
    assert res.failures == [] and res.redone == []
    assert sum(n for n, _ in progress) == 3 * len(shards) and sum(e for _, e in progress) == len(shards)


def test_a_shard_failing_every_attempt_is_reported_and_its_progress_taken_back(shards):
    bad = shards[2]
    workers = FakeWorkers(fail={bad.id})
    res, progress = run(shards, workers, retries=1)
    assert [s.shard_id for s in res.summaries] == [s.id for s in shards if s is not bad]
    assert [(f.shard.id, f.attempts) for f in res.failures] == [(bad.id, 2)]
    assert res.failures[0].error.startswith(f"RuntimeError: injected failure for shard {bad.id}\nTraceback")
    assert res.redone == [bad.id] and workers.attempts[bad.id] == 2
    assert sum(n for n, _ in progress) == 3 * (len(shards) - 1)  # the failed shard's files taken back
    assert progress.count((-2, 0)) == 2


def test_an_octbatch_error_stops_the_run_and_closes_the_worker(shards):
    workers = FakeWorkers(error=OctbatchError("disk full", "Free some space."))
    with pytest.raises(OctbatchError, match="disk full"):
        run(shards, workers)
    assert workers.attempts[shards[0].id] == 1 and workers.built[0].closed


def test_no_shards_builds_no_worker():
    workers = FakeWorkers()
    res, _ = run([], workers)
    assert workers.built == [] and res.summaries == [] and res.startup_seconds == 0.0


def test_make_executor_builds_each_executor_with_the_worker_factory():
    workers = FakeWorkers()
    local = make_executor("local", max_shard_retries=5, worker_factory=workers)
    assert isinstance(local, LocalExecutor) and local.max_shard_retries == 5 and local.worker_factory is workers
    ray = make_executor("ray", workers=3, worker_factory=workers)
    assert ray.name == "ray" and ray.workers == 3 and ray.worker_factory is workers
    with pytest.raises(OctbatchError, match="unknown executor 'dask'") as err:
        make_executor("dask")
    assert err.value.fix == "Use --executor local or --executor ray."
