"""What `auto` means for --decoder and --backend: one pure choice from what this machine has, and
the cheap probes that find it out.

`choose_decoder` and `choose_backend` are pure (inputs: which libraries are installed, whether a
CUDA GPU is visible, whether an engine is given) and return the name with the reason, for `-v` and
the run summary. `probe()` fills `Facts` without importing torch, DALI or TensorRT on a machine
without a GPU: libraries are found with importlib.util.find_spec and the GPU is asked of the
driver (libcuda); only when a GPU is there is torch imported to confirm it sees CUDA.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

__all__ = ["DECODER_CHOICES", "Facts", "Choice", "choose_decoder", "choose_backend", "probe", "installed"]

# Every --decoder a user may give (backend names: octbatch.backends.registry). Here rather than in
# octbatch.decode so the CLI can name them without importing the decoders (numpy).
DECODER_CHOICES = ("auto", "cpu", "pillow", "dali", "nvjpeg")


@dataclass(frozen=True)
class Facts:
    """What `auto` looks at. `cuda`: a CUDA GPU is visible to this process (driver asked)."""

    cuda: bool = False
    dali: bool = False
    tensorrt: bool = False
    torch: bool = False
    torchvision: bool = False
    torch_cuda: bool | None = None  # torch.cuda.is_available(); None: not asked (no GPU, or no torch)


@dataclass(frozen=True)
class Choice:
    name: str
    reason: str

    def describe(self, what: str) -> str:
        return f"{what} auto: picked {self.name} ({self.reason})"


def _torch_sees_cuda(f: Facts) -> bool:
    return f.cuda and f.torch and f.torch_cuda is not False


def choose_decoder(f: Facts) -> Choice:
    """--decoder auto: dali when DALI and a GPU, else nvjpeg when torchvision and CUDA, else cpu."""
    if f.cuda and f.dali:
        return Choice("dali", "DALI is installed and a CUDA GPU is visible")
    if f.torchvision and _torch_sees_cuda(f):
        return Choice("nvjpeg", "torchvision is installed and torch sees a CUDA GPU; DALI is not installed")
    if not f.cuda:
        return Choice("cpu", "no CUDA GPU is visible")
    if f.torchvision and f.torch_cuda is False:
        return Choice("cpu", "a GPU is visible but torch has no CUDA (a CPU-only torch build?)")
    return Choice("cpu", "a CUDA GPU is visible but neither DALI nor torchvision is installed")


def choose_backend(f: Facts, *, engine: bool = False, building: bool = False) -> Choice:
    """--backend auto: tensorrt when TensorRT and a GPU are present (and an engine is given, or one is
    being built), else torch when torch sees CUDA (not for building: torch needs no engine), else
    onnxruntime."""
    if f.tensorrt and f.cuda and (engine or building):
        return Choice("tensorrt", "TensorRT is installed and a CUDA GPU is visible")
    if not building and _torch_sees_cuda(f):
        why = "TensorRT is installed but no engine was given" if f.tensorrt else "TensorRT is not installed"
        return Choice("torch", f"torch sees a CUDA GPU; {why}")
    if not f.cuda:
        return Choice("onnxruntime", "no CUDA GPU is visible; CPU engine")
    if building:
        return Choice("onnxruntime", "TensorRT is not installed; CPU engine")
    if f.torch and f.torch_cuda is False:
        return Choice("onnxruntime", "a GPU is visible but torch has no CUDA; CPU engine")
    return Choice("onnxruntime", "a GPU is visible but neither TensorRT nor torch is installed; CPU engine")


def installed(module: str) -> bool:
    """True when `module` is imported already or can be found (find_spec: found, not imported)."""
    import sys

    if sys.modules.get(module) is not None:
        return True
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing or broken
        return False


def probe(*, ask_torch: bool = True) -> Facts:
    """The Facts of this machine. Imports torch only when a GPU is visible and torch is installed."""
    from .decode.dali_pipeline import cuda_device_count

    cuda = cuda_device_count() > 0
    has_torch = installed("torch")
    torch_cuda = None
    if cuda and has_torch and ask_torch:
        try:
            import torch

            torch_cuda = bool(torch.cuda.is_available())
        except Exception:  # noqa: BLE001 - a broken torch install sees no CUDA
            torch_cuda = False
    return Facts(
        cuda=cuda,
        dali=installed("nvidia.dali"),
        tensorrt=installed("tensorrt"),
        torch=has_torch,
        torchvision=installed("torchvision"),
        torch_cuda=torch_cuda,
    )
