"""RetryPolicy: the one place that decides whether a shard whose attempt failed is given again or
reported, and keeps the count (attempts per shard, shards redone, retries, failures).

An attempt counts when a worker ran the shard and it failed (an exception, or the worker's process
died while running it). A shard only queued behind a dead worker is given again without counting
an attempt (`requeue`). After max_shard_retries + 1 failed attempts the shard is a ShardFailure."""

from __future__ import annotations

import traceback
from typing import TYPE_CHECKING

from .base import ExecutorResult, ShardFailure

if TYPE_CHECKING:
    from ..shards import Shard

__all__ = ["RetryPolicy", "describe_error"]


class RetryPolicy:
    def __init__(self, max_shard_retries: int, result: ExecutorResult):
        self.max_shard_retries = max_shard_retries
        self.result = result  # its failures and redone lists are filled here
        self.attempts: dict[str, int] = {}  # shard id -> attempts that ran and failed so far
        self.retries = 0  # shards given again, counted each time

    def failed(self, shard: Shard, error: str) -> bool:
        """Count a failed attempt of `shard`. True: give it again; False: it is recorded as a failure."""
        n = self.attempts[shard.id] = self.attempts.get(shard.id, 0) + 1
        if n > self.max_shard_retries:
            self.result.failures.append(ShardFailure(shard, error, n))
            return False
        self.requeue(shard)
        return True

    def requeue(self, shard: Shard) -> None:
        """`shard` is given again without a failed attempt of its own (it was queued on a worker that died)."""
        self.retries += 1
        if shard.id not in self.result.redone:
            self.result.redone.append(shard.id)


def describe_error(exc: BaseException) -> str:
    """What a ShardFailure says about an exception: its type and text, then its last frames."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=3))
    return f"{type(exc).__name__}: {exc}\n{tb}"
