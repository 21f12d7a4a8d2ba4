"""RayScheduler and RayExecutor against a fake `ray` (tests.helpers.fake_ray): dispatch, collection,
dead actors replaced and their shards redone, failing shards reported, nothing done twice."""

import collections
import sys

import pytest

from octbatch.errors import OctbatchError
from octbatch.executors import ExecutorResult, RayExecutor, RetryPolicy
from octbatch.executors.ray import ShardActor
from octbatch.executors.ray_plan import WorkerPlan
from octbatch.executors.ray_scheduler import RayScheduler
from octbatch.worker import WorkerConfig
from tests.helpers.fake_ray import FakeRay
from tests.helpers.fake_workers import FakeWorkers

from .conftest import make_shards


@pytest.fixture
def fake(monkeypatch):
    ray = FakeRay()
    monkeypatch.setitem(sys.modules, "ray", ray)  # ShardActor.ready() imports it
    return ray


def schedule(fake, shards, workers, *, retries=2, n_actors=2, inflight=2, res=None):
    res = ExecutorResult() if res is None else res
    progress = []
    sched = RayScheduler(
        fake,
        fake.remote(ShardActor),
        (WorkerConfig(), workers),
        "/parts",
        WorkerPlan(n_actors, 0.0, 1),
        RetryPolicy(retries, res),
        inflight_per_worker=inflight,
        startup_timeout=5,
        on_progress=lambda n, e: progress.append((n, e)),
    )
    sched.run(iter(shards))
    return res, sched, progress


def done_ids(res):
    ids = [s.shard_id for s in res.summaries]
    assert len(ids) == len(set(ids)), "a shard was collected twice"
    return set(ids)


def test_every_shard_is_dispatched_and_collected_once(fake, shards):
    workers = FakeWorkers()
    res, sched, progress = schedule(fake, shards, workers)
    assert done_ids(res) == {s.id for s in shards}
    assert sorted(sid for _, sid in workers.done) == sorted(s.id for s in shards)
    assert set(res.workers) == {"fake-0", "fake-1"} and sum(res.workers.values()) == 3 * len(shards)
    assert res.nodes == {"fake-0": "node-1", "fake-1": "node-1"}
    assert res.failures == [] and res.redone == []
    assert sched.stats["shards"] == len(shards) and sched.stats["actors_started"] == 2
    assert sched.stats["deaths"] == 0 and sched.stats["retries"] == 0
    assert sum(n for n, _ in progress) == 3 * len(shards)
    assert fake.waits[0] == 5  # no actor ready yet: the first wait is bounded by the startup timeout


def test_shards_are_pulled_lazily_as_actors_have_room(monkeypatch):
    shards = make_shards(20)
    pulled = []
    res = ExecutorResult()
    ahead = []

    class Probe(FakeRay):
        def wait(self, refs, num_returns=1, timeout=None):
            if timeout != 0:
                ahead.append(len(pulled) - len(res.summaries))
            return super().wait(refs, num_returns, timeout)

    fake = Probe()
    monkeypatch.setitem(sys.modules, "ray", fake)

    def gen():
        for sh in shards:
            pulled.append(sh.id)
            yield sh

    schedule(fake, gen(), FakeWorkers(), res=res, inflight=2)
    assert done_ids(res) == {s.id for s in shards}
    assert max(ahead) <= 2 * 2  # never more shards out than 2 actors x 2 in flight: the archive is not held


def test_a_dead_actor_is_replaced_and_its_shards_redone_on_another(fake, shards):
    victim = shards[2]
    workers = FakeWorkers(die_once={victim.id})
    res, sched, _ = schedule(fake, shards, workers)
    assert done_ids(res) == {s.id for s in shards}
    died_on = next(w for w, sid, _ in workers.log if sid == victim.id)
    redone_by = [w for w, sid in workers.done if sid == victim.id]
    assert redone_by and redone_by[0] != died_on
    assert victim.id in res.redone and res.failures == []
    assert sched.stats["deaths"] == 1 and sched.stats["actors_started"] == 3
    assert sched.policy.attempts == {victim.id: 1}  # only the shard it was running counted an attempt
    assert sched.stats["last_death"].startswith("RayActorError: The actor died unexpectedly")
    assert any(h.dead for h in fake.killed)  # the dead actor is killed, never left to write on later


