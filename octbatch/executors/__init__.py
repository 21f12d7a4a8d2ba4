"""Executors run shards through workers. Local (in-process) and Ray share one interface and produce the
same part files, so the same table comes out whichever ran.

    base.py           Executor, ExecutorResult, ShardFailure, WorkerFactory
    retry.py          RetryPolicy: when a failed shard is given again, when it is reported
    local.py          LocalExecutor: one in-process worker
    ray.py            RayExecutor, ShardActor, the Ray session (ray is imported only when it runs)
    ray_plan.py       plan_workers: how many actors and what each asks for (pure)
    ray_scheduler.py  RayScheduler: the driver's dispatch / collect / replace loop
    packing.py        pack_shard / unpack_shard: a shard as it travels to an actor
"""

from __future__ import annotations

from typing import Any

from ..errors import OctbatchError
from ..worker import ShardWorker
from .base import Executor, ExecutorResult, ShardFailure, WorkerFactory
from .local import LocalExecutor
from .ray import RayExecutor
from .retry import RetryPolicy

__all__ = [
    "Executor",
    "ExecutorResult",
    "LocalExecutor",
    "RayExecutor",
    "RetryPolicy",
    "ShardFailure",
    "WorkerFactory",
    "make_executor",
]


def make_executor(name: str, *, worker_factory: WorkerFactory = ShardWorker, **kw: Any) -> Executor:
    if name == "local":
        return LocalExecutor(max_shard_retries=kw.get("max_shard_retries", 2), worker_factory=worker_factory)
    if name == "ray":
        return RayExecutor(worker_factory=worker_factory, **kw)
    raise OctbatchError(f"unknown executor {name!r}", "Use --executor local or --executor ray.")
