"""Run configuration: a typed, frozen RunConfig, the parsers for its CLI strings, and `resolve()`.

Precedence: CLI option > OCTBATCH_* environment variable > TOML file > default. The CLI gets the
middle two from Click (each option names its envvar, given beside the field below; the TOML file
becomes Click's default_map: `--config FILE` or $OCTBATCH_CONFIG); Python callers build RunConfig
directly. A field left at None takes its default. The parsers fail early, before anything runs,
with the same `Error: ...` texts the deep code gave. `resolve(cfg)` turns the defaults that depend
on the machine, the model or an engine into concrete choices once (executor, decoder, backend,
threads, model info), callable from Python.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import OctbatchError

if TYPE_CHECKING:
    from .model import ModelInfo

__all__ = [
    "RunConfig",
    "ResolvedRun",
    "resolve",
    "load_toml_defaults",
    "default_threads",
    "parse_classes",
    "parse_input_size",
    "parse_floats",
    "parse_slice",
    "parse_storage_options",
    "parse_referral",
    "split_csv",
]


def default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


# --- parsers: CLI strings -> typed values -------------------------------------------------------
def split_csv(values: Iterable[str] | None) -> tuple[str, ...]:
    """Repeatable options that also take comma-separated lists: ('a,b', 'c') -> ('a', 'b', 'c')."""
    out: list[str] = []
    for v in values or ():
        out.extend(x for x in v.split(",") if x)
    return tuple(out)


def parse_classes(text: str | None) -> tuple[str, ...] | None:
    """'CNV,DME,...' -> ('CNV', 'DME', ...); empty: None (the model's own names)."""
    if not text:
        return None
    return tuple(c.strip() for c in text.split(",") if c.strip())


def parse_input_size(text: str | None) -> tuple[int, int] | None:
    """'224' or '224x224' (or '224,224') -> (height, width); empty: None (the model's own size)."""
    if not text:
        return None
    try:
        parts = [int(x) for x in text.lower().replace("x", ",").split(",")]
        return (parts[0], parts[0]) if len(parts) == 1 else (parts[0], parts[1])
    except ValueError:
        raise OctbatchError(f"--input-size {text!r} is not HxW", "Use e.g. --input-size 224 or 224x224.") from None


def parse_floats(text: str | None, what: str) -> tuple[float, ...] | None:
    """'0.2' or '0.485,0.456,0.406' -> floats, for --mean/--std; empty: None (the model's own)."""
    if not text:
        return None
    try:
        vals = tuple(float(x) for x in str(text).replace(" ", "").split(",") if x)
    except ValueError:
        raise OctbatchError(
            f"{what} {text!r} is not a list of numbers",
            f"Give {what} as comma-separated numbers, e.g. 0.2 or 0.485,0.456,0.406.",
        ) from None
    if not vals:
        raise OctbatchError(f"{what} is empty", f"Give {what} as comma-separated numbers.")
    return vals


def parse_slice(text: str | None) -> tuple[int, int] | None:
    """'i/N' -> (i, N) with 0 <= i < N; empty: None (the whole archive)."""
    if not text:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise OctbatchError(
            f"--shard {text!r} is not i/N", "Use e.g. --shard 0/4 (slices are numbered from 0)."
        ) from None
    if n < 1 or not 0 <= i < n:
        raise OctbatchError(
            f"--shard {text}: need 0 <= i < N", "Slices are numbered 0..N-1, e.g. --shard 3/4 is the last of four."
        )
    return i, n


def parse_storage_options(items: Iterable[str]) -> tuple[tuple[str, str], ...]:
    """['key=value', ...] -> ((key, value), ...), keys lower-cased, for --storage-option (as
    octbatch.objstore.parse_options reads them; frozen here for RunConfig)."""
    from .objstore import parse_options

    return tuple(parse_options(list(items)).items())


def parse_referral(items: Iterable[str]) -> tuple[str, ...]:
    """['CNV=urgent,DME=routine', ...] -> ('CNV=urgent', 'DME=routine'), each checked to be CLASS=LEVEL.
    Whether every class of the model gets a level is checked once the model is known (VolumeRule)."""
    from .volumes import REFERRAL_LEVELS

    out = []
    for item in items:
        for part in (p for p in str(item).split(",") if p):
            name, sep, level = part.partition("=")
            if not sep or level.strip() not in REFERRAL_LEVELS:
                raise OctbatchError(
                    f"--referral {part!r} is not CLASS=LEVEL",
                    f"Give e.g. --referral CNV=urgent; levels: {', '.join(REFERRAL_LEVELS)}.",
                )
            out.append(f"{name.strip()}={level.strip()}")
    return tuple(out)


def _parsed_storage(value: Any) -> tuple[tuple[str, str], ...]:
    if isinstance(value, Mapping):
        return parse_storage_options(f"{k}={v}" for k, v in value.items())
    return parse_storage_options(v if isinstance(v, str) else "=".join(v) for v in value)


# --- the configuration --------------------------------------------------------------------------
@dataclass(frozen=True)
class RunConfig:
    """Everything `octbatch run` takes. The CLI option and its environment variable are named beside
    each field; string forms ('224x224', 'i/N', 'k=v') are parsed when the config is made."""

    archive: str  # ARCHIVE: a folder or s3://BUCKET/PREFIX
    out: str  # --out, $OCTBATCH_OUT: the Parquet table (a path or s3://)
    model: str | None = None  # --model, $OCTBATCH_MODEL; None: the shipped default model
    engine: str | None = None  # --engine, $OCTBATCH_ENGINE: a built engine; its fingerprint is checked first
    backend: str = "auto"  # --backend, $OCTBATCH_BACKEND: auto | onnxruntime | tensorrt | torch (octbatch.choice)
    rebuild_on_mismatch: bool = False  # --rebuild-on-mismatch
    precision: str | None = (
        None  # --precision, $OCTBATCH_PRECISION: the torch backend's fp32 | fp16 | bf16; None: fp16 on CUDA, fp32 on the CPU
    )
    classes: tuple[str, ...] | None = None  # --classes (models without metadata); None: the model's
    input_size: tuple[int, int] | None = None  # --input-size (H, W); None: the model's
    mean: tuple[float, ...] | None = None  # --mean on the 0..1 scale; None: the model's
    std: tuple[float, ...] | None = None  # --std on the 0..1 scale; None: the model's
    decoder: str = "auto"  # --decoder, $OCTBATCH_DECODER: auto (octbatch.choice) | cpu | pillow | dali | nvjpeg
    batch_size: int = 64  # --batch-size, $OCTBATCH_BATCH_SIZE
    threads: int = 0  # --threads, $OCTBATCH_THREADS; 0: every core of this machine
    limit: int | None = None  # --limit: only the first N files in discovery order
    include: tuple[str, ...] = ()  # --include globs
    exclude: tuple[str, ...] = ()  # --exclude globs
    overwrite: bool = False  # --overwrite
    slice: tuple[int, int] | None = None  # --slice i/N (alias --shard), $OCTBATCH_SLICE or $OCTBATCH_SHARD
    shard_size: int = 1024  # --shard-size, $OCTBATCH_SHARD_SIZE: files per committed shard
    retry_errors: bool = False  # --retry-errors
    max_pixels: int = 64_000_000  # --max-pixels
    executor: str | None = None  # --executor, $OCTBATCH_EXECUTOR: local | ray; None: ray when ray_address or workers
    ray_address: str | None = None  # --ray-address, $OCTBATCH_RAY_ADDRESS
    workers: int | None = None  # --workers, $OCTBATCH_WORKERS; None: one per GPU, else one per 2 CPUs
    gpus_per_worker: float | None = None  # --gpus-per-worker, $OCTBATCH_GPUS_PER_WORKER; None: 1 when GPUs
    max_shard_retries: int = 2  # --max-shard-retries, $OCTBATCH_MAX_SHARD_RETRIES
    # volumes (DICOM, multi-page TIFF): octbatch.frames, octbatch.phi, octbatch.volumes
    formats: tuple[str, ...] = ()  # --formats, $OCTBATCH_FORMATS; (): every format: jpeg, png, tiff, dicom
    phi: str = "pseudonymise"  # --phi, $OCTBATCH_PHI: pseudonymise | keep
    phi_key_file: str | None = None  # --phi-key-file, $OCTBATCH_PHI_KEY_FILE; None: $OCTBATCH_PHI_KEY or a random key
    max_volume_pixels: int = 4_000_000_000  # --max-volume-pixels
    volumes: str | None = None  # --volumes: also write the per-volume table here
    volume_min_frames: int = 1  # --min-frames
    volume_min_prob: float = 0.0  # --min-prob
    referral: tuple[str, ...] = ()  # --referral CLASS=urgent|routine|observation overrides
    storage_options: tuple[tuple[str, str], ...] = ()  # --storage-option key=value for s3:// (octbatch/objstore.py)
    gate: str = "flag"  # --gate, $OCTBATCH_GATE: the OCT gate (octbatch.gate): flag | reject | off
    gate_model: str | None = None  # --gate-model, $OCTBATCH_GATE_MODEL; None: the shipped gate
    gate_threshold: float | None = None  # --gate-threshold, $OCTBATCH_GATE_THRESHOLD; None: the gate file's

    def __post_init__(self) -> None:
        self._parse_strings()
        self._check_ranges()

    def _set(self, name: str, value: object) -> None:
        object.__setattr__(self, name, value)

    def _parse_strings(self) -> None:
        """Accept the CLI's string forms (and Python callers' older ones) and keep the typed values."""
        if isinstance(self.classes, str):
            self._set("classes", parse_classes(self.classes))
        if isinstance(self.input_size, str):
            self._set("input_size", parse_input_size(self.input_size))
        for name in ("mean", "std"):
            value = getattr(self, name)
            if isinstance(value, str):
                self._set(name, parse_floats(value, f"--{name}"))
        if isinstance(self.slice, str):
            self._set("slice", parse_slice(self.slice))
        self._set("storage_options", _parsed_storage(self.storage_options))
        if self.referral:
            self._set("referral", parse_referral(self.referral))
        if self.gpus_per_worker is not None and self.gpus_per_worker < 0:
            self._set("gpus_per_worker", None)  # the former -1 sentinel: not given

    def _check_ranges(self) -> None:
        if self.batch_size < 1 or self.batch_size > 65536:
            raise OctbatchError(
                f"--batch-size {self.batch_size} is out of range", "Use a batch size between 1 and 65536."
            )
        if self.shard_size < 1:
            raise OctbatchError("--shard-size must be at least 1", "Use a few thousand scans per shard.")
        if self.limit is not None and self.limit < 0:
            raise OctbatchError("--limit must not be negative", "Give a number of files, or leave it out.")
        if self.threads < 0:
            raise OctbatchError("--threads must not be negative", "Use 0 for all cores.")
        if self.precision is not None and self.precision not in ("fp32", "fp16", "bf16"):
            raise OctbatchError(
                f"--precision {self.precision} is not one of fp32, fp16, bf16",
                "Give the torch backend's precision; an engine's precision is fixed when it is built.",
            )
        if self.gate not in ("flag", "reject", "off"):
            raise OctbatchError(f"unknown --gate mode {self.gate!r}", "Use flag, reject or off.")
        if self.gate_threshold is not None and not 0.0 <= self.gate_threshold <= 1.0:
            raise OctbatchError(
                f"--gate-threshold {self.gate_threshold} is not between 0 and 1",
                "Give a score threshold from 0 to 1 (e.g. 0.5).",
            )

    @property
    def slice_text(self) -> str | None:
        """The slice as the user writes it, 'i/N' (None: the whole archive)."""
        return f"{self.slice[0]}/{self.slice[1]}" if self.slice else None

    @property
    def model_overrides(self) -> dict[str, Any]:
        """The --classes/--input-size/--mean/--std given (typed), as load_model_info's keywords."""
        return {k: v for k in ("classes", "input_size", "mean", "std") if (v := getattr(self, k))}


# --- resolve: defaults that depend on the machine, the model or an engine -----------------------
@dataclass(frozen=True)
class ResolvedRun:
    """The concrete choices for one run of a RunConfig (what `resolve` found)."""

    executor: str  # local | ray
    decoder: str  # cpu | pillow | dali | nvjpeg
    backend: str  # onnxruntime | tensorrt | torch
    threads: int  # decode and inference threads per worker
    model: ModelInfo  # the opened model, overrides applied
    model_overrides: dict[str, Any]  # for workers that open the model again
    engine_path: str | None = None  # the checked engine (--engine)
    precision: str | None = None  # the engine's precision; None: the model's own
    reasons: tuple[str, ...] = ()  # what each `auto` picked and why ("decoder auto: picked cpu (...)")


def resolve_executor(cfg: RunConfig) -> str:
    """--executor: ray when --ray-address or --workers is given (and not --executor ray), else local."""
    if cfg.executor in (None, "local") and (cfg.ray_address or cfg.workers):
        return "ray"
    return cfg.executor or "local"


def _auto_choices(cfg: RunConfig) -> tuple[str, str, tuple[str, ...]]:
    """(decoder, backend, reasons) with every `auto` of cfg's --decoder and --backend (no --engine) fixed."""
    decoder, backend, reasons = cfg.decoder, cfg.backend, []
    if decoder == "auto" or (backend == "auto" and not cfg.engine):
        from .choice import choose_backend, choose_decoder, probe

        facts = probe()
        if decoder == "auto":
            d = choose_decoder(facts)
            decoder = d.name
            reasons.append(d.describe("decoder"))
        if backend == "auto" and not cfg.engine:
            b = choose_backend(facts, engine=False)
            backend = b.name
            reasons.append(b.describe("backend"))
    return decoder, backend, tuple(reasons)


def _torch_default_precision() -> str:
    """The torch backend's precision when --precision is not given: fp16 where torch sees CUDA."""
    from .choice import probe

    f = probe()
    return "fp16" if f.cuda and f.torch_cuda else "fp32"


def resolve(cfg: RunConfig) -> ResolvedRun:
    """Check --engine against this machine, open the model, and fix every `auto` of cfg."""
    from .model import load_model_info

    overrides = cfg.model_overrides
    decoder, backend, reasons = _auto_choices(cfg)
    engine_path, precision, model_path = None, None, cfg.model
    if cfg.engine:
        from .engines import resolve_engine_for_run

        r = resolve_engine_for_run(cfg.engine, backend=backend, rebuild=cfg.rebuild_on_mismatch, model=cfg.model)
        backend, engine_path, precision, model_path = r.backend, r.engine_path, r.precision, r.model_path
    elif backend == "torch":
        precision = cfg.precision or _torch_default_precision()
    elif backend == "tensorrt":
        raise OctbatchError(
            "--backend tensorrt needs a built engine",
            "Run octbatch build-engine MODEL.onnx --backend tensorrt, then octbatch run --engine PATH.",
        )
    if cfg.precision and backend != "torch":
        raise OctbatchError(
            f"--precision {cfg.precision} applies to the torch backend, not {backend}",
            "Drop --precision (an engine's precision is fixed by octbatch build-engine --precision), or use --backend torch.",
        )
    model = load_model_info(model_path, **overrides)
    return ResolvedRun(
        executor=resolve_executor(cfg),
        decoder=decoder,
        backend=backend,
        threads=cfg.threads or default_threads(),
        model=model,
        model_overrides=overrides,
        engine_path=engine_path,
        precision=precision,
        reasons=reasons,
    )


def load_toml_defaults(path: str | None) -> dict:
    """The `[run]`, `[bench]`, ... tables of an octbatch TOML file as Click default maps."""
    if not path:
        return {}
    import tomllib

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise OctbatchError(f"config file {path} does not exist", "Check --config or OCTBATCH_CONFIG.") from None
    except tomllib.TOMLDecodeError as exc:
        raise OctbatchError(f"config file {path} is not valid TOML: {exc}", "Fix the file.") from None
    return {
        k.replace("-", "_"): ({kk.replace("-", "_"): vv for kk, vv in v.items()} if isinstance(v, dict) else v)
        for k, v in data.items()
    }
