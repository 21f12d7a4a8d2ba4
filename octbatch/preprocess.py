"""The preprocessing contract shared by training, every decoder and every backend.

A model says how its input is made (``Preprocessing``), stored as JSON in the ONNX file's
``metadata_props`` under ``octbatch.preprocessing``. Decoders turn encoded bytes into a
uint8 grayscale image of exactly ``input_size`` (crop/resize rule applied); ``normalize_into``
then writes the float32 model input. Training uses the same two steps, so there is one
definition of "what the model sees".
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np

from .errors import OctbatchError

__all__ = [
    "Preprocessing",
    "RESIZE_RULES",
    "LAYOUTS",
    "INTERPOLATIONS",
    "crop_box",
    "dct_min_size",
    "normalize_into",
]

# center_crop: square crop of side min(width, height) centred in the scan, then resize. Keeps the
#   pixel aspect ratio, so wide (1024/1536 px) and narrow (512 px) scans show anatomy at one scale
#   and the scan width cannot leak into the prediction as a shortcut.
# stretch: resize the whole scan to input_size, ignoring aspect ratio (what many public OCT models do).
RESIZE_RULES = ("center_crop", "stretch")
# What every decoder honours: NCHW float32 input, area interpolation when shrinking (linear when
# enlarging). A model declaring anything else is refused at load (octbatch.model).
LAYOUTS = ("NCHW",)
INTERPOLATIONS = ("area",)


@dataclass(frozen=True)
class Preprocessing:
    input_size: tuple[int, int] = (128, 128)  # (height, width)
    channels: int = 1  # the model's input channels; grayscale is replicated when 3
    mean: tuple[float, ...] = (0.2,)  # on the 0..1 pixel scale, one per channel (or one for all)
    std: tuple[float, ...] = (0.2,)
    resize: str = "center_crop"
    interpolation: str = "area"
    layout: str = "NCHW"
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        h, w = self.input_size
        if h < 8 or w < 8 or h > 4096 or w > 4096:
            raise OctbatchError(f"input size {w}x{h} is out of range", "Use a size between 8 and 4096 pixels.")
        if self.channels not in (1, 3):
            raise OctbatchError(
                f"{self.channels} input channels are not supported", "Models must take 1 or 3 channels."
            )
        if self.resize not in RESIZE_RULES:
            raise OctbatchError(f"unknown resize rule {self.resize!r}", f"Use one of {', '.join(RESIZE_RULES)}.")
        for name in ("mean", "std"):
            v = getattr(self, name)
            if len(v) not in (1, self.channels):
                raise OctbatchError(
                    f"{name} has {len(v)} values for {self.channels} channels", "Give one value or one per channel."
                )
        if any(s <= 0 for s in self.std):
            raise OctbatchError("std must be positive", "Fix the model metadata or --std.")

    @property
    def height(self) -> int:
        return self.input_size[0]

    @property
    def width(self) -> int:
        return self.input_size[1]

    def to_json(self) -> str:
        d = asdict(self)
        d.pop("extra")
        d["input_size"] = list(self.input_size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Preprocessing:
        try:
            d = json.loads(text)
            h, w = (int(x) for x in d["input_size"])
            return cls(
                input_size=(h, w),
                channels=int(d.get("channels", 1)),
                mean=tuple(float(x) for x in d.get("mean", (0.0,))),
                std=tuple(float(x) for x in d.get("std", (1.0,))),
                resize=d.get("resize", "center_crop"),
                interpolation=d.get("interpolation", "area"),
                layout=d.get("layout", "NCHW"),
            )
        except OctbatchError:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            raise OctbatchError(
                f"invalid preprocessing metadata {text[:200]!r}: {exc}",
                "Re-export the model with octbatch train, or pass --input-size/--mean/--std.",
            ) from exc

    def channel_affine(self) -> tuple[np.ndarray, np.ndarray]:
        """(scale, offset) per channel so that x = u8 * scale + offset == (u8/255 - mean)/std."""
        mean = np.broadcast_to(np.asarray(self.mean, np.float32), (self.channels,))
        std = np.broadcast_to(np.asarray(self.std, np.float32), (self.channels,))
        return (1.0 / (255.0 * std)).astype(np.float32), (-mean / std).astype(np.float32)


def crop_box(width: int, height: int, spec: Preprocessing) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the region of a width x height image that is resized."""
    if spec.resize == "stretch":
        return 0, 0, width, height
    # The crop has the model's aspect ratio, as large as fits, centred.
    target_ratio = spec.width / spec.height
    if width / height > target_ratio:
        cw, ch = max(1, round(height * target_ratio)), height
    else:
        cw, ch = width, max(1, round(width / target_ratio))
    left, top = (width - cw) // 2, (height - ch) // 2
    return left, top, left + cw, top + ch


def dct_min_size(width: int, height: int, spec: Preprocessing) -> tuple[int, int]:
    """Smallest (min_width, min_height) a DCT-scaled decode may return and still cover the crop at
    full model resolution: decoding at 1/2, 1/4 or 1/8 scale is far cheaper than full size."""
    left, top, right, bottom = crop_box(width, height, spec)
    sx = spec.width / (right - left)
    sy = spec.height / (bottom - top)
    s = max(sx, sy)
    return min(width, math.ceil(width * s)), min(height, math.ceil(height * s))


def normalize_into(out: np.ndarray, images_u8: np.ndarray, spec: Preprocessing) -> np.ndarray:
    """Write normalised float32 NCHW input for uint8 images (N, H, W) into ``out`` (N, C, H, W)."""
    scale, offset = spec.channel_affine()
    n = images_u8.shape[0]
    for c in range(spec.channels):
        np.multiply(images_u8, scale[c], out=out[:n, c], casting="unsafe")
        out[:n, c] += offset[c]
    return out[:n]
