"""A multi-node Ray cluster on 127.0.0.1 for tests, in a process of its own.

    python tests/helpers/ray_cluster.py --cpus 1 --cpus 1 [--token TOKEN]

starts a head (the first --cpus) and one more node per further --cpus, each a raylet of its own
(ray.cluster_utils.Cluster, dashboard off), prints one JSON line {"address", "nodes": [{"node_id",
"raylet_pid", "head"}]}, and shuts the whole cluster down when its stdin closes. Running it apart
from pytest keeps Ray's token settings and processes out of the test process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cpus", type=int, action="append", required=True)
    ap.add_argument("--token", default=None, help="turn on Ray's token authentication with this token")
    a = ap.parse_args()
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # bind to 127.0.0.1, not the machine's IP
    if a.token:
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ["RAY_AUTH_TOKEN"] = a.token
    else:
        os.environ["RAY_AUTH_MODE"] = "disabled"
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        connect=False,
        head_node_args={"num_cpus": a.cpus[0], "include_dashboard": False, "object_store_memory": 100 * 2**20},
    )
    nodes = [cluster.head_node] + [cluster.add_node(num_cpus=c, object_store_memory=100 * 2**20) for c in a.cpus[1:]]
    cluster.wait_for_nodes()
    info = {
        "address": cluster.address,
        "nodes": [
            {
                "node_id": n.node_id,
                "raylet_pid": n.all_processes["raylet"][0].process.pid,
                "head": n is cluster.head_node,
            }
            for n in nodes
        ],
    }
    print(json.dumps(info), flush=True)
    try:
        sys.stdin.read()  # until the test closes our stdin (or dies)
    finally:
        for n in nodes[1:]:
            try:
                cluster.remove_node(n, allow_graceful=False)
            except Exception:  # noqa: BLE001 - a node the test killed is gone already
                pass
        cluster.shutdown()


if __name__ == "__main__":
    main()
