"""Executors run shards through ShardWorkers. Local (in-process) and Ray share one interface and
produce the same part files, so the same table comes out whichever ran."""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .shards import Shard
from .worker import ShardSummary, ShardWorker, WorkerConfig

__all__ = ["Executor", "LocalExecutor", "ShardFailure", "make_executor"]


@dataclass
class ShardFailure:
    shard: Shard
    error: str
    attempts: int


@dataclass
class ExecutorResult:
    summaries: list[ShardSummary] = field(default_factory=list)
    failures: list[ShardFailure] = field(default_factory=list)
    workers: dict = field(default_factory=dict)  # worker name -> files processed
    startup_seconds: float = 0.0
    nodes: dict = field(default_factory=dict)  # worker name -> Ray node id (Ray only)
    redone: list = field(default_factory=list)  # ids of shards given again after a worker died or a try failed


class Executor:
    name = "base"

    def run(
        self,
        shards: Iterable[Shard],
        cfg: WorkerConfig,
        parts_dir: str,
        *,
        on_progress: Callable[[int, int], None] | None = None,
        on_shard: Callable[[ShardSummary], None] | None = None,
    ) -> ExecutorResult:
        raise NotImplementedError


class LocalExecutor(Executor):
    """One in-process worker; its decoder and backend use every core given by --threads."""

    name = "local"

    def __init__(self, max_shard_retries: int = 2):
        self.max_shard_retries = max_shard_retries

    def run(self, shards, cfg, parts_dir, *, on_progress=None, on_shard=None) -> ExecutorResult:
        import time

        res = ExecutorResult()
        t0 = time.perf_counter()
        worker = None
        try:
            for shard, next_shard in _with_next(shards):
                if worker is None:
                    worker = ShardWorker(cfg)
                    res.startup_seconds = time.perf_counter() - t0
                attempts = 0
                while True:
                    attempts += 1
                    done = [0, 0]

                    def prog(n, e, done=done):
                        done[0] += n
                        done[1] += e
                        if on_progress:
                            on_progress(n, e)

                    try:
                        s = worker.process(shard, parts_dir, prog, next_shard=next_shard)
                    except Exception as exc:  # noqa: BLE001 - a failing shard must not stop the others
                        if on_progress and done[0]:
                            on_progress(-done[0], -done[1])  # its files will be redone or reported
                        from .errors import OctbatchError

                        if isinstance(exc, OctbatchError):
                            raise  # disk full, unwritable output: every shard would fail the same way
                        if attempts > self.max_shard_retries:
                            res.failures.append(
                                ShardFailure(
                                    shard, f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}", attempts
                                )
                            )
                            break
                        if shard.id not in res.redone:
                            res.redone.append(shard.id)
                        continue
                    res.summaries.append(s)
                    res.workers[s.worker] = res.workers.get(s.worker, 0) + s.files
                    if on_shard:
                        on_shard(s)
                    break
        finally:
            if worker is not None:
                worker.close()
        return res


def _with_next(items):
    """(item, the item after it or None): lets a worker start on the next shard early."""
    it = iter(items)
    cur = next(it, None)
    while cur is not None:
        nxt = next(it, None)
        yield cur, nxt
        cur = nxt


def make_executor(name: str, **kw) -> Executor:
    from .errors import OctbatchError

    if name == "local":
        return LocalExecutor(max_shard_retries=kw.get("max_shard_retries", 2))
    if name == "ray":
        from .ray_executor import RayExecutor

        return RayExecutor(**kw)
    raise OctbatchError(f"unknown executor {name!r}", "Use --executor local or --executor ray.")
