"""Resume and incremental-run overhead (issue: exactly-once results).

Builds an archive of N files by hard-linking a few real (or synthetic) scans, runs octbatch once,
then times (a) a rerun where every shard is committed, (b) an incremental run after adding 1% new
files, against (c) the full run. Prints a Markdown table.

    python benchmarks/resume.py --n 100000 [--model M] [--work /tmp/octbatch-resume]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "oct2017"


def build(root: Path, n: int, start: int = 0) -> str:
    srcs = sorted(REAL.glob("*/*.jpeg"))[:200] if REAL.exists() else []
    source = "real OCT2017 scans"
    if not srcs:
        from octbatch.synth import make_archive

        make_archive(root.parent / "src", 100, broken=False)
        srcs = sorted((root.parent / "src").rglob("*.jpeg"))
        source = "synthetic scans"
    for i in range(start, start + n):
        d = root / f"d{i // 1000:04d}"
        d.mkdir(parents=True, exist_ok=True)
        os.link(srcs[i % len(srcs)], d / f"scan-{i:07d}.jpeg")
    return source


def timed(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--model")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work")
    a = ap.parse_args()
    work = Path(a.work or tempfile.mkdtemp(prefix="octbatch-resume-"))
    shutil.rmtree(work, ignore_errors=True)
    archive = work / "archive"
    source = build(archive, a.n)
    out = work / "results.parquet"
    base = [sys.executable, "-m", "octbatch", "run", str(archive), "--out", str(out), "-q", "--shard-size", "2048"]
    if a.model:
        base += ["--model", a.model]
    full = timed(base)
    resumed = [timed(base) for _ in range(a.repeats)]
    add = max(1, a.n // 100)
    build(archive, add, start=a.n)
    incr = timed(base)
    r = statistics.median(resumed)
    print(
        f"archive: {a.n} files ({source}, hard links), machine: {os.cpu_count()} CPUs, python {sys.version.split()[0]}"
    )
    print("| run | seconds | per 100k files | vs full run |")
    print("|---|---:|---:|---:|")
    print(f"| full run | {full:.1f} | {full / a.n * 1e5:.1f} | 1.00 |")
    print(f"| rerun, everything committed (median of {a.repeats}) | {r:.2f} | {r / a.n * 1e5:.2f} | {r / full:.3f} |")
    print(f"| incremental, +{add} files (1%) | {incr:.2f} | - | {incr / full:.3f} |")
    print(
        f"| incremental minus the all-committed rerun (the 1% itself) | {incr - r:.2f} | - | {(incr - r) / full:.3f} |"
    )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
