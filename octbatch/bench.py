"""`octbatch bench`: stage ceilings, `octbatch run` end to end, baselines side by side, scale.

How it measures (MLPerf-offline style care, on the user's own machine and archive):
- every measurement has a warm-up, then `repeats` timed runs of at least `min_seconds` each; rows keep
  the median and the spread (min/max and quartiles), never a single best run;
- stage ceilings run in this process on data already in the page cache, so each stage is measured
  alone; inference runs on pre-decoded tensors;
- end-to-end runs and baselines each run in their own child process (`python -m octbatch.bench
  --child SPEC`), so peak RSS per configuration is measured per child (see TreeRssSampler) and one method's
  threads, caches or Ray processes never leak into the next one's numbers; the child samples the
  RSS of its whole process tree (worker processes and Ray daemons included) and reports the peak;
- every row carries the machine and the library versions.
Rendering (Markdown, charts) lives in bench_report.py.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .backends.base import softmax
from .errors import OctbatchError

__all__ = [
    "BASELINES",
    "BenchConfig",
    "TreeRssSampler",
    "combined_ceiling",
    "efficiency",
    "library_versions",
    "link_archive",
    "machine_facts",
    "measure_rate",
    "prepare_archive",
    "real_data_dir",
    "run_bench",
    "run_child",
    "summarize",
]

BASELINES = ("naive", "dataloader", "ray_data")
_IMAGE_EXT = (".jpeg", ".jpg", ".png", ".tif", ".tiff")
_VERSION_PACKAGES = (
    "octbatch",
    "onnxruntime",
    "numpy",
    "pyarrow",
    "simplejpeg",
    "opencv-python-headless",
    "opencv-python",
    "pillow",
    "nvidia-dali-cuda120",
    "nvidia-dali-cuda130",
    "tensorrt",
    "tensorrt-lean-cu12",
    "ray",
    "torch",
    "matplotlib",
    "psutil",
)


# --------------------------------------------------------------------------------------------- helpers
def summarize(samples: Sequence[float]) -> dict:
    """Median and spread of repeated measurements (min/max and the quartiles)."""
    xs = sorted(float(x) for x in samples)
    if not xs:
        raise ValueError("summarize() needs at least one sample")
    if len(xs) >= 2:
        q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    else:
        q1 = q3 = xs[0]
    return {
        "median": statistics.median(xs),
        "min": xs[0],
        "max": xs[-1],
        "q1": q1,
        "q3": q3,
        "n": len(xs),
        "samples": xs,
    }


def combined_ceiling(decode: float, infer: float, *, shared_cores: bool = True) -> float:
    """The best an overlapped pipeline can do given two stage ceilings (items/s).

    On a CPU, decode and inference compete for the same cores (each ceiling measured with all of
    them), so their per-item costs add: 1/(1/decode + 1/infer). On a GPU they run on different
    hardware and the slower stage bounds the flow: min(decode, infer).
    """
    if decode <= 0 or infer <= 0:
        return 0.0
    return 1.0 / (1.0 / decode + 1.0 / infer) if shared_cores else min(decode, infer)


def efficiency(measured: float, ceiling: float) -> float | None:
    return measured / ceiling if ceiling > 0 else None


def measure_rate(fn: Callable[[], int], *, min_seconds: float = 1.0, repeats: int = 3, warmup: int = 1) -> dict:
    """Call fn (which returns how many items it processed) until min_seconds pass, `repeats` times,
    after `warmup` untimed calls. Returns summarize() of the items/s of each repeat."""
    for _ in range(max(0, warmup)):
        fn()
    rates = []
    for _ in range(max(1, repeats)):
        items = 0
        t0 = time.perf_counter()
        while True:
            items += fn()
            dt = time.perf_counter() - t0
            if dt >= min_seconds:
                break
        rates.append(items / dt)
    return summarize(rates)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def machine_facts() -> dict:
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in _read("/proc/cpuinfo").splitlines() if ln.startswith("model name")),
        platform.processor(),
    )
    mem_kb = next((int(ln.split()[1]) for ln in _read("/proc/meminfo").splitlines() if ln.startswith("MemTotal:")), 0)
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    facts = {
        "host": platform.node(),
        "cpu": cpu,
        "cores": usable,
        "logical_cpus": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "gpu": None,
        "driver": None,
    }
    if shutil.which("nvidia-smi"):
        try:
            out = (
                subprocess.run(
                    ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                    capture_output=True,
                    text=True,
                    timeout=20,
                )
                .stdout.strip()
                .splitlines()
            )
            if out:
                facts["gpu"] = "; ".join(ln.split(",")[0].strip() for ln in out)
                facts["driver"] = out[0].split(",")[1].strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return facts


def library_versions() -> dict:
    """Installed versions from package metadata (nothing heavy is imported to find them)."""
    from importlib import metadata

    out = {}
    for name in _VERSION_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def _peak_rss_self_mb() -> float:
    """This process's own peak RSS (VmHWM: per address space, so not inherited across fork/exec)."""
    for ln in _read("/proc/self/status").splitlines():
        if ln.startswith("VmHWM:"):
            return int(ln.split()[1]) / 1024.0
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _tree_rss_mb(root: int) -> float:
    """Current RSS of a process and all its descendants (worker processes, Ray's daemons)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    page_kb = os.sysconf("SC_PAGE_SIZE") // 1024
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                st = f.read()
            fields = st[st.rindex(")") + 2 :].split()
            pid, ppid = int(name), int(fields[1])
            children.setdefault(ppid, []).append(pid)
            rss[pid] = int(fields[21]) * page_kb
        except (OSError, ValueError, IndexError):
            continue
    total, todo = 0, [root]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo.extend(children.get(p, ()))
    return total / 1024.0


class TreeRssSampler:
    """Samples the RSS of this process tree on a daemon thread; `peak_mb` is the largest total seen.
    ru_maxrss cannot serve here: after fork it starts from the parent's high-water mark."""

    def __init__(self, interval: float = 0.2):
        import threading

        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._interval = interval
        self._thread = threading.Thread(target=self._loop, name="octbatch-bench-rss", daemon=True)

    def _loop(self):
        me = os.getpid()
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, _tree_rss_mb(me))
            self._stop.wait(self._interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, _tree_rss_mb(os.getpid()))


