"""Measurements in child processes (`python -m octbatch.bench --child SPEC.json`): one fresh process per
run, so peak RSS is measured per configuration (the RSS of the child's whole process tree: worker
processes and Ray daemons included) and one method's threads, caches or Ray processes never leak into
the next one's numbers. This module holds the parent side (spawn, wait, read the result) and the child
side (run one method, sample RSS, write the result); the methods are `octbatch run`, discovery, and the
baselines (octbatch.bench.baselines)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace

from ..machine import TreeRssSampler, peak_rss_self_mb, read_text

__all__ = ["ThreadSplitExecutor", "run_child", "spawn"]


def spawn(spec: dict, timeout: float) -> tuple[dict, float]:
    """Run one child measurement; returns (its result, the peak RSS in MiB of its process tree)."""
    with tempfile.TemporaryDirectory(prefix="octbatch-bench-child-") as tmp:
        spec_path = os.path.join(tmp, "spec.json")
        spec = {**spec, "result": os.path.join(tmp, "result.json")}
        with open(spec_path, "w") as f:
            json.dump(spec, f)
        log_path = os.path.join(tmp, "child.log")
        with open(log_path, "w") as logf:
            p = subprocess.Popen(
                [sys.executable, "-m", "octbatch.bench", "--child", spec_path], stdout=logf, stderr=subprocess.STDOUT
            )
            deadline = time.monotonic() + timeout
            while True:
                pid, status, ru = os.wait4(p.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() > deadline:
                    p.kill()
                    pid, status, ru = os.wait4(p.pid, 0)
                    break
                time.sleep(0.05)
            p.returncode = os.waitstatus_to_exitcode(status)
            del ru
        try:
            with open(spec["result"]) as f:
                res = json.load(f)
        except (OSError, ValueError):
            tail = read_text(log_path)[-1500:]
            res = {"error": f"child exited {p.returncode}: {tail.strip()}"}
        return res, float(res.get("peak_rss_tree_mb") or 0.0)


def run_child(spec_path: str) -> None:
    with open(spec_path) as f:
        spec = json.load(f)
    fn = _children()[spec["method"]]
    with TreeRssSampler() as sampler:
        try:
            res = fn(spec)
        except Exception as exc:  # noqa: BLE001 - reported as the row's error, the bench goes on
            import traceback

            res = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=5)}
    res["peak_rss_self_mb"] = peak_rss_self_mb()  # the main process alone
    res["peak_rss_tree_mb"] = max(sampler.peak_mb, res["peak_rss_self_mb"])  # with its worker processes
    with open(spec["result"], "w") as f:
        json.dump(res, f, default=str)


def _child_octbatch(spec: dict) -> dict:
    from ..config import RunConfig
    from ..pipeline import run

    cfg = RunConfig(
        archive=spec["archive"],
        out=spec["out"],
        model=spec.get("model"),
        engine=spec.get("engine"),
        batch_size=spec["batch_size"],
        threads=spec["threads"],
        executor=spec.get("executor", "local"),
        overwrite=True,
        decoder=spec.get("decoder", "auto"),
        **spec.get("run_kw", {}),
    )
    executor = _experiment_executor(spec.get("patch"))
    t0 = time.perf_counter()
    s = run(cfg, executor=executor)
    dt = time.perf_counter() - t0
    return {
        "files": s.processed,
        "ok": s.ok,
        "errors": s.errors,
        "seconds": dt,
        "img_s": s.processed / dt if dt else 0.0,
        "startup_seconds": s.startup_seconds,
        "run_files_per_second": s.files_per_second,
        "rows": s.rows,
    }


def _experiment_executor(patch: str | None):
    """Benchmark-only experiments, by name: "split:D,I" runs with D decode threads and I inference
    threads (the thread split); None: the executor the run's config names."""
    if not patch:
        return None
    split = None
    for p in patch.split("+"):
        kind, _, arg = p.partition(":")
        if kind != "split":
            raise ValueError(f"unknown patch {p!r}")
        d, i = (int(x) for x in arg.split(","))
        split = (d, i)
    from ..executors import make_executor

    assert split is not None
    return ThreadSplitExecutor(make_executor("local"), decode_threads=split[0], infer_threads=split[1])


class ThreadSplitExecutor:
    """An executor that runs the shards with another one after setting the worker's decode and inference
    thread counts (`octbatch run` gives both every core)."""

    def __init__(self, inner, *, decode_threads: int, infer_threads: int):
        self.inner, self.decode_threads, self.infer_threads = inner, decode_threads, infer_threads

    def run(self, shards, cfg, parts_dir, **kw):
        cfg = replace(cfg, decode_threads=self.decode_threads, infer_threads=self.infer_threads)
        return self.inner.run(shards, cfg, parts_dir, **kw)


def _child_discover(spec: dict) -> dict:
    """Discovery alone (mode=count), or discovery holding the per-file key set `octbatch run` holds
    (mode=keys: the `discovered` set of pipeline.run), to show memory at a million files."""
    from ..archive import discover
    from ..shards import entry_key

    rss0 = peak_rss_self_mb()
    t0 = time.perf_counter()
    n = 0
    keys: set[int] = set()
    hold = spec.get("mode") == "keys"
    for e in discover(spec["archive"]):
        n += 1
        if hold:
            keys.add(entry_key(e.path, e.size, e.mtime_ns // 1000))
    dt = time.perf_counter() - t0
    return {"files": n, "seconds": dt, "files_s": n / dt if dt else 0.0, "rss_before_mb": rss0}


def _children() -> dict:
    from . import baselines

    return {
        "octbatch": _child_octbatch,
        "naive": baselines.child_naive,
        "dataloader": baselines.child_dataloader,
        "ray_data": baselines.child_ray_data,
        "discover": _child_discover,
    }
