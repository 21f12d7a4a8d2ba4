"""engines.fingerprint and engines.guard: the pure pieces (facts are passed in, no engine is built)."""

from __future__ import annotations

import numpy as np
import pytest

from octbatch.engines import fingerprint as fpm
from octbatch.engines.guard import _guard_numbers, guard_line
from octbatch.errors import OctbatchError

TRT = {"backend": "tensorrt", "tensorrt": "10.3.0", "gpu": "H100", "compute_capability": "9.0"}


def _fp(**machine) -> dict:
    return {
        "format": fpm.ENGINE_FORMAT,
        "backend": "tensorrt",
        "precision": "fp16",
        "batch_profile": [1, 8, 16],
        "source": {"path": "m.onnx", "sha256": "abc"},
        "hardware_specific": True,
        "machine": {**TRT, **machine},
    }


def test_a_matching_machine_has_no_differences_and_another_gpu_is_named():
    assert fpm.check_fingerprint(_fp(), dict(TRT)) == []
    here = {**TRT, "gpu": "L4", "compute_capability": "8.9"}
    diffs = fpm.check_fingerprint(_fp(), here)
    assert diffs == [
        "GPU: built with 'H100', this machine has 'L4'",
        "compute capability: built with '9.0', this machine has '8.9'",
    ]
    assert fpm.describe_mismatch("e.engine", _fp(), here, diffs).startswith(
        "engine e.engine was built for GPU 'H100' (sm_90) with TensorRT 10.3.0; this machine has GPU 'L4' (sm_89)"
    )


def test_the_build_key_follows_what_determines_the_engine_only():
    a = _fp()
    assert fpm.build_key(a) == fpm.build_key({**a, "built_at": "later"})
    assert fpm.build_key(a) != fpm.build_key(_fp(tensorrt="10.7.0"))
    assert fpm.build_key(a) != fpm.build_key({**a, "precision": "int8"})


def test_unknown_backend_facts_are_refused():
    with pytest.raises(OctbatchError, match="unknown backend 'cuda'"):
        fpm.machine_facts("cuda")


def test_guard_numbers_and_line():
    ref = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    eng = np.array([[0.8, 0.2], [0.3, 0.7], [0.4, 0.6]])
    g = _guard_numbers(ref, eng, ["A", "B", None], ["A", "B"])
    assert g["n"] == 3 and g["agreement"] == pytest.approx(2 / 3) and g["labelled"] == 2
    assert g["accuracy_reference"] == g["accuracy_engine"] == 1.0
    assert guard_line(g).startswith("guard: top-1 agreement 66.67% on 3 scans, max |dp| 0.2000")
