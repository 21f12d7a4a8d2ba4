"""One short GPU check that cannot report success it did not see: which of torch-CUDA, DALI (mixed
decode) and TensorRT are here, and for each present one, does it work and how fast is it on real scans.

    python benchmarks/gpu_check.py --archive DIR --out DIR [--files N] [--budget-s S]

Installs nothing (benchmarks/gpu_check.sh brings what a bare GPU machine lacks). A missing piece is
"absent" (with the import error); a check that fails is "failed" with its error, and the others still
run. Every stage counts the rows it decoded or classified correctly and FAILS when it produced none
(a machine without simplejpeg turns every scan into an error row: that is a failure, not a speed).
Rates are good rows per second. An overall time budget (default 540 s) skips checks that would start
after it and interrupts one that runs past it. Writes gpu_check.json and gpu_check.md (one Markdown
table) to --out; exits 1 when any check failed.

Checks (each only when its pieces are present):
  env            python, GPU name and driver (nvidia-smi), library versions
  cpu_decode     octbatch's CPU decoder, decode-only good img/s (the reference)
  dali_mixed     DALI mixed decode vs the CPU decoder on real scans (pixel diff, top-1) and decode-only
                 img/s to device memory (the decode ceiling)
  tensorrt       build the shipped model as an fp16 engine (engines.build_tensorrt_engine: strongly
                 typed, fp16 graph), compare with ONNX Runtime (top-1 agreement, max prob diff),
                 inference-only img/s (the inference ceiling)
  torch_cuda     the shipped model's architecture (octbatch.train.build_model, random weights: speed does
                 not depend on them) in fp16 on the GPU, and nvJPEG decode via torchvision when present
  torch_path     octbatch's own nvjpeg decoder + torch backend (benchmarks/gpu_check_torch.py): parity
                 with the CPU decoder and ONNX Runtime, decode-only and inference-only img/s, and
                 `octbatch run --decoder nvjpeg --backend torch` end to end with GPU utilisation and
                 peak GPU memory, against the same target and ceiling rule
  end_to_end     `octbatch run` on the archive with the GPU path (DALI mixed, and TensorRT when built),
                 against the 10,000 scans/s target and 85% of min(decode, inference) ceilings
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
TARGET_SCANS_PER_S = 10_000

results: dict = {"checks": {}, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
T0 = time.perf_counter()
BUDGET_S = 540.0  # set from --budget-s


class StageFailed(RuntimeError):
    """A stage ran but produced nothing it could vouch for (e.g. zero decoded scans)."""


class BudgetExceeded(RuntimeError):
    pass


def record(name: str, status: str, **info) -> dict:
    results["checks"][name] = {"status": status, **info}
    return results["checks"][name]


def left_s() -> float:
    return BUDGET_S - (time.perf_counter() - T0)


def require_good(stage: str, good: int, total: int, what: str = "scans decoded") -> None:
    """Fail the stage loudly when it produced no good rows (never print a speed for error rows)."""
    if total <= 0:
        raise StageFailed(f"{stage}: no input files")
    if good <= 0:
        raise StageFailed(
            f"{stage}: 0 of {total} {what}; every row was an error (is simplejpeg installed? see the env check)"
        )


def _on_alarm(signum, frame):
    raise BudgetExceeded(f"time budget of {BUDGET_S:.0f} s used up")


def attempt(name: str, fn):
    """Run one check; never let it take the script down. Interrupted when the budget runs out."""
    remaining = left_s()
    if remaining <= 5:
        return record(name, "skipped", reason=f"time budget of {BUDGET_S:.0f} s used up")
    t = time.perf_counter()
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(max(1, int(remaining)))
    try:
        out = fn()
    except Exception as exc:  # noqa: BLE001 - report and go on
        out = record(
            name, "failed", error=f"{type(exc).__name__}: {str(exc)[:400]}", trace=traceback.format_exc(limit=4)[-1500:]
        )
    finally:
        signal.alarm(0)
    out.setdefault("seconds", round(time.perf_counter() - t, 1))
    return out


def try_import(mod: str):
    try:
        return __import__(mod, fromlist=["_"]), None
    except Exception as exc:  # noqa: BLE001 - a broken install counts as absent
        return None, f"{type(exc).__name__}: {str(exc)[:200]}"


# ---------------------------------------------------------------------------------------------- env
def check_env() -> dict:
    info = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()}
    try:
        q = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        info["gpus"] = [line.strip() for line in q.stdout.splitlines() if line.strip()]
    except (OSError, subprocess.SubprocessError) as exc:
        info["gpus"] = []
        info["nvidia_smi"] = str(exc)[:200]
    from octbatch.decode.dali import cuda_device_count

    info["cuda_devices"] = cuda_device_count()
    pieces = {}
    warnings.simplefilter("ignore", DeprecationWarning)  # click warns about __version__
    for mod in (
        "numpy",
        "onnxruntime",
        "onnx",
        "simplejpeg",
        "cv2",
        "PIL",
        "pyarrow",
        "click",
        "torch",
        "torchvision",
        "nvidia.dali",
        "tensorrt",
        "cuda",
        "cupy",
    ):
        m, err = try_import(mod)
        pieces[mod] = getattr(m, "__version__", "present") if m else f"absent ({err})"
    torch, _ = try_import("torch")
    pieces["torch.cuda"] = (
        (torch.cuda.is_available() and torch.cuda.get_device_name(0)) or "absent" if torch else "absent"
    )
    info["pieces"] = pieces
    return record("env", "ok", **info)


def present(mod: str) -> bool:
    return not str(results["checks"]["env"]["pieces"].get(mod, "absent")).startswith("absent")


# ------------------------------------------------------------------------------------------ inputs
def prepare_archive(arg: str, files: int, tmp: Path) -> tuple[str, str, int]:
    """(archive of `files` scans, where they came from, distinct source scans). Real scans are
    hard-linked, not copied; with fewer scans than `files` they are repeated under new names."""
    src = Path(arg)
    if not src.is_dir():
        raise SystemExit(f"gpu_check: --archive {arg} is not a folder")
    scans = sorted(
        p for p in src.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png", ".tif", ".tiff") and p.is_file()
    )
    if not scans:
        raise SystemExit(f"gpu_check: no scans under {src}")
    dst = tmp / "archive"
    for i in range(files):
        s = scans[i % len(scans)]
        d = dst / s.parent.name / f"{s.stem}-r{i // len(scans)}{s.suffix}"
        d.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(s, d)
        except OSError:
            shutil.copyfile(s, d)
    return str(dst), str(src), len(scans)


def model_path(tmp: Path) -> str:
    shipped = REPO / "octbatch" / "models" / "oct4-default.onnx"
    if shipped.exists():
        return str(shipped)
    sys.path.insert(0, str(REPO))
    from tests.helpers.modelgen import tiny_classifier

    return tiny_classifier(tmp / "tiny128.onnx", classes=("CNV", "DME", "DRUSEN", "NORMAL"), size=128)


def paths_of(archive: str) -> list[str]:
    from octbatch.archive import discover

    return [e.abspath for e in discover(archive)]


# ---------------------------------------------------------------------------------------- checks
def check_cpu_decode(archive: str, model: str) -> dict:
    from octbatch.decode.cpu import CpuDecoder
    from octbatch.model import load_model_info

    spec = load_model_info(model).preprocessing
    paths = paths_of(archive)
    with CpuDecoder(spec, threads=os.cpu_count() or 2) as dec:
        warm = dec.decode_batch(paths[:256])
        require_good("cpu_decode", int(warm.ok.sum()), len(paths[:256]))
        t = time.perf_counter()
        n = 0
        first_error = None
        for i in range(0, len(paths), 256):
            b = dec.decode_batch(paths[i : i + 256])
            n += int(b.ok.sum())
            first_error = first_error or next((e for e in b.errors if e), None)
        dt = time.perf_counter() - t
    require_good("cpu_decode", n, len(paths))
    return record(
        "cpu_decode",
        "ok",
        files=len(paths),
        decoded=n,
        errors=len(paths) - n,
        first_error=first_error,
        img_per_s=round(n / dt),
        threads=os.cpu_count(),
    )


def check_dali_mixed(archive: str, model: str, device: str = "gpu") -> dict:
    """device="cpu" runs the same check on DALI's CPU twin (to try this script on a machine without a GPU)."""
    if not present("nvidia.dali"):
        return record("dali_mixed", "absent", reason="nvidia.dali not importable")
    from octbatch.decode.dali import DaliDecoder, gpu_available
    from octbatch.gpu_path import verify_preprocessing
    from octbatch.model import load_model_info

    if device == "gpu" and not gpu_available():
        return record("dali_mixed", "absent", reason="DALI present but no CUDA GPU visible")
    parity = verify_preprocessing(archive, model=model, limit=1024, batch_size=256, device=device)
    parity.pop("mismatched", None)
    require_good(
        "dali_mixed parity",
        int(parity.get("compared") or 0),
        int(parity.get("files") or 0),
        "scans decoded by both DALI and the CPU decoder",
    )
    spec = load_model_info(model).preprocessing
    paths = paths_of(archive)
    speeds = {}
    for load in (0.65, 0.9):
        with DaliDecoder(
            spec, threads=min(8, os.cpu_count() or 2), device=device, batch_size=256, hw_decoder_load=load
        ) as dec:
            dec.decode_batch_device(paths[:256]).release()  # warm-up and build
            t = time.perf_counter()
            good = 0
            for i in range(0, len(paths), 256):
                b = dec.decode_batch_device(paths[i : i + 256])
                good += len(b.device_rows) + int(b.ok[b.host_rows].sum()) if b.host_rows else len(b.device_rows)
                b.release()
            speeds[str(load)] = round(good / (time.perf_counter() - t))
            require_good(f"dali_mixed (hw_decoder_load {load})", good, len(paths))
            stats = dict(dec.stats)
    best = max(speeds.values())
    return record(
        "dali_mixed",
        "ok",
        device=device,
        parity=parity,
        files=len(paths),
        decoded=good,
        decode_img_per_s_by_hw_load=speeds,
        decode_img_per_s=best,
        stats=stats,
    )


