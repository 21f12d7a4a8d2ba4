"""Workers that fail on purpose, for the fault-tolerance tests: pass one of these factories as an
executor's `worker_factory` (they replace the OCTBATCH_FAULT hook that production code used to read).

- ExitAfter(n): the worker's process exits (os._exit(137), as an OOM kill or a segfault would end it)
  when asked for a shard after finishing n. Only for Ray actors: in-process it would end the caller.
- FailShard(prefix): every attempt at a shard whose id starts with `prefix` raises RuntimeError.

Both are plain picklable objects, so Ray sends them to the actors, which build the worker there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from octbatch.worker import ShardWorker, WorkerConfig

__all__ = ["ExitAfter", "FailShard"]


class _ExitingWorker(ShardWorker):
    def __init__(self, cfg: WorkerConfig, after: int):
        super().__init__(cfg)
        self.after = after
        self.done = 0

    def __call__(self, shard, parts_dir, on_progress=None, next_shard=None):
        if self.done >= self.after:
            os._exit(137)
        summary = super().__call__(shard, parts_dir, on_progress, next_shard)
        self.done += 1
        return summary


class _FailingWorker(ShardWorker):
    def __init__(self, cfg: WorkerConfig, prefix: str):
        super().__init__(cfg)
        self.prefix = prefix

    def __call__(self, shard, parts_dir, on_progress=None, next_shard=None):
        if shard.id.startswith(self.prefix):
            raise RuntimeError(f"injected failure for shard {shard.id}")
        return super().__call__(shard, parts_dir, on_progress, next_shard)


@dataclass(frozen=True)
class ExitAfter:
    shards: int

    def __call__(self, cfg: WorkerConfig) -> ShardWorker:
        return _ExitingWorker(cfg, self.shards)


@dataclass(frozen=True)
class FailShard:
    prefix: str

    def __call__(self, cfg: WorkerConfig) -> ShardWorker:
        return _FailingWorker(cfg, self.prefix)
