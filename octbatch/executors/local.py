"""LocalExecutor: every shard through one in-process worker, in order, each retried by RetryPolicy."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..errors import OctbatchError
from ..worker import ShardWorker
from .base import Executor, ExecutorResult, ProgressFn, WorkerFactory, with_next
from .retry import RetryPolicy, describe_error

if TYPE_CHECKING:
    from ..shards import Shard
    from ..worker import WorkerConfig

__all__ = ["LocalExecutor"]


class LocalExecutor(Executor):
    """One in-process worker; its decoder and backend use every core given by --threads."""

    name = "local"

    def __init__(self, max_shard_retries: int = 2, *, worker_factory: WorkerFactory = ShardWorker):
        self.max_shard_retries = max_shard_retries
        self.worker_factory = worker_factory

    def run(
        self,
        shards: Iterable[Shard],
        cfg: WorkerConfig,
        parts_dir: str,
        *,
        on_progress: ProgressFn | None = None,
    ) -> ExecutorResult:
        res = ExecutorResult()
        policy = RetryPolicy(self.max_shard_retries, res)
        t0 = time.perf_counter()
        worker = None
        try:
            for shard, next_shard in with_next(shards):
                if worker is None:
                    worker = self.worker_factory(cfg)
                    res.startup_seconds = time.perf_counter() - t0
                while not self._attempt(worker, shard, next_shard, parts_dir, res, policy, on_progress):
                    pass
        finally:
            if worker is not None:
                worker.close()
        return res

    @staticmethod
    def _attempt(
        worker: ShardWorker,
        shard: Shard,
        next_shard: Shard | None,
        parts_dir: str,
        res: ExecutorResult,
        policy: RetryPolicy,
        on_progress: ProgressFn | None,
    ) -> bool:
        """One attempt at `shard`. True when it is settled (done, or recorded as failed), False to try again."""
        done = [0, 0]

        def prog(n: int, e: int) -> None:
            done[0] += n
            done[1] += e
            if on_progress:
                on_progress(n, e)

        try:
            summary = worker(shard, parts_dir, prog, next_shard=next_shard)
        except Exception as exc:  # noqa: BLE001 - a failing shard must not stop the others
            if on_progress and done[0]:
                on_progress(-done[0], -done[1])  # its files will be redone or reported
            if isinstance(exc, OctbatchError):
                raise  # disk full, unwritable output: every shard would fail the same way
            return not policy.failed(shard, describe_error(exc))
        res.add(summary)
        return True