def check_tensorrt(archive: str, model: str, tmp: Path) -> dict:
    if not present("tensorrt"):
        return record("tensorrt", "absent", reason="tensorrt not importable")
    import numpy as np

    from octbatch.backends.onnxrt import OnnxRuntimeRunner
    from octbatch.backends.tensorrt import TensorRTRunner
    from octbatch.decode.cpu import CpuDecoder
    from octbatch.engines import build_tensorrt_engine
    from octbatch.model import load_model_info
    from octbatch.preprocess import normalize_into

    info = load_model_info(model)
    spec = info.preprocessing
    engine = str(tmp / "engine-fp16.plan")
    t = time.perf_counter()
    built = build_tensorrt_engine(model, engine, precision="fp16", batch=(1, 64, 256), log=lambda *_: None)
    build_s = time.perf_counter() - t
    with CpuDecoder(spec, threads=os.cpu_count() or 2) as dec:
        b = dec.decode_batch(paths_of(archive)[:1024])
    require_good("tensorrt (input scans from the CPU decoder)", int(b.ok.sum()), len(b.ok))
    imgs = b.images[b.ok]
    x = normalize_into(np.empty((len(imgs), spec.channels, spec.height, spec.width), np.float32), imgs, spec)
    with (
        OnnxRuntimeRunner(info, threads=os.cpu_count() or 2) as ort,
        TensorRTRunner(info, engine_path=engine, precision="fp16") as trt,
    ):
        ref = np.concatenate([ort.infer(x[i : i + 256]) for i in range(0, len(x), 256)])
        got = np.concatenate([trt.infer(x[i : i + 256]) for i in range(0, len(x), 256)])
        xb = np.ascontiguousarray(x[:256]) if len(x) >= 256 else np.resize(x, (256, *x.shape[1:]))
        host_ips = _rate(lambda: trt.infer(xb), 256)
        device_ips = None
        torch, _ = try_import("torch")
        if torch is not None and torch.cuda.is_available():
            xd = torch.from_numpy(xb).cuda().contiguous()
            device_ips = _rate(lambda: trt.infer_device(xd.data_ptr(), 256, None), 256)
    agree = int((ref.argmax(1) == got.argmax(1)).sum())
    require_good("tensorrt", agree, len(x), "engine predictions agreeing with ONNX Runtime")
    return record(
        "tensorrt",
        "ok",
        build_seconds=round(build_s, 1),
        engine=engine,
        compared=len(x),
        tensorrt_version=built.fingerprint["machine"].get("tensorrt"),
        top1_agreement=float((ref.argmax(1) == got.argmax(1)).mean()),
        prob_max_diff=float(np.abs(ref - got).max()),
        infer_img_per_s_host_input=round(host_ips),
        infer_img_per_s_device_input=round(device_ips) if device_ips else None,
    )


