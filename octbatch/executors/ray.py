"""RayExecutor: the same shards and part files as LocalExecutor, spread over Ray actors.

One long-lived actor per GPU (or per slot of CPUs) wraps a ShardWorker, so the model and the decoder
load once per actor and image batches never cross the object store: the actor reads the files from
the shared filesystem, writes the shard's part file itself and returns a summary of a few numbers.

This module holds the Ray session (start a private Ray on loopback, or join a cluster) and the actor;
how many actors is `ray_plan.plan_workers`, and the driver's loop (dispatch, collect, replace dead
actors) is `ray_scheduler.RayScheduler`.

`ray` is imported only inside methods, through _deps.require, so `import octbatch` never loads it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..errors import OctbatchError
from ..worker import ShardWorker
from .base import Executor, ExecutorResult, ProgressFn, WorkerFactory
from .packing import pack_shard, unpack_shard
from .ray_plan import WorkerPlan, plan_workers
from .ray_scheduler import RayScheduler, Slot
from .retry import RetryPolicy

if TYPE_CHECKING:
    from ..shards import Shard
    from ..worker import ShardSummary, WorkerConfig

__all__ = ["RayExecutor", "ShardActor", "WorkerPlan", "pack_shard", "plan_workers", "start_local_ray", "unpack_shard"]

# A local Ray binds to the machine's routable IP on Linux unless this is off; read when ray is
# imported (ray._private.ray_constants) and inherited by the raylet and every worker it starts.
_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


class ShardActor:
    """The body of each Ray actor: one worker, built once by the factory, then one call per shard."""

    def __init__(self, cfg: WorkerConfig, worker_factory: WorkerFactory = ShardWorker):
        self.worker = worker_factory(cfg)

    def ready(self) -> tuple[str, str]:
        """(worker name, id of the Ray node it runs on): the driver records where each actor landed."""
        import ray

        return self.worker.name, ray.get_runtime_context().get_node_id()

    def process(self, packed: tuple, parts_dir: str) -> ShardSummary:
        return self.worker(unpack_shard(packed), parts_dir)


class RayExecutor(Executor):
    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        workers: int | None = None,
        gpus_per_worker: float | None = None,
        max_shard_retries: int = 2,
        *,
        num_cpus: int | None = None,
        inflight_per_worker: int = 2,
        startup_timeout: float | None = None,
        worker_factory: WorkerFactory = ShardWorker,
    ):
        self.address = address or None
        self.workers = workers
        # None: not given (a negative number, the former sentinel, means the same)
        self.gpus_per_worker = None if gpus_per_worker is None or gpus_per_worker < 0 else float(gpus_per_worker)
        self.max_shard_retries = max_shard_retries
        self.num_cpus = num_cpus  # only for a Ray this executor starts; default: this machine's cores
        self.inflight_per_worker = max(1, inflight_per_worker)
        self.startup_timeout = startup_timeout or float(os.environ.get("OCTBATCH_RAY_STARTUP_TIMEOUT", "600"))
        self.worker_factory = worker_factory  # built inside each actor; tests and benchmarks pass stand-ins
        self.plan: WorkerPlan | None = None
        # Filled by run(): where the driver's time went (benchmarks/ray_overhead.py reads it).
        self.stats: dict = {}
        self._scheduler: RayScheduler | None = None

    @property
    def slots(self) -> list[Slot]:
        """The actors of the run in progress (empty outside a run)."""
        return self._scheduler.slots if self._scheduler is not None else []

    # -- Ray session ----------------------------------------------------------------------------
    def _connect(self) -> tuple[Any, bool]:
        """Returns (ray module, whether this call started Ray or joined a cluster, and so must shut the
        connection down: Ray's log and error threads must not print on stdout after the run)."""
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # nothing leaves the machine
        from .._deps import require

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
    def run(
        self,
        shards: Iterable[Shard],
        cfg: WorkerConfig,
        parts_dir: str,
        *,
        on_progress: ProgressFn | None = None,
    ) -> ExecutorResult:
        # Ray prints cluster errors ("(raylet) A worker died ...") on the driver's stdout, which
        # belongs to data (--json for schedulers): send them to stderr for the length of the run.
        with contextlib.redirect_stdout(sys.stderr):
            return self._run(shards, cfg, parts_dir, on_progress)

    def _run(
        self, shards: Iterable[Shard], cfg: WorkerConfig, parts_dir: str, on_progress: ProgressFn | None
    ) -> ExecutorResult:
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
            self.plan = plan = plan_workers(
                ray.cluster_resources(),
                [n["Resources"] for n in ray.nodes() if n.get("Alive")],
                workers=self.workers,
                gpus_per_worker=self.gpus_per_worker,
            )
            st["plan"] = dataclasses.asdict(plan)
            wcfg = dataclasses.replace(cfg, decode_threads=plan.cpus_per_worker, infer_threads=plan.cpus_per_worker)
            remote_cls = ray.remote(ShardActor).options(
                num_cpus=plan.cpus_per_worker,
                num_gpus=plan.gpus_per_worker,
                max_restarts=0,
                max_task_retries=0,
            )
            self._scheduler = RayScheduler(
                ray,
                remote_cls,
                (wcfg, self.worker_factory),
                parts_dir,
                plan,
                RetryPolicy(self.max_shard_retries, res),
                inflight_per_worker=self.inflight_per_worker,
                startup_timeout=self.startup_timeout,
                stats=st,
                on_progress=on_progress,
                t0=t0,
            )
            self._scheduler.run(iter(shards))
        finally:
            self._kill_actors(ray)
            if started:
                t = time.perf_counter()
                ray.shutdown()
                st["shutdown_seconds"] = time.perf_counter() - t
        return res

    def _kill_actors(self, ray: Any) -> None:
        for slot in self.slots:
            with contextlib.suppress(Exception):  # already dead
                ray.kill(slot.handle)  # frees its GPU at once, even when Ray outlives this run
        self._scheduler = None


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
    from .._deps import require

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


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1
