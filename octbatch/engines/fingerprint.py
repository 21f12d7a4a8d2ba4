"""Engine fingerprints: the machine facts an engine depends on, its sidecar file, and the checks.

Every engine gets a sidecar (``ENGINE.fingerprint.json``) recording what it was built from and on.
``check_fingerprint`` lists how this machine differs (pure: the facts are passed in), and
``build_key`` names everything that determines an engine's bytes, so the cache can be keyed by it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import OctbatchError
from ..machine import cpu_facts

__all__ = [
    "SIDECAR_SUFFIX",
    "ENGINE_FORMAT",
    "ORT_OPT_LEVEL",
    "DEFAULT_BATCH",
    "cpu_facts",
    "machine_facts",
    "check_fingerprint",
    "describe_mismatch",
    "sidecar_path",
    "read_fingerprint",
    "write_json",
    "build_key",
    "engine_cache_dir",
    "parse_batch_profile",
]

SIDECAR_SUFFIX = ".fingerprint.json"
ENGINE_FORMAT = 1  # bump when the layout of cached engines or fingerprints changes
ORT_OPT_LEVEL = "extended"
DEFAULT_BATCH = (1, 64, 128)
# (fingerprint machine key, label in messages). TensorRT plans are tied to the TensorRT version and
# to the GPU (by default the exact model, not only its compute capability).
_COMPARED: dict[str, tuple[tuple[str, str], ...]] = {
    "onnxruntime": (("onnxruntime", "ONNX Runtime version"),),
    "tensorrt": (("tensorrt", "TensorRT version"), ("gpu", "GPU"), ("compute_capability", "compute capability")),
}


# --------------------------------------------------------------------------- machine facts


def _ort_facts(strict: bool) -> dict:
    facts: dict[str, Any] = {"backend": "onnxruntime"}
    try:
        import onnxruntime as ort  # noqa: PLC0415 - heavy, optional until used

        facts["onnxruntime"] = ort.__version__
    except ImportError:
        if strict:
            from .._deps import require

            require("onnxruntime", purpose="ONNX Runtime engines")
        facts["onnxruntime"] = None
    facts.update(cpu_facts())
    return facts


def _trt_facts(strict: bool) -> dict:
    from ..backends import tensorrt as trt_backend

    facts: dict[str, Any] = {"backend": "tensorrt", "tensorrt": trt_backend.tensorrt_version()}
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


def machine_facts(backend: str, *, strict: bool = True) -> dict:
    """What decides whether an engine of ``backend`` runs here. strict=False never raises: a missing
    library or GPU shows as None (so that a mismatch message can say "this machine has none")."""
    if backend == "onnxruntime":
        return _ort_facts(strict)
    if backend == "tensorrt":
        return _trt_facts(strict)
    raise OctbatchError(f"unknown backend {backend!r}", "Use onnxruntime or tensorrt.")


# --------------------------------------------------------------------------- checks


def check_fingerprint(fp: dict, here: dict) -> list[str]:
    """Each way the machine ``here`` differs from the one the engine was built for (empty: it runs).

    Pure function: ``here`` is ``machine_facts(...)`` or a fake in tests."""
    diffs: list[str] = []
    if fp.get("format") != ENGINE_FORMAT:
        diffs.append(f"engine format: built as format {fp.get('format')!r}, this octbatch reads format {ENGINE_FORMAT}")
    backend = str(fp.get("backend"))
    if here.get("backend") != fp.get("backend"):
        diffs.append(f"backend: engine is for {fp.get('backend')!r}, checked against {here.get('backend')!r}")
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


def _show(value: object) -> str:
    return "none" if value is None else repr(value)


def _gpu_words(f: dict) -> str:
    cc = f.get("compute_capability")
    where = f"GPU {f.get('gpu')!r} (sm_{cc.replace('.', '')})" if f.get("gpu") and cc else "no usable GPU"
    return f"{where} with TensorRT {f.get('tensorrt') or 'not installed'}"


def describe_mismatch(engine: str, fp: dict, here: dict, diffs: Sequence[str]) -> str:
    built = fp.get("machine", {})
    if fp.get("backend") == "tensorrt":
        head = f"engine {engine} was built for {_gpu_words(built)}; this machine has {_gpu_words(here)}"
    else:
        head = (
            f"engine {engine} was built with ONNX Runtime {built.get('onnxruntime')} on {built.get('cpu')!r}; "
            f"this machine has ONNX Runtime {here.get('onnxruntime')} on {here.get('cpu')!r}"
        )
    return f"{head} (differs: {'; '.join(diffs)})"


# --------------------------------------------------------------------------- sidecar and cache key


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


def write_json(path: Path, data: dict) -> None:
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