def _rate(fn, n: int, warmup: int = 3, repeats: int = 20) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()  # every octbatch runner returns host probabilities: the call synchronises
        times.append(time.perf_counter() - t)
    times.sort()
    return n / times[len(times) // 2]


def check_torch_cuda(archive: str, model: str) -> dict:
    torch, err = try_import("torch")
    if torch is None or not torch.cuda.is_available():
        return record("torch_cuda", "absent", reason=err or "torch has no CUDA device")
    from octbatch.model import load_model_info
    from octbatch.training.net import build_model

    info = load_model_info(model)
    spec = info.preprocessing
    net = (
        build_model(len(info.classes), channels=spec.channels)
        .cuda()
        .eval()
        .half()
        .to(memory_format=torch.channels_last)
    )
    out = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "note": "the shipped architecture with random weights (inference speed does not depend on the weights)",
    }
    with torch.inference_mode():
        for bs in (256, 1024):
            x = (
                torch.randn(bs, spec.channels, spec.height, spec.width, device="cuda")
                .half()
                .to(memory_format=torch.channels_last)
            )

            def step(x=x):
                net(x)
                torch.cuda.synchronize()

            out[f"infer_fp16_img_per_s_b{bs}"] = round(_rate(step, bs))
    tv, tv_err = try_import("torchvision")
    if tv is not None:
        try:
            from torchvision.io import decode_jpeg

            paths = [p for p in paths_of(archive) if p.lower().endswith((".jpeg", ".jpg"))][:1024]
            datas = [torch.frombuffer(bytearray(open(p, "rb").read()), dtype=torch.uint8) for p in paths]

            def dec():
                n = 0
                for i in range(0, len(datas), 256):
                    n += len(decode_jpeg(datas[i : i + 256], device="cuda"))
                torch.cuda.synchronize()
                return n

            out["nvjpeg_decoded"] = dec()
            require_good("torch_cuda nvJPEG", out["nvjpeg_decoded"], len(datas))

            out["nvjpeg_torchvision_decode_img_per_s"] = round(_rate(dec, len(datas), warmup=1, repeats=3))
        except Exception as exc:  # noqa: BLE001
            out["nvjpeg_torchvision_decode"] = f"failed: {type(exc).__name__}: {str(exc)[:200]}"
    else:
        out["nvjpeg_torchvision_decode"] = f"absent ({tv_err})"
    return record("torch_cuda", "ok", **out)


