"""build-engine, fingerprints, the engine cache, the accuracy guard, inspect and run --engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from octbatch import engines
from octbatch.cli import cli
from tests.helpers.files import DATA_DIR

CLASSES = ("CNV", "DME", "DRUSEN", "NORMAL")


def invoke(*args, env=None):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False, env=env)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    from octbatch.synth import make_archive

    root = tmp_path_factory.mktemp("scans") / "archive"
    make_archive(root, 24, seed=1)  # 24 labelled scans + 3 broken files
    return root


@pytest.fixture
def cache(tmp_path, monkeypatch):
    d = tmp_path / "engine-cache"
    monkeypatch.setenv("OCTBATCH_ENGINE_CACHE", str(d))
    return d


# --------------------------------------------------------------------------- pure: fingerprints, keys, profiles


def _trt_fp(**machine):
    m = {
        "backend": "tensorrt",
        "tensorrt": "10.3.0",
        "gpu": "NVIDIA H100 80GB HBM3",
        "compute_capability": "9.0",
        "cuda_runtime": "12.6",
        "cuda_driver_api": "12.8",
    }
    m.update(machine)
    return {
        "format": engines.ENGINE_FORMAT,
        "backend": "tensorrt",
        "precision": "fp16",
        "batch_profile": [1, 64, 256],
        "source": {"path": "/m.onnx", "sha256": "ab" * 32},
        "calibration": None,
        "options": {},
        "hardware_specific": True,
        "machine": m,
    }


def _ort_fp(**machine):
    m = {
        "backend": "onnxruntime",
        "onnxruntime": "1.32.0",
        "cpu": "AMD EPYC",
        "arch": "x86_64",
        "isa": ["avx2", "avx512f", "avx512_vnni"],
    }
    m.update(machine)
    return {
        "format": engines.ENGINE_FORMAT,
        "backend": "onnxruntime",
        "precision": "int8",
        "batch_profile": [1, 64, 128],
        "source": {"path": "/m.onnx", "sha256": "cd" * 32},
        "calibration": {"hash": "x", "files": 10, "archive": "/a"},
        "options": {"ort_graph_optimization": "extended"},
        "hardware_specific": False,
        "machine": m,
    }


def test_fingerprint_matches_the_machine_it_describes():
    fp = _trt_fp()
    assert engines.check_fingerprint(fp, dict(fp["machine"])) == []
    # The driver and the CUDA runtime minor version are not what ties a plan to a machine.
    assert engines.check_fingerprint(fp, {**fp["machine"], "cuda_driver_api": "12.9"}) == []


def test_fingerprint_names_a_different_gpu_and_tensorrt_version():
    fp = _trt_fp()
    here = {**fp["machine"], "gpu": "NVIDIA A100-SXM4-80GB", "compute_capability": "8.0", "tensorrt": "10.7.0"}
    diffs = engines.check_fingerprint(fp, here)
    assert len(diffs) == 3
    assert any("TensorRT version" in d and "10.3.0" in d and "10.7.0" in d for d in diffs)
    assert any(d.startswith("GPU") and "H100" in d and "A100" in d for d in diffs)
    msg = engines.describe_mismatch("e.engine", fp, here, diffs)
    assert "built for GPU 'NVIDIA H100 80GB HBM3' (sm_90) with TensorRT 10.3.0" in msg
    assert "this machine has GPU 'NVIDIA A100-SXM4-80GB' (sm_80) with TensorRT 10.7.0" in msg


def test_fingerprint_on_a_machine_without_tensorrt_or_gpu():
    fp = _trt_fp()
    here = {"backend": "tensorrt", "tensorrt": None, "gpu": None, "compute_capability": None}
    diffs = engines.check_fingerprint(fp, here)
    assert len(diffs) == 3
    assert "this machine has no usable GPU with TensorRT not installed" in engines.describe_mismatch(
        "e.engine", fp, here, diffs
    )
    assert "TensorRT version: built with '10.3.0', this machine has none" in diffs
    assert "not installed" in engines.describe_mismatch("e.engine", fp, here, diffs)


def test_fingerprint_names_a_different_onnxruntime_version():
    fp = _ort_fp()
    diffs = engines.check_fingerprint(fp, {**fp["machine"], "onnxruntime": "1.20.1"})
    assert diffs == ["ONNX Runtime version: built with '1.32.0', this machine has '1.20.1'"]
    # A portable (extended-level) graph does not care about the CPU; a hardware-specific one does.
    other_cpu = {**fp["machine"], "cpu": "Intel Xeon", "isa": ["avx2"]}
    assert engines.check_fingerprint(fp, other_cpu) == []
    diffs = engines.check_fingerprint({**fp, "hardware_specific": True}, other_cpu)
    assert len(diffs) == 1 and "avx512_vnni" in diffs[0] and "avx512f" in diffs[0]


def test_fingerprint_of_another_format_or_backend():
    fp = _ort_fp()
    assert "engine format" in engines.check_fingerprint({**fp, "format": 0}, fp["machine"])[0]
    assert "backend" in engines.check_fingerprint(fp, {"backend": "tensorrt"})[0]


def test_build_key_is_stable_and_changes_with_what_determines_the_engine():
    fp = _trt_fp()
    key = engines.build_key(fp)
    assert key == engines.build_key(json.loads(json.dumps({**fp, "built_at": "later", "guard": {"n": 3}})))
    changed = [
        {**fp, "precision": "int8"},
        {**fp, "batch_profile": [1, 32, 256]},
        {**fp, "source": {**fp["source"], "sha256": "ef" * 32}},
        {**fp, "calibration": {"hash": "h"}},
        {**fp, "machine": {**fp["machine"], "gpu": "NVIDIA L4"}},
        {**fp, "machine": {**fp["machine"], "tensorrt": "10.4.0"}},
    ]
    keys = {engines.build_key(c) for c in changed}
    assert key not in keys and len(keys) == len(changed)


@pytest.mark.parametrize("text,want", [("1:64:128", (1, 64, 128)), ("32", (1, 32, 32)), (None, engines.DEFAULT_BATCH)])
def test_batch_profile(text, want):
    assert engines.parse_batch_profile(text) == want


@pytest.mark.parametrize("text", ["64:1:128", "0:1:2", "a:b:c", "1:2"])
def test_bad_batch_profile_is_a_user_error(text):
    from octbatch.errors import OctbatchError

    with pytest.raises(OctbatchError, match="MIN"):
        engines.parse_batch_profile(text)


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("OCTBATCH_ENGINE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert engines.engine_cache_dir() == tmp_path / "xdg" / "octbatch" / "engines"
    monkeypatch.setenv("OCTBATCH_ENGINE_CACHE", str(tmp_path / "mine"))
    assert engines.engine_cache_dir() == tmp_path / "mine"


# --------------------------------------------------------------------------- calibration feed from real files


def test_calibration_batches_have_the_model_input_shape(archive, tiny_model):
    from octbatch.model import load_model_info

    spec = load_model_info(tiny_model).preprocessing
    entries = engines.sample_entries(archive, 100)
    assert len(entries) == 27  # 24 scans + 3 broken files: all of them
    batches = list(engines.iter_scan_batches(entries, spec, 8))
    sizes = [len(x) for x, _ in batches]
    assert sizes == [8, 8, 8]  # the 3 broken files are skipped, the rest repacked into full batches
    for x, labels in batches:
        assert x.dtype == np.float32 and x.shape[1:] == (1, 32, 32) and x.flags.c_contiguous
        assert len(labels) == len(x) and set(labels) <= set(CLASSES)
        assert np.isfinite(x).all() and x.std() > 0
    assert [len(x) for x, _ in engines.iter_scan_batches(entries, spec, 10, drop_last=True)] == [10, 10]
    # Spread over the archive: a small sample still sees every class folder.
    few = engines.sample_entries(archive, 8)
    assert len(few) == 8 and {e.label for e in few} >= set(CLASSES)


def test_calibration_and_guard_samples_are_disjoint(archive):
    calib, guard = engines.split_sample(archive, 10, 8)
    assert len(calib) == 10 and len(guard) == 8
    assert not {e.path for e in calib} & {e.path for e in guard}
    calib, guard = engines.split_sample(archive, 100, 8)
    assert len(calib) == 27 and guard == []


def test_calibration_hash_follows_the_files(archive, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(archive, copy)
    a = engines.sample_entries(copy, 10)
    h = engines.calibration_hash(a)
    assert h == engines.calibration_hash(engines.sample_entries(copy, 10))
    os.utime(a[0].abspath, ns=(a[0].mtime_ns + 10**9, a[0].mtime_ns + 10**9))
    assert engines.calibration_hash(engines.sample_entries(copy, 10)) != h


# --------------------------------------------------------------------------- ONNX Runtime engines, end to end


def _fp(path) -> dict:
    return json.loads(Path(f"{path}{engines.SIDECAR_SUFFIX}").read_text())


def test_fp32_engine_cache_hit_and_run(tmp_path, cache, archive, tiny_model):
    out = tmp_path / "tiny.fp32.onnx"
    r = invoke("build-engine", tiny_model, "--backend", "onnxruntime", "--out", out, "--guard-archive", archive)
    assert r.exit_code == 0, r.output
    assert "cache hit" not in r.stderr and "built onnxruntime fp32 engine" in r.stderr
    fp = _fp(out)
    from octbatch.model import file_sha256

    assert (
        fp["source"]["sha256"] == file_sha256(tiny_model)
        and fp["backend"] == "onnxruntime"
        and fp["precision"] == "fp32"
    )
    assert fp["model"]["classes"] == list(CLASSES) and fp["machine"]["onnxruntime"]
    assert fp["guard"]["agreement"] == 1.0 and fp["guard"]["n"] == 24 and fp["guard"]["labelled"] == 24
    cached = next(cache.glob("*/tiny.fp32.onnx"))
    mtime = cached.stat().st_mtime_ns

    again = invoke("build-engine", tiny_model, "--backend", "onnxruntime", "--json")
    assert again.exit_code == 0, again.output
    assert "cache hit" in again.stderr and "optimizing the graph" not in again.stderr  # no build work at all
    res = json.loads(again.stdout)
    assert res["cache_hit"] is True and Path(res["engine"]) == cached
    assert cached.stat().st_mtime_ns == mtime and len(list(cache.iterdir())) == 1

    table = tmp_path / "r.parquet"
    run = invoke("run", archive, "--engine", out, "-o", table, "-q")
    assert run.exit_code == 3, run.output  # 3 broken files: finished with unreadable files
    t = pq.read_table(table)
    assert set(t.column("precision").to_pylist()) == {"fp32"}
    assert set(t.column("model_sha256").to_pylist()) == {file_sha256(tiny_model)}
    assert t.num_rows == 27


def test_int8_engine_guard_numbers_and_run(tmp_path, cache, archive, tiny_model):
    out = tmp_path / "tiny.int8.onnx"
    r = invoke("build-engine", tiny_model, "--precision", "int8", "--calib", archive, "--out", out, "--json")
    assert r.exit_code == 0, r.output
    assert "picked onnxruntime" in r.stderr  # auto, said why
    res = json.loads(r.stdout)
    g = res["guard"]
    assert g["passed"] and g["n"] == 24 and 0 <= g["max_abs_prob_diff"] < 0.1
    assert g["held_out"] is False and "in-sample" in r.stderr  # a 27-file archive all went into calibration
    # The guard also says whether int8 is faster than fp32 here (speed itself is a benchmark, not a test).
    assert set(g["img_per_s"]) == {"fp32", "int8"} and isinstance(g["faster_than_fp32"], bool)
    assert ("NOT faster" in r.stderr) == (not g["faster_than_fp32"])
    fp = _fp(out)
    assert fp["precision"] == "int8" and fp["calibration"]["files"] == 27 and len(fp["calibration"]["hash"]) == 64
    import onnx

    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops and "DynamicQuantizeLinear" not in ops
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["octbatch.classes"]) == list(CLASSES) and meta["octbatch.precision"] == "int8"

    table = tmp_path / "r.parquet"
    run = invoke("run", archive, "--engine", out, "-o", table, "-q")
    assert run.exit_code == 3, run.output
    t = pq.read_table(table)
    assert set(t.column("precision").to_pylist()) == {"int8"}
    assert set(t.column("pred").drop_null().to_pylist()) <= set(CLASSES)
    # The engine carries its metadata: it still runs when the source model has moved away.
    os.rename(tiny_model, f"{tiny_model}.moved")
    try:
        moved = invoke("run", archive, "--engine", out, "-o", tmp_path / "r2.parquet", "-q")
    finally:
        os.rename(f"{tiny_model}.moved", tiny_model)
    assert moved.exit_code == 3, moved.output


def test_guard_refuses_a_bad_int8_engine_unless_forced(tmp_path, cache, archive, tiny_model, monkeypatch):
    from tests.helpers.modelgen import tiny_classifier

    def bad_quantize(src, dst, batches, input_name, *, symmetric=False):
        # A "quantized" model with other weights: disagrees with the source on most scans.
        list(batches)
        tiny_classifier(dst, classes=CLASSES, size=32, seed=7)

    monkeypatch.setattr(engines.build_ort, "quantize_static", bad_quantize)
    out = tmp_path / "bad.onnx"
    r = invoke("build-engine", tiny_model, "--precision", "int8", "--calib", archive, "--out", out)
    assert r.exit_code == 1
    assert "\nError: the int8 engine agrees with the fp32 model on only" in r.stderr and "--force" in r.stderr
    assert "Traceback" not in r.output
    assert not out.exists() and not list(cache.glob("*/*.onnx"))

    r = invoke("build-engine", tiny_model, "--precision", "int8", "--calib", archive, "--out", out, "--force")
    assert r.exit_code == 0, r.output
    g = _fp(out)["guard"]
    assert g["passed"] is False and g["forced"] is True and g["agreement"] < 0.99
    assert "below the agreement threshold" in r.stderr


def test_best_does_not_pick_int8_when_it_is_not_faster(tmp_path, cache, archive, tiny_model, monkeypatch):
    speeds = {"fp32": 1000.0, "int8": 990.0}
    monkeypatch.setattr(engines.guard, "throughput", lambda runner, x, **kw: speeds[runner.precision])
    r = invoke(
        "build-engine", tiny_model, "--precision", "best", "--calib", archive, "--json", "--backend", "onnxruntime"
    )
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["precision"] == "fp32" and res["selection"]["picked"] == "fp32"
    assert any("NOT faster" in n for n in res["selection"]["notes"])
    assert _fp(res["engine"])["selection"]["img_per_s"] == speeds

    speeds["int8"] = 2000.0  # both candidates are cache hits now; only the choice changes
    r = invoke(
        "build-engine", tiny_model, "--precision", "best", "--calib", archive, "--json", "--backend", "onnxruntime"
    )
    assert json.loads(r.stdout)["precision"] == "int8"


def test_fp16_on_onnxruntime_is_a_clear_error(cache, tiny_model):
    r = invoke("build-engine", tiny_model, "--backend", "onnxruntime", "--precision", "fp16")
    assert r.exit_code == 1 and r.stderr.startswith("Error: fp16 is not useful with ONNX Runtime on a CPU")
    r = invoke("build-engine", tiny_model, "--precision", "int8")
    assert r.exit_code == 1 and "--calib" in r.stderr


def test_tensorrt_missing_is_an_error_with_the_install_hint(cache, tiny_model, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError, as on this machine
    r = invoke("build-engine", tiny_model, "--backend", "tensorrt", "--precision", "fp16")
    assert r.exit_code == 1
    assert r.stderr.startswith("Error: tensorrt is not installed") and "pip install 'octbatch[tensorrt]'" in r.stderr
    assert "pypi.nvidia.com" in r.stderr and "Traceback" not in r.output
    auto = invoke("build-engine", tiny_model, "--backend", "auto")
    assert auto.exit_code == 0 and "picked onnxruntime (TensorRT is not installed" in auto.stderr


def test_tensorrt_missing_in_a_real_process(tmp_path, tiny_model):
    code = (
        "import sys; sys.modules['tensorrt'] = None\n"
        "from octbatch.cli import main; sys.argv = ['octbatch', 'build-engine', sys.argv[1], '--backend', 'tensorrt']; main()"
    )
    p = subprocess.run(
        [sys.executable, "-c", code, tiny_model],
        capture_output=True,
        text=True,
        env={**os.environ, "OCTBATCH_ENGINE_CACHE": str(tmp_path)},
        timeout=120,
    )
    assert p.returncode == 1 and p.stderr.startswith("Error: tensorrt is not installed") and "Traceback" not in p.stderr


def test_run_refuses_an_engine_built_elsewhere_or_rebuilds_it(tmp_path, cache, archive, tiny_model):
    out = tmp_path / "e.onnx"
    assert invoke("build-engine", tiny_model, "--backend", "onnxruntime", "--out", out).exit_code == 0
    side = Path(f"{out}{engines.SIDECAR_SUFFIX}")
    fp = json.loads(side.read_text())
    fp["machine"]["onnxruntime"] = "1.18.0"
    side.write_text(json.dumps(fp))
    r = invoke("run", archive, "--engine", out, "-o", tmp_path / "r.parquet", "-q")
    assert r.exit_code == 1 and not (tmp_path / "r.parquet").exists()
    assert "ONNX Runtime version: built with '1.18.0'" in r.stderr and "--rebuild-on-mismatch" in r.stderr
    r = invoke("run", archive, "--engine", out, "-o", tmp_path / "r.parquet", "-q", "--rebuild-on-mismatch")
    assert r.exit_code == 3, r.output
    assert json.loads(side.read_text())["machine"]["onnxruntime"] != "1.18.0"
    # An engine without its fingerprint is refused too.
    side.unlink()
    r = invoke("run", archive, "--engine", out, "-o", tmp_path / "r3.parquet", "-q")
    assert r.exit_code == 1 and "has no fingerprint" in r.stderr


def test_inspect_engine_and_plain_model(tmp_path, cache, archive, tiny_model):
    out = tmp_path / "i.onnx"
    assert invoke("build-engine", tiny_model, "--precision", "int8", "--calib", archive, "--out", out).exit_code == 0
    r = invoke("inspect", out)
    assert r.exit_code == 0, r.output
    for text in (
        "classes:       CNV, DME, DRUSEN, NORMAL",
        "input  input: ['N', 1, 32, 32]",
        "output logits: ['N', 4]",
        "precision: int8",
        "guard:         agreement",
        "runs here:     yes",
    ):
        assert text in r.stdout, r.stdout
    j = json.loads(invoke("inspect", out, "--json").stdout)
    assert (
        j["can_run_here"] is True
        and j["fingerprint"]["precision"] == "int8"
        and j["metadata"]["classes"] == list(CLASSES)
    )
    plain = json.loads(invoke("inspect", tiny_model, "--json").stdout)
    assert plain["fingerprint"] is None and plain["kind"] == "onnx model" and plain["can_run_here"] is True
    # An engine for a GPU this machine does not have says so.
    fake = tmp_path / "x.engine"
    fake.write_bytes(b"not a real plan")
    Path(f"{fake}{engines.SIDECAR_SUFFIX}").write_text(json.dumps({**_trt_fp(), "model": {"classes": list(CLASSES)}}))
    r = invoke("inspect", fake)
    assert r.exit_code == 0 and "runs here:     no" in r.stdout and "TensorRT version" in r.stdout


def test_engine_modules_stay_light():
    code = (
        "import sys, octbatch.cli, octbatch.cli_engines, octbatch.engines, octbatch.backends.tensorrt, octbatch.engines.build_trt, octbatch.onnx_cast\n"
        "heavy = [m for m in ('onnxruntime', 'tensorrt', 'cuda', 'torch', 'onnx') if m in sys.modules]\n"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --------------------------------------------------------------------------- real scans, shipped model


def test_shipped_model_fp32_engine_runs(tmp_path, cache, archive, shipped_model):
    out = tmp_path / "oct4.fp32.onnx"
    r = invoke(
        "build-engine",
        shipped_model,
        "--backend",
        "onnxruntime",
        "--out",
        out,
        "--guard-archive",
        archive,
        "--guard-size",
        16,
    )
    assert r.exit_code == 0, r.output
    assert _fp(out)["guard"]["agreement"] == 1.0 and _fp(out)["model"]["classes"] == list(CLASSES)
    run = invoke("run", archive, "--engine", out, "-o", tmp_path / "r.parquet", "-q")
    assert run.exit_code == 3, run.output
    t = pq.read_table(tmp_path / "r.parquet")
    assert t.num_rows == 27 and set(t.column("precision").to_pylist()) == {"fp32"}


@pytest.mark.data
@pytest.mark.slow
def test_int8_guard_on_real_scans_with_the_shipped_model(tmp_path, cache, shipped_model):
    r = invoke(
        "build-engine",
        shipped_model,
        "--precision",
        "int8",
        "--calib",
        DATA_DIR,
        "--calib-size",
        256,
        "--guard-size",
        256,
        "--min-agreement",
        "0",
        "--json",
        "--out",
        tmp_path / "s8.onnx",
    )
    assert r.exit_code == 0, r.output
    g = json.loads(r.stdout)["guard"]
    print("int8 guard on real scans:", g)
    assert g["n"] >= 200 and g["labelled"] == g["n"] and 0.0 <= g["agreement"] <= 1.0
    assert g["held_out"] is True  # the guard compares on scans not used for calibration
    assert "accuracy_reference" in g and "accuracy_engine" in g
    run = invoke("run", DATA_DIR, "--engine", tmp_path / "s8.onnx", "-o", tmp_path / "r.parquet", "-q", "--limit", 200)
    assert run.exit_code == 0, run.output
    assert set(pq.read_table(tmp_path / "r.parquet").column("precision").to_pylist()) == {"int8"}


# --------------------------------------------------------------------------- GPU: TensorRT


@pytest.mark.gpu
def test_tensorrt_engine_matches_onnxruntime(tmp_path, cache, archive, tiny_model):
    from octbatch._deps import is_available

    if not is_available("tensorrt"):
        pytest.skip("TensorRT is not installed (pip install 'octbatch[tensorrt]' from NVIDIA's index)")
    try:
        from octbatch.backends.tensorrt import cuda_facts

        cuda_facts()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"no usable CUDA GPU / cuda-python: {exc}")
    from octbatch.backends import make_runner
    from octbatch.model import load_model_info

    res = engines.build_tensorrt_engine(
        tiny_model,
        str(tmp_path / "t.engine"),
        precision="fp16",
        batch=(1, 8, 16),
        guard_archive=str(archive),
        log=lambda m: None,
    )
    assert res.fingerprint["guard"]["agreement"] >= 0.95
    info = load_model_info(tiny_model)
    x, _ = next(engines.iter_scan_batches(engines.sample_entries(archive, 30), info.preprocessing, 13))
    with (
        make_runner("onnxruntime", info) as ref,
        make_runner("tensorrt", info, engine_path=res.out, precision="fp16") as trt,
    ):
        a, b = ref.infer(x), trt.infer(x)  # 13: a partial batch under the profile max of 16
    assert np.abs(a - b).max() < 0.02
