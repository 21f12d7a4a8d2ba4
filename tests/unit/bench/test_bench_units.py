"""octbatch.bench's pure pieces: the frozen config, --quick, the one timer, the thread-split experiment."""

from __future__ import annotations

import dataclasses

import pytest

from octbatch.bench import BenchConfig, quick_overrides, repeat_timed
from octbatch.bench.children import ThreadSplitExecutor, _experiment_executor
from octbatch.bench.derive import derive


def test_bench_config_is_frozen_and_quick_returns_a_new_one():
    cfg = BenchConfig(out="o", batch_sizes=(16, 64, 128), decoders=("dali", "cpu", "pillow"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.repeats = 5  # type: ignore[misc]
    q = quick_overrides(cfg)
    assert cfg.repeats == 3 and cfg.synthetic is None
    assert (q.synthetic, q.repeats, q.min_seconds, q.scale, q.scale_e2e_max) == (150, 1, 0.2, (1000,), 0)
    assert q.batch_sizes == (64,) and q.decoders == ("cpu", "pillow") and q.baselines == ("naive",)
    assert q.timing == {"min_seconds": 0.2, "repeats": 1, "warmup": 1}


def test_repeat_timed_with_no_minimum_makes_one_call_per_repeat():
    calls = []
    out = repeat_timed(lambda: calls.append(1) or 7, min_seconds=0, repeats=4, warmup=2)
    assert len(calls) == 6 and [items for items, _ in out] == [7, 7, 7, 7]
    assert all(dt >= 0 for _, dt in out)


def test_thread_split_executor_sets_both_thread_counts():
    @dataclasses.dataclass(frozen=True)
    class Cfg:
        decode_threads: int = 8
        infer_threads: int = 8

    seen = {}

    class Inner:
        def run(self, shards, cfg, parts_dir, **kw):
            seen.update(cfg=cfg, shards=shards, parts=parts_dir, kw=kw)
            return "result"

    ex = ThreadSplitExecutor(Inner(), decode_threads=3, infer_threads=1)
    assert ex.run(["s"], Cfg(), "/p", on_progress=None) == "result"
    assert seen["cfg"] == Cfg(3, 1) and seen["shards"] == ["s"] and seen["kw"] == {"on_progress": None}


def test_experiment_executor_names():
    assert _experiment_executor(None) is None
    ex = _experiment_executor("split:2,1")
    assert (ex.decode_threads, ex.infer_threads) == (2, 1)
    with pytest.raises(ValueError, match="unknown patch 'fast'"):
        _experiment_executor("fast")


def test_derive_ratios_and_efficiency():
    ctx_rows = [
        {"kind": "ceiling", "name": "decode", "median": 1000.0},
        {"kind": "ceiling", "name": "decode", "median": 1200.0},
        {"kind": "ceiling", "name": "infer", "median": 1200.0},
        {"kind": "e2e", "name": "octbatch run (local)", "median": 500.0},
        {"kind": "baseline", "name": "naive", "median": 250.0},
        {"kind": "experiment", "name": "octbatch run (x)", "median": 550.0},
    ]
    d = derive(ctx_rows, BenchConfig(out="o"), 2, gpu=False)
    assert d["decode_ceiling"] == 1200.0 and d["combined_ceiling"] == pytest.approx(600.0)
    assert d["efficiency"] == pytest.approx(500 / 600) and d["ratios"] == {"naive": 2.0}
    assert d["experiments"] == {"octbatch run (x)": pytest.approx(1.1)}
    assert ctx_rows[3]["efficiency"] == pytest.approx(500 / 600)


def test_with_torch_path_adds_nvjpeg_and_torch_when_installed(monkeypatch):
    from octbatch import choice
    from octbatch.bench.config import BenchConfig, with_torch_path

    monkeypatch.setattr(choice, "installed", lambda m: m in ("torch", "torchvision"))
    c = with_torch_path(BenchConfig(out="o"))
    assert c.torch_path is True and c.decoders == ("cpu", "pillow", "nvjpeg") and c.backends == ("onnxruntime", "torch")
    assert with_torch_path(c) == c  # added once
    off = with_torch_path(BenchConfig(out="o", torch_path=False))
    assert off.decoders == ("cpu", "pillow") and off.backends == ("onnxruntime",)
    monkeypatch.setattr(choice, "installed", lambda m: m == "torch")  # no torchvision: no torch path
    assert with_torch_path(BenchConfig(out="o")).torch_path is False