def check_torch_path(archive: str, model: str, tmp: Path, device: str) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from gpu_check_torch import check_torch_path as run_check

    helpers = {
        "record": record,
        "require_good": require_good,
        "paths_of": paths_of,
        "octbatch_run": _octbatch_run,
        "target": TARGET_SCANS_PER_S,
    }
    return run_check(archive, model, tmp, device=device, h=helpers)


def _octbatch_run(archive: str, out: Path, *extra: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "octbatch", "run", archive, "--out", str(out), "--overwrite", "--json", "-q", *extra]
    timeout = max(5.0, min(240.0, left_s() - 5))
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if p.returncode not in (0, 3):
        raise RuntimeError(f"octbatch run exited {p.returncode}: {p.stderr.strip()[-400:]}")
    s = json.loads(p.stdout)
    processed, errors = int(s.get("processed") or 0), int(s.get("errors") or 0)
    good = int(s.get("ok") if s.get("ok") is not None else processed - errors)
    require_good(f"end_to_end {' '.join(extra)}", good, processed, "scans classified")
    seconds = float(s.get("seconds") or 0)
    return {
        "files": processed,
        "ok": good,
        "errors": errors,
        "files_per_s": round(good / seconds) if seconds else 0,
        "seconds": round(seconds, 1),
        "decoder": s.get("decoder"),
        "backend": s.get("backend"),
    }