def test_shards_queued_behind_the_running_one_go_back_without_an_attempt(fake):
    shards = make_shards(4)
    # One actor, two shards queued on it: the first one kills it; the second was only waiting.
    workers = FakeWorkers(die_always={shards[0].id})
    res, sched, _ = schedule(fake, shards, workers, n_actors=1, retries=0)
    assert done_ids(res) == {s.id for s in shards[1:]}
    assert [(f.shard.id, f.attempts) for f in res.failures] == [(shards[0].id, 1)]
    assert sched.policy.attempts == {shards[0].id: 1}
    assert shards[1].id in res.redone  # given again although no retries are allowed: it never ran


def test_a_shard_failing_every_attempt_is_recorded_and_the_rest_complete(fake, shards):
    bad = shards[3]
    workers = FakeWorkers(fail={bad.id})
    res, sched, _ = schedule(fake, shards, workers, retries=1)
    assert done_ids(res) == {s.id for s in shards} - {bad.id}
    assert [(f.shard.id, f.attempts) for f in res.failures] == [(bad.id, 2)]
    assert res.failures[0].error.startswith(f"RuntimeError: injected failure for shard {bad.id}\n")
    assert workers.attempts[bad.id] == 2 and res.redone == [bad.id]
    assert sched.stats["deaths"] == 0 and sched.stats["retries"] == 1


def test_a_shard_that_kills_every_actor_is_reported_after_its_attempts(fake, shards):
    bad = shards[1]
    workers = FakeWorkers(die_always={bad.id})
    res, sched, _ = schedule(fake, shards, workers, retries=1)
    assert done_ids(res) == {s.id for s in shards} - {bad.id}
    assert [(f.shard.id, f.attempts) for f in res.failures] == [(bad.id, 2)]
    assert res.failures[0].error.startswith("worker died: RayActorError: The actor died unexpectedly")
    assert sched.stats["deaths"] == 2
    done = collections.Counter(sid for _, sid in workers.done)
    assert all(n == 1 for n in done.values())


def test_actors_that_die_before_any_shard_stop_the_run(fake, shards):
    with pytest.raises(OctbatchError) as err:
        schedule(fake, shards, FakeWorkers(broken=True))
    assert err.value.what.startswith("Ray workers keep dying before finishing any shard (5 in a row); last: ")
    assert "the model does not load" in err.value.what
    assert err.value.fix.startswith("Check that octbatch, its model and its libraries load on every node")


def test_no_actor_ready_within_the_startup_timeout_is_an_error(shards):
    fake = FakeRay(hang_ready=True)
    with pytest.raises(OctbatchError) as err:
        schedule(fake, shards, FakeWorkers())
    assert err.value.what == (
        "no Ray worker started within 5 s (asked for 2 worker(s) with 1 CPU(s) and 0 GPU(s) each; "
        "cluster: 2 CPU(s), 0 GPU(s))"
    )


def test_an_octbatch_error_in_an_actor_stops_the_run_with_its_text(fake, shards):
    workers = FakeWorkers(error=OctbatchError("cannot write /parts: disk full", "Free some space."))
    with pytest.raises(OctbatchError) as err:
        schedule(fake, shards, workers)
    assert (err.value.what, err.value.fix) == ("cannot write /parts: disk full", "Free some space.")


def test_ray_executor_runs_the_factory_in_its_actors_and_kills_them_after(fake, shards):
    workers = FakeWorkers()
    ex = RayExecutor(workers=2, worker_factory=workers, max_shard_retries=1)
    res = ex.run(iter(shards), WorkerConfig(decode_threads=9, infer_threads=9), "/parts")
    assert done_ids(res) == {s.id for s in shards}
    assert ex.plan == WorkerPlan(2, 0.0, 1)
    assert [(w.cfg.decode_threads, w.cfg.infer_threads) for w in workers.built] == [(1, 1), (1, 1)]
    assert {h for h in fake.killed} == set(fake.actors)  # their CPUs come back at once
    assert ex.slots == [] and fake.shutdowns == 0  # a Ray it joined stays up
    assert ex.stats["plan"] == {"workers": 2, "gpus_per_worker": 0.0, "cpus_per_worker": 1}
