"""A fake `ray` module for the unit tests of the Ray executor: actors are plain objects in this
process and every call is answered when it is made, so a test of RayScheduler or RayExecutor runs
with no cluster, no processes and no waiting.

    fake = FakeRay()                 # pass it to RayScheduler, or monkeypatch.setitem(sys.modules, "ray", fake)
    handle = fake.remote(ShardActor).options(num_cpus=1).remote(cfg, worker_factory)

An actor dies (as its process would: every call queued on it fails with RayActorError) when its
method raises ActorDies, or when the test calls fake.kill(handle). Any other exception comes back
as RayTaskError with the exception as its `cause`, as Ray does. `hang_ready=True` makes actors
that never answer ready() (a cluster with no room for them).
"""

from __future__ import annotations

import itertools
import types
from dataclasses import dataclass, field
from typing import Any


class RayError(Exception):
    pass


class RayTaskError(RayError):
    def __init__(self, cause: BaseException):
        super().__init__(f"ray::ShardActor failed\n{type(cause).__name__}: {cause}")
        self.cause = cause


class RayActorError(RayError):
    pass


class GetTimeoutError(RayError):
    pass


class ActorUnschedulableError(RayError):
    pass


class ActorDies(BaseException):
    """Raised by a fake worker to end its actor's 'process' in the middle of a call."""


_ids = itertools.count()


@dataclass(eq=False)
class FakeRef:
    value: Any = None
    error: BaseException | None = None
    pending: bool = False
    id: int = field(default_factory=lambda: next(_ids))


class _Method:
    def __init__(self, handle: FakeHandle, name: str):
        self.handle, self.name = handle, name

    def remote(self, *args: Any) -> FakeRef:
        h = self.handle
        h.calls.append((self.name, args))
        if self.name == "ready" and h.ray.hang_ready:
            return FakeRef(pending=True)
        if h.dead is not None:
            return FakeRef(error=RayActorError(f"The actor died unexpectedly before finishing this task. {h.dead}"))
        try:
            if h.actor is None:
                raise RuntimeError("actor was not built")
            return FakeRef(value=getattr(h.actor, self.name)(*args))
        except ActorDies as exc:
            h.dead = f"exit reason: {exc}"
            return FakeRef(error=RayActorError(f"The actor died unexpectedly before finishing this task. {h.dead}"))
        except Exception as exc:  # noqa: BLE001 - what Ray hands back as RayTaskError
            return FakeRef(error=RayTaskError(exc))


class FakeHandle:
    def __init__(self, ray: FakeRay, cls: type, args: tuple):
        self.ray = ray
        self.calls: list = []
        self.dead: str | None = None
        self.actor = None
        try:
            self.actor = cls(*args)
        except Exception as exc:  # noqa: BLE001 - an actor whose __init__ raised is dead from the start
            self.dead = f"the actor's __init__ raised {type(exc).__name__}: {exc}"

    def __getattr__(self, name: str) -> _Method:
        if name.startswith("_"):
            raise AttributeError(name)
        return _Method(self, name)


class _RemoteClass:
    def __init__(self, ray: FakeRay, cls: type, options: dict | None = None):
        self.ray, self.cls, self.opts = ray, cls, options or {}

    def options(self, **kw: Any) -> _RemoteClass:
        return _RemoteClass(self.ray, self.cls, {**self.opts, **kw})

    def remote(self, *args: Any) -> FakeHandle:
        handle = FakeHandle(self.ray, self.cls, args)
        self.ray.actors.append(handle)
        return handle


class FakeRay(types.ModuleType):
    exceptions = types.SimpleNamespace(
        RayError=RayError,
        RayTaskError=RayTaskError,
        RayActorError=RayActorError,
        GetTimeoutError=GetTimeoutError,
        ActorUnschedulableError=ActorUnschedulableError,
    )

    def __init__(self, cpus: float = 2.0, gpus: float = 0.0, *, hang_ready: bool = False):
        super().__init__("ray")
        self.resources = {"CPU": cpus, **({"GPU": gpus} if gpus else {})}
        self.hang_ready = hang_ready
        self.actors: list[FakeHandle] = []
        self.killed: list[FakeHandle] = []
        self.waits: list[float | None] = []  # the timeout of each blocking wait
        self.shutdowns = 0

    # -- what octbatch calls -------------------------------------------------------------------------
    def is_initialized(self) -> bool:
        return True

    def cluster_resources(self) -> dict:
        return dict(self.resources)

    def nodes(self) -> list[dict]:
        return [{"Alive": True, "Resources": dict(self.resources)}]

    def remote(self, cls: type) -> _RemoteClass:
        return _RemoteClass(self, cls)

    def wait(self, refs: list, num_returns: int = 1, timeout: float | None = None) -> tuple[list, list]:
        if timeout != 0:
            self.waits.append(timeout)
        done = [r for r in refs if not r.pending][:num_returns]
        return done, [r for r in refs if r not in done]

    def get(self, ref: FakeRef, timeout: float | None = None) -> Any:
        if ref.error is not None:
            raise ref.error
        return ref.value

    def kill(self, handle: FakeHandle) -> None:
        handle.dead = handle.dead or "killed by ray.kill"
        self.killed.append(handle)

    def shutdown(self) -> None:
        self.shutdowns += 1

    def get_runtime_context(self) -> Any:
        return types.SimpleNamespace(get_node_id=lambda: "node-1")
