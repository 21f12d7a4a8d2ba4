"""Build a serialized TensorRT engine from ONNX, for TensorRT 10.0 to 11.x alike (the loader side).

TensorRT 11 removed weak typing: ``BuilderFlag.FP16``, ``BF16``, ``INT8`` (deprecated since 10.12)
and the int8 calibrators (deprecated since 10.1) are gone, every network is strongly typed, and
precision comes from the tensor types in the graph. octbatch therefore builds every engine the same
way on every supported release:

  * the network is created with ``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` (required for strong
    typing on 10.x, accepted and ignored on 11.x, where the deprecated ``EXPLICIT_BATCH`` is gone);
  * fp16/bf16 engines are built from an ONNX graph converted to that type with fp32 inputs and
    outputs (``octbatch.onnx_cast``), so the runner and the DALI handoff keep feeding float32;
  * int8 engines are built from the symmetric Q/DQ model octbatch calibrates on real scans
    (explicit quantization; ``build_ort.quantize_static``), with no calibrator.

What a release offers is decided by feature detection (``trt_features``), never by version strings.
Only when a TensorRT build lacks ``STRONGLY_TYPED`` (none of 10.0 to 11.4 does) would the weakly
typed builder flags be used, and only those that exist. Kept apart from the runner
(``backends.tensorrt``), as Polygraphy separates loaders from runners: a machine that only runs
engines never touches the build code.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .._deps import require
from ..backends.registry import PRECISIONS
from ..errors import OctbatchError
from . import build_ort
from .scans import calib_batches

if TYPE_CHECKING:
    from ..model import ModelInfo

__all__ = ["PRECISIONS", "trt_features", "network_flags", "build_serialized_engine", "build_trt_files"]

Log = Callable[[str], None]


def _trt():
    return require("tensorrt", purpose="building TensorRT engines")


def trt_features(trt) -> dict:
    """What this TensorRT build offers that octbatch's builder cares about (attribute lookups only)."""
    ncf = trt.NetworkDefinitionCreationFlag
    flags = trt.BuilderFlag
    return {
        "version": getattr(trt, "__version__", None),
        "strongly_typed": hasattr(ncf, "STRONGLY_TYPED"),
        "explicit_batch_flag": hasattr(ncf, "EXPLICIT_BATCH"),
        "weak_typing_flags": sorted(n for n in ("FP16", "BF16", "INT8") if hasattr(flags, n)),
        "calibrators": hasattr(trt, "IInt8EntropyCalibrator2"),
    }


def network_flags(trt, features: dict | None = None) -> int:
    """The ``create_network`` flags: strongly typed where the flag exists, else 0 (TensorRT 10
    networks are always explicit-batch; its EXPLICIT_BATCH flag is ignored and 11.x removed it)."""
    f = features or trt_features(trt)
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if f["strongly_typed"] else 0


def _weak_flags(trt, precision: str, features: dict) -> list:
    """Builder flags for a weakly typed network (only when STRONGLY_TYPED is missing). int8 still
    comes from the Q/DQ graph: its INT8 flag only lets those nodes run in int8, no calibrator."""
    want = {"fp32": [], "fp16": ["FP16"], "bf16": ["BF16"], "int8": ["INT8", "FP16"]}[precision]
    missing = [n for n in want if n not in features["weak_typing_flags"]]
    if missing:
        raise OctbatchError(
            f"TensorRT {features['version']} has neither strongly typed networks nor BuilderFlag.{missing[0]}",
            "Install a TensorRT release octbatch supports: pip install 'octbatch[tensorrt]' (TensorRT 10.x or 11.x).",
        )
    return [getattr(trt.BuilderFlag, n) for n in want]


def _read_timing_cache(path: str | None) -> bytes:
    if path and os.path.exists(path):
        with open(path, "rb") as f:
            return f.read()
    return b""


def _write_timing_cache(path: str, data) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(bytes(memoryview(data)))
    os.replace(tmp, path)


def _parse(trt, builder, logger, onnx_path: str, features: dict):
    network = builder.create_network(network_flags(trt, features))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise OctbatchError(
            f"TensorRT could not parse {onnx_path}: {errors}",
            "Check the model with polygraphy or re-export it with a supported opset.",
        )
    if network.num_inputs != 1:
        raise OctbatchError(
            f"{onnx_path} has {network.num_inputs} inputs",
            "octbatch builds classifiers with one image input (N, C, H, W).",
        )
    return network, parser


