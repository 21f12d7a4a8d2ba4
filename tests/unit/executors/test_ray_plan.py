"""plan_workers: a pure function of the nodes' resources (moved here from tests/integration/test_ray.py)."""

import pytest

from octbatch.errors import OctbatchError
from octbatch.executors.ray_plan import WorkerPlan, plan_workers


def test_worker_plan_one_actor_per_gpu_and_cpu_slots_otherwise():
    # A CPU-only head and two 8-GPU nodes: 16 actors, 1 GPU and the GPU nodes' 2 CPUs per GPU each.
    nodes = [{"CPU": 64.0}, {"CPU": 16.0, "GPU": 8.0}, {"CPU": 16.0, "GPU": 8.0}]
    cluster = {"CPU": 96.0, "GPU": 16.0}
    assert plan_workers(cluster, nodes, workers=None, gpus_per_worker=None) == WorkerPlan(16, 1.0, 2)
    assert plan_workers(cluster, nodes, workers=4, gpus_per_worker=0.5) == WorkerPlan(4, 0.5, 1)
    # No GPUs: CPU actors, one per 2 CPUs unless --workers says otherwise.
    assert plan_workers({"CPU": 8.0}, [{"CPU": 8.0}], workers=None, gpus_per_worker=None) == WorkerPlan(4, 0.0, 2)
    assert plan_workers({"CPU": 2.0}, [{"CPU": 2.0}], workers=2, gpus_per_worker=None) == WorkerPlan(2, 0.0, 1)
    with pytest.raises(OctbatchError, match="has no GPUs"):
        plan_workers({"CPU": 8.0}, [{"CPU": 8.0}], workers=None, gpus_per_worker=1.0)


def test_workers_are_sized_per_node_and_requests_no_node_holds_fail_at_once():
    """Issue 18: two 1-CPU nodes used to get 1 worker x 2 CPUs (the cluster's total), which no node can
    hold, and the run waited 600 s. Now each actor fits on one node, and what cannot fit fails here."""
    two_small = [{"CPU": 1.0}, {"CPU": 1.0}]
    assert plan_workers({"CPU": 2.0}, two_small, workers=None, gpus_per_worker=None) == WorkerPlan(2, 0.0, 1)
    assert plan_workers({"CPU": 2.0}, two_small, workers=1, gpus_per_worker=None) == WorkerPlan(1, 0.0, 1)
    with pytest.raises(
        OctbatchError,
        match=r"--workers 3 do not fit .* 2 worker\(s\) of 1 CPU\(s\) each \(nodes: 1 CPU/0 GPU, 1 CPU/0 GPU\)",
    ):
        plan_workers({"CPU": 2.0}, two_small, workers=3, gpus_per_worker=None)
    # Uneven nodes: 2 CPUs per actor where a node has them; --workers N takes the most CPUs that still fit.
    uneven = [{"CPU": 4.0}, {"CPU": 3.0}]
    assert plan_workers({"CPU": 7.0}, uneven, workers=None, gpus_per_worker=None) == WorkerPlan(3, 0.0, 2)
    assert plan_workers({"CPU": 7.0}, uneven, workers=2, gpus_per_worker=None) == WorkerPlan(2, 0.0, 3)
    assert plan_workers({"CPU": 7.0}, uneven, workers=5, gpus_per_worker=None) == WorkerPlan(5, 0.0, 1)
    # GPUs: 2 per actor on 1-GPU nodes cannot be placed; 0.5 per actor packs two on each GPU.
    gpu_nodes = [{"CPU": 8.0, "GPU": 1.0}, {"CPU": 8.0, "GPU": 1.0}]
    with pytest.raises(OctbatchError, match="--gpus-per-worker 2 does not fit on any node"):
        plan_workers({"CPU": 16.0, "GPU": 2.0}, gpu_nodes, workers=None, gpus_per_worker=2.0)
    assert plan_workers({"CPU": 16.0, "GPU": 2.0}, gpu_nodes, workers=None, gpus_per_worker=0.5) == WorkerPlan(
        4, 0.5, 4
    )
    with pytest.raises(OctbatchError, match="--workers 3 do not fit"):
        plan_workers({"CPU": 16.0, "GPU": 2.0}, gpu_nodes, workers=3, gpus_per_worker=1.0)


def test_bad_requests_fail_with_what_to_do():
    with pytest.raises(OctbatchError) as err:
        plan_workers({"CPU": 4.0}, [{"CPU": 4.0}], workers=0, gpus_per_worker=None)
    assert (err.value.what, err.value.fix) == (
        "--workers 0 must be at least 1",
        "Leave it out for one worker per GPU (or per 2 CPUs).",
    )
    with pytest.raises(OctbatchError) as err:
        plan_workers({}, [{"CPU": 0.0}], workers=None, gpus_per_worker=0.0)
    assert (err.value.what, err.value.fix) == (
        "the Ray cluster reports no CPUs",
        "Check the cluster with `ray status`.",
    )
