"""The run summary names the decoder and backend the workers used, not the driver's guess."""

from __future__ import annotations

from octbatch.pipeline import _used
from octbatch.worker import ShardSummary


def _s(decoder: str, backend: str) -> ShardSummary:
    return ShardSummary("s", 1, 1, 0, 0.1, "p", "w", decoder=decoder, backend=backend)


def test_one_worker_kind():
    sums = [_s("cpu", "onnxruntime"), _s("cpu", "onnxruntime")]
    assert _used(sums, "decoder") == "cpu"
    assert _used(sums, "backend") == "onnxruntime"


def test_mixed_nodes_are_all_named():
    sums = [_s("dali", "tensorrt"), _s("cpu", "onnxruntime"), _s("dali", "tensorrt")]
    assert _used(sums, "decoder") == "cpu,dali"
    assert _used(sums, "backend") == "onnxruntime,tensorrt"


def test_no_worker_ran_gives_nothing():
    assert _used([], "decoder") == ""
    assert _used([_s("", "")], "backend") == ""