def _add_batch_profile(builder, config, network, onnx_path: str, batch: Sequence[int]) -> None:
    """One optimization profile over the batch dimension of the image input: TensorRT refuses to
    build a network with a dynamic input and no profile."""
    inp = network.get_input(0)
    dims = tuple(inp.shape)
    if len(dims) != 4:
        raise OctbatchError(
            f"{onnx_path}: input {inp.name!r} has shape {dims}",
            "octbatch builds classifiers with one NCHW image input.",
        )
    _, c, h, w = dims
    if min(c, h, w) < 1:
        raise OctbatchError(
            f"{onnx_path}: input {inp.name!r} has dynamic C/H/W {dims}",
            "Export the model with a fixed input size; only the batch may be dynamic.",
        )
    lo, opt, hi = batch
    profile = builder.create_optimization_profile()
    profile.set_shape(inp.name, (lo, c, h, w), (opt, c, h, w), (hi, c, h, w))
    config.add_optimization_profile(profile)


def build_serialized_engine(
    onnx_path: str,
    *,
    precision: str = "fp16",
    batch: tuple[int, int, int] = (1, 64, 256),
    workspace_gb: float = 4.0,
    timing_cache: str | None = None,
    log: Log | None = None,
) -> bytes:
    """Parse ``onnx_path`` and return serialized engine bytes with one batch-dimension profile.

    ``onnx_path`` must already carry the precision (``precision`` only labels it and, on a TensorRT
    without strong typing, picks the builder flags): an fp16/bf16 graph from ``onnx_cast``, or a Q/DQ
    graph for int8. A persistent ``timing_cache`` makes rebuilds on the same GPU + TensorRT fast.
    """
    trt = _trt()
    if precision not in PRECISIONS:
        raise OctbatchError(f"unknown precision {precision!r} for TensorRT", f"Use one of {', '.join(PRECISIONS)}.")
    features = trt_features(trt)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, _parser = _parse(trt, builder, logger, onnx_path, features)  # the parser must outlive the build
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if not features["strongly_typed"]:
        for flag in _weak_flags(trt, precision, features):
            config.set_flag(flag)
    _add_batch_profile(builder, config, network, onnx_path, batch)
    cache = config.create_timing_cache(_read_timing_cache(timing_cache))
    config.set_timing_cache(cache, ignore_mismatch=False)
    if log:
        typing = "strongly typed" if features["strongly_typed"] else "weakly typed (builder flags)"
        lo, opt, hi = batch
        log(
            f"TensorRT {features['version']}: building {precision} engine ({typing}), batch profile {lo}:{opt}:{hi} (this can take minutes)"
        )
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise OctbatchError(
            f"TensorRT failed to build an engine from {onnx_path}",
            "Run again with a larger --workspace, or another --precision; TensorRT's log above says why.",
        )
    if timing_cache:
        _write_timing_cache(timing_cache, config.get_timing_cache().serialize())
    return bytes(memoryview(serialized))


def _precision_graph(info: ModelInfo, precision: str, calib_entries: Sequence | None, work: str, log: Log) -> str:
    """The ONNX file that carries ``precision`` in its tensor types (strongly typed builds)."""
    if precision in ("fp16", "bf16"):
        from ..onnx_cast import cast_model

        log(
            f"{precision}: converting the graph to {precision} with fp32 inputs/outputs (strongly typed TensorRT build)"
        )
        return cast_model(info.path, os.path.join(work, f"{precision}.onnx"), precision)
    if precision == "int8":
        entries = calib_entries or []
        log(f"int8: making a symmetric Q/DQ model calibrated on {len(entries)} scans (TensorRT explicit quantization)")
        src = os.path.join(work, "qdq.onnx")
        build_ort.quantize_static(info.path, src, calib_batches(info, entries, 32), info.input_name, symmetric=True)
        return src
    return info.path


def build_trt_files(
    info: ModelInfo,
    precision: str,
    profile: Sequence[int],
    calib_entries: Sequence | None,
    dst: str,
    *,
    workspace_gb: float,
    timing_cache: str | None,
    cache: Path,
    machine: dict,
    log: Log,
) -> None:
    """Write the TensorRT engine of ``info`` at ``precision`` to ``dst`` (its folder holds the work files)."""
    src = _precision_graph(info, precision, calib_entries, os.path.dirname(dst), log)
    if timing_cache is None:
        tag = f"{machine.get('gpu')}-{machine.get('tensorrt')}".replace(" ", "_").replace("/", "_")
        timing_cache = str(cache / f"timing-{tag}.cache")
    lo, opt, hi = profile
    data = build_serialized_engine(
        src, precision=precision, batch=(lo, opt, hi), workspace_gb=workspace_gb, timing_cache=timing_cache, log=log
    )
    with open(dst, "wb") as f:
        f.write(data)
