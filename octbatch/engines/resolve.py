"""Which engine a run uses: ``pick_backend`` for "auto", and ``resolve_engine_for_run`` for --engine.

``resolve_engine_for_run`` checks an engine's fingerprint against this machine before anything
loads it, and refuses (or, with --rebuild-on-mismatch, rebuilds) one built for another machine.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from ..errors import OctbatchError
from .fingerprint import (
    DEFAULT_BATCH,
    check_fingerprint,
    describe_mismatch,
    machine_facts,
    read_fingerprint,
    sidecar_path,
)

__all__ = ["ResolvedEngine", "pick_backend", "resolve_engine_for_run"]

Log = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def pick_backend(backend: str, log: Log = _quiet) -> str:
    """--backend auto for building an engine: octbatch.choice.choose_backend(building=True), the GPU
    confirmed through TensorRT's own CUDA runtime (cuda-python)."""
    from ..choice import Facts, choose_backend, installed

    if backend != "auto":
        return backend
    has_trt, cuda, detail = installed("tensorrt"), False, ""
    if has_trt:
        try:
            from ..backends.tensorrt import cuda_facts

            detail = f"; GPU {cuda_facts()['gpu']!r}"
            cuda = True
        except Exception as exc:  # noqa: BLE001 - any failure means: no usable GPU
            detail = f"; TensorRT imports but no usable CUDA GPU: {str(exc)[:120]}"
    c = choose_backend(Facts(cuda=cuda, tensorrt=has_trt), building=True)
    reason = "TensorRT is not installed; CPU engine" if not has_trt else c.reason + detail
    log(f"backend auto: picked {c.name} ({reason})")
    return c.name


@dataclass(frozen=True)
class ResolvedEngine:
    backend: str
    engine_path: str
    precision: str
    model_path: str
    fingerprint: dict


def _read(p: Path, backend: str) -> dict:
    if not p.is_file():
        raise OctbatchError(f"engine {p} does not exist", "Build one with octbatch build-engine MODEL.onnx --out PATH.")
    fp = read_fingerprint(p)
    if fp is None:
        raise OctbatchError(
            f"engine {p} has no fingerprint ({sidecar_path(p).name} is missing)",
            "Build it with octbatch build-engine (which writes the fingerprint), or pass a plain ONNX model as --model.",
        )
    eb = fp.get("backend")
    if backend not in ("auto", eb):
        raise OctbatchError(
            f"engine {p} is a {eb} engine but --backend is {backend}", f"Drop --backend or use --backend {eb}."
        )
    return fp


def _sha_matches(path: str | None, sha: object) -> bool:
    from ..model import file_sha256

    return bool(path) and Path(str(path)).is_file() and file_sha256(str(path)) == sha


def _differences(fp: dict, here: dict, model: str | None) -> list[str]:
    diffs = check_fingerprint(fp, here)
    src = fp.get("source", {})
    if model and Path(model).is_file() and not _sha_matches(model, src.get("sha256")):
        diffs.append(
            f"model: engine was built from {src.get('path')} (sha256 {str(src.get('sha256'))[:12]}), --model {model} differs"
        )
    return diffs


def _rebuild(p: Path, fp: dict, what: str, model: str | None, log: Log) -> dict:
    """Rebuild the engine at ``p`` from its source model as its fingerprint describes; the new fingerprint."""
    from .build import build_engine

    source = model or fp.get("source", {}).get("path")
    if not source or not Path(source).is_file():
        raise OctbatchError(
            f"{what}; cannot rebuild: the source model {source} is gone",
            "Pass --model SOURCE.onnx to rebuild from it.",
        )
    log(f"{what}: rebuilding")
    calib = (fp.get("calibration") or {}).get("archive")
    if calib and not Path(calib).is_dir():
        raise OctbatchError(
            f"cannot rebuild the int8 engine: its calibration archive {calib} is gone",
            "Rebuild by hand with octbatch build-engine --calib ARCHIVE.",
        )
    res = build_engine(
        source,
        backend=cast(str, fp.get("backend")),
        precision=fp.get("precision", "fp32"),
        batch=fp.get("batch_profile"),
        calib=calib,
        calib_size=(fp.get("calibration") or {}).get("files", 256),
        out=str(p),
        log=log,
    )
    return res.fingerprint


def _model_path(p: Path, fp: dict, model: str | None) -> str:
    """The model whose metadata the run reads: --model, else the engine's source if unchanged."""
    if model:
        return model
    src = fp.get("source", {})
    sp = src.get("path")
    if _sha_matches(sp, src.get("sha256")):
        return str(sp)
    if fp.get("backend") != "onnxruntime":
        raise OctbatchError(
            f"the source model of {p} ({sp}) is missing or changed, and a TensorRT engine does not carry the model's metadata",
            "Pass --model SOURCE.onnx (the model the engine was built from).",
        )
    return str(p)  # ORT engines carry the metadata_props of their source


def resolve_engine_for_run(
    engine_path: str, *, backend: str = "auto", rebuild: bool = False, model: str | None = None, log: Log | None = None
) -> ResolvedEngine:
    """Check ``engine_path``'s fingerprint against this machine before anything loads it."""
    log = log or _stderr
    p = Path(engine_path)
    fp = _read(p, backend)
    eb = cast(str, fp.get("backend"))
    here = machine_facts(eb, strict=False)
    diffs = _differences(fp, here, model)
    if diffs:
        what = describe_mismatch(str(p), fp, here, diffs)
        if not rebuild:
            src = fp.get("source", {})
            batch = ":".join(str(b) for b in fp.get("batch_profile", DEFAULT_BATCH))
            raise OctbatchError(
                what,
                f"Rebuild it here: octbatch build-engine {model or src.get('path')} --backend {eb} "
                f"--precision {fp.get('precision')} --batch {batch} --out {p}; or pass --rebuild-on-mismatch",
            )
        fp = _rebuild(p, fp, what, model, log)
    return ResolvedEngine(eb, str(p), fp.get("precision", "fp32"), _model_path(p, fp, model), fp)
