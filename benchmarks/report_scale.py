"""`octbatch report` on a large results table (issue 16): seconds and peak RSS, text and HTML.

Writes a synthetic table with octbatch's own schema (Kermany-like paths, labels, patient ids, 1% unreadable
rows with a few messages, zstd, 65,536-row groups), then times in fresh child processes, median of --repeats:
  old text   the previous `summarize` (whole table through to_pylist), taken from git (main:octbatch/report.py)
  new text   octbatch.report.summarize, the same driver (streaming aggregation)
  cli text   `octbatch report T` (the command: click and the CLI's imports on top)
  cli html   `octbatch report T --html R --referrals C` (aggregation + charts + referral CSV; no archive -> no scans)
Peak RSS is the child's ru_maxrss; CPU seconds (user + sys) are printed too, since on a shared machine wall
time follows the load more than the code. Prints a Markdown table.

    python benchmarks/report_scale.py --rows 1000000 [--patients 60000] [--repeats 3] [--work /tmp/octbatch-report]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["CNV", "DME", "DRUSEN", "NORMAL"]


def make_table(path: Path, rows: int, patients: int, seed: int = 0) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from octbatch.results import COMPRESSION, make_schema

    rng = np.random.default_rng(seed)
    md = {
        "classes": CLASSES,
        "model_sha256": "0" * 64,
        "model_path": "oct4-default.onnx",
        "octbatch_version": "bench",
        "archive_root": "/nonexistent/archive",
        "written_at": "2026-12-02T00:00:00+00:00",
    }
    schema = make_schema(CLASSES, md)
    chunk = 65536
    with pq.ParquetWriter(path, schema, compression=COMPRESSION, write_statistics=True) as w:
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            lab = rng.integers(0, 4, n)
            right = rng.random(n) < 0.85
            pred = np.where(right, lab, (lab + rng.integers(1, 4, n)) % 4)
            logits = rng.normal(0, 1, (n, 4)).astype(np.float32)
            logits[np.arange(n), pred] += 2.5
            probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
            pid = rng.integers(0, patients, n) + 1_000_000
            err = rng.random(n) < 0.01
            msgs = np.array(
                [
                    "truncated JPEG (premature end)",
                    "empty file (0 bytes)",
                    "not a recognised image (expected JPEG, PNG or TIFF)",
                ]
            )
            cls = np.array(CLASSES)
            paths = [f"{cls[lab[i]]}/{cls[lab[i]]}-{pid[i]}-{start + i}.jpeg" for i in range(n)]
            status = np.where(err, "error", "ok")
            conf = probs.max(1)
            t = {
                "path": paths,
                "bytes": np.full(n, 30000),
                "mtime": np.zeros(n, "int64"),
                "label": cls[lab].tolist(),
                "patient_id": pid.astype(str).tolist(),
                "image_no": np.arange(start, start + n, dtype=np.int32),
                "pred": pa.array(cls[pred], mask=err),
                "confidence": pa.array(conf, mask=err),
                **{f"p_{c}": pa.array(probs[:, j], mask=err) for j, c in enumerate(CLASSES)},
                "status": status.tolist(),
                "error": pa.array(msgs[rng.integers(0, 3, n)], mask=~err),
                "width": np.full(n, 512, np.int32),
                "height": np.full(n, 496, np.int32),
                "model_sha256": ["0" * 64] * n,
                "backend": ["onnxruntime"] * n,
                "precision": ["fp32"] * n,
                "decoder": ["cpu"] * n,
                "run_id": ["bench"] * n,
                "processed_at": np.zeros(n, "int64"),
            }
            w.write_table(pa.Table.from_pydict(t, schema=schema), row_group_size=chunk)


OLD_DRIVER = """
import sys, types
src = sys.stdin.read().replace("from .errors import", "from octbatch.errors import").replace("from .results import", "from octbatch.results import")
m = types.ModuleType("old_report"); exec(compile(src, "old_report.py", "exec"), m.__dict__)
print(m.render_text(m.summarize(sys.argv[1]))[:80])
"""


def measure(cmd, repeats, stdin=None):
    secs, rss, cpu = [], [], []
    for _ in range(repeats):
        # a fresh interpreter per measurement, so that RUSAGE_CHILDREN is this run's alone
        probe = [
            sys.executable,
            "-c",
            "import resource, subprocess, sys, time; t=time.perf_counter(); "
            "p=subprocess.run(sys.argv[1:], input=sys.stdin.buffer.read() or None, capture_output=True); "
            "assert p.returncode == 0, p.stderr.decode()[-2000:]; "
            "u=resource.getrusage(resource.RUSAGE_CHILDREN); "
            "print(time.perf_counter()-t, u.ru_maxrss / 1024, u.ru_utime + u.ru_stime)",
            *cmd,
        ]
        out = subprocess.run(probe, input=stdin or b"", capture_output=True, check=True).stdout.decode().split()
        secs.append(float(out[0]))
        rss.append(float(out[1]))
        cpu.append(float(out[2]))
    return statistics.median(secs), min(secs), max(secs), max(rss), statistics.median(cpu)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--patients", type=int, default=60_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", default="/tmp/octbatch-report-bench")
    ap.add_argument("--no-old", action="store_true", help="Skip the previous to_pylist summary.")
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    table = work / f"results-{a.rows}.parquet"
    if not table.exists():
        t0 = time.perf_counter()
        make_table(table, a.rows, a.patients)
        print(
            f"wrote {table} ({table.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t0:.1f} s",
            file=sys.stderr,
        )
    octbatch = [sys.executable, "-m", "octbatch"]
    rows = []
    if not a.no_old:
        old = subprocess.run(
            ["git", "-C", str(REPO), "show", "main:octbatch/report.py"], capture_output=True, check=True
        ).stdout
        rows.append(
            ("old text summary (to_pylist)", measure([sys.executable, "-c", OLD_DRIVER, str(table)], a.repeats, old))
        )
    new = "import sys\nfrom octbatch.report import render_text, summarize\nprint(render_text(summarize(sys.argv[1]))[:80])"
    rows.append(
        (
            "text summary, library (same driver as the old one)",
            measure([sys.executable, "-c", new, str(table)], a.repeats),
        )
    )
    rows.append(("`octbatch report T` (text)", measure([*octbatch, "report", str(table)], a.repeats)))
    rows.append(
        (
            "`octbatch report T --html R --referrals C`",
            measure(
                [
                    *octbatch,
                    "report",
                    str(table),
                    "--html",
                    str(work / "report.html"),
                    "--referrals",
                    str(work / "referrals.csv"),
                ],
                a.repeats,
            ),
        )
    )
    load = os.getloadavg()
    print(
        f"\n{a.rows:,} rows, {a.patients:,} patients, {a.repeats} repeat(s), fresh process each; "
        f"load average at the end {load[0]:.1f} on {os.cpu_count()} cores\n"
    )
    print(
        "| command | median wall s | min–max wall s | median CPU s (user+sys) | peak RSS MiB |\n|---|---|---|---|---|"
    )
    for name, (med, lo, hi, rss, cpu) in rows:
        print(f"| {name} | {med:.2f} | {lo:.2f}–{hi:.2f} | {cpu:.2f} | {rss:.0f} |")


if __name__ == "__main__":
    main()
