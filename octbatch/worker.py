"""The per-worker loop: read -> decode -> infer -> rows, with decoding of the next batch overlapping
inference of the current one.

`ShardWorker` is a callable class: built once (decoder + backend loaded in __init__), then called
once per shard. The same object runs in-process (LocalExecutor) or inside a Ray actor.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from .gpu_path import infer_device_batch, use_device_path
from .preprocess import normalize_into
from .results import ShardRows, make_schema, rows_to_table, write_part

if TYPE_CHECKING:
    from .decode.frames import FrameDecoder
    from .gate import Gate, GateSettings
    from .model import ModelInfo
    from .shards import Shard

__all__ = ["WorkerConfig", "ShardWorker", "ShardSummary"]


@dataclass(frozen=True)
class WorkerConfig:
    model_path: str | None = None
    model: ModelInfo | None = None  # a loaded ModelInfo: spares opening and hashing the model a second time
    model_overrides: dict = field(default_factory=dict)  # classes/input_size/mean/std/resize
    backend: str = "onnxruntime"
    engine_path: str | None = None
    precision: str | None = None
    decoder: str = "auto"
    device: str = "cpu"
    batch_size: int = 64
    decode_threads: int = 2
    infer_threads: int = 2
    max_pixels: int = 64_000_000
    run_id: str = ""
    file_metadata: dict = field(default_factory=dict)
    storage_options: dict = field(default_factory=dict)  # --storage-option, for s3:// archives
    gate: GateSettings | None = None  # None: no gate (as --gate off)


@dataclass
class ShardSummary:
    shard_id: str
    files: int
    ok: int
    errors: int
    seconds: float
    part: str
    worker: str = ""
    suspect: int = 0  # readable files the OCT gate flagged (status=suspect)
    not_oct: int = 0  # readable files the OCT gate rejected (status=not_oct)
    decoder: str = ""  # the decoder this worker used (what `auto` became on its machine)
    backend: str = ""  # the runner this worker used


class ShardWorker:
    """Built once per process (decoder, backend and gate loaded here), then called once per shard."""

    def __init__(self, cfg: WorkerConfig):
        from .backends import make_runner
        from .decode import decoder_device, make_decoder
        from .model import load_model_info

        self.cfg = cfg
        if cfg.storage_options:
            from .objstore import configure

            configure(cfg.storage_options)  # in a Ray actor, the driver's --storage-option
        self.model: ModelInfo = (
            cfg.model if cfg.model is not None else load_model_info(cfg.model_path, **cfg.model_overrides)
        )
        self.spec = self.model.preprocessing
        self.decoder = make_decoder(
            cfg.decoder, self.spec, threads=cfg.decode_threads, max_pixels=cfg.max_pixels, device=cfg.device
        )
        self.runner = make_runner(
            cfg.backend, self.model, threads=cfg.infer_threads, engine_path=cfg.engine_path, precision=cfg.precision
        ).load()
        self.gate: Gate | None = None
        self._gate_mode = ""
        if cfg.gate is not None and cfg.gate.enabled:
            from .gate import load_gate

            self.gate = load_gate(cfg.gate)
            self._gate_mode = cfg.gate.mode
            if hasattr(self.decoder, "gate_images"):
                self.decoder.gate_images = True  # DALI device path: also hand back the uint8 images
        # GPU path (docs/GPU.md): DALI's GPU output goes to TensorRT by device pointer, no host copy.
        self._device_path = use_device_path(self.decoder.name, decoder_device(self.decoder), self.runner.name)
        self.schema = make_schema(self.model.classes, cfg.file_metadata)
        self._input = np.empty((cfg.batch_size, self.spec.channels, self.spec.height, self.spec.width), np.float32)
        self._prefetch = ThreadPoolExecutor(1, thread_name_prefix="octbatch-prefetch")
        self._frames: FrameDecoder | None = None  # made when a batch first holds frames of a volume
        self._ahead: tuple[str, Future] | None = None  # (shard id, future of its first decoded batch)
        self.name = f"{os.uname().nodename}:{os.getpid()}"

    def _submit(self, entries: list) -> Future:
        from .decode.frames import FrameDecoder, has_frames

        if has_frames(entries):  # DICOM / multi-page TIFF frames: decoded on the CPU (octbatch.decode.frames)
            if self._frames is None:
                self._frames = FrameDecoder(self.spec, threads=self.cfg.decode_threads, max_pixels=self.cfg.max_pixels)
            return self._prefetch.submit(self._frames.decode_entries, self.decoder, entries)
        decoder = cast(Any, self.decoder)  # decode_batch_device: DALI's device path only
        decode = decoder.decode_batch_device if self._device_path else decoder.decode_batch
        paths = [e.abspath for e in entries]
        if paths and paths[0].startswith("s3://"):
            from .objstore import fetch_then

            return self._prefetch.submit(fetch_then, decode, paths)  # the batch's objects fetched at once
        return self._prefetch.submit(decode, paths)

    def _drop_ahead(self) -> None:
        """Forget a prefetched batch that will not be used (its shard was not the next one after all)."""
        if self._ahead is not None:
            _, fut = self._ahead
            self._ahead = None
            try:
                release = getattr(fut.result(), "release", None)
            except Exception:  # noqa: BLE001 - a batch nobody reads cannot fail anything
                return
            if release is not None:
                release()

    def prefetch(self, shard: Shard | None) -> None:
        """Start decoding the first batch of the shard that comes next, so that no core idles
        between shards while this one's last batch is inferred and its part file written."""
        if shard is not None and shard.entries and self._ahead is None:
            self._ahead = (shard.id, self._submit(shard.entries[: self.cfg.batch_size]))

    def __call__(
        self,
        shard: Shard,
        parts_dir: str,
        on_progress: Callable[[int, int], None] | None = None,
        next_shard: Shard | None = None,
    ) -> ShardSummary:
        """Classify every file of `shard` and commit its part file. Returns a small summary.
        `next_shard`, when known, has its first batch decoded while this one's last is inferred."""
        t0 = time.perf_counter()
        fut = self._take_ahead(shard.id)
        rows = ShardRows(self.model.classes)
        bs = self.cfg.batch_size
        batches = [shard.entries[i : i + bs] for i in range(0, len(shard.entries), bs)]
        n_err = 0
        for k, entries in enumerate(batches):
            decoded = (fut if fut is not None else self._submit(entries)).result()
            fut = None
            if k + 1 < len(batches):
                fut = self._submit(batches[k + 1])
            else:
                self.prefetch(next_shard)
            n_bad = self._classify(entries, decoded, rows)
            n_err += n_bad
            if on_progress is not None:
                on_progress(len(entries), n_bad)
        return self._commit(shard, rows, n_err, parts_dir, t0)

    def process(
        self,
        shard: Shard,
        parts_dir: str,
        on_progress: Callable[[int, int], None] | None = None,
        next_shard: Shard | None = None,
    ) -> ShardSummary:
        """The same as calling the worker (kept for callers of the older name)."""
        return self(shard, parts_dir, on_progress, next_shard)

    def _take_ahead(self, shard_id: str) -> Future | None:
        """The prefetched first batch when it belongs to `shard_id`; any other prefetch is dropped."""
        if self._ahead is not None and self._ahead[0] != shard_id:
            self._drop_ahead()
        fut = self._ahead[1] if self._ahead is not None else None
        self._ahead = None
        return fut

    def _classify(self, entries: list, decoded, rows: ShardRows) -> int:
        """Infer one decoded batch and add its rows; returns how many of its files are errors."""
        gate = self._gate(decoded)
        if self._device_path and hasattr(decoded, "device_rows"):
            probs, errors = infer_device_batch(self.runner, decoded, self.spec, self._input, len(self.model.classes))
        else:
            probs, errors = self._infer_host(decoded, len(entries))
        n_bad = sum(e is not None for e in errors)
        rows.add(entries, probs, decoded.sizes, errors, int(time.time() * 1e6), gate=gate)
        return n_bad

    def _infer_host(self, decoded, n: int) -> tuple[np.ndarray, list]:
        ok = decoded.ok
        probs = np.zeros((n, len(self.model.classes)), np.float32)
        errors = list(decoded.errors)
        if ok.any():
            imgs = decoded.images if ok.all() else decoded.images[ok]
            x = normalize_into(self._input, imgs, self.spec)
            try:
                probs[ok] = self.runner.infer(x)
            except Exception as exc:  # noqa: BLE001 - an inference failure is recorded per file, not fatal
                msg = f"inference failed: {type(exc).__name__}: {str(exc)[:300]}"
                errors = [msg if e is None else e for e in errors]
        return probs, errors

    def _commit(self, shard: Shard, rows: ShardRows, n_err: int, parts_dir: str, t0: float) -> ShardSummary:
        """Write the shard's part file (whole, under its id) and sum it up."""
        table = rows_to_table(
            rows,
            self.schema,
            model_sha256=self.model.sha256,
            backend=self.runner.name,
            precision=self.runner.precision,
            decoder=self.decoder.name,
            run_id=self.cfg.run_id,
        )
        part = write_part(table, parts_dir, shard.id)
        statuses = rows.cols["status"]
        return ShardSummary(
            shard.id,
            len(rows),
            len(rows) - n_err,
            n_err,
            time.perf_counter() - t0,
            part,
            self.name,
            suspect=statuses.count("suspect"),
            not_oct=statuses.count("not_oct"),
            decoder=self.decoder.name,
            backend=self.runner.name,
        )

    def _gate(self, decoded):
        """(scores, reasons, mode) of the OCT gate for a decoded batch, or None when the gate is off.
        It scores the same uint8 images the classifier gets (host images of any decoder; on the DALI
        device path the copy DALI hands back beside the device tensor)."""
        if self.gate is None:
            return None
        n = len(decoded.errors)
        ok = decoded.ok
        scores = np.full(n, np.nan, np.float32)
        reasons: list = [None] * n
        images = getattr(decoded, "gate_images", None) if hasattr(decoded, "device_rows") else decoded.images
        if ok.any() and images is not None:
            rows = np.flatnonzero(ok)
            s, r = self.gate.score(images if ok.all() else images[ok])
            scores[rows] = s
            for j, i in enumerate(rows):
                reasons[i] = r[j]
        return scores, reasons, self._gate_mode

    def close(self) -> None:
        self._drop_ahead()
        self._prefetch.shutdown(wait=True)
        if self._frames is not None:
            self._frames.close()
        self.decoder.close()
        self.runner.close()
        if self.gate is not None:
            self.gate.close()

    def __enter__(self) -> ShardWorker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
