"""Engines: turn an ONNX classifier into the fastest thing this machine runs, safely.

Two backends behind one function (``build_engine``, in ``build``):
  * onnxruntime (CPU, ``build_ort``): fp32 = the graph optimized once and saved, int8 = static Q/DQ
    quantization calibrated on real scans (``scans``) through octbatch's own decode + normalize.
  * tensorrt (GPU, ``build_trt``): a strongly typed serialized engine with one batch-dimension
    profile (fp16/bf16 from a converted graph, ``onnx_cast``; int8 from a Q/DQ graph).

Every engine gets a sidecar fingerprint (``fingerprint``) recording what it was built from and on:
``run --engine`` refuses an engine whose fingerprint does not match the machine, or rebuilds it
(``resolve``), which is what makes engines safe to cache and share. An accuracy guard (``guard``)
compares every engine with the source model (ONNX Runtime fp32) on real scans and refuses int8
engines that disagree too often. ``inspect`` shows what an engine or model is and whether it runs here.
The modules import their heavy libraries only when they run.
"""

from __future__ import annotations

from ..backends.registry import BACKEND_CHOICES, BACKENDS, PRECISION_CHOICES, PRECISIONS
from .build import BuildResult, build_engine, build_tensorrt_engine
from .fingerprint import (
    DEFAULT_BATCH,
    ENGINE_FORMAT,
    SIDECAR_SUFFIX,
    build_key,
    check_fingerprint,
    cpu_facts,
    describe_mismatch,
    engine_cache_dir,
    machine_facts,
    parse_batch_profile,
    read_fingerprint,
    sidecar_path,
)
from .guard import accuracy_guard
from .inspect import inspect_engine
from .resolve import ResolvedEngine, pick_backend, resolve_engine_for_run
from .scans import calibration_hash, iter_scan_batches, sample_entries, split_sample

__all__ = [
    "BACKENDS",
    "BACKEND_CHOICES",
    "PRECISIONS",
    "PRECISION_CHOICES",
    "SIDECAR_SUFFIX",
    "ENGINE_FORMAT",
    "DEFAULT_BATCH",
    "BuildResult",
    "ResolvedEngine",
    "build_engine",
    "build_tensorrt_engine",
    "resolve_engine_for_run",
    "inspect_engine",
    "check_fingerprint",
    "describe_mismatch",
    "machine_facts",
    "cpu_facts",
    "build_key",
    "engine_cache_dir",
    "parse_batch_profile",
    "sample_entries",
    "split_sample",
    "calibration_hash",
    "iter_scan_batches",
    "accuracy_guard",
    "read_fingerprint",
    "sidecar_path",
    "pick_backend",
]
