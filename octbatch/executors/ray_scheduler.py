"""RayScheduler: the driver's loop that feeds shards to Ray actors and collects their summaries.

Scheduling is dynamic: shards are pulled lazily from the iterator and given to an actor only when that
actor has fewer than `inflight_per_worker` queued, so a slow node takes fewer shards and the driver
never holds the archive in memory.

Faults: an actor whose process or node dies is killed and replaced, and every shard that was queued
on it goes back to the front of the queue. Only the shard it was running counts an attempt (actor
tasks run in submission order, so that is the oldest one), so a shard that crashes every process it
touches is still reported after max_shard_retries + 1 attempts instead of looping forever. Redoing a
shard is safe: its part file is named by the shard id and renamed into place whole.

`ray` is the module passed in (the real one, or a fake in the unit tests); nothing here imports it.
"""

from __future__ import annotations

import collections
import contextlib
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import OctbatchError
from .packing import pack_shard
from .retry import describe_error

if TYPE_CHECKING:
    from ..shards import Shard
    from .base import ProgressFn
    from .ray_plan import WorkerPlan
    from .retry import RetryPolicy

__all__ = ["RayScheduler", "first_line"]


@dataclass
class Slot:
    """One actor and the shards queued on it, oldest (the running one) first."""

    handle: Any
    index: int
    ready: bool = False
    name: str = ""
    queue: collections.deque = field(default_factory=collections.deque)  # refs


