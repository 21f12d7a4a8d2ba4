"""Where the Ray executor used to live; it is now octbatch.executors.ray (with ray_plan, ray_scheduler and
packing beside it). These names stay importable from here for recipes and notebooks that use them."""

from __future__ import annotations

from .executors.packing import pack_shard, unpack_shard
from .executors.ray import RayExecutor, ShardActor, start_local_ray
from .executors.ray_plan import WorkerPlan, plan_workers

__all__ = ["RayExecutor", "ShardActor", "WorkerPlan", "pack_shard", "plan_workers", "start_local_ray", "unpack_shard"]
