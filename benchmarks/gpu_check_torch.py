"""gpu_check.py's `torch_path` check: octbatch's own nvjpeg decoder and torch backend (issue 14) on
the real scans, under gpu_check's honesty rules (good rows counted, a stage with none fails, rates
are good rows per second).

  parity      nvjpeg vs the CPU decoder on up to 512 scans: status mismatches, mean / 99.9th pct
              pixel diff, top-1 agreement of the model on both (torch backend vs ONNX Runtime)
  decode      NvjpegDecoder.decode_batch_device, batch 256: good img/s left on the device
  infer       TorchRunner (fp16 + CUDA graphs on CUDA) on a device batch, per batch size: img/s,
              and max prob diff / top-1 vs ONNX Runtime on real decoded scans
  end_to_end  `octbatch run --decoder nvjpeg --backend torch -b 256`: good files/s, against the 10,000
              scans/s target and 85 % of min(decode, infer); GPU utilisation sampled with nvidia-smi
              during the run; peak GPU memory of this process (torch.cuda.max_memory_allocated)

device="cpu" runs the same check on the CPU twins (to try it on a machine without a GPU).
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable

import numpy as np

__all__ = ["check_torch_path", "GpuSampler"]


class GpuSampler:
    """nvidia-smi utilisation.gpu and memory.used, sampled every 0.2 s while running (empty without it)."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        q = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits", "-i", "0"]
        while not self._stop.is_set():
            try:
                line = subprocess.run(q, capture_output=True, text=True, timeout=5).stdout.strip().splitlines()[0]
                util, mem = (float(x) for x in line.split(","))
                self.samples.append((util, mem))
            except Exception:  # noqa: BLE001 - no nvidia-smi: no samples
                return
            self._stop.wait(0.2)

    def __enter__(self) -> GpuSampler:
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join(timeout=6)

    def summary(self) -> dict:
        if not self.samples:
            return {"gpu_util": "not sampled (nvidia-smi absent)"}
        u = [s[0] for s in self.samples]
        return {
            "gpu_util_median_pct": float(np.median(u)),
            "gpu_util_max_pct": max(u),
            "gpu_mem_used_max_mib": max(s[1] for s in self.samples),
            "gpu_samples": len(u),
        }


def _parity(paths, spec, info, nv, require_good) -> tuple[dict, dict]:
    from octbatch.backends import make_runner
    from octbatch.decode.cpu import CpuDecoder
    from octbatch.preprocess import normalize_into

    sample = paths[:512]
    with CpuDecoder(spec, threads=4) as cpu:
        a = cpu.decode_batch(sample)
    b = nv.decode_batch(sample)
    both = a.ok & b.ok
    require_good("torch_path parity", int(both.sum()), len(sample))
    diff = np.abs(a.images[both].astype(np.int16) - b.images[both].astype(np.int16))
    x = np.empty((int(both.sum()), spec.channels, spec.height, spec.width), np.float32)
    with make_runner("onnxruntime", info) as ort:
        pa = ort.infer(normalize_into(x, a.images[both], spec)).copy()
        pb = ort.infer(normalize_into(x, b.images[both], spec)).copy()
    parity = {
        "compared": int(both.sum()),
        "status_mismatches": int((a.ok != b.ok).sum()),
        "pixel_mean_diff": round(float(diff.mean()), 3),
        "pixel_p999_diff": float(np.percentile(diff, 99.9)),
        "top1_agreement": round(float((pa.argmax(1) == pb.argmax(1)).mean()), 4),
    }
    return parity, {"images": b.images[both], "ort_probs": pb}


