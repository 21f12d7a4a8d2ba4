"""plan_workers: how many Ray actors and what each asks for, a pure function of the nodes' resources.

Every actor must fit on one node: a request no node can hold would wait forever in Ray's queue, so it
fails here, at once, with the nodes' sizes in the message."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import OctbatchError

__all__ = ["WorkerPlan", "plan_workers"]


@dataclass(frozen=True)
class WorkerPlan:
    workers: int
    gpus_per_worker: float
    cpus_per_worker: int  # reserved from Ray and used as the worker's decode/infer threads


def plan_workers(cluster: dict, nodes: list[dict], *, workers: int | None, gpus_per_worker: float | None) -> WorkerPlan:
    """How many actors, and what each asks Ray for, sized so that every actor fits on one node.

    `nodes` are the alive nodes' total resources. A request no single node can hold (2 CPUs per actor
    on 1-CPU nodes, 2 GPUs per actor on 1-GPU nodes, more actors than the nodes have room for) would
    wait forever in Ray's queue: it fails here, at once, with the nodes' sizes in the message.
    gpus_per_worker None (or negative) means "not given": 1 when the cluster has GPUs, else CPU actors.
    """
    total_gpus = float(cluster.get("GPU", 0))
    gpw = (1.0 if total_gpus else 0.0) if gpus_per_worker is None or gpus_per_worker < 0 else float(gpus_per_worker)
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
        return _plan_gpu(nodes, workers, gpw)
    return _plan_cpu(nodes, workers)


def _plan_gpu(nodes: list[dict], workers: int | None, gpw: float) -> WorkerPlan:
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


def _plan_cpu(nodes: list[dict], workers: int | None) -> WorkerPlan:
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
