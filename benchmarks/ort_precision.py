"""ONNX Runtime on this CPU: fp32 (unoptimized / as `run` loads it / offline-optimized engine) vs int8 static.

Throughput (img/s, median of repeats after warm-up, variants interleaved in every repeat so they
share the machine's noise) at batch 1/32/64/128 with 2 threads, and top-1 agreement of each variant
with fp32 on real scans decoded by octbatch's own preprocessing. Engines are built with
octbatch.engines.build_engine (the code behind `octbatch build-engine`), so the int8 model is the
one users get.

    python benchmarks/ort_precision.py [--model M.onnx] [--scans DIR] [--n 256] [--repeats 7] [--markdown-out FILE]

Without the shipped model (octbatch/models/oct4-default.onnx) it uses a stand-in CNN with random
weights and the shipped model's input (1x128x128, 4 classes): its speeds are representative of a
small CNN, its agreement numbers are not of a trained model (the table says which model ran).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BATCHES = (1, 32, 64, 128)


def stand_in_model(path: str) -> str:
    """4 strided conv blocks (16-32-64-128 channels) + GAP + FC, 1x128x128 -> 4 logits, with metadata."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, prev, cin = [], [], "input", 1
    for i, cout in enumerate((16, 32, 64, 128)):
        for j, stride in enumerate((2, 1)):
            w = rng.normal(0, (2.0 / (cin * 9)) ** 0.5, (cout, cin, 3, 3)).astype(np.float32)
            b = np.zeros(cout, np.float32)
            inits += [numpy_helper.from_array(w, f"w{i}{j}"), numpy_helper.from_array(b, f"b{i}{j}")]
            nodes += [
                helper.make_node(
                    "Conv", [prev, f"w{i}{j}", f"b{i}{j}"], [f"c{i}{j}"], pads=[1, 1, 1, 1], strides=[stride, stride]
                ),
                helper.make_node("Relu", [f"c{i}{j}"], [f"r{i}{j}"]),
            ]
            prev, cin = f"r{i}{j}", cout
    inits += [
        numpy_helper.from_array(rng.normal(0, 0.1, (128, 4)).astype(np.float32), "wf"),
        numpy_helper.from_array(np.zeros(4, np.float32), "bf"),
    ]
    nodes += [
        helper.make_node("GlobalAveragePool", [prev], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "stand_in",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 128, 128])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
        initializer=inits,
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    pre = {
        "input_size": [128, 128],
        "channels": 1,
        "mean": [0.2],
        "std": [0.2],
        "resize": "center_crop",
        "interpolation": "area",
        "layout": "NCHW",
    }
    for k, v in (
        ("octbatch.classes", json.dumps(["CNV", "DME", "DRUSEN", "NORMAL"])),
        ("octbatch.preprocessing", json.dumps(pre)),
        ("octbatch.output", "logits"),
        ("octbatch.model_card", "benchmark stand-in, random weights"),
    ):
        p = m.metadata_props.add()
        p.key, p.value = k, v
    onnx.save(m, path)
    return path


def session(path: str, optimize: bool, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    so.log_severity_level = 3
    return ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])


