"""octbatch.model: one reader of ONNX metadata, and models whose declared preprocessing octbatch would not honour."""

from __future__ import annotations

import json

import pytest

from octbatch.errors import OctbatchError
from octbatch.model import InvalidOnnxModel, load_model_info, read_onnx_metadata
from tests.helpers.modelgen import tiny_classifier


def _with_preprocessing(path, **changes) -> str:
    """A tiny classifier whose octbatch.preprocessing metadata declares ``changes``."""
    import onnx

    tiny_classifier(path, classes=("A", "B"), size=32)
    m = onnx.load(str(path))
    for p in m.metadata_props:
        if p.key == "octbatch.preprocessing":
            p.value = json.dumps({**json.loads(p.value), **changes})
    onnx.save(m, str(path))
    return str(path)


def test_read_onnx_metadata_returns_metadata_and_io(tmp_path):
    m = read_onnx_metadata(tiny_classifier(tmp_path / "t.onnx", classes=("A", "B"), size=32))
    assert json.loads(m.metadata["octbatch.classes"]) == ["A", "B"]
    assert [(t.name, t.shape, t.dtype) for t in m.inputs] == [("input", ["N", 1, 32, 32], "tensor(float)")]
    assert [(t.name, t.shape) for t in m.outputs] == [("logits", ["N", 2])]


def test_read_onnx_metadata_refuses_what_is_not_onnx(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(InvalidOnnxModel) as e:
        read_onnx_metadata(bad)
    assert e.value.reason
    with pytest.raises(OctbatchError, match=r"^model .*bad.onnx is not a valid ONNX model \("):
        load_model_info(bad)


def test_a_model_declaring_nhwc_is_refused_at_load(tmp_path):
    path = _with_preprocessing(tmp_path / "nhwc.onnx", layout="NHWC")
    with pytest.raises(OctbatchError) as e:
        load_model_info(path)
    assert e.value.what == f"model {path} declares layout NHWC, which octbatch does not feed"
    assert "NCHW" in e.value.fix


def test_a_model_declaring_another_interpolation_is_refused_at_load(tmp_path):
    path = _with_preprocessing(tmp_path / "bicubic.onnx", interpolation="bicubic")
    with pytest.raises(OctbatchError) as e:
        load_model_info(path)
    assert e.value.what == f"model {path} declares interpolation 'bicubic', which octbatch does not use"
    assert "area" in e.value.fix


def test_the_honoured_declaration_loads(tmp_path):
    info = load_model_info(_with_preprocessing(tmp_path / "ok.onnx", layout="NCHW", interpolation="area"))
    assert info.preprocessing.layout == "NCHW" and info.classes == ("A", "B")