def check_end_to_end(archive: str, model: str, tmp: Path) -> dict:
    for mod in ("pyarrow", "click"):
        if not present(mod):
            return record("end_to_end", "absent", reason=f"{mod} missing: octbatch run cannot run here")
    dali_ok = results["checks"].get("dali_mixed", {}).get("status") == "ok"
    trt = results["checks"].get("tensorrt", {})
    runs = {
        "cpu_default": _octbatch_run(
            archive, tmp / "e2e-cpu.parquet", "--model", model, "--decoder", "cpu", "-b", "256"
        )
    }
    if dali_ok:
        dev = results["checks"]["dali_mixed"].get("device", "gpu")
        runs[f"dali_{dev}_ort"] = _octbatch_run(
            archive, tmp / "e2e-dali.parquet", "--model", model, "--decoder", "dali", "-b", "256"
        )
        if trt.get("status") == "ok":
            runs["dali_gpu_trt"] = _octbatch_run(
                archive,
                tmp / "e2e-trt.parquet",
                "--model",
                model,
                "--decoder",
                "dali",
                "--backend",
                "tensorrt",
                "--engine",
                trt["engine"],
                "-b",
                "256",
            )
    out = {"runs": runs, "target_scans_per_s": TARGET_SCANS_PER_S}
    if "dali_gpu_trt" in runs:
        decode = results["checks"]["dali_mixed"]["decode_img_per_s"]
        infer = trt.get("infer_img_per_s_device_input") or trt.get("infer_img_per_s_host_input")
        ceiling = min(decode, infer)
        got = runs["dali_gpu_trt"]["files_per_s"]
        out.update(
            ceiling_img_per_s=ceiling,
            fraction_of_ceiling=round(got / ceiling, 3),
            meets_target=got >= TARGET_SCANS_PER_S,
            meets_85pct_of_ceiling=got >= 0.85 * ceiling,
        )
    else:
        out["note"] = "GPU path not measured end to end: needs DALI with a GPU and a TensorRT engine"
    return record("end_to_end", "ok", **out)


# ------------------------------------------------------------------------------------------ report
def summary_line(name: str, c: dict) -> str:
    if c["status"] != "ok":
        return c.get("reason") or c.get("error") or ""
    if name == "env":
        return f"GPUs {c['gpus'] or 'none'}; cuda devices {c['cuda_devices']}"
    if name == "cpu_decode":
        return f"{c['decoded']:,} of {c['files']:,} decoded; {c['img_per_s']:,} good img/s decode-only ({c['threads']} threads)"
    if name == "dali_mixed":
        p = c["parity"]
        return (
            f"{c['decode_img_per_s']:,} img/s decode-only; vs CPU: mean px diff {p.get('pixel_mean_diff', float('nan')):.2f}, "
            f"max {p.get('pixel_max_diff')}, top-1 {p.get('top1_agreement', 0) * 100:.1f}%"
        )
    if name == "tensorrt":
        return (
            f"fp16 build {c['build_seconds']} s; top-1 vs ORT {c['top1_agreement'] * 100:.2f}%, max prob diff "
            f"{c['prob_max_diff']:.4f}; {c['infer_img_per_s_host_input']:,} img/s (host input), "
            f"{c['infer_img_per_s_device_input'] or '-'} (device input)"
        )
    if name == "torch_cuda":
        return (
            f"fp16 infer {c.get('infer_fp16_img_per_s_b256', '-'):,} img/s (b256), {c.get('infer_fp16_img_per_s_b1024', '-'):,} (b1024); "
            f"nvJPEG decode {c.get('nvjpeg_torchvision_decode_img_per_s', c.get('nvjpeg_torchvision_decode'))}"
        )
    if name == "torch_path":
        from gpu_check_torch import summary_line as torch_line

        return torch_line(c)
    if name == "end_to_end":
        s = "; ".join(
            f"{k} {v['ok']:,}/{v['files']:,} ok, {v['files_per_s']:,} good files/s" for k, v in c["runs"].items()
        )
        if "fraction_of_ceiling" in c:
            s += f"; {c['fraction_of_ceiling'] * 100:.0f}% of ceiling {c['ceiling_img_per_s']:,}; target met: {c['meets_target']}"
        return s
    return ""


