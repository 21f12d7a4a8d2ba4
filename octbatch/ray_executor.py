"""RayExecutor: the same shards and part files as LocalExecutor, spread over Ray actors.

One long-lived actor per GPU (or per slot of CPUs) wraps a ShardWorker, so the model and the decoder
load once per actor and image batches never cross the object store: the actor reads the files from
the shared filesystem, writes the shard's part file itself and returns a summary of a few numbers.

Scheduling is dynamic: the driver pulls shards lazily from the generator and gives one to an actor
only when that actor has fewer than `inflight_per_worker` shards queued, so a slow node takes fewer
shards and the driver never holds the archive in memory.

Faults: an actor whose process or node dies is killed and replaced, and every shard that was queued
on it goes back to the front of the queue. Only the shard it was running counts an attempt (actor
tasks run in submission order, so that is the oldest one), so a shard that crashes every process it
touches is still reported after max_shard_retries + 1 attempts instead of looping forever. Redoing a
shard is safe: its part file is named by the shard id and renamed into place whole, so a shard done
twice leaves one correct part, never two.

`ray` is imported only inside methods, through _deps.require, so `import octbatch` never loads it.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
import pickle
import re
import sys
import time
import traceback
import zlib
from dataclasses import dataclass, field
from typing import Any

from .errors import OctbatchError
from .executors import Executor, ExecutorResult, ShardFailure
from .worker import ShardSummary, ShardWorker, WorkerConfig

__all__ = ["RayExecutor", "ShardActor", "WorkerPlan", "pack_shard", "plan_workers", "start_local_ray", "unpack_shard"]

# A local Ray binds to the machine's routable IP on Linux unless this is off; read when ray is
# imported (ray._private.ray_constants) and inherited by the raylet and every worker it starts.
_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


class ShardActor:
    """The body of each Ray actor: one ShardWorker, built once, then one call per shard."""

    def __init__(self, cfg: WorkerConfig):
        self.worker = ShardWorker(cfg)

    def ready(self) -> tuple[str, str]:
        """(worker name, id of the Ray node it runs on): the driver records where each actor landed."""
        import ray

        return self.worker.name, ray.get_runtime_context().get_node_id()

    def process(self, packed: tuple, parts_dir: str) -> ShardSummary:
        return self.worker.process(unpack_shard(packed), parts_dir)


def pack_shard(shard) -> tuple:
    """A shard as (id, root, zlib(pickle(columns))): ~30x cheaper for the driver to serialize than a
    list of FileEntry objects (0.25 ms instead of 7 ms for 2,048 files), and small enough for Ray
    to send inline with the call instead of through the object store."""
    entries = shard.entries
    root = ""
    if entries and entries[0].abspath.endswith(entries[0].path):
        root = entries[0].abspath[: len(entries[0].abspath) - len(entries[0].path)]
    paths = [e.path for e in entries]
    # abspath is root + path except for names that are not valid UTF-8 (path shows them escaped).
    odd = {i: e.abspath for i, e in enumerate(entries) if e.abspath != root + e.path}
    cols = (paths, [e.size for e in entries], [e.mtime_ns for e in entries], odd)
    frames = {i: e for i, e in enumerate(entries) if hasattr(e, "frame")}  # frames of volumes travel whole
    if frames:
        cols = (*cols, frames)
    return shard.id, root, zlib.compress(pickle.dumps(cols, protocol=5), 1)


def unpack_shard(packed: tuple):
    from .archive import FileEntry
    from .shards import Shard

    shard_id, root, blob = packed
    paths, sizes, mtimes, odd, *more = pickle.loads(zlib.decompress(blob))
    frames = more[0] if more else {}
    entries = [
        frames.get(i) or FileEntry(p, odd.get(i) or root + p, sz, mt)
        for i, (p, sz, mt) in enumerate(zip(paths, sizes, mtimes))
    ]
    return Shard(shard_id, entries)


@dataclass(frozen=True)
class WorkerPlan:
    workers: int
    gpus_per_worker: float
    cpus_per_worker: int  # reserved from Ray and used as the worker's decode/infer threads


def plan_workers(cluster: dict, nodes: list[dict], *, workers: int | None, gpus_per_worker: float) -> WorkerPlan:
    """How many actors, and what each asks Ray for, sized so that every actor fits on one node.

    `nodes` are the alive nodes' total resources. A request no single node can hold (2 CPUs per actor
    on 1-CPU nodes, 2 GPUs per actor on 1-GPU nodes, more actors than the nodes have room for) would
    wait forever in Ray's queue: it fails here, at once, with the nodes' sizes in the message.
    gpus_per_worker < 0 means "not given": 1 when the cluster has GPUs, else CPU actors.
    """
    total_gpus = float(cluster.get("GPU", 0))
    gpw = (1.0 if total_gpus else 0.0) if gpus_per_worker < 0 else float(gpus_per_worker)
    if workers is not None and workers < 1:
        raise OctbatchError(
            f"--workers {workers} must be at least 1", "Leave it out for one worker per GPU (or per 2 CPUs)."
        )
    if gpw > 0:
        if not total_gpus:
            raise OctbatchError(
                f"--gpus-per-worker {gpw:g} but the Ray cluster has no GPUs",
                "Use --gpus-per-worker 0 for CPU workers, or join a cluster with GPU nodes (--ray-address).",
            )
        gpu_nodes = [nd for nd in nodes if nd.get("GPU")]
        # Actors per node: a fraction of a GPU packs several on one GPU; more than one GPU needs a node that has them.
        slots = [int(float(nd["GPU"]) / gpw + 1e-9) for nd in gpu_nodes]
        if not any(slots):
            raise OctbatchError(
                f"--gpus-per-worker {gpw:g} does not fit on any node (nodes: {_node_sizes(nodes)})",
                "Ask for at most the GPUs of the largest node, e.g. --gpus-per-worker 1.",
            )
        # CPUs per actor from the GPU nodes only (a CPU-only head must not inflate it), so that
        # every GPU of every node can host an actor.
        cpus = max(1, min(int(nd.get("CPU", 0)) // s for nd, s in zip(gpu_nodes, slots) if s))
        return WorkerPlan(_fit(workers, sum(slots), nodes, f"{gpw:g} GPU(s)"), gpw, cpus)
    node_cpus = [int(nd.get("CPU", 0)) for nd in nodes]
    if max(node_cpus, default=0) < 1:
        raise OctbatchError("the Ray cluster reports no CPUs", "Check the cluster with `ray status`.")
    if workers is None:
        cpus = min(2, max(node_cpus))  # one actor per 2 CPUs of each node (per CPU on 1-CPU nodes)
    else:
        # The most CPUs per actor with which all the actors asked for still fit on the nodes.
        cpus = max(1, min(sum(node_cpus) // workers, max(node_cpus)))
        while cpus > 1 and sum(c // cpus for c in node_cpus) < workers:
            cpus -= 1
    return WorkerPlan(_fit(workers, sum(c // cpus for c in node_cpus), nodes, f"{cpus} CPU(s)"), 0.0, cpus)


def _fit(workers: int | None, capacity: int, nodes: list[dict], each: str) -> int:
    if workers is None:
        return max(1, capacity)
    if workers > capacity:
        raise OctbatchError(
            f"--workers {workers} do not fit on the Ray cluster: its nodes hold {capacity} worker(s) of {each} each "
            f"(nodes: {_node_sizes(nodes)})",
            f"Use --workers {capacity} or fewer, or add nodes.",
        )
    return workers


def _node_sizes(nodes: list[dict]) -> str:
    return ", ".join(f"{float(nd.get('CPU', 0)):g} CPU/{float(nd.get('GPU', 0)):g} GPU" for nd in nodes) or "none"


@dataclass
class _Slot:
    """One actor and the shards queued on it, oldest (the running one) first."""

    handle: Any
    index: int
    ready: bool = False
    name: str = ""
    queue: collections.deque = field(default_factory=collections.deque)  # refs


@dataclass
class _Job:
    shard: Any
    attempts: int = 0  # attempts that ran and failed so far


class RayExecutor(Executor):
    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        workers: int | None = None,
        gpus_per_worker: float = -1.0,
        max_shard_retries: int = 2,
        *,
        num_cpus: int | None = None,
        inflight_per_worker: int = 2,
        startup_timeout: float | None = None,
        _actor_class: type | None = None,
    ):
        self.address = address or None
        self.workers = workers
        self.gpus_per_worker = -1.0 if gpus_per_worker is None else float(gpus_per_worker)
        self.max_shard_retries = max_shard_retries
        self.num_cpus = num_cpus  # only for a Ray this executor starts; default: this machine's cores
        self.inflight_per_worker = max(1, inflight_per_worker)
        self.startup_timeout = startup_timeout or float(os.environ.get("OCTBATCH_RAY_STARTUP_TIMEOUT", "600"))
        self._actor_class = _actor_class or ShardActor  # benchmarks swap in a no-op actor
        self.plan: WorkerPlan | None = None
        # Filled by run(): where the driver's time went (benchmarks/ray_overhead.py reads it).
        self.stats: dict = {}
        self._slots: list[_Slot] = []

    # -- Ray session ----------------------------------------------------------------------------
    def _connect(self):
        """Returns (ray module, whether this call started Ray or joined a cluster, and so must shut the
        connection down: Ray's log and error threads must not print on stdout after the run)."""
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # nothing leaves the machine
        from ._deps import require

        ray = require("ray", purpose="--executor ray")
        if ray.is_initialized():
            return ray, False  # a notebook or a test already connected: use it, leave it running
        if self.address is None:
            start_local_ray(self.num_cpus)
            return ray, True
        try:
            # A head started on loopback (one machine, e.g. `ray start --head --node-ip-address 127.0.0.1`)
            # is joined on loopback too; any other address as Ray resolves it.
            with _loopback() if _is_loopback(self.address) else contextlib.nullcontext():
                ray.init(address=self.address, logging_level=logging.WARNING)
        except (
            ConnectionError,
            RuntimeError,
            ValueError,
            ray.exceptions.RayError,
        ) as exc:  # RayError: AuthenticationError
            raise OctbatchError(
                f"cannot join the Ray cluster at {self.address}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                "Check --ray-address (auto on a cluster node, ray://HEAD:10001 from outside) and that `ray status` works there; "
                "a cluster with token authentication also needs RAY_AUTH_MODE=token and its token (`ray get-auth-token`).",
            ) from exc
        return ray, True  # shutdown() then only disconnects this driver; the cluster runs on

    # -- the run ---------------------------------------------------------------------------------
    def run(self, shards, cfg, parts_dir, *, on_progress=None, on_shard=None) -> ExecutorResult:
        # Ray prints cluster errors ("(raylet) A worker died ...") on the driver's stdout, which
        # belongs to data (--json for schedulers): send them to stderr for the length of the run.
        with contextlib.redirect_stdout(sys.stderr):
            return self._run(shards, cfg, parts_dir, on_progress, on_shard)

    def _run(self, shards, cfg, parts_dir, on_progress, on_shard) -> ExecutorResult:
        t0 = time.perf_counter()
        ray, started = self._connect()
        res = ExecutorResult()
        st = self.stats = {
            "init_seconds": time.perf_counter() - t0,
            "shards": 0,
            "driver_busy_seconds": 0.0,
            "deaths": 0,
            "retries": 0,
            "actors_started": 0,
        }
        try:
            self.plan = plan_workers(
                ray.cluster_resources(),
                [n["Resources"] for n in ray.nodes() if n.get("Alive")],
                workers=self.workers,
                gpus_per_worker=self.gpus_per_worker,
            )
            st["plan"] = dataclasses.asdict(self.plan)
            wcfg = dataclasses.replace(
                cfg, decode_threads=self.plan.cpus_per_worker, infer_threads=self.plan.cpus_per_worker
            )
            remote_cls = ray.remote(self._actor_class).options(
                num_cpus=self.plan.cpus_per_worker,
                num_gpus=self.plan.gpus_per_worker,
                max_restarts=0,
                max_task_retries=0,
            )
            self._loop(ray, remote_cls, iter(shards), wcfg, parts_dir, res, t0, on_progress, on_shard)
        finally:
            for slot in self._slots:
                with contextlib.suppress(Exception):  # already dead
                    ray.kill(slot.handle)  # frees its GPU at once, even when Ray outlives this run
            self._slots = []
            if started:
                t = time.perf_counter()
                ray.shutdown()
                st["shutdown_seconds"] = time.perf_counter() - t
        return res

    def _loop(self, ray, remote_cls, shard_iter, wcfg, parts_dir, res, t0, on_progress, on_shard) -> None:
        from ray.exceptions import (
            ActorUnschedulableError,
            GetTimeoutError,
            RayActorError,
            RayError,
            RayTaskError,
        )

        st = self.stats
        inflight: dict = {}  # ref -> (slot, job | None); job None: the actor's ready() call
        retry: collections.deque[_Job] = collections.deque()
        exhausted = False
        consecutive_deaths = 0
        n_ready_target = self.plan.workers
        last_death: str = ""

        def start_actor(index: int) -> None:
            slot = _Slot(remote_cls.remote(wcfg), index)
            self._slots.append(slot)
            inflight[slot.handle.ready.remote()] = (slot, None)
            st["actors_started"] += 1

        def next_job() -> _Job | None:
            nonlocal exhausted
            if retry:
                return retry.popleft()
            if exhausted:
                return None
            shard = next(shard_iter, None)  # lazy: discovery runs only as far as actors need
            if shard is None:
                exhausted = True
                return None
            return _Job(shard)

        def fill() -> None:
            for slot in self._slots:
                while slot.ready and len(slot.queue) < self.inflight_per_worker:
                    job = next_job()
                    if job is None:
                        return
                    ref = slot.handle.process.remote(pack_shard(job.shard), parts_dir)
                    slot.queue.append(ref)
                    inflight[ref] = (slot, job)
                    st["shards"] += 1

        def redone(job: _Job) -> None:
            if job.shard.id not in res.redone:
                res.redone.append(job.shard.id)

        def replace(slot: _Slot, why: str) -> None:
            nonlocal consecutive_deaths, last_death
            st["deaths"] += 1
            consecutive_deaths += 1
            last_death = why
            if consecutive_deaths > max(3, 2 * self.plan.workers):
                raise OctbatchError(
                    f"Ray workers keep dying before finishing any shard ({consecutive_deaths} in a row); last: {why}",
                    "Check that octbatch, its model and its libraries load on every node (see the Ray logs under /tmp/ray/session_latest/logs).",
                )
            running = True
            for ref in list(slot.queue):
                _, job = inflight.pop(ref, (None, None))
                if job is None:
                    continue
                if running:
                    job.attempts += 1  # the one it was running (actor tasks run in order)
                    running = False
                    if job.attempts > self.max_shard_retries:
                        res.failures.append(ShardFailure(job.shard, f"worker died: {why}", job.attempts))
                        continue
                st["retries"] += 1
                redone(job)
                retry.appendleft(job)
            slot.queue.clear()
            for ref in [r for r, (s, j) in inflight.items() if s is slot]:
                inflight.pop(ref)  # its ready() call, if it never answered
            with contextlib.suppress(Exception):  # already gone
                ray.kill(slot.handle)  # a hung or partitioned actor must not write on later
            self._slots.remove(slot)
            start_actor(slot.index)

        for i in range(self.plan.workers):
            start_actor(i)
        ready_count = 0
        while True:
            busy = time.perf_counter()
            fill()
            if not any(job is not None for _, job in inflight.values()) and exhausted and not retry:
                # All work done. Actors still starting (a replacement Ray cannot place because its
                # node is gone) are not waited for.
                st["driver_busy_seconds"] += time.perf_counter() - busy
                break
            any_ready = any(s.ready for s in self._slots)
            st["driver_busy_seconds"] += time.perf_counter() - busy
            done, _ = ray.wait(list(inflight), num_returns=1, timeout=None if any_ready else self.startup_timeout)
            busy = time.perf_counter()
            if not done:
                raise OctbatchError(
                    f"no Ray worker started within {self.startup_timeout:.0f} s (asked for {self.plan.workers} worker(s) with "
                    f"{self.plan.cpus_per_worker} CPU(s) and {self.plan.gpus_per_worker:g} GPU(s) each; cluster: {_resources(ray)})",
                    "Lower --workers or --gpus-per-worker, or add nodes; OCTBATCH_RAY_STARTUP_TIMEOUT sets the wait.",
                )
            # Collect whatever else has finished too, without blocking.
            more, _ = (
                ray.wait([r for r in inflight if r not in done], num_returns=len(inflight) - len(done), timeout=0)
                if len(inflight) > 1
                else ([], [])
            )
            for ref in list(done) + list(more):
                if ref not in inflight:
                    continue  # dropped when its actor was replaced
                slot, job = inflight[ref]  # stays listed until handled: replace() requeues all of a slot's refs
                try:
                    value = ray.get(ref, timeout=60)
                except RayTaskError as exc:
                    cause = getattr(exc, "cause", None)
                    if job is None or isinstance(cause, OctbatchError):
                        if isinstance(cause, OctbatchError):
                            raise OctbatchError(cause.what, cause.fix) from None
                        replace(slot, _first_line(exc))
                        continue
                    inflight.pop(ref)
                    slot.queue.remove(ref)
                    job.attempts += 1
                    if job.attempts > self.max_shard_retries:
                        err = cause if cause is not None else exc
                        tb = "".join(traceback.format_exception(type(err), err, err.__traceback__, limit=3))
                        res.failures.append(ShardFailure(job.shard, f"{type(err).__name__}: {err}\n{tb}", job.attempts))
                    else:
                        st["retries"] += 1
                        redone(job)
                        retry.appendleft(job)
                    continue
                except ActorUnschedulableError as exc:
                    raise OctbatchError(
                        f"Ray cannot place an octbatch worker: {_first_line(exc)}",
                        "Lower --gpus-per-worker or --workers to fit the cluster (`ray status`).",
                    ) from None
                except (RayActorError, GetTimeoutError, RayError) as exc:
                    replace(slot, f"{type(exc).__name__}: {_first_line(exc)}")  # the process or its node is gone
                    continue
                inflight.pop(ref)
                if job is None:  # ready()
                    slot.name, node = value if isinstance(value, tuple) else (value, "")
                    slot.ready = True
                    if node:
                        res.nodes[slot.name] = node
                    ready_count += 1
                    if ready_count == n_ready_target:
                        res.startup_seconds = time.perf_counter() - t0
                    continue
                slot.queue.remove(ref)
                consecutive_deaths = 0
                s: ShardSummary = value
                res.summaries.append(s)
                res.workers[s.worker] = res.workers.get(s.worker, 0) + s.files
                if on_progress:
                    on_progress(s.files, s.errors)
                if on_shard:
                    on_shard(s)
            st["driver_busy_seconds"] += time.perf_counter() - busy
        if not res.startup_seconds and ready_count:
            res.startup_seconds = time.perf_counter() - t0  # some actors never came up; the run still finished
        st["last_death"] = last_death


@contextlib.contextmanager
def _loopback():
    """Make Ray use 127.0.0.1 as this node's address while starting or joining.

    Ray maps loopback to the machine's routable IP on Linux unless a flag is off. The flag is read
    once when ray is imported (so its constant is set here) and from the environment by the raylet
    and the workers it spawns. Both are restored afterwards, so that a later join of a real cluster
    from this process sees them unchanged.
    """
    from ray._private import ray_constants

    saved = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    saved_env = os.environ.get(_LOOPBACK_ENV)
    os.environ[_LOOPBACK_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved
        if saved_env is None:
            os.environ.pop(_LOOPBACK_ENV, None)
        else:
            os.environ[_LOOPBACK_ENV] = saved_env


def start_local_ray(num_cpus: int | None = None) -> None:
    """Start a private Ray for this process: loopback only, no dashboard, quiet, small object store."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # nothing leaves the machine
    from ._deps import require

    ray = require("ray", purpose="--executor ray")
    with _loopback():
        ray.init(
            address="local",
            num_cpus=num_cpus or _cpu_count(),
            include_dashboard=False,
            object_store_memory=256 * 1024 * 1024,  # only shard lists and summaries travel through it
            logging_level=logging.ERROR,
            log_to_driver=False,
        )


def _is_loopback(address: str) -> bool:
    host = address.split("://")[-1].rsplit(":", 1)[0].strip("[]")
    return host in ("127.0.0.1", "localhost", "::1")


def _first_line(exc: BaseException) -> str:
    """One line for a Ray error: its headline and, when Ray appends the cause on later lines (the
    exception raised in the actor's __init__, the worker's exit reason), that last line too."""
    lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    text = lines[0][:200] + (f" ... {lines[-1][:300]}" if len(lines) > 1 else "")
    return text


def _resources(ray) -> str:
    r = ray.cluster_resources()
    return f"{r.get('CPU', 0):g} CPU(s), {r.get('GPU', 0):g} GPU(s)"


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1
