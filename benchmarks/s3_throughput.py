"""End to end from S3 vs from local disk, and where the S3 run's time goes (issue 18: >= 0.8x).

    python benchmarks/s3_throughput.py --scans 600 --repeats 5 [--baseline DIR]

The same real scans on local disk and in a moto bucket on 127.0.0.1 (tests/helpers/s3_server.py); each
`octbatch run` is a process of its own (shipped model, local executor, defaults); the configurations
alternate (rotated each repeat), medians of the run's own files/s. `--baseline DIR` adds an S3 run
with the octbatch of another checkout (e.g. `git archive` of the commit before a change) on the same
server. For each run it records the CPU seconds the octbatch process used and the CPU seconds the
moto server used meanwhile (from /proc), which tells the server's share of a 2-core machine.
`--server canned` serves the objects from memory instead (benchmarks/s3_canned.py, in this process):
what octbatch's S3 path costs when the server is not the bottleneck.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def cpu_of(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_run(archive: str, out: Path, env: dict, server_pid: int) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    s0, t0 = cpu_of(server_pid), time.perf_counter()
    p = subprocess.run(
        [sys.executable, "-m", "octbatch", "run", archive, "--out", str(out), "--json", "-q", "--overwrite"],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    wall, server_cpu = time.perf_counter() - t0, cpu_of(server_pid) - s0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode not in (0, 3):
        raise RuntimeError(p.stderr[-2000:])
    s = json.loads(p.stdout)
    return {
        "files_per_second": s["files_per_second"],
        "wall_s": round(wall, 2),
        "octbatch_cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 2),
        "server_cpu_s": round(server_cpu, 2),
        "rows": s["rows"],
    }


def main() -> None:

    from multinode_s3 import make_scans

    from tests.helpers.s3_server import moto_server

    ap = argparse.ArgumentParser()
    ap.add_argument("--scans", type=int, default=600)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--baseline", help="another checkout's root: its octbatch reads S3 as a third configuration")
    ap.add_argument("--server", choices=["moto", "canned"], default="moto")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as td, contextlib.ExitStack() as stack:
        tmp = Path(td)
        src = tmp / "scans"
        make_scans(src, a.scans)
        files = sorted(p for p in src.rglob("*") if p.is_file())
        if a.server == "canned":
            from s3_canned import CannedS3

            objects = {f"scans/{p.relative_to(src)}": p.read_bytes() for p in files}
            srv: Any = stack.enter_context(CannedS3({"bench": objects}))
            server_pid = os.getpid()
        else:
            srv = stack.enter_context(moto_server())
            server_pid = srv.pid
            srv.upload_folder("bench", "scans/", src)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | srv.env()
        configs = {"local": (str(src), env), "s3": ("s3://bench/scans", env)}
        if a.baseline:
            configs["s3_baseline"] = ("s3://bench/scans", env | {"PYTHONPATH": os.path.abspath(a.baseline)})
        names = list(configs)
        res: dict[str, list[dict]] = {n: [] for n in names}
        for r in range(a.repeats):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                archive, e = configs[name]
                got = one_run(archive, tmp / f"{name}.parquet", e, server_pid)
                assert got["rows"] == len(files), got
                res[name].append(got)
                print(f"# {r} {name}: {got}", file=sys.stderr)
    med = {n: {k: statistics.median(x[k] for x in rs) for k in rs[0] if k != "rows"} for n, rs in res.items()}
    out = {
        "server": a.server,
        "scans": len(files),
        "median": med,
        "files_per_second_runs": {n: [x["files_per_second"] for x in rs] for n, rs in res.items()},
        "s3_over_local": round(med["s3"]["files_per_second"] / med["local"]["files_per_second"], 3),
    }
    if a.baseline:
        out["s3_baseline_over_local"] = round(
            med["s3_baseline"]["files_per_second"] / med["local"]["files_per_second"], 3
        )
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