def main() -> None:
    from octbatch import engines
    from octbatch.backends.base import softmax
    from octbatch.model import load_model_info

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(REPO / "octbatch" / "models" / "oct4-default.onnx"))
    ap.add_argument(
        "--scans", default=os.environ.get("OCTBATCH_DATA", str(REPO.parent / "shared" / "data" / "oct2017"))
    )
    ap.add_argument("--n", type=int, default=256, help="real scans for timing and agreement")
    ap.add_argument("--calib-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--markdown-out", help="also write the Markdown table here")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="octbatch-bench-")
    model = args.model
    model_note = f"`{os.path.relpath(model, REPO)}`"
    if not os.path.exists(model):
        model = stand_in_model(os.path.join(work, "stand_in.onnx"))
        model_note = "stand-in CNN (random weights, 1x128x128, 8 conv layers; the shipped model was not there yet)"
    info = load_model_info(model)
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    cache = os.path.join(work, "cache")
    t0 = time.perf_counter()
    fp32 = engines.build_engine(model, backend="onnxruntime", precision="fp32", cache_dir=cache, log=log)
    t_fp32 = time.perf_counter() - t0
    t0 = time.perf_counter()
    int8 = engines.build_engine(
        model,
        backend="onnxruntime",
        precision="int8",
        calib=args.scans,
        calib_size=args.calib_size,
        min_agreement=0.0,
        cache_dir=cache,
        log=log,
    )
    t_int8 = time.perf_counter() - t0

    # Held-out scans: the ones int8 was NOT calibrated on (as the build's accuracy guard uses).
    entries = engines.split_sample(args.scans, args.calib_size, args.n)[1] or engines.sample_entries(args.scans, args.n)
    x = np.concatenate([b for b, _ in engines.iter_scan_batches(entries, info.preprocessing, 64)])
    variants = {
        "fp32, unoptimized (ORT_DISABLE_ALL)": session(model, False, args.threads),
        "fp32, source model (what `run` loads: ORT_ENABLE_ALL at load)": session(model, True, args.threads),
        "fp32, optimized engine (build-engine, saved EXTENDED graph)": session(fp32.engine_path, True, args.threads),
        "int8 static QDQ engine (build-engine --precision int8)": session(int8.engine_path, True, args.threads),
    }
    name_in = info.input_name

    def run_all(sess, bs):
        outs = []
        for s in range(0, len(x), bs):
            outs.append(sess.run(None, {name_in: x[s : s + bs]})[0])
        return np.concatenate(outs)

    ref = softmax(run_all(variants["fp32, source model (what `run` loads: ORT_ENABLE_ALL at load)"], 64).copy())
    agree, maxdiff = {}, {}
    for k, sess in variants.items():
        p = softmax(run_all(sess, 64).copy())
        agree[k] = float((p.argmax(1) == ref.argmax(1)).mean())
        maxdiff[k] = float(np.abs(p - ref).max())

    speeds = {k: {} for k in variants}
    for bs in BATCHES:
        for sess in variants.values():  # warm-up
            run_all(sess, bs)
        times = {k: [] for k in variants}
        for _ in range(args.repeats):
            for k, sess in variants.items():  # interleaved: every variant sees the same noise
                t = time.perf_counter()
                run_all(sess, bs)
                times[k].append(time.perf_counter() - t)
        for k in variants:
            speeds[k][bs] = len(x) / float(np.median(times[k]))

    import onnxruntime as ort

    base = "fp32, source model (what `run` loads: ORT_ENABLE_ALL at load)"
    lines = [
        f"Model: {model_note}. {len(x)} real scans from `{args.scans}` (decoded by octbatch; not the int8 calibration scans), {args.threads} threads, "
        f"median of {args.repeats} interleaved repeats after warm-up. onnxruntime {ort.__version__}, numpy {np.__version__}, "
        f"Python {platform.python_version()}, CPU {engines.cpu_facts()['cpu']} ({', '.join(engines.cpu_facts()['isa'][-4:])}).",
        f"Build times: fp32 optimized {t_fp32:.1f} s, int8 (calibration on {args.calib_size} scans) {t_int8:.1f} s.",
        "",
        "| variant | "
        + " | ".join(f"batch {b} img/s" for b in BATCHES)
        + " | vs fp32 @64 | top-1 agreement with fp32 | max abs prob diff |",
        "|---|" + "---|" * (len(BATCHES) + 3),
    ]
    for k in variants:
        lines.append(
            f"| {k} | "
            + " | ".join(f"{speeds[k][b]:,.0f}" for b in BATCHES)
            + f" | {speeds[k][64] / speeds[base][64]:.2f}x | {agree[k]:.2%} | {maxdiff[k]:.4f} |"
        )
    g = int8.fingerprint.get("guard") or {}
    if "accuracy_reference" in g:
        lines.append("")
        lines.append(
            f"Accuracy guard of the int8 engine (labelled scans, n={g['n']}): fp32 {g['accuracy_reference']:.2%}, "
            f"int8 {g['accuracy_engine']:.2%}, agreement {g['agreement']:.2%}."
        )
    table = "\n".join(lines)
    print(table)
    if args.markdown_out:
        Path(args.markdown_out).write_text(table + "\n")


if __name__ == "__main__":
    main()
