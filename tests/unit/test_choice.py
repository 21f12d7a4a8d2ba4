"""octbatch.choice: every branch of what `auto` picks, with CUDA present or absent simulated, and
the probe that must not import torch on a machine without a GPU."""

from __future__ import annotations

import sys

import pytest

from octbatch import choice
from octbatch.choice import Facts, choose_backend, choose_decoder

NO_GPU = Facts(cuda=False, dali=True, tensorrt=True, torch=True, torchvision=True)
GPU_ALL = Facts(cuda=True, dali=True, tensorrt=True, torch=True, torchvision=True, torch_cuda=True)
GPU_TORCH = Facts(cuda=True, torch=True, torchvision=True, torch_cuda=True)


@pytest.mark.parametrize(
    ("facts", "name", "reason"),
    [
        (GPU_ALL, "dali", "DALI is installed and a CUDA GPU is visible"),
        (GPU_TORCH, "nvjpeg", "torchvision is installed and torch sees a CUDA GPU; DALI is not installed"),
        (NO_GPU, "cpu", "no CUDA GPU is visible"),
        (Facts(), "cpu", "no CUDA GPU is visible"),
        (
            Facts(cuda=True, torch=True, torchvision=True, torch_cuda=False),
            "cpu",
            "a GPU is visible but torch has no CUDA (a CPU-only torch build?)",
        ),
        (Facts(cuda=True), "cpu", "a CUDA GPU is visible but neither DALI nor torchvision is installed"),
        (
            Facts(cuda=True, torch=True, torch_cuda=True),
            "cpu",
            "a CUDA GPU is visible but neither DALI nor torchvision is installed",
        ),
    ],
)
def test_decoder_auto(facts, name, reason):
    c = choose_decoder(facts)
    assert (c.name, c.reason) == (name, reason)
    assert c.describe("decoder") == f"decoder auto: picked {name} ({reason})"


@pytest.mark.parametrize(
    ("facts", "engine", "name", "reason"),
    [
        (GPU_ALL, True, "tensorrt", "TensorRT is installed and a CUDA GPU is visible"),
        (GPU_ALL, False, "torch", "torch sees a CUDA GPU; TensorRT is installed but no engine was given"),
        (GPU_TORCH, False, "torch", "torch sees a CUDA GPU; TensorRT is not installed"),
        (GPU_TORCH, True, "torch", "torch sees a CUDA GPU; TensorRT is not installed"),
        (NO_GPU, True, "onnxruntime", "no CUDA GPU is visible; CPU engine"),
        (NO_GPU, False, "onnxruntime", "no CUDA GPU is visible; CPU engine"),
        (
            Facts(cuda=True, torch=True, torch_cuda=False),
            False,
            "onnxruntime",
            "a GPU is visible but torch has no CUDA; CPU engine",
        ),
        (
            Facts(cuda=True),
            False,
            "onnxruntime",
            "a GPU is visible but neither TensorRT nor torch is installed; CPU engine",
        ),
    ],
)
def test_backend_auto(facts, engine, name, reason):
    c = choose_backend(facts, engine=engine)
    assert (c.name, c.reason) == (name, reason)


def test_building_an_engine_never_picks_torch():
    assert choose_backend(GPU_ALL, building=True).name == "tensorrt"
    c = choose_backend(GPU_TORCH, building=True)
    assert (c.name, c.reason) == ("onnxruntime", "TensorRT is not installed; CPU engine")
    assert choose_backend(NO_GPU, building=True).name == "onnxruntime"


def test_probe_without_a_gpu_does_not_import_torch(monkeypatch):
    import octbatch.decode.dali_pipeline as dp

    monkeypatch.setattr(dp, "cuda_device_count", lambda: 0)
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    f = choice.probe()
    assert f.cuda is False and f.torch_cuda is None
    assert "torch" not in sys.modules


def test_probe_with_a_gpu_asks_torch(monkeypatch):
    import types

    import octbatch.decode.dali_pipeline as dp

    fake = types.ModuleType("torch")
    fake.cuda = types.SimpleNamespace(is_available=lambda: False)  # type: ignore[attr-defined]
    monkeypatch.setattr(dp, "cuda_device_count", lambda: 1)
    monkeypatch.setattr(choice, "installed", lambda m: m in ("torch", "torchvision"))
    monkeypatch.setitem(sys.modules, "torch", fake)
    f = choice.probe()
    assert f == Facts(cuda=True, torch=True, torchvision=True, torch_cuda=False)
    assert choose_decoder(f).name == "cpu" and choose_backend(f).name == "onnxruntime"


def test_installed_finds_without_importing():
    assert choice.installed("json") and not choice.installed("no_such_module_x") and not choice.installed("a.b.c")


def test_resolve_records_what_auto_picked_and_why(monkeypatch, tmp_path):
    from octbatch.config import RunConfig, _auto_choices

    monkeypatch.setattr(choice, "probe", lambda **kw: GPU_TORCH)
    d, b, reasons = _auto_choices(RunConfig(archive=str(tmp_path), out=str(tmp_path / "o.parquet")))
    assert (d, b) == ("nvjpeg", "torch")
    assert reasons == (
        "decoder auto: picked nvjpeg (torchvision is installed and torch sees a CUDA GPU; DALI is not installed)",
        "backend auto: picked torch (torch sees a CUDA GPU; TensorRT is not installed)",
    )
    cfg = RunConfig(archive=str(tmp_path), out=str(tmp_path / "o.parquet"), decoder="cpu", backend="onnxruntime")
    assert _auto_choices(cfg) == ("cpu", "onnxruntime", ())


def test_precision_is_for_the_torch_backend(monkeypatch, tmp_path):
    from octbatch.config import RunConfig, resolve
    from octbatch.errors import OctbatchError

    kw = {"archive": str(tmp_path), "out": str(tmp_path / "o.parquet")}
    with pytest.raises(OctbatchError) as err:
        resolve(RunConfig(**kw, backend="onnxruntime", precision="fp16"))
    assert err.value.what == "--precision fp16 applies to the torch backend, not onnxruntime"
    with pytest.raises(OctbatchError, match=r"--precision int8 is not one of fp32, fp16, bf16"):
        RunConfig(**kw, precision="int8")
    monkeypatch.setattr(choice, "probe", lambda **k: GPU_TORCH)
    assert resolve(RunConfig(**kw, backend="torch")).precision == "fp16"
    assert resolve(RunConfig(**kw, backend="torch", precision="bf16")).precision == "bf16"
    monkeypatch.setattr(choice, "probe", lambda **k: NO_GPU)
    assert resolve(RunConfig(**kw, backend="torch")).precision == "fp32"
