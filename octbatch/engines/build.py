"""build-engine: build (or fetch from the cache) a fingerprinted, guarded engine for a model.

Built engines live in a cache directory keyed by everything that determines them (``build_key``),
so an identical second build is instant; a build is published atomically (engine and sidecar
together). ``--precision best`` builds the float engine and int8 and keeps int8 only when it passed
the guard and is measured faster.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from .._version import __version__
from ..backends.registry import PRECISION_CHOICES
from ..errors import OctbatchError
from ..model import ModelInfo
from . import guard
from .build_ort import build_ort_files
from .build_trt import build_trt_files
from .fingerprint import (
    ENGINE_FORMAT,
    ORT_OPT_LEVEL,
    build_key,
    engine_cache_dir,
    machine_facts,
    parse_batch_profile,
    read_fingerprint,
    sidecar_path,
    write_json,
)
from .resolve import pick_backend
from .scans import calibration_hash, sample_entries, split_sample

__all__ = ["BuildResult", "build_engine", "build_tensorrt_engine"]

Log = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


@dataclass
class BuildResult:
    engine_path: str
    backend: str
    precision: str
    cache_hit: bool
    fingerprint: dict
    out: str | None = None
    messages: list = field(default_factory=list)
    selection: dict | None = None

    def to_dict(self) -> dict:
        return {
            "engine": self.out or self.engine_path,
            "cached_engine": self.engine_path,
            "backend": self.backend,
            "precision": self.precision,
            "cache_hit": self.cache_hit,
            "guard": self.fingerprint.get("guard"),
            "selection": self.selection,
            "fingerprint": str(sidecar_path(self.out or self.engine_path)),
        }


@dataclass(frozen=True)
class _Plan:
    """Everything one build needs besides its precision (what build_engine resolved)."""

    info: ModelInfo
    backend: str
    profile: tuple[int, int, int]
    calib: str | None
    calib_entries: list | None
    guard_entries: list | None
    workspace_gb: float
    timing_cache: str | None
    force: bool
    min_agreement: float
    cache: Path
    log: Log


def _check_request(backend: str, precision: str, calib: str | None) -> None:
    if backend == "onnxruntime" and precision in ("fp16", "bf16"):
        raise OctbatchError(
            f"{precision} is not useful with ONNX Runtime on a CPU (no fast {precision} kernels: it runs slower than fp32)",
            "Use --precision fp32 or int8 (with --calib ARCHIVE) on CPUs, or --backend tensorrt on an NVIDIA GPU.",
        )
    if precision == "int8" and not calib:
        raise OctbatchError(
            "int8 needs calibration scans", "Pass --calib ARCHIVE (a folder of real scans; a few hundred are enough)."
        )


def _samples(
    calib: str | None, calib_size: int, guard_archive: str | None, guard_size: int, log: Log
) -> tuple[list | None, list | None]:
    """(calibration scans, guard scans): the guard compares on held-out scans where it can."""
    calib_entries = guard_entries = None
    if calib:
        calib_entries, guard_entries = split_sample(calib, calib_size, guard_size)
    if guard_archive:
        guard_entries = sample_entries(guard_archive, guard_size)
    elif calib_entries and not guard_entries:
        log(
            "note: every --calib scan was used for calibration, so the accuracy guard compares on those same scans "
            "(in-sample); pass --guard-archive or a larger --calib archive for held-out scans"
        )
        guard_entries = calib_entries[:guard_size]
    return calib_entries, guard_entries


def build_engine(
    model: str | os.PathLike,
    *,
    backend: str = "auto",
    precision: str = "fp32",
    batch: str | Sequence[int] | None = None,
    calib: str | None = None,
    calib_size: int = 256,
    out: str | None = None,
    workspace_gb: float = 4.0,
    timing_cache: str | None = None,
    force: bool = False,
    guard_archive: str | None = None,
    guard_size: int = 256,
    min_agreement: float = 0.99,
    cache_dir: str | os.PathLike | None = None,
    log: Log = _quiet,
) -> BuildResult:
    """Build (or fetch from the cache) an engine for ``model``; see the package docstring."""
    from ..model import load_model_info

    info = load_model_info(model)
    if precision not in PRECISION_CHOICES:
        raise OctbatchError(f"unknown precision {precision!r}", f"Use one of {', '.join(PRECISION_CHOICES)}.")
    backend = pick_backend(backend, log)
    if backend == "tensorrt":
        machine_facts("tensorrt", strict=True)  # clear install / GPU error before any work
    profile = parse_batch_profile(batch)
    _check_request(backend, precision, calib)
    calib_entries, guard_entries = _samples(calib, calib_size, guard_archive, guard_size, log)
    plan = _Plan(
        info=info,
        backend=backend,
        profile=profile,
        calib=calib,
        calib_entries=calib_entries,
        guard_entries=guard_entries,
        workspace_gb=workspace_gb,
        timing_cache=timing_cache,
        force=force,
        min_agreement=min_agreement,
        cache=Path(cache_dir) if cache_dir else engine_cache_dir(),
        log=log,
    )
    result = _build_best(plan) if precision == "best" else _build_one(plan, precision)
    if out:
        result.out = _export(result.engine_path, out)
        log(f"engine written to {result.out} (fingerprint {sidecar_path(result.out)})")
    return result


def _export(engine: str, out: str) -> str:
    """Copy a cached engine and its fingerprint to ``out`` (copies, not links: the cache may be pruned)."""
    dst = Path(out)
    if dst.is_dir():
        dst = dst / Path(engine).name
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.resolve() != Path(engine).resolve():
        shutil.copy2(engine, dst)
        shutil.copy2(sidecar_path(engine), sidecar_path(dst))
    return str(dst)


def _base_fingerprint(plan: _Plan, precision: str, machine: dict) -> dict:
    info, backend = plan.info, plan.backend
    calib_entries = plan.calib_entries if precision == "int8" else None
    return {
        "format": ENGINE_FORMAT,
        "octbatch": __version__,
        "backend": backend,
        "precision": precision,
        "batch_profile": list(plan.profile),
        "source": {"path": os.path.abspath(info.path), "sha256": info.sha256},
        "model": {
            "classes": list(info.classes),
            "preprocessing": json.loads(info.preprocessing.to_json()),
            "output": info.output_kind,
            "card": info.card,
        },
        "calibration": None
        if not calib_entries
        else {
            "archive": os.path.abspath(str(plan.calib)),
            "files": len(calib_entries),
            "hash": calibration_hash(calib_entries),
        },
        "options": {"ort_graph_optimization": ORT_OPT_LEVEL}
        if backend == "onnxruntime"
        else {"int8_mode": "explicit-qdq", "typing": "strong"},
        # An EXTENDED-level ORT graph is plain ONNX + portable contrib ops; only ALL (layout
        # transforms for the build CPU's vector width) would tie it to the CPU.
        "hardware_specific": backend == "tensorrt",
        "machine": machine,
    }


def _ext(backend: str) -> str:
    return ".onnx" if backend == "onnxruntime" else ".engine"


def _cached(engine: Path) -> dict | None:
    """The fingerprint of a complete cached engine (engine and sidecar both there), else None."""
    return read_fingerprint(engine) if engine.exists() and sidecar_path(engine).exists() else None


def _build_files(plan: _Plan, precision: str, dst: str, machine: dict) -> None:
    if plan.backend == "onnxruntime":
        build_ort_files(plan.info, precision, plan.calib_entries, dst, plan.log)
    else:  # tensorrt: strongly typed builds, the precision lives in the graph
        build_trt_files(
            plan.info,
            precision,
            plan.profile,
            plan.calib_entries,
            dst,
            workspace_gb=plan.workspace_gb,
            timing_cache=plan.timing_cache,
            cache=plan.cache,
            machine=machine,
            log=plan.log,
        )


def _build_one(plan: _Plan, precision: str) -> BuildResult:
    backend, log = plan.backend, plan.log
    machine = machine_facts(backend)
    fp = _base_fingerprint(plan, precision, machine)
    key = build_key(fp)
    final_dir = plan.cache / key
    name = f"{Path(plan.info.path).stem}.{precision}{_ext(backend)}"
    engine = final_dir / name
    cached = _cached(engine)
    if cached is not None:
        log(
            f"cache hit: {engine} (built {cached.get('built_at')}; same model, backend, precision, profile, calibration and machine)"
        )
        return BuildResult(str(engine), backend, precision, True, cached)
    plan.cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".build-{key}-", dir=plan.cache))
    try:
        tmp_engine = work / name
        _build_and_guard(plan, precision, tmp_engine, fp, machine)
        cached = _cached(engine)
        if cached is not None:  # an identical concurrent build finished first
            log(f"cache hit: {engine} (an identical build finished first)")
            return BuildResult(str(engine), backend, precision, True, cached)
        _publish(work, final_dir, engine)
        log(f"built {backend} {precision} engine in {fp['build_seconds']:.1f} s: {engine}")
        return BuildResult(str(engine), backend, precision, False, fp)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _build_and_guard(plan: _Plan, precision: str, tmp_engine: Path, fp: dict, machine: dict) -> None:
    """Build into ``tmp_engine``, judge it, and write its sidecar (``fp`` completed in place)."""
    from ..model import file_sha256

    t0 = time.perf_counter()
    _build_files(plan, precision, str(tmp_engine), machine)
    fp["build_seconds"] = round(time.perf_counter() - t0, 3)
    fp["built_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    fp["engine_sha256"] = file_sha256(tmp_engine)
    if plan.guard_entries:
        fp["guard"] = guard.judge(
            plan.info,
            plan.backend,
            str(tmp_engine),
            precision,
            profile=plan.profile,
            calib_entries=plan.calib_entries,
            guard_entries=plan.guard_entries,
            min_agreement=plan.min_agreement,
            force=plan.force,
            log=plan.log,
        )
    else:
        fp["guard"] = None
        plan.log("accuracy guard skipped: no scans given (pass --guard-archive DIR or --calib ARCHIVE)")
    write_json(sidecar_path(tmp_engine), fp)


def _publish(work: Path, final_dir: Path, engine: Path) -> None:
    """Move the work folder into place: engine and sidecar appear together."""
    if final_dir.exists():  # leftover of an interrupted build (no complete engine + sidecar)
        shutil.rmtree(final_dir, ignore_errors=True)
    try:
        os.replace(work, final_dir)  # atomic publish of engine + sidecar together
    except OSError:
        if not (engine.exists() and sidecar_path(engine).exists()):  # a concurrent build won the race: fine
            raise


def _build_best(plan: _Plan) -> BuildResult:
    """Build the float engine and (with --calib) int8; keep int8 only if it passed the guard AND is faster."""
    from ..backends import make_runner

    base = "fp32" if plan.backend == "onnxruntime" else "fp16"
    candidates = {base: _build_one(plan, base)}
    notes = []
    if plan.calib_entries:
        try:
            candidates["int8"] = _build_one(replace(plan, force=False), "int8")
        except OctbatchError as exc:
            notes.append(f"int8 rejected by the accuracy guard: {exc.what}")
            plan.log(notes[-1])
    else:
        notes.append("int8 not tried: no --calib scans")
    x = guard.speed_batch(plan.info, plan.guard_entries, plan.profile[1])
    speeds = {}
    for prec, res in candidates.items():
        with make_runner(plan.backend, plan.info, engine_path=res.engine_path, precision=prec) as r:
            speeds[prec] = guard.throughput(r, x)
    picked = _pick(base, speeds, len(x), notes)
    for n in notes[-1:]:
        plan.log(n)
    result = candidates[picked]
    result.selection = {
        "picked": picked,
        "img_per_s": {k: round(v, 1) for k, v in speeds.items()},
        "batch": len(x),
        "notes": notes,
    }
    fp = dict(result.fingerprint)
    fp["selection"] = result.selection
    write_json(sidecar_path(result.engine_path), fp)
    result.fingerprint = fp
    return result


def _pick(base: str, speeds: dict, batch: int, notes: list) -> str:
    if "int8" not in speeds:
        return base
    ratio = speeds["int8"] / speeds[base]
    if ratio >= guard.BEST_MIN_SPEEDUP:
        notes.append(f"int8 is {ratio:.2f}x the {base} throughput at batch {batch}: picked int8")
        return "int8"
    notes.append(
        f"int8 was NOT faster than {base} here ({ratio:.2f}x at batch {batch}; needs {guard.BEST_MIN_SPEEDUP:.2f}x): picked {base}"
    )
    return base


def build_tensorrt_engine(
    onnx_path: str,
    out_path: str,
    precision: str = "fp16",
    batch: Sequence[int] = (1, 64, 256),
    *,
    workspace_gb: float = 4.0,
    timing_cache: str | None = None,
    calib: str | None = None,
    calib_size: int = 256,
    guard_archive: str | None = None,
    force: bool = False,
    log: Log = print,
) -> BuildResult:
    """One call for scripts (benchmarks/gpu_check.py): build a fingerprinted TensorRT engine to ``out_path``."""
    return build_engine(
        onnx_path,
        backend="tensorrt",
        precision=precision,
        batch=tuple(batch),
        calib=calib,
        calib_size=calib_size,
        out=out_path,
        workspace_gb=workspace_gb,
        timing_cache=timing_cache,
        guard_archive=guard_archive,
        force=force,
        log=log,
    )
