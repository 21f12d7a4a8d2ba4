"""DALI decoder: the Decoder and DeviceDecoder contracts on the one pipeline of decode/dali_pipeline.py,
run on the CPU (`device_id=None`, the twin that tests and CI run) or on the GPU (`mixed` decode on the
hardware JPEG engines, GPU resize and normalise).

Encoded bytes come from octbatch's own reader (`read_bytes` + `fn.external_source`), so discovery,
shards and the exactly-once protocol stay octbatch's, and a missing, empty or unreadable file is a
per-file error before DALI ever sees it.

DALI fails a whole batch when one sample cannot be decoded (NVIDIA/DALI#3913, #5489). octbatch keeps
that from costing good files in three steps:
1. triage: every file is read and its JPEG header parsed (simplejpeg, microseconds) before it joins a
   batch. Unreadable files, corrupt headers and decompression bombs become error rows at once. Files
   that are not plain 8-bit grayscale/colour JPEGs ending in an EOI marker (PNG, TIFF, CMYK/YCCK JPEGs,
   truncated or padded JPEGs) are decoded on the CPU by `decode_image`, the CPU decoder's own function,
   so they get exactly the CPU path's result or error message.
2. when DALI still raises for a batch, each file of that batch is decoded on the CPU one by one;
   the ones that fail get the CPU decoder's error, the others are run through DALI again (the pipeline
   is reused after a failed run: measured safe on CPU) and, should that raise too, the pipeline is
   rebuilt and the CPU images are used. A good file is never lost.
3. crop and resize follow the model's Preprocessing exactly like the CPU decoder: `crop_box` of the
   header's width/height gives a per-sample ROI, and `fn.resize` (linear with antialiasing: closest to
   the CPU decoder's INTER_AREA of the options measured, see docs/GPU.md) maps it to input_size.

Known difference (docs/GPU.md): a JPEG that ends in EOI but has corrupt entropy-coded data decodes with
a warning in DALI (grey blocks) while the strict CPU decoder reports an error; finding those needs a
full CPU decode of every file, which is the work the GPU path exists to avoid.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..preprocess import Preprocessing
from .base import DecodedBatch, DeviceBatch, per_file
from .dali_pipeline import DEVICES, build_pipeline, cuda_device_count, gpu_available
from .triage import triage_file

__all__ = ["DaliDecoder", "DeviceBatch", "build_pipeline", "gpu_available", "cuda_device_count", "DEVICES"]


class _Slot:
    """One built pipeline plus a lock held while a caller still uses its outputs (DALI reuses a
    pipeline's output memory on its next run)."""

    def __init__(self):
        self.pipe = None
        self.batch_size = 0
        self.lock = threading.Lock()
        self.last_u8 = None  # host uint8 images of the last run (when the pipeline has that output)


class DaliDecoder:
    """The Decoder contract on DALI. device="cpu" runs anywhere DALI installs; device="gpu" needs CUDA;
    device="auto" is "gpu" when `gpu_available()`, else "cpu"."""

    name = "dali"

    def __init__(
        self,
        spec: Preprocessing,
        *,
        threads: int = 2,
        max_pixels: int = 64_000_000,
        device: str = "cpu",
        batch_size: int = 64,
        device_id: int = 0,
        hw_decoder_load: float | None = None,
    ):
        from .._deps import require
        from ..errors import OctbatchError

        if device == "auto":  # the GPU when one is visible, else DALI's CPU operators
            device = "gpu" if gpu_available() else "cpu"
        if device not in DEVICES:
            raise OctbatchError(f"unknown DALI device {device!r}", f"Use one of auto, {', '.join(DEVICES)}.")
        require("nvidia.dali", purpose="--decoder dali")
        if device == "gpu" and cuda_device_count() < 1:
            raise OctbatchError(
                "the DALI GPU decoder needs a CUDA GPU and none is visible",
                "Run on a GPU machine (check nvidia-smi and CUDA_VISIBLE_DEVICES), or use --decoder cpu.",
            )
        self.spec = spec
        self.device = device
        self.threads = max(1, int(threads))
        self.max_pixels = max_pixels
        self.batch_size = max(1, int(batch_size))
        self.device_id = device_id
        env_load = os.environ.get("OCTBATCH_DALI_HW_DECODER_LOAD")
        self.hw_decoder_load = float(hw_decoder_load if hw_decoder_load is not None else env_load or 0.75)
        # Reading and header parsing are I/O plus microseconds of CPU: a small pool hides file latency.
        self._pool = (
            ThreadPoolExecutor(self.threads, thread_name_prefix="octbatch-dali-read") if self.threads > 1 else None
        )
        self._host_slot = _Slot()
        # Two device-output pipelines used in turn: batch k's output stays valid (its slot is locked
        # until release) while the other pipeline decodes batch k+1 and the consumer runs batch k.
        self._device_slots = (_Slot(), _Slot())
        self._next_device_slot = 0
        # Set by the worker when the OCT gate is on: decode_batch_device then also copies the uint8
        # images (input_size, one byte per pixel) to the host for the gate, beside the device tensor.
        self.gate_images = False
        self.stats = {
            "dali_files": 0,
            "cpu_files": 0,
            "failed_runs": 0,
            "recovered_files": 0,
            "rebuilds": 0,
            "builds": 0,
            "not_dense": 0,
        }
        # Build the host pipeline now so a broken DALI install (or no GPU for "mixed") fails here, at start.
        self._pipe(self._host_slot, "uint8", self.batch_size)

    # -- pipelines -----------------------------------------------------------------------------
    def _pipe(self, slot: _Slot, output: str, n: int):
        if slot.pipe is None or n > slot.batch_size:
            from ..errors import OctbatchError

            slot.pipe = None
            size = max(n, self.batch_size, slot.batch_size)
            try:
                slot.pipe = build_pipeline(
                    self.spec,
                    device=self.device,
                    batch_size=size,
                    threads=self.threads,
                    device_id=self.device_id,
                    output=output,
                    hw_decoder_load=self.hw_decoder_load,
                    with_uint8=output == "float" and self.gate_images,
                )
            except RuntimeError as exc:
                raise OctbatchError(
                    f"could not build the DALI {self.device} pipeline: {str(exc).strip().splitlines()[0][:300]}",
                    "Check the DALI install (pip install 'octbatch[dali]') and, for the GPU decoder, the NVIDIA driver; or use --decoder cpu.",
                ) from exc
            slot.batch_size = size
            self.stats["builds"] += 1
        return slot.pipe

    def _run(self, slot: _Slot, output: str, items: list):
        pipe = self._pipe(slot, output, len(items))
        outs = pipe.run(
            encoded=[np.frombuffer(t.data, np.uint8) for t in items],
            roi_start=[t.roi[0] for t in items],
            roi_end=[t.roi[1] for t in items],
        )
        if len(outs) > 1:  # the gate's uint8 copy: to the host now (one byte per pixel)
            u8 = outs[1].as_cpu() if self.device == "gpu" else outs[1]
            slot.last_u8 = u8.as_array()[..., 0].copy()
        return outs[0]

    # -- triage --------------------------------------------------------------------------------
    def _triage_one(self, path: str) -> _Item:
        """Read one file and decide where it is decoded (decode/triage.py); raises DecodeError for a bad one."""
        t = triage_file(path, self.spec, self.max_pixels)
        if t.box is None:
            return _Item(t.data, None, None)
        left, top, right, bottom = t.box
        roi = (np.array([top, left], np.float32), np.array([bottom, right], np.float32))
        return _Item(t.data, roi, t.size)

    def _triage(self, paths: Sequence[str]):
        n = len(paths)
        items: list = [None] * n
        errors: list = [None] * n

        def work(i: int) -> None:
            items[i] = self._triage_one(paths[i])

        per_file(work, range(n), errors, self._pool)
        return items, errors

    def _cpu_decode(self, rows: list, items: list, images: np.ndarray, sizes: list, errors: list) -> list:
        """decode_image (the CPU decoder's function) for `rows`; returns the rows that decoded."""
        from .cpu import decode_image

        good = []

        def work(i: int) -> None:
            images[i], sizes[i] = decode_image(items[i].data, self.spec, max_pixels=self.max_pixels)
            good.append(i)

        per_file(work, rows, errors, self._pool)
        return sorted(good)

    def _decode(self, paths: Sequence[str], slot: _Slot, output: str):
        """Shared by both entry points: (DALI output or None, rows it holds, cpu rows, images, sizes, errors)."""
        n = len(paths)
        items, errors = self._triage(paths)
        images = np.empty((n, self.spec.height, self.spec.width), np.uint8)
        sizes: list = [None] * n
        dali_rows = [i for i in range(n) if errors[i] is None and items[i].roi is not None]
        cpu_rows = [i for i in range(n) if errors[i] is None and items[i].roi is None]
        if cpu_rows:
            cpu_rows = self._cpu_decode(cpu_rows, items, images, sizes, errors)
            self.stats["cpu_files"] += len(cpu_rows)
        out = None
        if dali_rows:
            try:
                out = self._run(slot, output, [items[i] for i in dali_rows])
            except RuntimeError:
                # One bad sample fails DALI's whole batch: find it on the CPU, keep the rest.
                self.stats["failed_runs"] += 1
                survivors = self._cpu_decode(dali_rows, items, images, sizes, errors)
                self.stats["recovered_files"] += len(survivors)
                dali_rows = survivors
                if dali_rows:
                    try:
                        out = self._run(slot, output, [items[i] for i in dali_rows])
                    except RuntimeError:
                        # DALI refuses a file the CPU decodes: use the CPU images, start afresh next time.
                        slot.pipe = None
                        self.stats["rebuilds"] += 1
                        cpu_rows = sorted(cpu_rows + dali_rows)
                        dali_rows = []
            if out is not None and dali_rows and not out.is_dense_tensor():
                # Samples of different shapes are not one (n, ...) block (as_tensor()/as_array() would
                # raise): decode those rows on the CPU, so no file fails because of its neighbours.
                self.stats["not_dense"] += 1
                cpu_rows = sorted(cpu_rows + self._cpu_decode(dali_rows, items, images, sizes, errors))
                out, dali_rows = None, []
            for i in dali_rows:
                sizes[i] = items[i].size
            self.stats["dali_files"] += len(dali_rows)
        return out, dali_rows, cpu_rows, images, sizes, errors

    # -- the Decoder contract ----------------------------------------------------------------
    def decode_batch(self, paths: Sequence[str]) -> DecodedBatch:
        with self._host_slot.lock:
            out, dali_rows, _, images, sizes, errors = self._decode(paths, self._host_slot, "uint8")
            if out is not None and dali_rows:
                if self.device == "gpu":
                    out = out.as_cpu()
                images[dali_rows] = out.as_array()[..., 0]
        return DecodedBatch(images, sizes, errors)

    def decode_batch_device(self, paths: Sequence[str]) -> DeviceBatch:
        """Decode to normalised float32 NCHW model input left in DALI's output memory (GPU memory on
        device="gpu": the TensorRT handoff, no host copy). Blocks while the pipeline it needs still
        holds a batch that has not been released. On device="cpu" the pointer is host memory (tests)."""
        slot = self._device_slots[self._next_device_slot]
        self._next_device_slot ^= 1
        slot.lock.acquire()
        handed_over = False
        try:
            slot.last_u8 = None
            out, dali_rows, cpu_rows, images, sizes, errors = self._decode(paths, slot, "float")
            gate_images = None
            if self.gate_images:
                if out is not None and dali_rows and slot.last_u8 is not None:
                    images[dali_rows] = slot.last_u8
                gate_images = images
            if out is None or not dali_rows:
                return DeviceBatch(
                    len(paths), None, [], cpu_rows, images[cpu_rows], sizes, errors, gate_images=gate_images
                )
            tensor = out.as_tensor()  # dense (checked in _decode): every sample has the model's shape
            batch = DeviceBatch(
                len(paths),
                int(tensor.data_ptr()),
                dali_rows,
                cpu_rows,
                images[cpu_rows],
                sizes,
                errors,
                gate_images=gate_images,
                _release=slot.lock.release,
                _keep=(out, tensor),
            )
            handed_over = True
            return batch
        finally:
            if not handed_over:
                slot.lock.release()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._host_slot.pipe = None
        for s in self._device_slots:
            s.pipe = None

    def __enter__(self) -> DaliDecoder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class _Item:
    data: bytes
    roi: tuple | None  # None: decode this file on the CPU
    size: tuple | None
