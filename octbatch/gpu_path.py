"""The device handoff: DALI's decoded batch goes to TensorRT by device pointer; only probabilities return.

Used by ShardWorker when decoder == dali, device == gpu and backend == tensorrt. The worker's prefetch
thread calls `DaliDecoder.decode_batch_device` for batch k+1 while the main thread runs TensorRT on
batch k, so decode and inference overlap. Ordering between the two is by completion, not by sharing
a stream: DALI outputs fetched with cuda_stream=None are host-synchronous, so by the time the
prefetch thread hands batch k over its GPU work has finished (that wait costs the prefetch thread,
not the inference thread), and the runner may read the pointer on its own stream. Batch k's buffer
stays valid until `release()`: the decoder alternates two pipelines and locks each one's output
until it is released.
"""

from __future__ import annotations

import numpy as np

from .preprocess import Preprocessing, normalize_into

__all__ = ["use_device_path", "infer_device_batch", "verify_preprocessing"]


def use_device_path(decoder: str, device: str, backend: str) -> bool:
    """The one rule for when the worker skips the host copy: a GPU decoder (DALI or nvjpeg) that
    decoded on the GPU, and a backend that reads a device pointer (TensorRT or torch)."""
    return decoder in ("dali", "nvjpeg") and device == "gpu" and backend in ("tensorrt", "torch")


def infer_device_batch(runner, batch, spec: Preprocessing, host_input: np.ndarray, n_classes: int):
    """Classify a DeviceBatch: its DALI rows with `runner.infer_device(ptr, n, stream)` (no host copy),
    its CPU-decoded rows (non-JPEG files, recovery after a failed DALI run) with `runner.infer` on host
    input. Returns (probs (n, classes) float32, errors list). Always releases the batch's buffer."""
    probs = np.zeros((batch.n, n_classes), np.float32)
    errors = list(batch.errors)
    try:
        if batch.device_rows:
            probs[batch.device_rows] = runner.infer_device(batch.ptr, len(batch.device_rows), batch.stream)
        if batch.host_rows:
            x = normalize_into(host_input, batch.host_images, spec)
            probs[batch.host_rows] = runner.infer(x)
    except Exception as exc:  # noqa: BLE001 - an inference failure is recorded per file, not fatal
        msg = f"inference failed: {type(exc).__name__}: {str(exc)[:300]}"
        errors = [msg if e is None else e for e in errors]
    finally:
        batch.release()
    return probs, errors


def verify_preprocessing(
    archive: str,
    *,
    model: str | None = None,
    limit: int = 512,
    batch_size: int = 64,
    device: str = "auto",
    threads: int = 0,
) -> dict:
    """Decode the first `limit` files of `archive` with the DALI decoder and with the CPU decoder and
    compare what the model would see: uint8 pixel differences (max, mean, 99.9th percentile) and the
    model's top-1 agreement and largest probability difference. device="auto" uses DALI mixed on a
    GPU, else DALI on the CPU. Files that decode in one path but not the other are listed."""
    from .config import default_threads
    from .decode.dali import gpu_available
    from .errors import OctbatchError
    from .model import load_model_info

    if limit < 1:
        raise OctbatchError("--limit must be at least 1", "Give the number of scans to compare.")
    threads = threads or default_threads()
    info = load_model_info(model)
    dev = ("gpu" if gpu_available() else "cpu") if device == "auto" else device
    entries = _first_entries(archive, limit)
    c = _Comparison()
    c.run(entries, info, threads=threads, device=dev, batch_size=batch_size)
    return {
        "archive": archive,
        "model": info.path,
        "dali_device": dev,
        "files": len(entries),
        **c.summary(len(entries)),
    }


def _first_entries(archive: str, limit: int) -> list:
    from .archive import discover
    from .errors import OctbatchError

    entries = []
    for e in discover(archive):
        entries.append(e)
        if len(entries) >= limit:
            break
    if not entries:
        raise OctbatchError(f"no scans found under {archive}", "Give a folder holding .jpeg/.png/.tif scans.")
    return entries


class _Comparison:
    """What verify_preprocessing accumulates, batch by batch: pixel differences, both paths'
    probabilities, files only one path decoded, and each decoder's time."""

    def __init__(self) -> None:
        self.diffs: list[np.ndarray] = []
        self.cpu_probs: list[np.ndarray] = []
        self.dali_probs: list[np.ndarray] = []
        self.mismatched: list[dict] = []
        self.seconds = {"cpu": 0.0, "dali": 0.0}

    def run(self, entries: list, info, *, threads: int, device: str, batch_size: int) -> None:
        from .backends import make_runner
        from .decode.cpu import CpuDecoder
        from .decode.dali import DaliDecoder

        spec = info.preprocessing
        x = np.empty((batch_size, spec.channels, spec.height, spec.width), np.float32)
        with (
            CpuDecoder(spec, threads=threads, max_pixels=64_000_000) as cpu,
            DaliDecoder(spec, threads=threads, device=device, batch_size=batch_size) as dali,
            make_runner("onnxruntime", info, threads=threads) as runner,
        ):
            for i in range(0, len(entries), batch_size):
                self._batch(entries[i : i + batch_size], cpu, dali, runner, x, spec)

    def _batch(self, chunk: list, cpu, dali, runner, x: np.ndarray, spec: Preprocessing) -> None:
        import time

        paths = [e.abspath for e in chunk]
        t0 = time.perf_counter()
        a = cpu.decode_batch(paths)
        t1 = time.perf_counter()
        b = dali.decode_batch(paths)
        self.seconds["cpu"] += t1 - t0
        self.seconds["dali"] += time.perf_counter() - t1
        both = a.ok & b.ok
        for j in np.flatnonzero(a.ok != b.ok):
            self.mismatched.append({"path": chunk[j].path, "cpu": a.errors[j], "dali": b.errors[j]})
        if not both.any():
            return
        ia, ib = a.images[both], b.images[both]
        self.diffs.append(np.abs(ia.astype(np.int16) - ib.astype(np.int16)).astype(np.uint8).ravel())
        self.cpu_probs.append(runner.infer(normalize_into(x, ia, spec)).copy())
        self.dali_probs.append(runner.infer(normalize_into(x, ib, spec)).copy())

    def summary(self, files: int) -> dict:
        compared = sum(len(p) for p in self.cpu_probs)
        result: dict = {
            "compared": compared,
            "status_mismatches": len(self.mismatched),
            "mismatched": self.mismatched[:20],
            "cpu_img_per_s": files / self.seconds["cpu"] if self.seconds["cpu"] else None,
            "dali_img_per_s": files / self.seconds["dali"] if self.seconds["dali"] else None,
        }
        if compared:
            d = np.concatenate(self.diffs)
            pa, pb = np.concatenate(self.cpu_probs), np.concatenate(self.dali_probs)
            result.update(
                {
                    "pixel_max_diff": int(d.max()),
                    "pixel_mean_diff": float(d.mean()),
                    "pixel_p999_diff": float(np.percentile(d, 99.9)),
                    "top1_agreement": float((pa.argmax(1) == pb.argmax(1)).mean()),
                    "prob_max_diff": float(np.abs(pa - pb).max()),
                }
            )
        return result