def check_torch_path(archive: str, model: str, tmp, *, device: str, h: dict) -> dict:
    """`h`: gpu_check's helpers (record, require_good, paths_of, octbatch_run, target)."""
    record: Callable = h["record"]
    require_good: Callable = h["require_good"]
    try:
        import torch
        import torchvision  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        return record("torch_path", "absent", reason=f"torch/torchvision not importable: {exc}"[:300])
    if device == "gpu" and not torch.cuda.is_available():
        return record("torch_path", "absent", reason="torch sees no CUDA GPU")
    from octbatch.backends.torch_backend import TorchRunner
    from octbatch.decode.nvjpeg import NvjpegDecoder
    from octbatch.model import load_model_info
    from octbatch.preprocess import normalize_into

    info = load_model_info(model)
    spec = info.preprocessing
    paths = h["paths_of"](archive)
    out: dict = {"device": torch.cuda.get_device_name(0) if device == "gpu" else "cpu (twin)"}
    out["versions"] = {"torch": torch.__version__, "torchvision": torchvision.__version__}
    nv = NvjpegDecoder(spec, threads=4, device=device)
    parity, ref = _parity(paths, spec, info, nv, require_good)
    out["parity"] = parity
    # decode-only: batches left on the device, released at once
    batches = [paths[i : i + 256] for i in range(0, len(paths), 256)]
    nv.decode_batch_device(batches[0]).release()  # warm-up
    t, good = time.perf_counter(), 0
    for b in batches:
        db = nv.decode_batch_device(b)
        good += len(db.device_rows)
        db.release()
    dt = time.perf_counter() - t
    require_good("torch_path decode", good, len(paths))
    out.update(files=len(paths), decoded=good, decode_img_per_s=round(good / dt))
    nv.close()
    # inference-only on device input, and agreement with ONNX Runtime on real decoded scans
    with TorchRunner(info) as tr:
        out.update(precision=tr.precision, load_diff=tr.load_diff)
        imgs = ref["images"]
        x = normalize_into(np.empty((len(imgs), spec.channels, spec.height, spec.width), np.float32), imgs, spec)
        p = tr.infer(x)
        out["prob_max_diff_vs_ort"] = round(float(np.abs(p - ref["ort_probs"]).max()), 5)
        out["top1_agreement_vs_ort"] = round(float((p.argmax(1) == ref["ort_probs"].argmax(1)).mean()), 4)
        for bs in (256, 1024):
            xd = torch.from_numpy(np.resize(x, (bs, *x.shape[1:]))).to(tr.device)
            for _ in range(3):
                tr.infer_device(xd, bs)
            t = time.perf_counter()
            reps = 20
            for _ in range(reps):
                tr.infer_device(xd, bs)  # probabilities come back to the host: each call synchronises
            out[f"infer_img_per_s_b{bs}"] = round(bs * reps / (time.perf_counter() - t))
    if device == "gpu":
        out["peak_gpu_mem_mib_this_process"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    # end to end
    with GpuSampler() as s:
        run = h["octbatch_run"](
            archive,
            tmp / "e2e-torch.parquet",
            "--model",
            model,
            "--decoder",
            "nvjpeg",
            "--backend",
            "torch",
            "-b",
            "256",
        )
    out["end_to_end"] = {**run, **s.summary()}
    ceiling = min(out["decode_img_per_s"], out["infer_img_per_s_b256"])
    got = run["files_per_s"]
    out.update(
        ceiling_img_per_s=ceiling,
        fraction_of_ceiling=round(got / ceiling, 3) if ceiling else None,
        meets_target=got >= h["target"],
        meets_85pct_of_ceiling=got >= 0.85 * ceiling,
    )
    return record("torch_path", "ok", **out)


def summary_line(c: dict) -> str:
    p, e = c["parity"], c["end_to_end"]
    return (
        f"{c['device']} {c['precision']}: decode {c['decode_img_per_s']:,} img/s, infer {c['infer_img_per_s_b256']:,} (b256) "
        f"/ {c['infer_img_per_s_b1024']:,} (b1024) img/s; vs CPU decoder mean px diff {p['pixel_mean_diff']}, top-1 "
        f"{p['top1_agreement'] * 100:.1f}%; vs ORT max prob diff {c['prob_max_diff_vs_ort']}; end to end "
        f"{e['ok']:,}/{e['files']:,} ok, {e['files_per_s']:,} good files/s = {(c['fraction_of_ceiling'] or 0) * 100:.0f}% "
        f"of min(decode, infer); target met: {c['meets_target']}; GPU util {e.get('gpu_util_median_pct', '-')}%"
    )
