"""End-to-end `octbatch run` of two checkouts of octbatch, side by side: wall time and peak RSS, medians.

The two checkouts share one virtual environment (the same onnxruntime, numpy, pyarrow); each run imports
octbatch from its checkout through PYTHONPATH, so only octbatch's own code differs. Runs alternate
A, B, A, B, ... so that load from other processes falls on both alike; the first pair is a warm-up
(page cache, .pyc files) and is not counted.

    python benchmarks/compare_checkouts.py --a /tmp/pre --b . --archive ../shared/data/oct2017 --repeats 5

Prints one JSON object: per checkout the wall times, peak RSS (MiB) and files/s; the ratio b/a of the
median files/s and of the median peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq


def one_run(checkout: Path, archive: str, out: Path, extra: list[str]) -> dict:
    env = dict(os.environ, PYTHONPATH=str(checkout))
    cmd = [sys.executable, "-m", "octbatch", "run", archive, "--out", str(out), "--overwrite", "-q", *extra]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=tempfile.gettempdir(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    rc = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if rc not in (0, 3):
        raise SystemExit(f"{checkout}: octbatch run exited {rc}:\n{err}")
    rows = pq.read_metadata(out).num_rows
    return {"wall_s": wall, "peak_rss_mib": usage.ru_maxrss / 1024, "rows": rows, "files_per_s": rows / wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", required=True, type=Path, help="checkout A (the reference)")
    ap.add_argument("--b", required=True, type=Path, help="checkout B (the candidate)")
    ap.add_argument("--archive", required=True)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path, help="also write the result here")
    ap.add_argument("extra", nargs="*", help="more `octbatch run` options, after --")
    args = ap.parse_args()
    runs: dict[str, list[dict]] = {"a": [], "b": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats + 1):
            for name in ("a", "b"):
                r = one_run(
                    getattr(args, name).resolve(),
                    str(Path(args.archive).resolve()),
                    Path(tmp) / f"{name}.parquet",
                    args.extra,
                )
                if i > 0:
                    runs[name].append(r)
                print(f"{name} #{i}: {r['files_per_s']:.0f} files/s, {r['peak_rss_mib']:.0f} MiB", file=sys.stderr)

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    result = {
        "a": str(args.a),
        "b": str(args.b),
        "archive": args.archive,
        "repeats": args.repeats,
        "runs": runs,
        "median_files_per_s": {n: med(n, "files_per_s") for n in runs},
        "median_peak_rss_mib": {n: med(n, "peak_rss_mib") for n in runs},
        "speed_ratio_b_over_a": med("b", "files_per_s") / med("a", "files_per_s"),
        "rss_ratio_b_over_a": med("b", "peak_rss_mib") / med("a", "peak_rss_mib"),
        "load_average": os.getloadavg(),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
