"""engines.resolve: what run --engine refuses before anything loads (no engine is built or run)."""

from __future__ import annotations

import json

import pytest

from octbatch.engines import fingerprint as fpm
from octbatch.engines.resolve import pick_backend, resolve_engine_for_run
from octbatch.errors import OctbatchError


def test_an_explicit_backend_is_kept():
    msgs: list[str] = []
    assert pick_backend("onnxruntime", msgs.append) == "onnxruntime" and msgs == []


def test_a_missing_engine_and_one_without_fingerprint_are_refused(tmp_path):
    with pytest.raises(OctbatchError, match=r"engine .*nope.onnx does not exist"):
        resolve_engine_for_run(str(tmp_path / "nope.onnx"))
    bare = tmp_path / "bare.onnx"
    bare.write_bytes(b"x")
    with pytest.raises(OctbatchError, match=r"has no fingerprint \(bare.onnx.fingerprint.json is missing\)"):
        resolve_engine_for_run(str(bare))


def test_an_engine_for_another_backend_than_asked_is_refused(tmp_path):
    e = tmp_path / "e.engine"
    e.write_bytes(b"x")
    fpm.sidecar_path(e).write_text(json.dumps({"format": fpm.ENGINE_FORMAT, "backend": "tensorrt"}))
    with pytest.raises(OctbatchError) as err:
        resolve_engine_for_run(str(e), backend="onnxruntime")
    assert err.value.what == f"engine {e} is a tensorrt engine but --backend is onnxruntime"
    assert err.value.fix == "Drop --backend or use --backend tensorrt."


def test_a_mismatch_without_rebuild_names_the_rebuild_command(tmp_path, monkeypatch):
    e = tmp_path / "m.onnx"
    e.write_bytes(b"x")
    fp = {
        "format": fpm.ENGINE_FORMAT,
        "backend": "onnxruntime",
        "precision": "fp32",
        "batch_profile": [1, 8, 16],
        "source": {"path": "/gone/m.onnx", "sha256": "abc"},
        "machine": {"backend": "onnxruntime", "onnxruntime": "0.0.1", "cpu": "old"},
    }
    fpm.sidecar_path(e).write_text(json.dumps(fp))
    monkeypatch.setattr(
        "octbatch.engines.resolve.machine_facts",
        lambda backend, strict=True: {"backend": "onnxruntime", "onnxruntime": "9.9", "cpu": "new"},
    )
    with pytest.raises(OctbatchError) as err:
        resolve_engine_for_run(str(e))
    assert "ONNX Runtime version: built with '0.0.1', this machine has '9.9'" in err.value.what
    assert err.value.fix == (
        f"Rebuild it here: octbatch build-engine /gone/m.onnx --backend onnxruntime --precision fp32 "
        f"--batch 1:8:16 --out {e}; or pass --rebuild-on-mismatch"
    )
