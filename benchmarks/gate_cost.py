"""What the OCT gate costs: `octbatch run` with --gate off vs --gate flag, side by side, alternated.

    python benchmarks/gate_cost.py [--archive DIR] [--files 1000] [--repeats 3] [--threads 2]

Real scans are hard-linked into a temp archive of --files scans. End to end: `octbatch run` as
subprocesses, off and flag alternated (off, flag, off, flag, ...), median files/s of each as the run
summary reports it. Component: the gate alone (Gate.score on batches of 64 decoded images, 1
thread) vs the classifier alone (ONNX Runtime on the same batches, --threads), items/s, medians.
Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def run_rate(archive: str, out: str, gate: str, threads: int) -> float:
    cmd = [
        sys.executable,
        "-m",
        "octbatch",
        "run",
        archive,
        "--out",
        out,
        "--overwrite",
        "--decoder",
        "cpu",
        "--gate",
        gate,
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
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()

    import numpy as np
    from dali_cpu import link_archive

    from octbatch.backends import make_runner
    from octbatch.bench import measure_rate
    from octbatch.decode.cpu import CpuDecoder
    from octbatch.gate import Gate
    from octbatch.machine import machine_facts
    from octbatch.model import load_model_info
    from octbatch.preprocess import normalize_into

    result = {"machine": machine_facts(), "files": a.files, "threads": a.threads}
    with tempfile.TemporaryDirectory() as tmp:
        arch = Path(tmp) / "archive"
        link_archive(Path(a.archive), arch, a.files)
        paths = sorted(str(p) for p in arch.rglob("*.jpeg"))
        info = load_model_info(None)
        with CpuDecoder(info.preprocessing, threads=a.threads) as dec:
            batch = dec.decode_batch(paths[:64]).images
        gate = Gate()
        x = np.empty((64, 1, *info.preprocessing.input_size), np.float32)
        with make_runner("onnxruntime", info, threads=a.threads) as runner:
            result["classifier_only_img_per_s"] = measure_rate(
                lambda: len(runner.infer(normalize_into(x, batch, info.preprocessing)))
            )
        result["gate_only_img_per_s"] = measure_rate(lambda: len(gate.score(batch)[0]))
        runs = {"off": [], "flag": []}
        run_rate(str(arch), str(Path(tmp) / "warm.parquet"), "off", a.threads)  # page cache, imports
        for _ in range(a.repeats):
            for mode in ("off", "flag"):
                runs[mode].append(run_rate(str(arch), str(Path(tmp) / f"{mode}.parquet"), mode, a.threads))
        result["end_to_end_files_per_s"] = {
            m: {"runs": [round(v, 1) for v in r], "median": round(statistics.median(r), 1)} for m, r in runs.items()
        }
        result["flag_over_off"] = round(statistics.median(runs["flag"]) / statistics.median(runs["off"]), 3)
        result["pairwise_ratios"] = [round(f / o, 3) for o, f in zip(runs["off"], runs["flag"])]
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
