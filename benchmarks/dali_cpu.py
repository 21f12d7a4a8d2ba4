"""DALI's CPU twin vs the default CPU decoder on this machine: decode-only and end to end.

    python benchmarks/dali_cpu.py [--archive DIR] [--files 2000] [--repeats 3] [--model M]

Real scans are hard-linked into a temp archive of --files scans. Decode-only: img/s of CpuDecoder and
DaliDecoder(device="cpu") over the archive in batches of 64 (plus the cost of the DALI decoder's
per-file triage: read + JPEG header parse), medians of --repeats passes after one warm-up pass.
End to end: `octbatch run --decoder dali` vs `--decoder cpu` as subprocesses, alternated, median
files/s as reported by the run summary. Prints JSON.
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def link_archive(src: Path, dst: Path, n: int) -> None:
    scans = sorted(p for p in src.rglob("*.jpeg") if p.is_file())
    for i in range(n):
        s = scans[i % len(scans)]
        d = dst / s.parent.name / f"{s.stem}-r{i // len(scans)}.jpeg"
        d.parent.mkdir(parents=True, exist_ok=True)
        os.link(s, d)


def decode_rate(dec, paths, repeats: int, fn=None) -> float:
    fn = fn or dec.decode_batch
    for i in range(0, len(paths), 64):  # warm-up pass (page cache, pipeline build)
        fn(paths[i : i + 64])
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        for i in range(0, len(paths), 64):
            fn(paths[i : i + 64])
        rates.append(len(paths) / (time.perf_counter() - t))
    return statistics.median(rates)


def run_rate(archive: str, out: str, model: str, decoder: str, threads: int) -> float:
    cmd = [
        sys.executable,
        "-m",
        "octbatch",
        "run",
        archive,
        "--out",
        out,
        "--overwrite",
        "--model",
        model,
        "--decoder",
        decoder,
        "-j",
        str(threads),
        "--json",
        "-q",
    ]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode not in (0, 3):
        raise RuntimeError(p.stderr[-500:])
    return json.loads(p.stdout)["files_per_second"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--archive", default=str(REPO.parent / "shared" / "data" / "oct2017"))
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default=str(REPO / "octbatch" / "models" / "oct4-default.onnx"))
    a = ap.parse_args()

    import nvidia.dali

    from octbatch.archive import discover
    from octbatch.decode.cpu import CpuDecoder
    from octbatch.decode.dali import DaliDecoder
    from octbatch.model import load_model_info

    spec = load_model_info(a.model).preprocessing
    with tempfile.TemporaryDirectory(prefix="octbatch-dali-bench-") as tmp:
        archive = Path(tmp) / "archive"
        link_archive(Path(a.archive), archive, a.files)
        paths = [e.abspath for e in discover(archive)]
        res = {
            "files": len(paths),
            "threads": a.threads,
            "dali": nvidia.dali.__version__,
            "model": Path(a.model).name,
            "input_size": list(spec.input_size),
        }
        with CpuDecoder(spec, threads=a.threads) as cpu, DaliDecoder(spec, threads=a.threads, batch_size=64) as dali:
            res["decode_cpu_img_per_s"] = round(decode_rate(cpu, paths, a.repeats))
            res["decode_dali_cpu_img_per_s"] = round(decode_rate(dali, paths, a.repeats))
            res["dali_triage_only_img_per_s"] = round(decode_rate(dali, paths, a.repeats, fn=dali._triage))
            res["dali_stats"] = dict(dali.stats)
        e2e = {"cpu": [], "dali": []}
        for _ in range(a.repeats):
            for dec in ("cpu", "dali"):
                e2e[dec].append(run_rate(str(archive), str(Path(tmp) / f"{dec}.parquet"), a.model, dec, a.threads))
        res["e2e_cpu_files_per_s"] = round(statistics.median(e2e["cpu"]))
        res["e2e_dali_cpu_files_per_s"] = round(statistics.median(e2e["dali"]))
        res["e2e_runs"] = {k: [round(x) for x in v] for k, v in e2e.items()}
        res["ratio_e2e_dali_over_cpu"] = round(res["e2e_dali_cpu_files_per_s"] / res["e2e_cpu_files_per_s"], 2)
        res["ratio_decode_dali_over_cpu"] = round(res["decode_dali_cpu_img_per_s"] / res["decode_cpu_img_per_s"], 2)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