class RayScheduler:
    """One run's scheduling state: the actors, the calls in flight, the shards to give again."""

    def __init__(
        self,
        ray: Any,
        remote_cls: Any,
        actor_args: tuple,
        parts_dir: str,
        plan: WorkerPlan,
        policy: RetryPolicy,
        *,
        inflight_per_worker: int = 2,
        startup_timeout: float = 600.0,
        stats: dict | None = None,
        on_progress: ProgressFn | None = None,
        t0: float | None = None,
    ):
        self.ray = ray
        self.remote_cls = remote_cls
        self.actor_args = actor_args  # what each actor is built from: (worker config, worker factory)
        self.parts_dir = parts_dir
        self.plan = plan
        self.policy = policy
        self.result = policy.result
        self.inflight_per_worker = max(1, inflight_per_worker)
        self.startup_timeout = startup_timeout
        self.stats = stats if stats is not None else {}
        for key in ("shards", "deaths", "actors_started"):
            self.stats.setdefault(key, 0)
        self.stats.setdefault("driver_busy_seconds", 0.0)
        self.on_progress = on_progress
        self.t0 = time.perf_counter() if t0 is None else t0
        self.slots: list[Slot] = []
        self.inflight: dict = {}  # ref -> (slot, shard | None); None: the actor's ready() call
        self.retry: collections.deque[Shard] = collections.deque()
        self.shards: Iterator[Shard] = iter(())
        self.exhausted = False
        self.consecutive_deaths = 0
        self.last_death = ""
        self.ready_count = 0

    # -- the loop ---------------------------------------------------------------------------------
    def run(self, shards: Iterator[Shard]) -> None:
        """Every shard of `shards` done or recorded as failed in the policy's result."""
        self.shards = shards
        try:
            for i in range(self.plan.workers):
                self._start_actor(i)
            while self._step():
                pass
            if not self.result.startup_seconds and self.ready_count:
                self.result.startup_seconds = time.perf_counter() - self.t0  # some actors never came up
        finally:
            self.stats["retries"] = self.policy.retries
            self.stats["last_death"] = self.last_death

    def _step(self) -> bool:
        """Dispatch, wait for at least one call, handle every call that has finished. False when all is done."""
        busy = time.perf_counter()
        self._fill()
        if self._finished():
            # Actors still starting (a replacement Ray cannot place because its node is gone) are not waited for.
            self.stats["driver_busy_seconds"] += time.perf_counter() - busy
            return False
        any_ready = any(s.ready for s in self.slots)
        self.stats["driver_busy_seconds"] += time.perf_counter() - busy
        refs = list(self.inflight)
        done, _ = self.ray.wait(refs, num_returns=1, timeout=None if any_ready else self.startup_timeout)
        busy = time.perf_counter()
        if not done:
            self._no_worker_started()
        # Collect whatever else has finished too, without blocking.
        rest = [r for r in refs if r not in done]
        more, _ = self.ray.wait(rest, num_returns=len(rest), timeout=0) if rest else ([], [])
        for ref in list(done) + list(more):
            if ref in self.inflight:  # not dropped when its actor was replaced
                self._handle(ref)
        self.stats["driver_busy_seconds"] += time.perf_counter() - busy
        return True

    def _finished(self) -> bool:
        shards_inflight = any(shard is not None for _, shard in self.inflight.values())
        return not shards_inflight and self.exhausted and not self.retry

    def _no_worker_started(self) -> None:
        p = self.plan
        raise OctbatchError(
            f"no Ray worker started within {self.startup_timeout:.0f} s (asked for {p.workers} worker(s) with "
            f"{p.cpus_per_worker} CPU(s) and {p.gpus_per_worker:g} GPU(s) each; cluster: {_resources(self.ray)})",
            "Lower --workers or --gpus-per-worker, or add nodes; OCTBATCH_RAY_STARTUP_TIMEOUT sets the wait.",
        )

    # -- actors and dispatch ------------------------------------------------------------------------
    def _start_actor(self, index: int) -> None:
        slot = Slot(self.remote_cls.remote(*self.actor_args), index)
        self.slots.append(slot)
        self.inflight[slot.handle.ready.remote()] = (slot, None)
        self.stats["actors_started"] += 1

    def _next_shard(self) -> Shard | None:
        if self.retry:
            return self.retry.popleft()
        if self.exhausted:
            return None
        shard = next(self.shards, None)  # lazy: discovery runs only as far as actors need
        if shard is None:
            self.exhausted = True
        return shard

    def _fill(self) -> None:
        for slot in self.slots:
            while slot.ready and len(slot.queue) < self.inflight_per_worker:
                shard = self._next_shard()
                if shard is None:
                    return
                ref = slot.handle.process.remote(pack_shard(shard), self.parts_dir)
                slot.queue.append(ref)
                self.inflight[ref] = (slot, shard)
                self.stats["shards"] += 1

    # -- results ---------------------------------------------------------------------------------------
    def _handle(self, ref: Any) -> None:
        """One finished call: a summary, an actor that is ready, or an error (the shard's or the actor's)."""
        exc_ = self.ray.exceptions
        slot, shard = self.inflight[ref]  # stays listed until handled: _replace() requeues all of a slot's refs
        try:
            value = self.ray.get(ref, timeout=60)
        except exc_.RayTaskError as exc:
            self._task_error(ref, slot, shard, exc)
            return
        except exc_.ActorUnschedulableError as exc:
            raise OctbatchError(
                f"Ray cannot place an octbatch worker: {first_line(exc)}",
                "Lower --gpus-per-worker or --workers to fit the cluster (`ray status`).",
            ) from None
        except (exc_.RayActorError, exc_.GetTimeoutError, exc_.RayError) as exc:
            self._replace(slot, f"{type(exc).__name__}: {first_line(exc)}")  # the process or its node is gone
            return
        self.inflight.pop(ref)
        if shard is None:
            self._ready(slot, value)
            return
        slot.queue.remove(ref)
        self.consecutive_deaths = 0
        self.result.add(value)
        if self.on_progress:
            self.on_progress(value.files, value.errors)

    def _task_error(self, ref: Any, slot: Slot, shard: Shard | None, exc: Exception) -> None:
        """An exception raised inside the actor: the shard's attempt failed, or (in ready()) the actor's start."""
        cause = getattr(exc, "cause", None)
        if isinstance(cause, OctbatchError):
            raise OctbatchError(cause.what, cause.fix) from None  # every shard would fail the same way
        if shard is None:
            self._replace(slot, first_line(exc))
            return
        self.inflight.pop(ref)
        slot.queue.remove(ref)
        if self.policy.failed(shard, describe_error(cause if cause is not None else exc)):
            self.retry.appendleft(shard)

    def _ready(self, slot: Slot, value: Any) -> None:
        slot.name, node = value if isinstance(value, tuple) else (value, "")
        slot.ready = True
        if node:
            self.result.nodes[slot.name] = node
        self.ready_count += 1
        if self.ready_count == self.plan.workers:
            self.result.startup_seconds = time.perf_counter() - self.t0

    def _replace(self, slot: Slot, why: str) -> None:
        """The actor of `slot` is gone: its queued shards go back to the queue, a new actor takes its place."""
        self.stats["deaths"] += 1
        self.consecutive_deaths += 1
        self.last_death = why
        if self.consecutive_deaths > max(3, 2 * self.plan.workers):
            raise OctbatchError(
                f"Ray workers keep dying before finishing any shard ({self.consecutive_deaths} in a row); last: {why}",
                "Check that octbatch, its model and its libraries load on every node (see the Ray logs under /tmp/ray/session_latest/logs).",
            )
        running = True
        for ref in list(slot.queue):
            _, shard = self.inflight.pop(ref, (None, None))
            if shard is None:
                continue
            if running:  # the one it was running (actor tasks run in order): that attempt failed
                running = False
                if self.policy.failed(shard, f"worker died: {why}"):
                    self.retry.appendleft(shard)
                continue
            self.policy.requeue(shard)
            self.retry.appendleft(shard)
        slot.queue.clear()
        for ref in [r for r, (s, _) in self.inflight.items() if s is slot]:
            self.inflight.pop(ref)  # its ready() call, if it never answered
        with contextlib.suppress(Exception):  # already gone
            self.ray.kill(slot.handle)  # a hung or partitioned actor must not write on later
        self.slots.remove(slot)
        self._start_actor(slot.index)


def first_line(exc: BaseException) -> str:
    """One line for a Ray error: its headline and, when Ray appends the cause on later lines (the
    exception raised in the actor's __init__, the worker's exit reason), that last line too."""
    lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    return lines[0][:200] + (f" ... {lines[-1][:300]}" if len(lines) > 1 else "")


def _resources(ray: Any) -> str:
    r = ray.cluster_resources()
    return f"{r.get('CPU', 0):g} CPU(s), {r.get('GPU', 0):g} GPU(s)"
