"""Run configuration. Precedence: CLI option > OCTBATCH_* environment variable > TOML file > default.

The CLI gets the middle two from Click (each option names its envvar; the TOML file becomes Click's
default_map); Python callers build RunConfig directly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .errors import OctbatchError

__all__ = ["RunConfig", "load_toml_defaults", "default_threads"]


def default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class RunConfig:
    archive: str
    out: str
    model: str | None = None  # None: the shipped default (or $OCTBATCH_MODEL)
    engine: str | None = None  # a built engine (build-engine); its fingerprint is checked first
    backend: str = "auto"  # auto | onnxruntime | tensorrt
    rebuild_on_mismatch: bool = False
    classes: str | None = None
    input_size: str | None = None
    mean: str | None = None
    std: str | None = None
    decoder: str = "auto"
    batch_size: int = 64
    threads: int = 0  # 0: every core of this machine
    limit: int | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    overwrite: bool = False
    shard: str | None = None  # "i/N"
    shard_size: int = 1024
    retry_errors: bool = False
    max_pixels: int = 64_000_000
    executor: str = "local"  # local | ray
    ray_address: str | None = None
    workers: int | None = None
    gpus_per_worker: float = -1.0  # -1: one GPU per actor when the cluster has GPUs, else CPU actors
    max_shard_retries: int = 2
    # volumes (DICOM, multi-page TIFF): octbatch.frames, octbatch.phi, octbatch.volumes
    formats: tuple[str, ...] = ()  # () = every format: jpeg, png, tiff, dicom
    phi: str = "pseudonymise"  # pseudonymise | keep
    phi_key_file: str | None = None
    max_volume_pixels: int = 4_000_000_000
    volumes: str | None = None  # also write the per-volume table here
    volume_min_frames: int = 1
    volume_min_prob: float = 0.0
    referral: tuple[str, ...] = ()  # CLASS=urgent|routine|observation overrides
    storage_options: tuple[str, ...] = ()  # key=value for s3:// archives (octbatch/objstore.py)
    gate: str = "flag"  # the OCT gate (octbatch.gate): flag | reject | off
    gate_model: str | None = None  # None: the shipped gate (or $OCTBATCH_GATE_MODEL)
    gate_threshold: float | None = None  # None: the threshold stored in the gate file

    def __post_init__(self) -> None:
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
        if self.gate not in ("flag", "reject", "off"):
            raise OctbatchError(f"unknown --gate mode {self.gate!r}", "Use flag, reject or off.")
        if self.gate_threshold is not None and not 0.0 <= self.gate_threshold <= 1.0:
            raise OctbatchError(
                f"--gate-threshold {self.gate_threshold} is not between 0 and 1",
                "Give a score threshold from 0 to 1 (e.g. 0.5).",
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
