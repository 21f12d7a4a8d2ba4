"""What every executor shares: the interface (`Executor.run`), what a run hands back (`ExecutorResult`,
`ShardFailure`) and the `WorkerFactory` that builds the worker each executor runs shards through."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from ..shards import Shard
    from ..worker import ShardSummary, ShardWorker, WorkerConfig

__all__ = ["Executor", "ExecutorResult", "ProgressFn", "ShardFailure", "WorkerFactory", "with_next"]

ProgressFn = Callable[[int, int], None]  # (files done, of which errors); negative to take files back
# Builds the worker an executor runs shards through: ShardWorker itself, or a stand-in made by tests and
# benchmarks (a worker that fails or exits on purpose, a no-op one). Inside a Ray actor it is called there.
WorkerFactory = Callable[["WorkerConfig"], "ShardWorker"]


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

    def add(self, summary: ShardSummary) -> None:
        """Record a shard that a worker finished."""
        self.summaries.append(summary)
        self.workers[summary.worker] = self.workers.get(summary.worker, 0) + summary.files


class Executor:
    name = "base"

    def run(
        self,
        shards: Iterable[Shard],
        cfg: WorkerConfig,
        parts_dir: str,
        *,
        on_progress: ProgressFn | None = None,
    ) -> ExecutorResult:
        raise NotImplementedError


T = TypeVar("T")


def with_next(items: Iterable[T]) -> Iterator[tuple[T, T | None]]:
    """(item, the item after it or None): lets a worker start on the next shard early."""
    it = iter(items)
    cur = next(it, None)
    while cur is not None:
        nxt = next(it, None)
        yield cur, nxt
        cur = nxt
