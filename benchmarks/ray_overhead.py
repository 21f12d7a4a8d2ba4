"""What Ray costs octbatch: fixed start-up, throughput against the local executor, and the driver's
cost per shard (can one driver feed 64 GPUs?).

    python benchmarks/ray_overhead.py [--scans 2000] [--repeats 3] [--shards 2000] [--json out.json]

Three measurements, side by side in one process:
  1. end to end on the same archive and model: local executor vs `--executor ray` starting its own
     Ray (the laptop path) vs Ray already running (a cluster); alternated, medians.
  2. Ray's fixed cost split: ray.init, actors ready (model loaded), shutdown.
  3. the driver alone: no-op actors that return a summary at once, fed real 2,048-file shards, so
     the time is the driver's (pickling the shard, submit, ray.wait, bookkeeping) plus Ray's round
     trip. 64 GPUs at ~10k scans/s each with 2,048-scan shards need ~320 shards/s.
The model is the shipped one when present, else a generated 1x128x128 ONNX classifier.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_linked_archive(root: Path, n: int) -> Path:
    """n scans cheaply: 100 synthetic scans hard-linked under n names (decode cost is per file read)."""
    from octbatch.synth import make_archive

    src = root.parent / "src"
    make_archive(src, 100, broken=False)
    scans = sorted(src.rglob("*.jpeg"))
    for i in range(n):
        cls = ("CNV", "DME", "DRUSEN", "NORMAL")[i % 4]
        d = root / cls
        d.mkdir(parents=True, exist_ok=True)
        os.link(scans[i % len(scans)], d / f"{cls}-{3000 + i // 10}-{i}.jpeg")
    return root


def pick_model(tmp: Path) -> tuple[str, str]:
    shipped = REPO / "octbatch" / "models" / "oct4-default.onnx"
    if shipped.exists():
        return str(shipped), "shipped oct4-default.onnx"
    from tests.helpers.modelgen import tiny_classifier

    return tiny_classifier(
        tmp / "m128.onnx", classes=("CNV", "DME", "DRUSEN", "NORMAL"), size=128
    ), "generated 1x128x128 conv+GAP (no shipped model yet)"


def end_to_end(archive: Path, model: str, tmp: Path, mode: str, shard_size: int) -> dict:
    import ray

    from octbatch.config import RunConfig
    from octbatch.executors import LocalExecutor, RayExecutor
    from octbatch.executors.ray import start_local_ray
    from octbatch.pipeline import run

    out = tmp / f"out-{mode}-{time.time_ns()}.parquet"
    try:
        cfg = RunConfig(
            archive=str(archive),
            out=str(out),
            model=model,
            shard_size=shard_size,
            executor="local" if mode == "local" else "ray",
            workers=2 if mode != "local" else None,
            gpus_per_worker=-1.0,
        )
        if mode == "ray-running" and not ray.is_initialized():
            start_local_ray(os.cpu_count())
        if mode == "ray-start" and ray.is_initialized():
            ray.shutdown()
        # Built here (as the pipeline would from cfg) so that its stats can be read afterwards.
        ex = (
            LocalExecutor(cfg.max_shard_retries)
            if mode == "local"
            else RayExecutor(
                workers=cfg.workers, gpus_per_worker=cfg.gpus_per_worker, max_shard_retries=cfg.max_shard_retries
            )
        )
        t0 = time.perf_counter()
        s = run(cfg, executor=ex)
        wall = time.perf_counter() - t0
    finally:
        shutil.rmtree(str(out) + ".parts", ignore_errors=True)
        for p in (out, Path(str(out) + ".lock")):
            p.unlink(missing_ok=True)
    st = getattr(ex, "stats", {})
    steady = s.processed / max(1e-9, wall - s.startup_seconds)
    return {
        "mode": mode,
        "wall_s": wall,
        "files": s.processed,
        "files_per_s": s.processed / wall,
        "startup_s": s.startup_seconds,
        "steady_files_per_s": steady,
        "init_s": st.get("init_seconds"),
        "driver_busy_s": st.get("driver_busy_seconds"),
        "shards": st.get("shards"),
        "workers": len(s.workers),
    }


class NoopWorker:
    """Stands in for ShardWorker inside each actor: answers at once, so only the driver, the actor's
    unpacking of the shard and Ray's round trip are timed."""

    def __init__(self, cfg):
        self.name = f"noop:{os.getpid()}"

    def __call__(self, shard, parts_dir, on_progress=None, next_shard=None):
        from octbatch.worker import ShardSummary

        return ShardSummary(shard.id, len(shard), len(shard), 0, 0.0, "", self.name)

    def close(self):
        pass