# --------------------------------------------------------------------------------------------- archives
def real_data_dir() -> Path | None:
    """The shared real OCT2017 scans, when this machine has them."""
    for cand in (
        os.environ.get("OCTBATCH_BENCH_DATA"),
        os.path.join(os.getcwd(), "..", "shared", "data", "oct2017"),
        "/work/shared/data/oct2017",
    ):
        if cand and os.path.isdir(cand):
            return Path(cand).resolve()
    return None


def _image_files(root: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for n in sorted(filenames):
            if n.lower().endswith(_IMAGE_EXT):
                out.append(Path(dirpath) / n)
    return out


def link_archive(sources: Sequence[Path], dest: Path, n: int, *, per_dir: int = 1000) -> Path:
    """An archive of n files under dest made of hard links to `sources` (cycled), so that 1M files
    cost directory entries, not disk. Copies `n`'s worth of names: CLASS/bNNNN/CLASS-rK-<name>.
    Falls back to symlinks across filesystems."""
    dest.mkdir(parents=True, exist_ok=True)
    made_dirs: set[str] = set()
    for i in range(n):
        src = sources[i % len(sources)]
        rnd = i // len(sources)
        cls = src.parent.name if src.parent.name.isupper() else "X"
        sub = dest / cls / f"b{i // per_dir:05d}"
        key = str(sub)
        if key not in made_dirs:
            sub.mkdir(parents=True, exist_ok=True)
            made_dirs.add(key)
        name = src.name if rnd == 0 else f"{src.stem}-r{rnd}{src.suffix}"
        target = sub / name
        try:
            os.link(src, target)
        except FileExistsError:
            pass
        except OSError:
            os.symlink(src, target)
    return dest


def prepare_archive(*, archive: str | None, synthetic: int | None, files: int, workdir: Path) -> tuple[Path, str]:
    """The archive to benchmark and a sentence saying what it is."""
    if archive:
        root = Path(archive).resolve()
        if not root.is_dir():
            raise OctbatchError(
                f"archive {archive} is not a directory", "Give the folder that holds the scans, or --synthetic N."
            )
        if not files:
            return root, f"the user's archive {root}"
        srcs = _image_files(root)
        if not srcs:
            raise OctbatchError(f"archive {archive} holds no images", "Give a folder of .jpeg/.png/.tif scans.")
        return link_archive(
            srcs, workdir / "archive", files
        ), f"{files} files hard-linked from {len(srcs)} scans of {root}"
    if synthetic:
        from .synth import make_archive

        dest = workdir / "archive"
        make_archive(dest, synthetic, seed=0)
        return dest, f"synthetic: {synthetic} OCT-like scans + 3 broken files (octbatch.synth)"
    real = real_data_dir()
    if real is not None:
        srcs = _image_files(real)
        return (
            link_archive(srcs, workdir / "archive", files),
            f"real OCT2017 scans from {real}: {files} files hard-linked from {len(srcs)} scans",
        )
    from .synth import make_archive

    dest = workdir / "archive"
    make_archive(dest, files, seed=0)
    return dest, f"synthetic: {files} OCT-like scans + 3 broken files (no real scans on this machine)"


# --------------------------------------------------------------------------------------------- config
@dataclass
class BenchConfig:
    out: str
    archive: str | None = None
    synthetic: int | None = None
    files: int = 2000
    model: str | None = None
    engine: str | None = None
    backends: tuple[str, ...] = ("onnxruntime",)
    decoders: tuple[str, ...] = ("cpu", "pillow")
    batch_sizes: tuple[int, ...] = (16, 64, 128)
    executors: tuple[str, ...] = ("local",)
    baselines: tuple[str, ...] = BASELINES
    min_seconds: float = 2.0
    repeats: int = 3
    warmup: int = 1
    threads: int = 0
    run_batch_size: int = 64
    scale: tuple[int, ...] = ()
    scale_e2e_max: int = 10000
    scale_dir: str | None = None
    charts: bool = True
    quick: bool = False
    extra: dict = field(default_factory=dict)


def quick_overrides(cfg: BenchConfig) -> BenchConfig:
    """--quick: a smoke check in well under a minute (small synthetic archive, one short repeat)."""
    cfg.synthetic = cfg.synthetic or (None if cfg.archive else 150)
    cfg.files = min(cfg.files, 150) if cfg.archive else cfg.files
    cfg.min_seconds = min(cfg.min_seconds, 0.2)
    cfg.repeats = 1
    cfg.warmup = 1
    cfg.batch_sizes = tuple(sorted(set(cfg.batch_sizes) & {cfg.run_batch_size})) or (cfg.run_batch_size,)
    cfg.decoders = tuple(d for d in cfg.decoders if d != "dali")[:2] or ("cpu",)
    cfg.baselines = tuple(b for b in cfg.baselines if b == "naive")
    cfg.scale = cfg.scale or (1000,)
    cfg.scale_e2e_max = 0
    return cfg


# --------------------------------------------------------------------------------------------- stages
def _row(kind: str, name: str, stats: dict | None, unit: str, ctx: dict, **extra) -> dict:
    row = {"kind": kind, "name": name, "unit": unit, **extra}
    if stats is not None:
        row.update({k: stats[k] for k in ("median", "min", "max", "q1", "q3", "n", "samples")})
    row["machine"] = ctx["machine"]["host"]
    row["versions"] = ctx["versions"]
    return row


def _stage_rows(cfg: BenchConfig, archive: Path, model, ctx: dict, threads: int, log) -> list[dict]:
    import numpy as np

    from .archive import discover
    from .backends import make_runner
    from .decode import make_decoder, read_bytes
    from .preprocess import normalize_into

    rows = []
    m = dict(min_seconds=cfg.min_seconds, repeats=cfg.repeats, warmup=cfg.warmup)
    common = {"warmup": cfg.warmup, "repeats": cfg.repeats, "min_seconds": cfg.min_seconds}
    entries = list(discover(archive))
    good = [e.abspath for e in entries if e.size > 0 and not e.path.startswith("broken/")]

    log("stage: discovery")
    rows.append(
        _row(
            "stage", "discovery", measure_rate(lambda: sum(1 for _ in discover(archive)), **m), "files/s", ctx, **common
        )
    )

    log("stage: read")
    total_mb = sum(e.size for e in entries if e.abspath in set(good)) / 1e6

    def read_all():
        for p in good:
            read_bytes(p)
        return 1

    st = measure_rate(read_all, **m)
    st = summarize([r * total_mb for r in st["samples"]])
    rows.append(_row("stage", "read", st, "MB/s", ctx, **common))

    spec = model.preprocessing
    bs = cfg.run_batch_size
    batches = [good[i : i + bs] for i in range(0, len(good), bs)] or [good]
    for name in cfg.decoders:
        for t in sorted({1, threads}):
            log(f"stage: decode {name} x{t}")
            try:
                dec = make_decoder(name, spec, threads=t)
            except OctbatchError as exc:
                rows.append(_row("stage", "decode", None, "img/s", ctx, decoder=name, threads=t, skipped=str(exc)))
                continue
            cursor = [0]

            def one_batch(dec=dec, cursor=cursor):
                b = batches[cursor[0] % len(batches)]
                cursor[0] += 1
                out = dec.decode_batch(b)
                return len(b) - sum(e is not None for e in out.errors)

            try:
                rows.append(
                    _row(
                        "stage",
                        "decode",
                        measure_rate(one_batch, **m),
                        "img/s",
                        ctx,
                        decoder=name,
                        threads=t,
                        batch_size=bs,
                        **common,
                    )
                )
            finally:
                dec.close()

    # Pre-decoded input for the inference ceiling: real images, so the numbers match the run.
    dec = make_decoder("cpu", spec, threads=threads)
    sample = dec.decode_batch(good[: max(cfg.batch_sizes)])
    dec.close()
    imgs = sample.images[sample.ok]
    for backend in cfg.backends:
        for b in cfg.batch_sizes:
            reps = int(np.ceil(b / max(1, len(imgs))))
            u8 = np.concatenate([imgs] * reps)[:b]
            x = np.empty((b, spec.channels, spec.height, spec.width), np.float32)
            log(f"stage: infer {backend} batch {b}")
            try:
                runner = make_runner(
                    backend, model, threads=threads, engine_path=ctx.get("engine_path"), precision=ctx.get("precision")
                ).load()
            except OctbatchError as exc:
                rows.append(_row("stage", "infer", None, "img/s", ctx, backend=backend, batch_size=b, skipped=str(exc)))
                continue

            def infer_once(runner=runner, u8=u8, x=x):
                runner.infer(normalize_into(x, u8, spec))
                return len(u8)

            try:
                rows.append(
                    _row(
                        "stage",
                        "infer",
                        measure_rate(infer_once, **m),
                        "img/s",
                        ctx,
                        backend=backend,
                        precision=runner.precision,
                        batch_size=b,
                        threads=threads,
                        **common,
                    )
                )
            finally:
                runner.close()

    rows += _ceiling_pair(cfg, model, ctx, threads, good, when="before", log=log)
    log("stage: parquet write")
    rows.append(_row("stage", "parquet_write", _parquet_write_rate(entries, model, m), "rows/s", ctx, **common))
    return rows


def _ceiling_pair(cfg: BenchConfig, model, ctx: dict, threads: int, good: list[str], *, when: str, log) -> list[dict]:
    """The decode and inference ceilings of the end-to-end configuration (decoder `cpu`, all cores, the
    run's batch size). Measured right before and right after the end-to-end runs: on a shared machine
    the cores free at one moment are not those free a minute later, and the ceiling must not be
    measured in a quieter moment than the runs it judges (the larger of the two is used)."""
    import numpy as np

    from .backends import make_runner
    from .decode import make_decoder
    from .preprocess import normalize_into

    m = dict(min_seconds=cfg.min_seconds, repeats=cfg.repeats, warmup=cfg.warmup)
    common = {"warmup": cfg.warmup, "repeats": cfg.repeats, "min_seconds": cfg.min_seconds, "when": when}
    spec, bs = model.preprocessing, cfg.run_batch_size
    batches = [good[i : i + bs] for i in range(0, len(good), bs)] or [good]
    log(f"ceiling ({when} the end-to-end runs): decode cpu x{threads}, infer batch {bs}")
    dec = make_decoder("cpu", spec, threads=threads)
    cursor = [0]

    def one_batch():
        b = batches[cursor[0] % len(batches)]
        cursor[0] += 1
        out = dec.decode_batch(b)
        return len(b) - sum(e is not None for e in out.errors)

    try:
        d = measure_rate(one_batch, **m)
        sample = dec.decode_batch(batches[0])
    finally:
        dec.close()
    u8 = sample.images[sample.ok]
    x = np.empty((len(u8), spec.channels, spec.height, spec.width), np.float32)
    runner = make_runner(
        ctx.get("backend", "onnxruntime"),
        model,
        threads=threads,
        engine_path=ctx.get("engine_path"),
        precision=ctx.get("precision"),
    ).load()
    try:
        i = measure_rate(lambda: (runner.infer(normalize_into(x, u8, spec)), len(u8))[1], **m)
    finally:
        runner.close()
    return [
        _row("ceiling", "decode", d, "img/s", ctx, decoder="cpu", threads=threads, batch_size=bs, **common),
        _row(
            "ceiling",
            "infer",
            i,
            "img/s",
            ctx,
            backend=runner.name,
            precision=runner.precision,
            threads=threads,
            batch_size=bs,
            **common,
        ),
    ]


def _parquet_write_rate(entries, model, m) -> dict:
    import numpy as np

    from .results import ShardRows, atomic_write_parquet, make_schema, rows_to_table

    schema = make_schema(model.classes, {"bench": True})
    k = len(model.classes)
    target = 10000
    reps = max(1, target // max(1, len(entries)))
    rows = ShardRows(model.classes)
    probs = np.full((len(entries), k), 1.0 / k, np.float32)
    for _ in range(reps):
        rows.add(entries, probs, [(512, 496)] * len(entries), [None] * len(entries), int(time.time() * 1e6))
    with tempfile.TemporaryDirectory(prefix="octbatch-bench-pq-") as tmp:
        path = os.path.join(tmp, "t.parquet")

        def write():
            t = rows_to_table(
                rows,
                schema,
                model_sha256=model.sha256,
                backend="onnxruntime",
                precision="fp32",
                decoder="cpu",
                run_id="bench",
            )
            atomic_write_parquet(path, [t], schema)
            return len(rows)

        return measure_rate(write, **m)


# --------------------------------------------------------------------------------------------- children
def _spawn(spec: dict, timeout: float) -> tuple[dict, float]:
    """Run one child measurement; returns (its result, the peak RSS in MiB of its process tree)."""
    with tempfile.TemporaryDirectory(prefix="octbatch-bench-child-") as tmp:
        spec_path = os.path.join(tmp, "spec.json")
        spec = {**spec, "result": os.path.join(tmp, "result.json")}
        with open(spec_path, "w") as f:
            json.dump(spec, f)
        log_path = os.path.join(tmp, "child.log")
        with open(log_path, "w") as logf:
            p = subprocess.Popen(
                [sys.executable, "-m", "octbatch.bench", "--child", spec_path], stdout=logf, stderr=subprocess.STDOUT
            )
            deadline = time.monotonic() + timeout
            while True:
                pid, status, ru = os.wait4(p.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() > deadline:
                    p.kill()
                    pid, status, ru = os.wait4(p.pid, 0)
                    break
                time.sleep(0.05)
            p.returncode = os.waitstatus_to_exitcode(status)
            del ru
        try:
            with open(spec["result"]) as f:
                res = json.load(f)
        except (OSError, ValueError):
            tail = _read(log_path)[-1500:]
            res = {"error": f"child exited {p.returncode}: {tail.strip()}"}
        return res, float(res.get("peak_rss_tree_mb") or 0.0)


def run_child(spec_path: str) -> None:
    with open(spec_path) as f:
        spec = json.load(f)
    fn = _CHILDREN[spec["method"]]
    with TreeRssSampler() as sampler:
        try:
            res = fn(spec)
        except Exception as exc:  # noqa: BLE001 - reported as the row's error, the bench goes on
            import traceback

            res = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=5)}
    res["peak_rss_self_mb"] = _peak_rss_self_mb()  # the main process alone
    res["peak_rss_tree_mb"] = max(sampler.peak_mb, res["peak_rss_self_mb"])  # with its worker processes
    with open(spec["result"], "w") as f:
        json.dump(res, f, default=str)


def _child_octbatch(spec: dict) -> dict:
    from .config import RunConfig
    from .pipeline import run

    cfg = RunConfig(
        archive=spec["archive"],
        out=spec["out"],
        model=spec.get("model"),
        engine=spec.get("engine"),
        batch_size=spec["batch_size"],
        threads=spec["threads"],
        executor=spec.get("executor", "local"),
        overwrite=True,
        decoder=spec.get("decoder", "auto"),
        **spec.get("run_kw", {}),
    )
    _apply_patch(spec.get("patch"))
    t0 = time.perf_counter()
    s = run(cfg)
    dt = time.perf_counter() - t0
    return {
        "files": s.processed,
        "ok": s.ok,
        "errors": s.errors,
        "seconds": dt,
        "img_s": s.processed / dt if dt else 0.0,
        "startup_seconds": s.startup_seconds,
        "run_files_per_second": s.files_per_second,
        "rows": s.rows,
    }


def _apply_patch(patch: str | None) -> None:
    """Benchmark-only experiments (e.g. the thread split), applied by name; the library is unchanged."""
    if not patch:
        return
    if "+" in patch:
        for p in patch.split("+"):
            _apply_patch(p)
        return
    from . import pipeline

    kind, _, arg = patch.partition(":")
    if kind == "split":  # "split:D,I" decode threads, inference threads
        d, i = (int(x) for x in arg.split(","))
        orig = pipeline._worker_config

        def patched(*a, **kw):
            from dataclasses import replace

            return replace(orig(*a, **kw), decode_threads=d, infer_threads=i)

        pipeline._worker_config = patched
    else:
        raise ValueError(f"unknown patch {patch!r}")


def _list_images(root: str) -> list[str]:
    return [str(p) for p in _image_files(Path(root))]


def _pillow_preprocess(path: str, spec):
    """What most people write: Pillow open, convert("L"), centre crop, resize."""
    import numpy as np
    from PIL import Image

    from .preprocess import crop_box

    with Image.open(path) as im:
        g = im.convert("L")
    box = crop_box(g.width, g.height, spec)
    return np.asarray(g.crop(box).resize((spec.width, spec.height), Image.BILINEAR))


def _plain_session(model_path: str, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    return ort.InferenceSession(model_path, sess_options=so, providers=["CPUExecutionProvider"])


def _write_baseline_parquet(out: str, paths, probs_list, errors, classes) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    probs = np.concatenate(probs_list) if probs_list else np.zeros((0, len(classes)), np.float32)
    cols = {"path": paths, "pred": [classes[i] for i in probs.argmax(1)], "confidence": probs.max(1)}
    for j, c in enumerate(classes):
        cols[f"p_{c}"] = probs[:, j]
    cols["error"] = errors
    pq.write_table(pa.table(cols), out, compression="zstd")


def _baseline_setup(spec: dict):
    """What every hand-written baseline starts with: the model, a plain ORT session, the file list."""
    from .model import load_model_info

    model = load_model_info(spec.get("model"))
    sess = _plain_session(model.path, spec["threads"])
    return model, model.preprocessing, sess, sess.get_inputs()[0].name, _list_images(spec["archive"])


def _child_naive(spec: dict) -> dict:
    """Naive loop: decode a batch with Pillow, normalise, ORT, next batch; no overlap; Parquet at the end."""
    import numpy as np

    t0 = time.perf_counter()
    model, p, sess, inp, files = _baseline_setup(spec)
    bs = spec["batch_size"]
    paths, probs_list, errors = [], [], []
    for i in range(0, len(files), bs):
        imgs = []
        for f in files[i : i + bs]:
            try:
                imgs.append(_pillow_preprocess(f, p))
                errors.append(None)
            except Exception as exc:  # noqa: BLE001
                imgs.append(np.zeros((p.height, p.width), np.uint8))
                errors.append(str(exc))
            paths.append(f)
        x = (np.stack(imgs).astype(np.float32) / 255.0 - p.mean[0]) / p.std[0]
        x = np.repeat(x[:, None], p.channels, axis=1)
        probs_list.append(softmax(sess.run(None, {inp: x})[0]))
    _write_baseline_parquet(spec["out"], paths, probs_list, errors, list(model.classes))
    dt = time.perf_counter() - t0
    return {"files": len(files), "seconds": dt, "img_s": len(files) / dt, "errors": sum(e is not None for e in errors)}


class _PillowDataset:
    """Map-style dataset (the DataLoader contract: __len__/__getitem__) decoding with Pillow."""

    def __init__(self, files, spec):
        self.files, self.spec = files, spec

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        import numpy as np

        try:
            return _pillow_preprocess(self.files[i], self.spec), i, ""
        except Exception as exc:  # noqa: BLE001
            return np.zeros((self.spec.height, self.spec.width), np.uint8), i, str(exc) or type(exc).__name__


def _collate(items):
    import numpy as np

    return np.stack([a for a, _, _ in items]), [i for _, i, _ in items], [e for _, _, e in items]


def _child_dataloader(spec: dict) -> dict:
    """PyTorch-DataLoader style: worker processes decode with Pillow, the main process runs ORT."""
    import numpy as np

    t0 = time.perf_counter()
    model, p, sess, inp, files = _baseline_setup(spec)
    bs, workers = spec["batch_size"], max(1, spec["threads"])
    ds = _PillowDataset(files, p)
    try:
        from torch.utils.data import DataLoader

        loader = DataLoader(ds, batch_size=bs, num_workers=workers, collate_fn=_collate, prefetch_factor=2)
        how = f"torch.utils.data.DataLoader(num_workers={workers})"
        batches = iter(loader)
        pool = None
    except ImportError:
        import multiprocessing as mp

        pool = mp.get_context("fork").Pool(workers)
        how = f"multiprocessing.Pool({workers}).imap"
        it = pool.imap(ds.__getitem__, range(len(ds)), chunksize=16)

        def gen():
            buf = []
            for item in it:
                buf.append(item)
                if len(buf) == bs:
                    yield _collate(buf)
                    buf = []
            if buf:
                yield _collate(buf)

        batches = gen()
    paths, probs_list, errors = [], [], []
    for u8, idx, errs in batches:
        u8 = np.asarray(u8)
        x = (u8.astype(np.float32) / 255.0 - p.mean[0]) / p.std[0]
        x = np.repeat(x[:, None], p.channels, axis=1)
        probs_list.append(softmax(sess.run(None, {inp: x})[0]))
        paths.extend(files[i] for i in idx)
        errors.extend(e or None for e in errs)
    if pool is not None:
        pool.close()
    _write_baseline_parquet(spec["out"], paths, probs_list, errors, list(model.classes))
    dt = time.perf_counter() - t0
    return {
        "files": len(paths),
        "seconds": dt,
        "img_s": len(paths) / dt,
        "how": how,
        "errors": sum(e is not None for e in errors),
    }


class _RayPredictor:
    """Ray Data's recommended shape: a callable class that holds the model, one per actor."""

    def __init__(self, model_path: str, spec_json: str, threads: int):
        from .preprocess import Preprocessing

        self.spec = Preprocessing.from_json(spec_json)
        self.sess = _plain_session(model_path, threads)
        self.inp = self.sess.get_inputs()[0].name

    def __call__(self, batch: dict) -> dict:
        import io

        import numpy as np
        from PIL import Image

        from .preprocess import crop_box

        p = self.spec
        imgs, errs = [], []
        for data in batch["bytes"]:
            try:
                with Image.open(io.BytesIO(data)) as im:
                    g = im.convert("L")
                g = g.crop(crop_box(g.width, g.height, p)).resize((p.width, p.height), Image.BILINEAR)
                imgs.append(np.asarray(g))
                errs.append("")
            except Exception as exc:  # noqa: BLE001
                imgs.append(np.zeros((p.height, p.width), np.uint8))
                errs.append(str(exc) or type(exc).__name__)
        x = (np.stack(imgs).astype(np.float32) / 255.0 - p.mean[0]) / p.std[0]
        x = np.repeat(x[:, None], p.channels, axis=1)
        probs = softmax(self.sess.run(None, {self.inp: x})[0])
        return {
            "path": batch["path"],
            "pred": probs.argmax(1),
            "confidence": probs.max(1),
            "error": np.array(errs, dtype=object),
        }


def _child_ray_data(spec: dict) -> dict:
    """Ray Data recipe: read_binary_files -> map_batches(callable class holding an ORT session) -> write_parquet.
    (read_binary_files rather than read_images so that a broken file is a row, not a failed job.)"""
    t_start = time.perf_counter()
    from ._deps import require

    ray = require("ray", purpose="the Ray Data baseline")
    require("ray.data", purpose="the Ray Data baseline")

    from .model import load_model_info

    model = load_model_info(spec.get("model"))
    threads = max(1, spec["threads"])
    ray.init(num_cpus=threads, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    t_init = time.perf_counter() - t_start
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        files = _list_images(spec["archive"])
        t0 = time.perf_counter()
        # One actor per core, as the batch-inference guide does. Their CPU shares leave room for the
        # read and write tasks: with whole CPUs per actor, the actors take every CPU and the read
        # task never gets scheduled (a hang, seen here on 2 cores).
        ds = ray.data.read_binary_files(files, include_paths=True, num_cpus=0.25)
        ds = ds.map_batches(
            _RayPredictor,
            fn_constructor_args=(model.path, model.preprocessing.to_json(), 1),
            batch_size=spec["batch_size"],
            compute=ray.data.ActorPoolStrategy(size=threads),
            num_cpus=(threads - 0.5) / threads,
            batch_format="numpy",
        )
        ds.write_parquet(spec["out"], ray_remote_args={"num_cpus": 0.25})
        dt = time.perf_counter() - t0
    finally:
        ray.shutdown()
    total = time.perf_counter() - t_start
    return {
        "files": len(files),
        "seconds": total,
        "img_s": len(files) / total,
        "seconds_without_init": dt,
        "img_s_without_init": len(files) / dt,
        "init_seconds": t_init,
    }


def _child_discover(spec: dict) -> dict:
    """Discovery alone (mode=count), or discovery holding the per-file key set `octbatch run` holds
    (mode=keys: the `discovered` set of pipeline.run), to show memory at a million files."""
    from .archive import discover
    from .shards import entry_key

    rss0 = _peak_rss_self_mb()
    t0 = time.perf_counter()
    n = 0
    keys: set[int] = set()
    hold = spec.get("mode") == "keys"
    for e in discover(spec["archive"]):
        n += 1
        if hold:
            keys.add(entry_key(e.path, e.size, e.mtime_ns // 1000))
    dt = time.perf_counter() - t0
    return {"files": n, "seconds": dt, "files_s": n / dt if dt else 0.0, "rss_before_mb": rss0}


_CHILDREN = {
    "octbatch": _child_octbatch,
    "naive": _child_naive,
    "dataloader": _child_dataloader,
    "ray_data": _child_ray_data,
    "discover": _child_discover,
}


# --------------------------------------------------------------------------------------------- runner
def _repeat_child(
    spec: dict, repeats: int, warmup: int, timeout: float, outdir: Path, log
) -> tuple[dict | None, list[dict], float]:
    """Warm-up runs, then `repeats` timed runs, each in a fresh child with a fresh output."""
    results, rss = [], []
    for k in range(warmup + repeats):
        out = outdir / f"{spec['label']}-{k}"
        shutil.rmtree(out, ignore_errors=True)
        if out.exists():
            out.unlink()
        res, peak = _spawn({**spec, "out": str(out) + (".parquet" if spec["method"] != "ray_data" else "")}, timeout)
        shutil.rmtree(out, ignore_errors=True)
        for leftover in (Path(str(out) + ".parquet"), Path(str(out) + ".parquet.lock")):
            leftover.unlink(missing_ok=True)
        shutil.rmtree(str(out) + ".parquet.parts", ignore_errors=True)
        if "error" in res:
            log(f"  {spec['label']}: FAILED {res['error'][:300]}")
            return None, [res], max(rss + [peak])
        if k >= warmup:
            results.append(res)
            rss.append(peak)
        log(
            f"  {spec['label']} {'warm-up' if k < warmup else 'run'} {k}: {res['img_s']:.0f} img/s, peak RSS {peak:.0f} MiB"
        )
    return summarize([r["img_s"] for r in results]), results, max(rss)


def _e2e_rows(cfg: BenchConfig, archive: Path, ctx: dict, threads: int, log, tmp: Path) -> list[dict]:
    rows = []
    common = {
        "archive": str(archive),
        "model": ctx["model_path"],
        "engine": cfg.engine,
        "batch_size": cfg.run_batch_size,
        "threads": threads,
    }
    timeout = 600
    plan = [("e2e", f"octbatch run ({ex})", {"method": "octbatch", "executor": ex}) for ex in cfg.executors]
    for name, patch in cfg.extra.get("patches", {}).items():
        plan.append(
            ("experiment", f"octbatch run ({name})", {"method": "octbatch", "executor": "local", "patch": patch})
        )
    for b in cfg.baselines:
        if b == "ray_data":
            from ._deps import is_available

            if not is_available("ray"):
                rows.append(_row("baseline", "ray_data", None, "img/s", ctx, skipped="ray is not installed"))
                continue
        plan.append(("baseline", b, {"method": b}))
    for kind, name, extra in plan:
        log(f"end to end: {name}")
        label = name.replace(" ", "_").replace("(", "").replace(")", "").replace(":", "-").replace(",", "-")
        st, results, rss = _repeat_child(
            {**common, **extra, "label": label}, cfg.repeats, cfg.warmup, timeout, tmp, log
        )
        if st is None:
            rows.append(_row(kind, name, None, "img/s", ctx, error=results[0]["error"][:2000], peak_rss_mb=rss))
            continue
        info = {k: v for k, v in results[-1].items() if k not in ("img_s", "seconds", "child_rss_self_mb")}
        rows.append(
            _row(
                kind,
                name,
                st,
                "img/s",
                ctx,
                peak_rss_mb=round(rss, 1),
                batch_size=cfg.run_batch_size,
                threads=threads,
                warmup=cfg.warmup,
                repeats=cfg.repeats,
                files=results[-1].get("files"),
                executor=extra.get("executor"),
                patch=extra.get("patch"),
                detail=info,
            )
        )
    return rows


def _scale_rows(cfg: BenchConfig, ctx: dict, threads: int, log) -> list[dict]:
    rows = []
    real = real_data_dir()
    srcs = _image_files(real) if real else []
    base = Path(cfg.scale_dir) if cfg.scale_dir else Path(tempfile.mkdtemp(prefix="octbatch-bench-scale-"))
    source_note = f"real OCT2017 scans ({len(srcs)}) hard-linked" if srcs else "synthetic scans hard-linked"
    try:
        if not srcs:
            from .synth import make_archive

            make_archive(base / "seed", 200, seed=1, broken=False)
            srcs = _image_files(base / "seed")
        for n in cfg.scale:
            root = base / f"n{n}"
            t0 = time.perf_counter()
            if not root.exists():
                log(f"scale: linking {n} files")
                link_archive(srcs, root, n)
            build_s = time.perf_counter() - t0
            for mode in ("count", "keys"):
                log(f"scale: discover {n} ({mode})")
                res, rss = _spawn({"method": "discover", "archive": str(root), "mode": mode}, 900)
                if "error" in res:
                    rows.append(_row("scale", f"discover ({mode})", None, "files/s", ctx, files=n, error=res["error"]))
                    continue
                rows.append(
                    _row(
                        "scale",
                        f"discover ({mode})",
                        None,
                        "files/s",
                        ctx,
                        files=res["files"],
                        seconds=res["seconds"],
                        median=res["files_s"],
                        peak_rss_mb=round(rss, 1),
                        rss_before_mb=round(res["rss_before_mb"], 1),
                        build_seconds=round(build_s, 1),
                        source=source_note,
                    )
                )
            if n <= cfg.scale_e2e_max:
                log(f"scale: octbatch run on {n}")
                res, rss = _spawn(
                    {
                        "method": "octbatch",
                        "archive": str(root),
                        "out": str(base / f"out-{n}.parquet"),
                        "model": ctx["model_path"],
                        "engine": cfg.engine,
                        "batch_size": cfg.run_batch_size,
                        "threads": threads,
                    },
                    1800,
                )
                rows.append(
                    _row(
                        "scale",
                        "octbatch run",
                        None,
                        "img/s",
                        ctx,
                        files=res.get("files", n),
                        seconds=res.get("seconds"),
                        median=res.get("img_s"),
                        peak_rss_mb=round(rss, 1),
                        error=res.get("error"),
                        source=source_note,
                    )
                )
    finally:
        if not cfg.scale_dir:
            log("scale: removing the linked archives")
            shutil.rmtree(base, ignore_errors=True)
    return rows


def _derive(rows: list[dict], cfg: BenchConfig, threads: int, gpu: bool) -> dict:
    """Ceilings, efficiencies and ratios computed from the measured rows."""

    def med(pred):
        r = next((r for r in rows if pred(r) and r.get("median") is not None), None)
        return r["median"] if r else None

    def best(name):  # the larger of the before/after measurements: never flatter the end-to-end run
        xs = [r["median"] for r in rows if r["kind"] == "ceiling" and r["name"] == name and r.get("median")]
        return max(xs) if xs else None

    chosen = "cpu"
    decode = best("decode") or med(
        lambda r: (
            r["kind"] == "stage"
            and r["name"] == "decode"
            and r.get("decoder") == chosen
            and r.get("threads") == threads
        )
    )
    infer = best("infer") or med(
        lambda r: r["kind"] == "stage" and r["name"] == "infer" and r.get("batch_size") == cfg.run_batch_size
    )
    d = {
        "decoder": chosen,
        "decode_ceiling": decode,
        "infer_ceiling": infer,
        "batch_size": cfg.run_batch_size,
        "threads": threads,
        "rule": "min(decode, infer)" if gpu else "1/(1/decode + 1/infer)",
        "ceiling_note": "decode and inference ceilings measured right before and right after the end-to-end runs; the larger of each is used",
    }
    d["combined_ceiling"] = combined_ceiling(decode, infer, shared_cores=not gpu) if decode and infer else None
    octb = med(lambda r: r["kind"] == "e2e" and r["name"] == "octbatch run (local)") or med(
        lambda r: r["kind"] == "e2e"
    )
    d["octbatch_img_s"] = octb
    d["efficiency"] = efficiency(octb, d["combined_ceiling"]) if octb and d["combined_ceiling"] else None
    d["ratios"] = {}  # octbatch / baseline, measured side by side
    d["experiments"] = {}  # variant / default octbatch run
    for r in rows:
        if r.get("median") and octb and r["kind"] == "baseline":
            d["ratios"][r["name"]] = octb / r["median"]
        if r.get("median") and octb and r["kind"] == "experiment":
            d["experiments"][r["name"]] = r["median"] / octb
    for r in rows:
        if r["kind"] == "e2e" and r.get("median") and d["combined_ceiling"]:
            r["efficiency"] = r["median"] / d["combined_ceiling"]
    return d


def run_bench(cfg: BenchConfig, log: Callable[[str], None] = lambda m: None) -> dict:
    """Run every measurement of `cfg` and write results.json, summary.md, charts and report.html into cfg.out."""
    from .bench_report import render_charts, render_markdown
    from .config import default_threads

    if cfg.quick:
        cfg = quick_overrides(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    threads = cfg.threads or default_threads()
    t_all = time.perf_counter()
    ctx = {"machine": machine_facts(), "versions": library_versions()}
    work = Path(tempfile.mkdtemp(prefix="octbatch-bench-"))
    try:
        archive, archive_note = prepare_archive(
            archive=cfg.archive, synthetic=cfg.synthetic, files=cfg.files if not cfg.synthetic else 0, workdir=work
        )
        log(f"archive: {archive_note}")
        model, model_path = _load_model(cfg, ctx)
        ctx["model_path"] = model_path
        rows = _stage_rows(cfg, archive, model, ctx, threads, log)
        rows += _e2e_rows(cfg, archive, ctx, threads, log, work)
        good = [
            e.abspath
            for e in __import__("octbatch.archive", fromlist=["discover"]).discover(archive)
            if e.size > 0 and not e.path.startswith("broken/")
        ]
        rows += _ceiling_pair(cfg, model, ctx, threads, good, when="after", log=log)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if cfg.scale:
        rows += _scale_rows(cfg, ctx, threads, log)
    derived = _derive(rows, cfg, threads, gpu=bool(ctx["machine"]["gpu"]) and "tensorrt" in cfg.backends)
    result = {
        "octbatch_bench": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": ctx["machine"],
        "versions": ctx["versions"],
        "archive": archive_note,
        "model": {
            "path": model_path,
            "sha256": model.sha256,
            "classes": list(model.classes),
            "input": [model.preprocessing.channels, *model.preprocessing.input_size],
        },
        "config": {k: v for k, v in asdict(cfg).items() if k != "extra"},
        "derived": derived,
        "rows": rows,
        "seconds": round(time.perf_counter() - t_all, 1),
    }
    with open(out / "results.json", "w") as f:
        json.dump(result, f, indent=1, default=str)
    charts: list[str] = []
    if cfg.charts:
        charts, note = render_charts(result, out)
        result["charts"] = charts or note
    (out / "summary.md").write_text(render_markdown(result))
    from ._deps import is_available

    if is_available("jinja2"):  # the report extra: the same summary and charts as one HTML page
        from .report.bench_html import bench_html

        (out / "report.html").write_text(bench_html(result, out))
        result["html"] = str(out / "report.html")
    with open(out / "results.json", "w") as f:
        json.dump(result, f, indent=1, default=str)
    return result


def _load_model(cfg: BenchConfig, ctx: dict):
    from .model import load_model_info

    if cfg.engine:
        from .config import RunConfig
        from .pipeline import _resolve_runtime

        model, _, backend, engine_path, precision = _resolve_runtime(
            RunConfig(archive=".", out="x.parquet", model=cfg.model, engine=cfg.engine)
        )
        ctx.update(engine_path=engine_path, precision=precision)
        cfg.backends = (backend,)
        return model, model.path
    model = load_model_info(cfg.model)
    return model, model.path


if __name__ == "__main__":  # child processes: python -m octbatch.bench --child SPEC.json
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        run_child(sys.argv[2])
    else:
        sys.exit("usage: python -m octbatch.bench --child SPEC.json (internal; use `octbatch bench`)")
