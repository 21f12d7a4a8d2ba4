"""octbatch's TensorRT builder and runner against the real TensorRT Python API of 10.0, 10.16 and 11.4.

No GPU needed: tests/helpers/trt_real.py installs each version's real bindings (tensorrt-cu12-bindings,
cached under .venv) and a gcc-built stub of the libnvinfer symbols they link; tests/helpers/trt_api_check.py
runs octbatch against strict autospec mocks of the real classes in one subprocess per version and
reports JSON. Skips (with the reason) only when the package index, pip or gcc is unreachable.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import tests.helpers.trt_real as trt_real

REPO = Path(__file__).resolve().parents[2]
# The oldest and newest 10.x octbatch supports, and the newest 11.x (pyproject: tensorrt-cu12>=10.0,<12).
VERSIONS = ("10.0.1", "10.16.1.11", "11.4.0.106")


@pytest.fixture(scope="module")
def calib_archive(tmp_path_factory):
    from octbatch.synth import make_archive

    root = tmp_path_factory.mktemp("calib")
    make_archive(root, 24, broken=False, widths=(128,))
    return str(root)


@pytest.fixture(scope="module", params=VERSIONS)
def report(request, tiny_model, calib_archive, tmp_path_factory):
    try:
        prov = trt_real.provision(request.param)
    except trt_real.Unavailable as exc:
        pytest.skip(f"real TensorRT {request.param} bindings unavailable: {exc}")
    work = tmp_path_factory.mktemp(f"trt-{request.param}")
    p = subprocess.run(
        [sys.executable, str(REPO / "tests" / "helpers" / "trt_api_check.py"), tiny_model, calib_archive, str(work)],
        capture_output=True,
        text=True,
        timeout=300,
        env=prov.env(str(REPO)),
        cwd=str(REPO),
    )
    assert p.returncode == 0, p.stderr[-3000:]
    data = json.loads(p.stdout.strip().splitlines()[-1])
    assert data["version"] == request.param  # the real module of that release was imported
    data["stub_symbols"] = prov.symbols
    return data


def _major(r) -> int:
    return int(r["version"].split(".")[0])


def test_the_real_module_imports_against_the_stub_and_the_features_are_detected(report):
    f = report["features"]
    assert "createInferBuilder_INTERNAL" in report["stub_symbols"]
    assert f["strongly_typed"] is True  # in every supported release
    if _major(report) >= 11:  # removed in 11: weak typing, calibrators, EXPLICIT_BATCH
        assert f["weak_typing_flags"] == [] and f["calibrators"] is False and f["explicit_batch_flag"] is False
    else:
        assert f["weak_typing_flags"] == ["BF16", "FP16", "INT8"] and f["calibrators"] is True


def test_the_strict_mocks_refuse_what_the_real_bindings_refuse(report):
    s = report["self_test"]
    assert s["right_call"] == "accepted"
    assert s["wrong_keyword"] == s["wrong_type"] == s["missing_argument"] == "TypeError"
    assert s["unknown_method"] == s["unknown_attribute_set"] == "AttributeError"  # TensorRT 8 names are gone


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16", "int8"])
def test_builder_makes_a_strongly_typed_network_with_one_batch_profile(report, precision):
    b = report[f"build_{precision}"]
    assert b["ok"], b.get("trace") or b.get("error")
    assert b["trt_errors"] == []
    # STRONGLY_TYPED is bit 1 in 10.x and bit 0 in 11.x: the flag must come from the enum.
    assert b["flags"] == b["expected_flags"] == (2 if _major(report) == 10 else 1)
    assert b["set_flags"] == []  # precision is in the graph, never in builder flags
    assert b["profiles"] == [{"input": [[1, 1, 32, 32], [8, 1, 32, 32], [16, 1, 32, 32]]}]
    assert b["plan"] == f"PLAN:{report['version']}" and b["timing_cache"] == "timing-cache"


def test_a_build_without_the_profile_fails_as_tensorrt_fails_it(report):
    b = report["build_without_profile"]
    assert not b["ok"] and "TensorRT failed to build an engine" in b["error"]
    assert any("no optimization profile" in e for e in b["trt_errors"])


def test_runner_splits_host_and_device_batches_over_the_profile_maximum(report):
    r = report["runtime"]
    assert r["ok"], r.get("trace") or r.get("error")
    assert r["host_max_diff"] < 1e-5 and r["host_batches"] == [16, 5]
    # 40 device rows, profile max 16: three slices of the same device buffer, no host->device copy.
    assert r["device_max_diff"] < 1e-5 and r["device_batches"] == [16, 16, 8]
    assert r["device_offsets"] == [0, 16 * r["row_bytes"], 32 * r["row_bytes"]] and r["device_h2d_copies"] == 0
    ins, outs = r["inspect_io"]  # octbatch inspect on a TensorRT engine
    assert [(i["name"], i["shape"]) for i in ins] == [("input", [-1, 1, 32, 32])] and [o["name"] for o in outs] == [
        "logits"
    ]
    assert ins[0]["dtype"] == "DataType.FLOAT"


def test_runner_refuses_an_engine_without_float32_io(report):
    r = report["runtime_half_io"]
    assert not r["ok"] and "OctbatchError" in r["error"] and "float32" in r["error"]


@pytest.mark.parametrize("precision", ["fp16", "int8", "best"])
def test_octbatch_build_engine_cli_on_the_real_api(report, precision):
    """octbatch build-engine MODEL --backend tensorrt --precision fp16|int8|best, through the CLI."""
    r = report[f"cli_{precision}"]
    assert r["ok"], (r.get("error"), r["stderr_tail"])
    assert all(b["errors"] == [] and b["set_flags"] == [] for b in r["builds"])
    assert r["options"]["typing"] == "strong" and r["machine_tensorrt"] == report["version"]
    seen = {m["file"]: m for m in r["precision_inputs"]}
    if precision in ("fp16", "best"):  # the fp16 engine is built from the converted graph, fp32 at its edges
        assert seen["fp16.onnx"]["initializers"].get("fp16") and "fp32" not in seen["fp16.onnx"]["initializers"]
        assert set(seen["fp16.onnx"]["io"].values()) == {"fp32"}
    if precision in ("int8", "best"):  # int8 from the Q/DQ graph calibrated on the scans
        assert "qdq.onnx" in seen and r["guard"]["n"] > 0
    if precision == "best":
        assert len(r["builds"]) == 2 and sorted(r["selection"]["img_per_s"]) == ["fp16", "int8"]
        assert r["selection"]["picked"] == r["precision"]
    else:
        assert len(r["builds"]) == 1 and r["precision"] == precision