def write_markdown(path: Path) -> None:
    lines = [
        f"# octbatch gpu_check ({results['started']}, {results.get('seconds')} s)",
        "",
        f"{results.get('files')} scans ({results.get('distinct_scans')} distinct) from {results.get('archive_source')}; model {results.get('model')}",
        "",
        "| check | status | good / files | result |",
        "|---|---|---|---|",
    ]
    for name, c in results["checks"].items():
        counts = f"{c['decoded']} / {c['files']}" if "decoded" in c and "files" in c else ""
        lines.append(f"| {name} | {c['status']} | {counts} | {summary_line(name, c).replace('|', '/')} |")
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    global BUDGET_S
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--archive", required=True, help="folder of real scans (a few hundred are enough; repeated up to --files)"
    )
    ap.add_argument("--out", required=True, help="folder for gpu_check.json and gpu_check.md")
    ap.add_argument("--files", type=int, default=4096, help="scans in the (hard-linked) test archive")
    ap.add_argument(
        "--dali-device",
        choices=("gpu", "cpu"),
        default="gpu",
        help="cpu: run the DALI check on DALI's CPU twin (tries this script without a GPU)",
    )
    ap.add_argument(
        "--torch-device",
        choices=("gpu", "cpu"),
        default="gpu",
        help="cpu: run the torch_path check on the nvjpeg/torch CPU twins (tries this script without a GPU)",
    )
    ap.add_argument(
        "--budget-s", type=float, default=540.0, help="overall time budget: checks past it are skipped or interrupted"
    )
    a = ap.parse_args()
    BUDGET_S = a.budget_s
    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="octbatch-gpucheck-"))
    try:
        attempt("env", check_env)
        archive, origin, distinct = prepare_archive(a.archive, a.files, tmp)
        model = model_path(tmp)
        results.update(archive_source=origin, files=a.files, distinct_scans=distinct, model=model)
        attempt("cpu_decode", lambda: check_cpu_decode(archive, model))
        attempt("dali_mixed", lambda: check_dali_mixed(archive, model, a.dali_device))
        attempt("tensorrt", lambda: check_tensorrt(archive, model, tmp))
        attempt("torch_cuda", lambda: check_torch_cuda(archive, model))
        attempt("torch_path", lambda: check_torch_path(archive, model, tmp, a.torch_device))
        attempt("end_to_end", lambda: check_end_to_end(archive, model, tmp))
    finally:
        results["seconds"] = round(time.perf_counter() - T0, 1)
        failed = sorted(n for n, c in results["checks"].items() if c["status"] == "failed")
        results["failed"] = failed
        (out_dir / "gpu_check.json").write_text(json.dumps(results, indent=1, default=str))
        write_markdown(out_dir / "gpu_check.md")
        shutil.rmtree(tmp, ignore_errors=True)
    w = max(len(k) for k in results["checks"]) + 2
    print(
        f"octbatch gpu_check: {results.get('files')} scans from {results.get('archive_source')}, model {results.get('model')}"
    )
    print(f"{'check':<{w}}{'status':<9}result")
    for name, c in results["checks"].items():
        print(f"{name:<{w}}{c['status']:<9}{summary_line(name, c)}")
    print(f"wrote {out_dir / 'gpu_check.json'} and gpu_check.md ({results['seconds']} s)")
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