def driver_cost(n_shards: int, shard_files: int, workers: int, inflight: int) -> dict:
    import ray

    from octbatch.archive import FileEntry
    from octbatch.executors import RayExecutor
    from octbatch.executors.packing import pack_shard
    from octbatch.executors.ray import start_local_ray
    from octbatch.shards import Shard
    from octbatch.worker import WorkerConfig

    entries = [
        FileEntry(
            f"CNV/batch{i // 500:04d}/CNV-{100000 + i // 10}-{i}.jpeg",
            f"/archive/CNV/batch{i // 500:04d}/CNV-{100000 + i // 10}-{i}.jpeg",
            48_000 + i,
            1_700_000_000_000_000_000 + i,
        )
        for i in range(shard_files)
    ]
    pickled = len(pickle.dumps(pack_shard(Shard("x" * 20, entries)), protocol=5))

    def shards():
        for k in range(n_shards):
            yield Shard(f"{k:020x}", entries)

    if ray.is_initialized():
        ray.shutdown()
    # Logical CPUs beyond the 2 real ones, so that `workers` no-op actors fit (they hardly run).
    start_local_ray(max(2, workers))
    try:
        ex = RayExecutor(workers=workers, gpus_per_worker=0, inflight_per_worker=inflight, worker_factory=NoopWorker)
        done = [0]
        t_first = [None]

        def on_progress(n, e):
            if t_first[0] is None:
                t_first[0] = time.perf_counter()
            done[0] += 1

        t0 = time.perf_counter()
        res = ex.run(shards(), WorkerConfig(), "/nonexistent", on_progress=on_progress)
        wall = time.perf_counter() - t0
        loop = time.perf_counter() - t_first[0]
    finally:
        ray.shutdown()
    assert len(res.summaries) == n_shards
    st = ex.stats
    return {
        "workers": workers,
        "inflight_per_worker": inflight,
        "shards": n_shards,
        "shard_files": shard_files,
        "shard_pickle_bytes": pickled,
        "wall_s": wall,
        "shards_per_s_after_first": (n_shards - 1) / loop,
        "driver_busy_ms_per_shard": 1000 * st["driver_busy_seconds"] / n_shards,
        "driver_capacity_shards_per_s": n_shards / st["driver_busy_seconds"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scans", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--shard-size", type=int, default=256)
    ap.add_argument("--shards", type=int, default=2000, help="no-op shards for the driver measurement")
    ap.add_argument("--driver-only", action="store_true", help="only the no-op driver measurement")
    ap.add_argument("--json", help="also write the raw results here")
    args = ap.parse_args()

    import onnxruntime
    import pyarrow
    import ray

    import octbatch

    tmp = Path(tempfile.mkdtemp(prefix="octbatch-raybench-"))
    try:
        archive = make_linked_archive(tmp / "archive", args.scans)
        model, model_desc = pick_model(tmp)
        runs = []
        if not args.driver_only:
            end_to_end(archive, model, tmp, "local", args.shard_size)  # warm-up: page cache, imports
        for _ in range(0 if args.driver_only else args.repeats):
            for mode in ("local", "ray-start", "ray-running"):
                r = end_to_end(archive, model, tmp, mode, args.shard_size)
                runs.append(r)
                print(json.dumps(r), flush=True)
        if ray.is_initialized():
            t = time.perf_counter()
            ray.shutdown()
            shutdown_s = time.perf_counter() - t
        else:
            shutdown_s = None
        from octbatch.archive import discover
        from octbatch.shards import make_shards

        t = time.perf_counter()
        n_disc = sum(len(sh) for sh in make_shards(discover(str(archive)), 2048))
        discovery_files_per_s = n_disc / (time.perf_counter() - t)  # page cache warm: the driver's own ceiling
        drivers = []
        for workers, inflight in ((2, 2), (8, 2)):
            d = driver_cost(args.shards, 2048, workers, inflight)
            drivers.append(d)
            print(json.dumps(d), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def med(mode, key):
        vals = [r[key] for r in runs if r["mode"] == mode and r[key] is not None]
        return statistics.median(vals) if vals else float("nan")

    summary = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "versions": {
            "octbatch": octbatch.__version__,
            "ray": ray.__version__,
            "onnxruntime": onnxruntime.__version__,
            "pyarrow": pyarrow.__version__,
        },
        "model": model_desc,
        "scans": args.scans,
        "shard_size": args.shard_size,
        "repeats": args.repeats,
        "median": {
            m: {k: med(m, k) for k in ("wall_s", "files_per_s", "startup_s", "steady_files_per_s", "init_s")}
            for m in ("local", "ray-start", "ray-running")
        },
        "ray_shutdown_s": shutdown_s,
        "discovery_files_per_s": discovery_files_per_s,
        "driver": drivers,
        "runs": runs,
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
