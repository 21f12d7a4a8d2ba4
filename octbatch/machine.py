"""Facts about this machine for benchmark rows: CPU, memory, GPU, library versions, peak RSS.

Nothing heavy is imported: versions come from package metadata, GPU facts from nvidia-smi, memory from
/proc. Benchmark rows (octbatch.bench) and engine fingerprints (octbatch.engines) both read them here.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import threading

__all__ = [
    "TreeRssSampler",
    "cpu_facts",
    "library_versions",
    "machine_facts",
    "peak_rss_self_mb",
    "read_text",
    "tree_rss_mb",
]

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
    "torchvision",
    "matplotlib",
    "psutil",
)


def read_text(path: str) -> str:
    """The text of a small system file (/proc/...), or "" when it cannot be read."""
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


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


def cpu_facts() -> dict:
    """CPU model, architecture and the ISA extensions an engine fingerprint compares."""
    name, flags = platform.processor() or "", set[str]()
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


def machine_facts() -> dict:
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in read_text("/proc/cpuinfo").splitlines() if ln.startswith("model name")),
        platform.processor(),
    )
    mem_kb = next(
        (int(ln.split()[1]) for ln in read_text("/proc/meminfo").splitlines() if ln.startswith("MemTotal:")), 0
    )
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


def peak_rss_self_mb() -> float:
    """This process's own peak RSS (VmHWM: per address space, so not inherited across fork/exec)."""
    for ln in read_text("/proc/self/status").splitlines():
        if ln.startswith("VmHWM:"):
            return int(ln.split()[1]) / 1024.0
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def tree_rss_mb(root: int) -> float:
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
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._interval = interval
        self._thread = threading.Thread(target=self._loop, name="octbatch-bench-rss", daemon=True)

    def _loop(self):
        me = os.getpid()
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, tree_rss_mb(me))
            self._stop.wait(self._interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, tree_rss_mb(os.getpid()))
