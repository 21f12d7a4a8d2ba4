"""Stand-in workers for the executors' unit tests: no model, no decoding, a summary per shard.

`FakeWorkers(...)` is a worker factory (pass it as `worker_factory`); every worker it builds shares its
script and its log, as the workers of one run share a disk:

    fail        shard ids that raise RuntimeError on every attempt
    die_once    shard ids whose first attempt ends the worker's process (fake_ray.ActorDies)
    die_always  shard ids that end the process on every attempt
    error       an OctbatchError every shard raises (disk full: no shard can succeed)
    broken      the factory raises while building a worker (a model that does not load)
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

from octbatch.errors import OctbatchError
from octbatch.worker import ShardSummary, WorkerConfig
from tests.helpers.fake_ray import ActorDies

__all__ = ["FakeWorker", "FakeWorkers"]


class FakeWorker:
    def __init__(self, cfg: WorkerConfig, script: FakeWorkers, index: int):
        self.cfg = cfg
        self.script = script
        self.name = f"fake-{index}"
        self.closed = False

    def __call__(self, shard, parts_dir, on_progress=None, next_shard=None) -> ShardSummary:
        sc = self.script
        sc.attempts[shard.id] += 1
        sc.log.append((self.name, shard.id, next_shard.id if next_shard is not None else None))
        if sc.error is not None:
            raise sc.error
        if shard.id in sc.die_always or (shard.id in sc.die_once and sc.attempts[shard.id] == 1):
            raise ActorDies(f"{self.name} exited on shard {shard.id}")
        if on_progress is not None:
            on_progress(len(shard) - 1, 0)  # files are reported before the shard fails or is written
        if shard.id in sc.fail:
            raise RuntimeError(f"injected failure for shard {shard.id}")
        if on_progress is not None:
            on_progress(1, 1)
        sc.done.append((self.name, shard.id))
        return ShardSummary(shard.id, len(shard), len(shard) - 1, 1, 0.0, f"{parts_dir}/{shard.id}.parquet", self.name)

    def close(self) -> None:
        self.closed = True


@dataclass(eq=False)
class FakeWorkers:
    fail: set = field(default_factory=set)
    die_once: set = field(default_factory=set)
    die_always: set = field(default_factory=set)
    error: OctbatchError | None = None
    broken: bool = False
    attempts: collections.Counter = field(default_factory=collections.Counter)
    log: list = field(default_factory=list)  # (worker, shard id, next shard id) per attempt
    done: list = field(default_factory=list)  # (worker, shard id) per shard finished
    built: list = field(default_factory=list)  # every worker built, in order

    def __call__(self, cfg: WorkerConfig) -> FakeWorker:
        if self.broken:
            raise RuntimeError("the model does not load")
        w = FakeWorker(cfg, self, len(self.built))
        self.built.append(w)
        return w
