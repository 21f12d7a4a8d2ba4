"""Decoders: encoded scan bytes -> uint8 grayscale images of the model's input size."""

from __future__ import annotations

from ..choice import DECODER_CHOICES
from .base import DecodedBatch, DecodeError, Decoder, DeviceBatch, DeviceDecoder, decoder_device, read_bytes

__all__ = [
    "DecodedBatch",
    "DecodeError",
    "Decoder",
    "DeviceBatch",
    "DeviceDecoder",
    "decoder_device",
    "read_bytes",
    "make_decoder",
    "DECODERS",
]

DECODERS = DECODER_CHOICES


def make_decoder(name: str, spec, *, threads: int = 2, max_pixels: int = 64_000_000, device: str = "cpu") -> Decoder:
    """Build a decoder by name. Heavy libraries load here, not at import."""
    from ..errors import OctbatchError

    if name == "auto":
        # One meaning of auto (octbatch.choice): DALI on a GPU, else nvjpeg when torch sees CUDA, else cpu.
        from ..choice import choose_decoder, probe

        name = choose_decoder(probe()).name
        device = "gpu" if name in ("dali", "nvjpeg") else device
    if name == "cpu":
        from .cpu import CpuDecoder

        return CpuDecoder(spec, threads=threads, max_pixels=max_pixels)
    if name == "pillow":
        from .cpu import PillowDecoder

        return PillowDecoder(spec, threads=threads, max_pixels=max_pixels)
    if name == "dali":
        from .dali import DaliDecoder

        return DaliDecoder(spec, threads=threads, max_pixels=max_pixels, device=device)
    if name == "nvjpeg":
        from .nvjpeg import NvjpegDecoder

        return NvjpegDecoder(spec, threads=threads, max_pixels=max_pixels, device=device)
    raise OctbatchError(f"unknown decoder {name!r}", f"Use one of {', '.join(DECODERS)}.")
