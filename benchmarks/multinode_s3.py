"""Issue 18 end-to-end numbers, each `octbatch run` a process of its own as a user runs it.

  python benchmarks/multinode_s3.py s3    --scans 600 --repeats 3   # same scans from local disk vs from S3 (moto on loopback)
  python benchmarks/multinode_s3.py nodes --scans 600 --repeats 3   # Ray: one 2-CPU node vs two 1-CPU nodes

s3: the scans are uploaded once to a moto server on 127.0.0.1 (tests/helpers/s3_server.py); local and S3 runs
alternate; files/s is the run's own (`files_per_second`: files / time in the executor, model load
included), medians. nodes: a fresh cluster per configuration (tests/helpers/ray_cluster.py), a first run to
warm the nodes, then `--repeats` runs; files/s and startup_seconds from --json, medians.
Prints one JSON object. The scans are the real OCT2017 ones when ../shared/data/oct2017 exists.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data" / "oct2017"


def make_scans(root: Path, n: int) -> None:
    files = sorted(DATA.rglob("*.jpeg"))[:n] if DATA.is_dir() else []
    if len(files) < n:
        from octbatch.synth import make_archive

        make_archive(root, n, broken=False)
        return
    for src in files:
        dst = root / src.relative_to(DATA)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(src.read_bytes())


def run(args: list[str], env: dict) -> dict:
    p = subprocess.run(
        [sys.executable, "-m", "octbatch", "run", *args, "--json", "-q", "--overwrite"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    if p.returncode not in (0, 3):
        raise RuntimeError(p.stderr[-2000:])
    return json.loads(p.stdout)


def bench_s3(a, tmp: Path) -> dict:

    from tests.helpers.s3_server import moto_server

    src = tmp / "scans"
    make_scans(src, a.scans)
    files = sorted(p for p in src.rglob("*") if p.is_file())
    with moto_server() as srv:
        srv.upload_folder("bench", "scans/", src)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | srv.env()
        res = {"local": [], "s3": []}
        for rep in range(a.repeats):
            for name in ["local", "s3"] if rep % 2 == 0 else ["s3", "local"]:
                archive = str(src) if name == "local" else "s3://bench/scans"
                s = run([archive, "--out", str(tmp / f"{name}.parquet")], env)
                assert s["rows"] == len(files), s
                res[name].append(s["files_per_second"])
        listing = list_memory(srv, a.keys)
    med = {k: statistics.median(v) for k, v in res.items()}
    return {
        "scans": len(files),
        "files_per_s": med,
        "raw": res,
        "s3_over_local": med["s3"] / med["local"],
        "listing": listing,
    }


def list_memory(srv, sizes: list[int]) -> list[dict]:
    """octbatch's own discovery of N keys: time and peak Python heap, for growing N (flat = streaming)."""
    import time
    import tracemalloc
    from concurrent.futures import ThreadPoolExecutor

    from octbatch.archive import discover

    c = srv.client()
    done = 0
    out = []
    os.environ.update(srv.env())
    for n in sorted(sizes):
        with ThreadPoolExecutor(16) as pool:
            list(
                pool.map(
                    lambda i: c.put_object(Bucket="bench", Key=f"many/CNV/CNV-{i}-1.jpeg", Body=b"x"), range(done, n)
                )
            )
        done = n
        tracemalloc.start()
        t = time.perf_counter()
        seen = sum(1 for _ in discover("s3://bench/many"))
        dt = time.perf_counter() - t
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        assert seen == n
        out.append({"keys": n, "seconds": dt, "keys_per_s": n / dt, "peak_python_heap_mib": peak})
    return out


def start_cluster(cpus: list[int]):
    cmd = [sys.executable, str(REPO / "tests" / "helpers" / "ray_cluster.py")]
    for c in cpus:
        cmd += ["--cpus", str(c)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
    )
    ready, _, _ = select.select([proc.stdout], [], [], 180)
    if not ready:
        proc.kill()
        raise RuntimeError("cluster did not start")
    return proc, json.loads(proc.stdout.readline())


def bench_nodes(a, tmp: Path) -> dict:
    src = tmp / "scans"
    make_scans(src, a.scans)
    out = {}
    for name, cpus in (("one node x 2 CPUs", [2]), ("two nodes x 1 CPU", [1, 1])):
        proc, info = start_cluster(cpus)
        try:
            env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")} | {
                "RAY_AUTH_MODE": "disabled",
                "RAY_USAGE_STATS_ENABLED": "0",
            }
            args = [str(src), "--out", str(tmp / "n.parquet"), "--ray-address", info["address"], "--workers", "2"]
            if a.model:
                args += ["--model", a.model]
            run(args, env)  # warm-up: worker processes and page cache
            runs = [run(args, env) for _ in range(a.repeats)]
        finally:
            proc.stdin.close()
            proc.wait(timeout=120)
        out[name] = {
            "files_per_s": statistics.median(r["files_per_second"] for r in runs),
            "startup_s": statistics.median(r["startup_seconds"] for r in runs),
            "wall_s": statistics.median(r["seconds"] for r in runs),
            "nodes_used": len(set(runs[0]["worker_nodes"].values())),
            "raw_files_per_s": [r["files_per_second"] for r in runs],
        }
    one, two = out["one node x 2 CPUs"], out["two nodes x 1 CPU"]
    out["two_over_one_files_per_s"] = two["files_per_s"] / one["files_per_s"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["s3", "nodes"])
    ap.add_argument("--scans", type=int, default=600)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default=None, help="[default: the shipped model]")
    ap.add_argument(
        "--keys", type=int, nargs="*", default=[2000, 10000], help="s3: key counts for the listing-memory check"
    )
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        res = bench_s3(a, Path(tmp)) if a.what == "s3" else bench_nodes(a, Path(tmp))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
