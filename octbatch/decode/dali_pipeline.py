"""The one DALI pipeline octbatch builds, and whether this machine can run it on a GPU.

`build_pipeline` is parameterised by device: "cpu" (DALI's CPU operators, `device_id=None`: the twin
that tests and CI run) or "gpu" (`mixed` decode on the hardware JPEG engines, GPU resize and
normalise). `cuda_device_count` asks the driver itself, so no CUDA toolkit, torch or DALI import is
needed to know that there is no GPU. The decoder that feeds the pipeline is decode/dali.py.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any

import numpy as np

from ..preprocess import Preprocessing

__all__ = ["DEVICES", "build_pipeline", "cuda_device_count", "gpu_available"]

DEVICES = ("cpu", "gpu")


@functools.lru_cache(maxsize=1)
def cuda_device_count() -> int:
    """CUDA devices visible to this process, asked of the driver (libcuda) directly: no CUDA toolkit,
    torch or DALI import needed, and 0 on a machine without an NVIDIA driver."""
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    else:
        return 0
    try:
        if lib.cuInit(0) != 0:
            return 0
        count = ctypes.c_int(0)
        if lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
        return int(count.value)
    except (AttributeError, OSError):
        return 0


@functools.lru_cache(maxsize=1)
def gpu_available() -> bool:
    """True when `--decoder auto` should decode with DALI `mixed`: a CUDA GPU is visible and DALI imports.
    The GPU is asked first because it is cheap; importing DALI takes about a second."""
    if cuda_device_count() < 1:
        return False
    from .._deps import is_available

    return is_available("nvidia.dali")


def build_pipeline(
    spec: Preprocessing,
    *,
    device: str,
    batch_size: int,
    threads: int,
    device_id: int = 0,
    output: str = "uint8",
    hw_decoder_load: float = 0.75,
    with_uint8: bool = False,
):
    """The one DALI pipeline octbatch uses, on `device` "cpu" (device_id=None, CPU operators) or "gpu"
    (mixed decode, GPU resize/normalise). Inputs (external_source, fed per run): `encoded` (bytes),
    `roi_start` / `roi_end` ([top, left] / [bottom, right] of the crop box, float32).
    output="uint8": (n, H, W, 1) uint8 images (what the Decoder contract returns);
    output="float": (n, C, H, W) float32 model input normalised with the spec's mean/std; with_uint8=True
    adds a second output, the (n, H, W, 1) uint8 images before normalisation (what the OCT gate scores)."""
    from .._deps import require

    require("nvidia.dali", purpose="the DALI decoder")
    import nvidia.dali.fn as fn
    import nvidia.dali.types
    from nvidia.dali import Pipeline

    types: Any = nvidia.dali.types  # its constants come from a compiled module that mypy cannot see

    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, not {device!r}")
    gpu = device == "gpu"
    # prefetch_queue_depth=1: inputs are fed with run(**inputs), which DALI allows only without a
    # prefetch queue; overlap comes from the worker's prefetch thread instead.
    pipe = Pipeline(
        batch_size=batch_size, num_threads=max(1, threads), device_id=device_id if gpu else None, prefetch_queue_depth=1
    )
    with pipe:
        encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
        roi_start = fn.external_source(name="roi_start", dtype=types.FLOAT, ndim=1)
        roi_end = fn.external_source(name="roi_end", dtype=types.FLOAT, ndim=1)
        if gpu:
            images: Any = fn.decoders.image(
                encoded, device="mixed", output_type=types.GRAY, hw_decoder_load=hw_decoder_load
            )
        else:
            images = fn.decoders.image(encoded, device="cpu", output_type=types.GRAY)
        images = fn.resize(
            images,
            size=[spec.height, spec.width],
            roi_start=roi_start,
            roi_end=roi_end,
            interp_type=types.INTERP_LINEAR,
            antialias=True,
        )
        gray_u8 = images
        if output == "float":
            images = _model_input(fn, types, images, spec)
        elif output != "uint8":
            raise ValueError(f"output must be 'uint8' or 'float', not {output!r}")
        if output == "float" and with_uint8:
            pipe.set_outputs(images, gray_u8)
        else:
            pipe.set_outputs(images)
    pipe.build()
    return pipe


def _model_input(fn: Any, types: Any, images: Any, spec: Preprocessing) -> Any:
    """(H, W, 1) uint8 images -> (C, H, W) float32 normalised with the spec's mean/std on the 0..255
    scale; grayscale replicated when the model takes 3 channels."""
    if spec.channels == 3:
        images = fn.cat(images, images, images, axis=2)
    mean = np.broadcast_to(np.asarray(spec.mean, np.float32), (spec.channels,)) * 255.0
    std = np.broadcast_to(np.asarray(spec.std, np.float32), (spec.channels,)) * 255.0
    return fn.crop_mirror_normalize(
        images,
        dtype=types.FLOAT,
        output_layout="CHW",
        mean=[float(m) for m in mean],
        std=[float(s) for s in std],
    )
