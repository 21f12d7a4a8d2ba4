"""build-engine: turn an ONNX classifier into the fastest thing this machine runs, safely.

Two backends behind one function (``build_engine``):
  * onnxruntime (CPU): fp32 = the graph optimized once and saved (level EXTENDED: portable across
    CPUs; ALL adds layout transforms that can tie the file to the CPU it was made on), int8 = static
    Q/DQ quantization calibrated on real scans through octbatch's own decode + normalize. Dynamic
    quantization is never used: measured ~10x slower than fp32 here.
  * tensorrt (GPU): a strongly typed serialized engine with one batch-dimension profile
    (``engine_build_trt``; fp16/bf16 from a converted graph, ``onnx_cast``; int8 from a Q/DQ graph).

Every engine gets a sidecar fingerprint (``ENGINE.fingerprint.json``) recording what it was built
from and on: ``run --engine`` refuses an engine whose fingerprint does not match the machine (or
rebuilds it), which is what makes engines safe to cache and share. Built engines live in a cache
directory keyed by everything that determines them, so an identical second build is instant.
An accuracy guard compares every engine with the source model (ONNX Runtime fp32) on real scans
and refuses int8 engines that disagree too often.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._version import __version__
from .errors import OctbatchError

__all__ = [
    "BACKENDS",
    "PRECISIONS",
    "SIDECAR_SUFFIX",
    "BuildResult",
    "ResolvedEngine",
    "build_engine",
    "build_tensorrt_engine",
    "resolve_engine_for_run",
    "inspect_engine",
    "check_fingerprint",
    "describe_mismatch",
    "machine_facts",
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

BACKENDS = ("auto", "onnxruntime", "tensorrt")
PRECISIONS = ("fp32", "fp16", "bf16", "int8", "best")
SIDECAR_SUFFIX = ".fingerprint.json"
ENGINE_FORMAT = 1  # bump when the layout of cached engines or fingerprints changes
ORT_OPT_LEVEL = "extended"
DEFAULT_BATCH = (1, 64, 128)
# int8 must beat the float engine by this much to be picked by --precision best (noise margin).
BEST_MIN_SPEEDUP = 1.05
# CPU instruction-set extensions that decide which ORT kernels a hardware-specific graph may use.
_ISA_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "asimd",
    "sve",
)

Log = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


# --------------------------------------------------------------------------- facts and fingerprints


def cpu_facts() -> dict:
    name, flags = platform.processor() or "", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, val = line.partition(":")
                key = key.strip()
                if key in ("model name", "Model") and not name:
                    name = val.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(val.split())
    except OSError:
        pass
    return {
        "cpu": name or platform.machine(),
        "arch": platform.machine(),
        "isa": sorted(f for f in _ISA_FLAGS if f in flags),
    }


def machine_facts(backend: str, *, strict: bool = True) -> dict:
    """What decides whether an engine of ``backend`` runs here. strict=False never raises: a missing
    library or GPU shows as None (so that a mismatch message can say "this machine has none")."""
    facts: dict = {"backend": backend}
    if backend == "onnxruntime":
        try:
            import onnxruntime as ort  # noqa: PLC0415 - heavy, optional until used

            facts["onnxruntime"] = ort.__version__
        except ImportError:
            if strict:
                from ._deps import require

                require("onnxruntime", purpose="ONNX Runtime engines")
            facts["onnxruntime"] = None
        facts.update(cpu_facts())
        return facts
    if backend == "tensorrt":
        from .backends import tensorrt as trt_backend

        facts["tensorrt"] = trt_backend.tensorrt_version()
        if strict and facts["tensorrt"] is None:
            trt_backend._trt()  # raises the install hint
        try:
            facts.update(trt_backend.cuda_facts())
        except Exception as exc:  # noqa: BLE001 - no cuda-python, no driver, no GPU
            if strict and isinstance(exc, OctbatchError):
                raise
            if strict:
                raise OctbatchError(
                    f"TensorRT is installed but no usable CUDA GPU was found ({str(exc)[:200]})",
                    "Run on a machine with an NVIDIA GPU and driver, or use --backend onnxruntime.",
                ) from exc
            facts.update({"gpu": None, "compute_capability": None, "cuda_runtime": None, "cuda_driver_api": None})
        return facts
    raise OctbatchError(f"unknown backend {backend!r}", "Use onnxruntime or tensorrt.")


# (fingerprint machine key, label in messages). TensorRT plans are tied to the TensorRT version and
# to the GPU (by default the exact model, not only its compute capability).
_COMPARED = {
    "onnxruntime": (("onnxruntime", "ONNX Runtime version"),),
    "tensorrt": (("tensorrt", "TensorRT version"), ("gpu", "GPU"), ("compute_capability", "compute capability")),
}


def check_fingerprint(fp: dict, here: dict) -> list[str]:
    """Each way the machine ``here`` differs from the one the engine was built for (empty: it runs).

    Pure function: ``here`` is ``machine_facts(...)`` or a fake in tests."""
    diffs: list[str] = []
    if fp.get("format") != ENGINE_FORMAT:
        diffs.append(f"engine format: built as format {fp.get('format')!r}, this octbatch reads format {ENGINE_FORMAT}")
    backend = fp.get("backend")
    if here.get("backend") != backend:
        diffs.append(f"backend: engine is for {backend!r}, checked against {here.get('backend')!r}")
        return diffs
    built = fp.get("machine", {})
    for key, label in _COMPARED.get(backend, ()):
        if built.get(key) != here.get(key):
            diffs.append(f"{label}: built with {_show(built.get(key))}, this machine has {_show(here.get(key))}")
    if backend == "onnxruntime" and fp.get("hardware_specific"):
        missing = sorted(set(built.get("isa", ())) - set(here.get("isa", ())))
        if missing or built.get("arch") != here.get("arch"):
            diffs.append(
                f"CPU: built on {built.get('cpu')!r} ({built.get('arch')}); this machine ({here.get('cpu')!r}, {here.get('arch')}) "
                f"lacks {', '.join(missing) or 'the same architecture'}"
            )
    return diffs


def _show(value) -> str:
    return "none" if value is None else repr(value)


def describe_mismatch(engine: str, fp: dict, here: dict, diffs: Sequence[str]) -> str:
    built = fp.get("machine", {})
    if fp.get("backend") == "tensorrt":

        def gpu(f):
            cc = f.get("compute_capability")
            where = f"GPU {f.get('gpu')!r} (sm_{cc.replace('.', '')})" if f.get("gpu") and cc else "no usable GPU"
            return f"{where} with TensorRT {f.get('tensorrt') or 'not installed'}"

        head = f"engine {engine} was built for {gpu(built)}; this machine has {gpu(here)}"
    else:
        head = (
            f"engine {engine} was built with ONNX Runtime {built.get('onnxruntime')} on {built.get('cpu')!r}; "
            f"this machine has ONNX Runtime {here.get('onnxruntime')} on {here.get('cpu')!r}"
        )
    return f"{head} (differs: {'; '.join(diffs)})"


def sidecar_path(engine: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(engine)}{SIDECAR_SUFFIX}")


def read_fingerprint(engine: str | os.PathLike) -> dict | None:
    p = sidecar_path(engine)
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())
    except ValueError as exc:
        raise OctbatchError(
            f"fingerprint {p} is not valid JSON ({exc})", "Rebuild the engine with octbatch build-engine."
        ) from None


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def build_key(fp: dict) -> str:
    """Stable key of everything that determines an engine's bytes (not when it was built)."""
    compared = {k: fp.get("machine", {}).get(k) for k, _ in _COMPARED.get(fp["backend"], ())}
    if fp.get("hardware_specific"):
        compared["isa"] = fp.get("machine", {}).get("isa")
    key = {
        "format": ENGINE_FORMAT,
        "model_sha256": fp["source"]["sha256"],
        "backend": fp["backend"],
        "precision": fp["precision"],
        "batch": list(fp.get("batch_profile") or ()),
        "calibration": (fp.get("calibration") or {}).get("hash"),
        "options": fp.get("options", {}),
        "machine": compared,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


def engine_cache_dir() -> Path:
    env = os.environ.get("OCTBATCH_ENGINE_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "octbatch" / "engines"


def parse_batch_profile(text: str | Sequence[int] | None) -> tuple[int, int, int]:
    if text is None:
        return DEFAULT_BATCH
    if isinstance(text, str):
        try:
            parts = [int(x) for x in text.split(":")]
        except ValueError:
            parts = []
        if len(parts) == 1:
            parts = [1, parts[0], parts[0]]
        if len(parts) != 3:
            raise OctbatchError(
                f"--batch {text!r} is not MIN:OPT:MAX", "Use e.g. --batch 1:64:128 (or one number for 1:N:N)."
            )
    else:
        parts = list(text)
    lo, opt, hi = parts
    if not (1 <= lo <= opt <= hi):
        raise OctbatchError(f"batch profile {lo}:{opt}:{hi} is not ordered", "Give MIN <= OPT <= MAX, all at least 1.")
    return lo, opt, hi


# --------------------------------------------------------------------------- real scans for calibration / guard


def sample_entries(archive: str | os.PathLike, n: int) -> list:
    """n files spread evenly over the archive's deterministic order (so every class folder shows up)."""
    from .archive import discover

    entries = list(discover(archive))
    if not entries:
        raise OctbatchError(f"no images found under {archive}", "Point --calib/--guard-archive at a folder of scans.")
    if n >= len(entries):
        return entries
    idx = np.unique(np.linspace(0, len(entries) - 1, n).round().astype(int))
    return [entries[i] for i in idx]


def split_sample(archive: str | os.PathLike, n_calib: int, n_guard: int) -> tuple[list, list]:
    """Disjoint (calibration, guard) samples from one archive, each spread evenly over it, so the
    guard judges int8 on scans it was not calibrated on. The guard sample is empty when the
    calibration sample takes every file."""
    from .archive import discover

    entries = list(discover(archive))
    if not entries:
        raise OctbatchError(f"no images found under {archive}", "Point --calib at a folder of scans.")
    if n_calib >= len(entries):
        return entries, []
    idx = np.unique(np.linspace(0, len(entries) - 1, n_calib).round().astype(int))
    taken = set(idx.tolist())
    rest = [e for i, e in enumerate(entries) if i not in taken]
    if n_guard < len(rest):
        rest = [rest[i] for i in np.unique(np.linspace(0, len(rest) - 1, n_guard).round().astype(int))]
    return [entries[i] for i in idx], rest


def calibration_hash(entries: Sequence) -> str:
    """Identity of a scan sample: paths, sizes and mtimes (cheap; a changed file changes it)."""
    h = hashlib.sha256()
    for e in entries:
        h.update(f"{e.path}\t{e.size}\t{e.mtime_ns}\n".encode())
    return h.hexdigest()


def iter_scan_batches(
    entries: Sequence, spec, batch: int, *, drop_last: bool = False
) -> Iterator[tuple[np.ndarray, list]]:
    """(float32 NCHW input, labels) per batch, decoded exactly as ``run`` decodes; unreadable files are skipped."""
    from .decode import make_decoder
    from .preprocess import normalize_into

    decoder = make_decoder("cpu", spec)
    try:
        pending_x: list[np.ndarray] = []
        pending_y: list = []
        for start in range(0, len(entries), batch):
            chunk = entries[start : start + batch]
            d = decoder.decode_batch([e.abspath for e in chunk])
            ok = d.ok
            if not ok.any():
                continue
            x = np.empty((int(ok.sum()), spec.channels, spec.height, spec.width), np.float32)
            normalize_into(x, d.images[ok], spec)
            pending_x.append(x)
            pending_y.extend(e.label for e, good in zip(chunk, ok) if good)
            while sum(len(a) for a in pending_x) >= batch:
                allx = np.concatenate(pending_x)
                yield allx[:batch], pending_y[:batch]
                pending_x, pending_y = [allx[batch:]], pending_y[batch:]
        rest = sum(len(a) for a in pending_x)
        if rest and not drop_last:
            yield np.concatenate(pending_x), pending_y
    finally:
        close = getattr(decoder, "close", None)
        if close:
            close()


# --------------------------------------------------------------------------- accuracy guard


def accuracy_guard(
    model_info, backend: str, engine_path: str, precision: str, entries: Sequence, *, batch: int = 64
) -> dict:
    """Compare the engine with the source model (ONNX Runtime fp32, unoptimized file) on real scans."""
    from .backends import make_runner
    from .backends.onnxrt import OnnxRuntimeRunner

    ref_p, eng_p, labels = [], [], []
    with (
        OnnxRuntimeRunner(model_info, path=model_info.path, precision="fp32") as ref,
        make_runner(backend, model_info, engine_path=engine_path, precision=precision) as eng,
    ):
        for x, y in iter_scan_batches(entries, model_info.preprocessing, batch):
            ref_p.append(ref.infer(x))
            eng_p.append(eng.infer(x))
            labels.extend(y)
    if not ref_p:
        raise OctbatchError(
            "none of the guard scans could be decoded", "Pass --guard-archive or --calib with readable JPEG scans."
        )
    r, e = np.concatenate(ref_p), np.concatenate(eng_p)
    return _guard_numbers(r, e, labels, list(model_info.classes))


def _guard_numbers(ref: np.ndarray, eng: np.ndarray, labels: Sequence, classes: list) -> dict:
    rt, et = ref.argmax(1), eng.argmax(1)
    out = {
        "n": int(len(rt)),
        "agreement": float((rt == et).mean()),
        "max_abs_prob_diff": float(np.abs(ref - eng).max()),
        "mean_abs_prob_diff": float(np.abs(ref - eng).mean()),
    }
    idx = {c: i for i, c in enumerate(classes)}
    known = np.array([idx.get(lbl, -1) if lbl is not None else -1 for lbl in labels])
    mask = known >= 0
    if mask.any():
        out["labelled"] = int(mask.sum())
        out["accuracy_reference"] = float((rt[mask] == known[mask]).mean())
        out["accuracy_engine"] = float((et[mask] == known[mask]).mean())
    return out


def _throughput(runner, x: np.ndarray, *, warmup: int = 2, repeats: int = 5) -> float:
    """Median images/s of ``runner`` on batch ``x`` (what --precision best compares)."""
    for _ in range(warmup):
        runner.infer(x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        runner.infer(x)
        times.append(time.perf_counter() - t0)
    return float(len(x) / np.median(times))


# --------------------------------------------------------------------------- ORT builds


def _copy_metadata(src_meta: dict, dst: str, extra: dict) -> None:
    """Quantized models lose octbatch's metadata_props; put them back so the engine describes itself."""
    from ._deps import require

    onnx = require("onnx", purpose="writing model metadata into built engines")
    m = onnx.load(dst)
    have = {p.key: p for p in m.metadata_props}
    for k, v in {**src_meta, **extra}.items():
        if k in have:
            have[k].value = v
        else:
            p = m.metadata_props.add()
            p.key, p.value = k, v
    onnx.save(m, dst)


def _ort_optimize(src: str, dst: str) -> None:
    from ._deps import require

    ort = require("onnxruntime", purpose="optimizing ONNX models")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = dst
    so.log_severity_level = 3
    ort.InferenceSession(src, sess_options=so, providers=["CPUExecutionProvider"])
    if not os.path.exists(dst):
        raise OctbatchError(
            f"ONNX Runtime did not write the optimized model {dst}", "Check free disk space and permissions."
        )


def _ort_quantize_static(
    src: str, dst: str, batches: Iterator[np.ndarray], input_name: str, *, symmetric: bool = False
) -> None:
    """Static Q/DQ int8, calibrated on ``batches``. symmetric=True is the form TensorRT's explicit
    quantization needs (int8 activations and weights, zero point 0); ORT CPU runs u8 activations x s8
    weights fastest (VNNI)."""
    from ._deps import require

    require("onnx", purpose="int8 quantization")
    q = require("onnxruntime.quantization", purpose="int8 quantization")

    class ScanReader(q.CalibrationDataReader):
        def __init__(self):
            self._it = iter(batches)

        def get_next(self):
            x = next(self._it, None)
            return None if x is None else {input_name: x}

    work = tempfile.mkdtemp(prefix="octbatch-quant-", dir=os.path.dirname(dst) or None)
    try:
        pre = os.path.join(work, "pre.onnx")
        try:  # shape inference + light optimization make more nodes quantizable; optional
            from onnxruntime.quantization.shape_inference import quant_pre_process

            quant_pre_process(src, pre, skip_symbolic_shape=True)
        except Exception:  # noqa: BLE001 - a model it cannot pre-process still quantizes
            pre = src
        q.quantize_static(
            pre,
            dst,
            ScanReader(),
            quant_format=q.QuantFormat.QDQ,
            per_channel=True,
            activation_type=q.QuantType.QInt8 if symmetric else q.QuantType.QUInt8,
            weight_type=q.QuantType.QInt8,
            calibrate_method=q.CalibrationMethod.MinMax,
            extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True},
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------- build


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


def pick_backend(backend: str, log: Log = _quiet) -> str:
    from ._deps import is_available

    if backend != "auto":
        return backend
    if is_available("tensorrt"):
        try:
            from .backends.tensorrt import cuda_facts

            gpu = cuda_facts()["gpu"]
            log(f"backend auto: picked tensorrt (TensorRT imports and GPU {gpu!r} is present)")
            return "tensorrt"
        except Exception as exc:  # noqa: BLE001 - any failure means: no usable GPU
            log(f"backend auto: picked onnxruntime (TensorRT imports but no usable CUDA GPU: {str(exc)[:120]})")
            return "onnxruntime"
    log("backend auto: picked onnxruntime (TensorRT is not installed; CPU engine)")
    return "onnxruntime"


def _ext(backend: str) -> str:
    return ".onnx" if backend == "onnxruntime" else ".engine"


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
    """Build (or fetch from the cache) an engine for ``model``; see the module docstring."""
    from .model import load_model_info

    info = load_model_info(model)
    if precision not in PRECISIONS:
        raise OctbatchError(f"unknown precision {precision!r}", f"Use one of {', '.join(PRECISIONS)}.")
    backend = pick_backend(backend, log)
    if backend == "tensorrt":
        machine_facts("tensorrt", strict=True)  # clear install / GPU error before any work
    profile = parse_batch_profile(batch)
    if backend == "onnxruntime" and precision in ("fp16", "bf16"):
        raise OctbatchError(
            f"{precision} is not useful with ONNX Runtime on a CPU (no fast {precision} kernels: it runs slower than fp32)",
            "Use --precision fp32 or int8 (with --calib ARCHIVE) on CPUs, or --backend tensorrt on an NVIDIA GPU.",
        )
    if precision == "int8" and not calib:
        raise OctbatchError(
            "int8 needs calibration scans", "Pass --calib ARCHIVE (a folder of real scans; a few hundred are enough)."
        )
    calib_entries = guard_entries = None
    if calib:
        calib_entries, held_out = split_sample(calib, calib_size, guard_size)
        guard_entries = held_out
    if guard_archive:
        guard_entries = sample_entries(guard_archive, guard_size)
    elif calib_entries and not guard_entries:
        log(
            "note: every --calib scan was used for calibration, so the accuracy guard compares on those same scans "
            "(in-sample); pass --guard-archive or a larger --calib archive for held-out scans"
        )
        guard_entries = calib_entries[:guard_size]
    cache = Path(cache_dir) if cache_dir else engine_cache_dir()

    kw = dict(
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
        cache=cache,
        log=log,
    )
    if precision == "best":
        result = _build_best(**kw)
    else:
        result = _build_one(precision=precision, **kw)
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


def _base_fingerprint(
    info, backend: str, precision: str, profile, calib: str | None, calib_entries, machine: dict
) -> dict:
    return {
        "format": ENGINE_FORMAT,
        "octbatch": __version__,
        "backend": backend,
        "precision": precision,
        "batch_profile": list(profile),
        "source": {"path": os.path.abspath(info.path), "sha256": info.sha256},
        "model": {
            "classes": list(info.classes),
            "preprocessing": json.loads(info.preprocessing.to_json()),
            "output": info.output_kind,
            "card": info.card,
        },
        "calibration": None
        if not calib_entries
        else {"archive": os.path.abspath(calib), "files": len(calib_entries), "hash": calibration_hash(calib_entries)},
        "options": {"ort_graph_optimization": ORT_OPT_LEVEL}
        if backend == "onnxruntime"
        else {"int8_mode": "explicit-qdq", "typing": "strong"},
        # An EXTENDED-level ORT graph is plain ONNX + portable contrib ops; only ALL (layout
        # transforms for the build CPU's vector width) would tie it to the CPU.
        "hardware_specific": backend == "tensorrt",
        "machine": machine,
    }


def _build_one(
    *,
    precision,
    info,
    backend,
    profile,
    calib,
    calib_entries,
    guard_entries,
    workspace_gb,
    timing_cache,
    force,
    min_agreement,
    cache,
    log,
) -> BuildResult:
    machine = machine_facts(backend)
    fp = _base_fingerprint(
        info, backend, precision, profile, calib, calib_entries if precision == "int8" else None, machine
    )
    key = build_key(fp)
    final_dir = cache / key
    name = f"{Path(info.path).stem}.{precision}{_ext(backend)}"
    engine = final_dir / name
    if engine.exists() and sidecar_path(engine).exists():
        cached = read_fingerprint(engine)
        log(
            f"cache hit: {engine} (built {cached.get('built_at')}; same model, backend, precision, profile, calibration and machine)"
        )
        return BuildResult(str(engine), backend, precision, True, cached)

    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".build-{key}-", dir=cache))
    try:
        tmp_engine = work / name
        t0 = time.perf_counter()
        _build_files(
            info,
            backend,
            precision,
            profile,
            calib_entries,
            str(tmp_engine),
            workspace_gb,
            timing_cache,
            cache,
            machine,
            log,
        )
        fp["build_seconds"] = round(time.perf_counter() - t0, 3)
        fp["built_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        fp["engine_sha256"] = _sha256(tmp_engine)
        if guard_entries:
            log(
                f"accuracy guard: comparing {precision} engine with the source model (ONNX Runtime fp32) on {len(guard_entries)} scans"
            )
            g = accuracy_guard(info, backend, str(tmp_engine), precision, guard_entries, batch=min(profile[2], 64))
            g["min_agreement"] = min_agreement
            g["held_out"] = not calib_entries or not (
                {e.abspath for e in guard_entries} & {e.abspath for e in calib_entries}
            )
            g["passed"] = g["agreement"] >= min_agreement
            fp["guard"] = g
            log(_guard_line(g))
            if not g["passed"]:
                if precision == "int8" and not force:
                    raise OctbatchError(
                        f"the int8 engine agrees with the fp32 model on only {g['agreement']:.1%} of {g['n']} scans "
                        f"(threshold {min_agreement:.1%}; max probability difference {g['max_abs_prob_diff']:.3f}); engine not kept",
                        "Calibrate on more, or more representative, scans (--calib, --calib-size), use fp32/fp16, or pass --force to keep it anyway.",
                    )
                g["forced"] = bool(force)
                log(
                    f"warning: {precision} engine is below the agreement threshold; kept"
                    + (" (--force)" if force else "")
                )
            if precision == "int8" and backend == "onnxruntime":
                _int8_speed_check(info, str(tmp_engine), guard_entries, profile[1], g, log)
        else:
            fp["guard"] = None
            log("accuracy guard skipped: no scans given (pass --guard-archive DIR or --calib ARCHIVE)")
        _write_json(sidecar_path(tmp_engine), fp)
        if engine.exists() and sidecar_path(engine).exists():  # an identical concurrent build finished first
            log(f"cache hit: {engine} (an identical build finished first)")
            return BuildResult(str(engine), backend, precision, True, read_fingerprint(engine))
        if final_dir.exists():  # leftover of an interrupted build (no complete engine + sidecar)
            shutil.rmtree(final_dir, ignore_errors=True)
        try:
            os.replace(work, final_dir)  # atomic publish of engine + sidecar together
        except OSError:
            if not (engine.exists() and sidecar_path(engine).exists()):  # a concurrent build won the race: fine
                raise
        log(f"built {backend} {precision} engine in {fp['build_seconds']:.1f} s: {engine}")
        return BuildResult(str(engine), backend, precision, False, fp)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _int8_speed_check(info, engine: str, entries, batch: int, g: dict, log: Log) -> None:
    """int8 is only worth having if it is faster here: time it against the fp32 source model as
    `run` loads it, on the same batch, and put the verdict into the guard's report."""
    from .backends.onnxrt import OnnxRuntimeRunner

    x = next((b for b, _ in iter_scan_batches(entries, info.preprocessing, batch)), None)
    if x is None:
        return
    with (
        OnnxRuntimeRunner(info, path=info.path, precision="fp32") as ref,
        OnnxRuntimeRunner(info, path=engine, precision="int8") as eng,
    ):
        speeds = {"fp32": _throughput(ref, x), "int8": _throughput(eng, x)}
    ratio = speeds["int8"] / speeds["fp32"]
    g["img_per_s"] = {k: round(v, 1) for k, v in speeds.items()}
    g["speed_batch"] = int(len(x))
    g["faster_than_fp32"] = bool(ratio >= BEST_MIN_SPEEDUP)
    if g["faster_than_fp32"]:
        log(
            f"speed: int8 {speeds['int8']:,.0f} img/s vs fp32 {speeds['fp32']:,.0f} img/s at batch {len(x)} ({ratio:.2f}x)"
        )
    else:
        log(
            f"warning: int8 is NOT faster than fp32 on this machine ({speeds['int8']:,.0f} vs {speeds['fp32']:,.0f} img/s at batch {len(x)}, "
            f"{ratio:.2f}x): prefer the fp32 engine (--precision best picks for you)"
        )


def _guard_line(g: dict) -> str:
    s = f"guard: top-1 agreement {g['agreement']:.2%} on {g['n']} scans, max |dp| {g['max_abs_prob_diff']:.4f}"
    if "accuracy_reference" in g:
        s += f"; accuracy fp32 {g['accuracy_reference']:.2%} vs engine {g['accuracy_engine']:.2%} ({g['labelled']} labelled)"
    return s


def _sha256(path) -> str:
    from .model import file_sha256

    return file_sha256(path)


def _calib_batches(info, entries, batch: int, *, drop_last: bool = False) -> Iterator[np.ndarray]:
    for x, _ in iter_scan_batches(entries, info.preprocessing, batch, drop_last=drop_last):
        yield x


def _build_files(
    info, backend, precision, profile, calib_entries, dst, workspace_gb, timing_cache, cache, machine, log
) -> None:
    meta = dict(info.metadata or {})
    if backend == "onnxruntime":
        if precision == "fp32":
            log("optimizing the graph with ONNX Runtime (level extended) and saving it")
            _ort_optimize(info.path, dst)
            return
        log(f"int8: static Q/DQ quantization calibrated on {len(calib_entries)} scans")
        _ort_quantize_static(info.path, dst, _calib_batches(info, calib_entries, 32), info.input_name)
        _copy_metadata(meta, dst, {"octbatch.precision": "int8"})
        return
    # tensorrt: strongly typed builds, the precision lives in the graph (engine_build_trt)
    from .engine_build_trt import build_serialized_engine

    src = info.path
    work = os.path.dirname(dst)
    if precision in ("fp16", "bf16"):
        from .onnx_cast import cast_model

        log(
            f"{precision}: converting the graph to {precision} with fp32 inputs/outputs (strongly typed TensorRT build)"
        )
        src = cast_model(info.path, os.path.join(work, f"{precision}.onnx"), precision)
    elif precision == "int8":
        log(
            f"int8: making a symmetric Q/DQ model calibrated on {len(calib_entries)} scans (TensorRT explicit quantization)"
        )
        src = os.path.join(work, "qdq.onnx")
        _ort_quantize_static(info.path, src, _calib_batches(info, calib_entries, 32), info.input_name, symmetric=True)
    if timing_cache is None:
        tag = f"{machine.get('gpu')}-{machine.get('tensorrt')}".replace(" ", "_").replace("/", "_")
        timing_cache = str(cache / f"timing-{tag}.cache")
    data = build_serialized_engine(
        src, precision=precision, batch=tuple(profile), workspace_gb=workspace_gb, timing_cache=timing_cache, log=log
    )
    with open(dst, "wb") as f:
        f.write(data)


def _build_best(*, info, backend, profile, calib, calib_entries, guard_entries, log, **kw) -> BuildResult:
    """Build the float engine and (with --calib) int8; keep int8 only if it passed the guard AND is faster."""
    from .backends import make_runner

    base = "fp32" if backend == "onnxruntime" else "fp16"
    common = dict(
        info=info,
        backend=backend,
        profile=profile,
        calib=calib,
        calib_entries=calib_entries,
        guard_entries=guard_entries,
        log=log,
    )
    candidates = {base: _build_one(precision=base, **common, **kw)}
    notes = []
    if calib_entries:
        try:
            candidates["int8"] = _build_one(precision="int8", **{**common, **kw, "force": False})
        except OctbatchError as exc:
            notes.append(f"int8 rejected by the accuracy guard: {exc.what}")
            log(notes[-1])
    else:
        notes.append("int8 not tried: no --calib scans")
    x = (
        next((b for b, _ in iter_scan_batches(guard_entries, info.preprocessing, profile[1])), None)
        if guard_entries
        else None
    )
    if x is None:
        spec = info.preprocessing
        x = (
            np.random.default_rng(0)
            .normal(0, 1, (profile[1], spec.channels, spec.height, spec.width))
            .astype(np.float32)
        )
    speeds = {}
    for prec, res in candidates.items():
        with make_runner(backend, info, engine_path=res.engine_path, precision=prec) as r:
            speeds[prec] = _throughput(r, x)
    picked = base
    if "int8" in speeds:
        ratio = speeds["int8"] / speeds[base]
        if ratio >= BEST_MIN_SPEEDUP:
            picked = "int8"
            notes.append(f"int8 is {ratio:.2f}x the {base} throughput at batch {len(x)}: picked int8")
        else:
            notes.append(
                f"int8 was NOT faster than {base} here ({ratio:.2f}x at batch {len(x)}; needs {BEST_MIN_SPEEDUP:.2f}x): picked {base}"
            )
    for n in notes[-1:]:
        log(n)
    result = candidates[picked]
    result.selection = {
        "picked": picked,
        "img_per_s": {k: round(v, 1) for k, v in speeds.items()},
        "batch": len(x),
        "notes": notes,
    }
    fp = dict(result.fingerprint)
    fp["selection"] = result.selection
    _write_json(sidecar_path(result.engine_path), fp)
    result.fingerprint = fp
    return result


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


# --------------------------------------------------------------------------- run --engine


@dataclass(frozen=True)
class ResolvedEngine:
    backend: str
    engine_path: str
    precision: str
    model_path: str
    fingerprint: dict


def resolve_engine_for_run(
    engine_path: str, *, backend: str = "auto", rebuild: bool = False, model: str | None = None, log: Log | None = None
) -> ResolvedEngine:
    """Check ``engine_path``'s fingerprint against this machine before anything loads it."""
    import click

    log = log or (lambda m: click.echo(m, err=True))
    p = Path(engine_path)
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
    here = machine_facts(eb, strict=False)
    diffs = check_fingerprint(fp, here)
    src = fp.get("source", {})
    if model:
        from .model import file_sha256

        if Path(model).is_file() and file_sha256(model) != src.get("sha256"):
            diffs.append(
                f"model: engine was built from {src.get('path')} (sha256 {str(src.get('sha256'))[:12]}), --model {model} differs"
            )
    if diffs:
        what = describe_mismatch(str(p), fp, here, diffs)
        if not rebuild:
            batch = ":".join(str(b) for b in fp.get("batch_profile", DEFAULT_BATCH))
            raise OctbatchError(
                what,
                f"Rebuild it here: octbatch build-engine {model or src.get('path')} --backend {eb} "
                f"--precision {fp.get('precision')} --batch {batch} --out {p}; or pass --rebuild-on-mismatch",
            )
        source = model or src.get("path")
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
            backend=eb,
            precision=fp.get("precision", "fp32"),
            batch=fp.get("batch_profile"),
            calib=calib,
            calib_size=(fp.get("calibration") or {}).get("files", 256),
            out=str(p),
            log=log,
        )
        fp = res.fingerprint
        src = fp["source"]
    model_path = model
    if not model_path:
        sp = src.get("path")
        if sp and Path(sp).is_file():
            from .model import file_sha256

            if file_sha256(sp) == src.get("sha256"):
                model_path = sp
        if model_path is None:
            if eb != "onnxruntime":
                raise OctbatchError(
                    f"the source model of {p} ({sp}) is missing or changed, and a TensorRT engine does not carry the model's metadata",
                    "Pass --model SOURCE.onnx (the model the engine was built from).",
                )
            model_path = str(p)  # ORT engines carry the metadata_props of their source
    return ResolvedEngine(eb, str(p), fp.get("precision", "fp32"), str(model_path), fp)


# --------------------------------------------------------------------------- inspect


def inspect_engine(path: str) -> dict:
    """Metadata, fingerprint, inputs/outputs and whether it can run here, for an engine or a plain model."""
    p = Path(path)
    if not p.is_file():
        raise OctbatchError(f"{p} does not exist", "Pass an .onnx model or an engine built by octbatch build-engine.")
    fp = read_fingerprint(p)
    out: dict = {"path": str(p), "bytes": p.stat().st_size, "fingerprint": fp}
    is_onnx = p.suffix == ".onnx" or (fp or {}).get("backend") == "onnxruntime"
    if is_onnx:
        from ._deps import require

        ort = require("onnxruntime", purpose="reading ONNX models")
        so = ort.SessionOptions()
        so.log_severity_level = 4
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            sess = ort.InferenceSession(str(p), sess_options=so, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - ORT's own exception types
            raise OctbatchError(
                f"{p} is not a valid ONNX model ({str(exc).splitlines()[0][:200]})",
                "Pass an .onnx file or a built engine.",
            ) from None
        meta = dict(sess.get_modelmeta().custom_metadata_map)
        out["kind"] = "onnx engine" if fp else "onnx model"
        out["inputs"] = [{"name": i.name, "shape": list(i.shape), "dtype": i.type} for i in sess.get_inputs()]
        out["outputs"] = [{"name": o.name, "shape": list(o.shape), "dtype": o.type} for o in sess.get_outputs()]
        out["metadata"] = {
            "classes": _maybe_json(meta.get("octbatch.classes")),
            "preprocessing": _maybe_json(meta.get("octbatch.preprocessing")),
            "output": meta.get("octbatch.output"),
            "precision": meta.get("octbatch.precision", (fp or {}).get("precision", "fp32")),
            "card": meta.get("octbatch.model_card"),
        }
    else:
        out["kind"] = "tensorrt engine"
        model = (fp or {}).get("model", {})
        out["metadata"] = {
            "classes": model.get("classes"),
            "preprocessing": model.get("preprocessing"),
            "output": model.get("output"),
            "precision": (fp or {}).get("precision"),
            "card": model.get("card"),
        }
        out["inputs"] = out["outputs"] = None
        try:
            out["inputs"], out["outputs"] = _trt_io(str(p))
        except Exception as exc:  # noqa: BLE001 - no TensorRT / incompatible engine: say why
            out["io_note"] = f"inputs/outputs not shown: {str(exc).splitlines()[0][:200]}"
    if fp:
        here = machine_facts(fp.get("backend", "onnxruntime"), strict=False)
        diffs = check_fingerprint(fp, here)
        out["can_run_here"] = not diffs
        out["differences"] = diffs
    else:
        out["can_run_here"] = bool(is_onnx)
        out["differences"] = [] if is_onnx else ["no fingerprint: cannot tell what it was built for"]
    return out


def _maybe_json(text):
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def _trt_io(path: str):
    from .backends.tensorrt import _trt

    trt = _trt()
    runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
    with open(path, "rb") as f:
        engine = runtime.deserialize_cuda_engine(f.read())
    if engine is None:
        raise RuntimeError("TensorRT could not deserialize it on this machine")
    ins, outs = [], []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        row = {"name": name, "shape": list(engine.get_tensor_shape(name)), "dtype": str(engine.get_tensor_dtype(name))}
        (ins if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outs).append(row)
    return ins, outs
