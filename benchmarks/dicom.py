"""DICOM benchmarks (issue 17): JPEG-baseline DICOM frames vs the same scans as JPEG files end to end,
peak memory vs volume size, and discovery of a 1M-file JPEG tree with and without DICOM support.

    python benchmarks/dicom.py e2e --scans 1536 --repeats 3
    python benchmarks/dicom.py discovery --files 1000000 --dir /tmp/disc-1m

Every archive is built in a temp folder from ../shared/data/oct2017 (nothing is committed). Each
measured run is a fresh child process; the run summary's files/s (after start-up) and the child's
peak RSS are reported, medians over alternated repeats.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("OCTBATCH_DATA", REPO.parent / "shared" / "data" / "oct2017"))
sys.path.insert(0, str(REPO))


def _scans(n):
    out = []
    with open(DATA / "manifest.csv") as f:
        for r in csv.DictReader(f):
            if (r["width"], r["height"]) == ("512", "496"):
                out.append(str(DATA / r["path"]))
    if len(out) < n:
        out = out * (n // len(out) + 1)
    return out[:n]


def _child_run(archive, out, extra=()):
    code = (
        "import json,resource,sys\nfrom octbatch.config import RunConfig\nfrom octbatch.pipeline import run\n"
        f"s=run(RunConfig(archive={str(archive)!r}, out={str(out)!r}, overwrite=True{''.join(', ' + e for e in extra)}))\n"
        "print(json.dumps({'fps': s.files_per_second, 'rows': s.rows, 'errors': s.errors, 'seconds': s.seconds,"
        " 'rss_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024}))"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(p.stdout.strip().splitlines()[-1])


def e2e(args):
    import tests.helpers.dicomgen as g

    scans = _scans(args.scans)
    tmp = Path(tempfile.mkdtemp(prefix="octbatch-dicom-bench-"))
    try:
        jp = tmp / "jpeg"
        jp.mkdir()
        for i, s in enumerate(scans):
            os.link(s, jp / f"s{i:06d}.jpeg") if not (jp / f"s{i:06d}.jpeg").exists() else None
        archives = {"jpeg files": jp}
        for fpv in args.frames_per_volume:
            d = tmp / f"dicom{fpv}"
            for k in range(0, len(scans), fpv):
                g.jpeg_volume(str(d / f"v{k // fpv:05d}.dcm"), scans[k : k + fpv])
            archives[f"dicom, {fpv} frames/volume"] = d
        res = {name: [] for name in archives}
        _child_run(jp, tmp / "warm.parquet")  # warm page cache and imports
        for _ in range(args.repeats):
            for name, a in archives.items():
                res[name].append(_child_run(a, tmp / "r.parquet"))
        base = statistics.median(r["fps"] for r in res["jpeg files"])
        print("| archive | files/s runs | median files/s | ratio vs JPEG files | peak RSS MiB (median) |")
        print("|---|---|---|---|---|")
        for name, rs in res.items():
            med = statistics.median(r["fps"] for r in rs)
            print(
                f"| {name} | {' / '.join(str(round(r['fps'])) for r in rs)} | {med:.0f} | {med / base:.2f} | "
                f"{statistics.median(r['rss_mib'] for r in rs):.0f} |"
            )
            assert all(r["errors"] == 0 and r["rows"] == len(scans) for r in rs)
        # the machine's load drifts between rounds: the ratio within each round is the robust figure
        for name, rs in res.items():
            if name != "jpeg files":
                paired = [r["fps"] / b["fps"] for r, b in zip(rs, res["jpeg files"])]
                print(
                    f"{name}: per-round ratios {' '.join(f'{x:.2f}' for x in paired)}, median {statistics.median(paired):.2f}"
                )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


_DISC_CHILD = r"""
import importlib.util, json, resource, sys, time
mode, root = sys.argv[1], sys.argv[2]
import octbatch.pipeline  # noqa: F401 - both sides pay the same imports before the clock starts
t = time.perf_counter(); n = 0; keys = set()
if mode == "before":
    import octbatch  # noqa: F401 - the old module imports its siblings relatively
    spec = importlib.util.spec_from_file_location("octbatch._archive_before", sys.argv[3])
    m = importlib.util.module_from_spec(spec); sys.modules[spec.name] = m; spec.loader.exec_module(m)
    from octbatch.shards import entry_key
    for e in m.discover(root):
        keys.add(entry_key(e.path, e.size, e.mtime_ns // 1000)); n += 1
else:
    from octbatch.plan import Selection, keyed_entries
    for e, key in keyed_entries(Selection(root), "/nonexistent/r.parquet.parts", lambda pid: None):
        keys.add(key); n += 1
print(json.dumps({"n": n, "s": time.perf_counter() - t, "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def discovery(args):
    root = Path(args.dir)
    per = 1000
    if not (root / ".complete").exists():
        t0 = time.perf_counter()
        for d in range(args.files // per):
            sub = root / ("CNV", "DME", "DRUSEN", "NORMAL")[d % 4] / f"b{d:05d}"
            sub.mkdir(parents=True, exist_ok=True)
            for i in range(per):
                open(sub / f"{sub.parent.name}-{d:05d}{i:03d}-{i}.jpeg", "wb").close()
        (root / ".complete").write_text("")
        print(f"made {args.files} empty files in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    before = Path(tempfile.mkdtemp()) / "archive_before.py"
    before.write_text(
        subprocess.run(
            ["git", "-C", str(REPO), "show", "main:octbatch/archive.py"], capture_output=True, text=True, check=True
        ).stdout
    )
    before.with_name("__init__.py").write_text("")
    res = {"before": [], "after": []}
    for _ in range(args.repeats):
        for mode in ("before", "after"):
            p = subprocess.run(
                [sys.executable, "-c", _DISC_CHILD, mode, str(root), str(before)],
                capture_output=True,
                text=True,
                check=True,
                cwd=str(REPO),
            )
            res[mode].append(json.loads(p.stdout))
    for mode, rs in res.items():
        print(
            f"{mode}: n={rs[0]['n']} s={[round(r['s'], 2) for r in rs]} median={statistics.median(r['s'] for r in rs):.2f} "
            f"rss={statistics.median(r['rss_mib'] for r in rs):.0f} MiB"
        )
    b, a = (statistics.median(r["s"] for r in res[m]) for m in ("before", "after"))
    print(f"ratio after/before: {a / b:.3f}")


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("e2e")
    e.add_argument("--scans", type=int, default=1536)
    e.add_argument("--frames-per-volume", type=int, nargs="+", default=[128])
    e.add_argument("--repeats", type=int, default=3)
    d = sub.add_parser("discovery")
    d.add_argument("--files", type=int, default=1_000_000)
    d.add_argument("--dir", required=True)
    d.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    {"e2e": e2e, "discovery": discovery}[a.cmd](a)


if __name__ == "__main__":
    main()
