"""What a training batch is made of: crops of the decoded strips (resize rule, lateral scale or A-scan
density), the batched augmentation, and the normalisation of the model's preprocessing, in torch."""

from __future__ import annotations

import math

import numpy as np

from ..preprocess import Preprocessing, normalize_into

__all__ = ["augment", "crop_strips", "normalize_t", "u8_to_input"]


def augment(torch, x, gen):
    """Batched augmentation of float images in 0..1, (N,1,H,W): flip, scale/shift/rotate, brightness/contrast/gamma."""
    F = torch.nn.functional
    n = x.shape[0]

    def u(lo, hi):
        return torch.empty(n).uniform_(lo, hi, generator=gen)

    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    scale = u(0.85, 1.0)  # zoom in up to 15% (a random crop of 85-100% of the side)
    aspect = torch.exp(u(-0.08, 0.08))
    ang = u(-6, 6) * (math.pi / 180)
    sx, sy = scale * aspect.sqrt(), scale / aspect.sqrt()
    room_x, room_y = (1 - sx).clamp(min=0), (1 - sy).clamp(min=0)
    tx = u(-1, 1) * room_x
    ty = u(-1, 1) * room_y + u(-0.06, 0.06)
    cos, sin = torch.cos(ang), torch.sin(ang)
    theta = torch.stack(
        [torch.stack([sx * cos * flip, -sy * sin, tx], 1), torch.stack([sx * sin * flip, sy * cos, ty], 1)], 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    gamma = torch.exp(u(-0.25, 0.25)).view(n, 1, 1, 1)
    x = x.clamp(0, 1).pow(gamma)
    contrast = u(0.8, 1.2).view(n, 1, 1, 1)
    bright = u(-0.06, 0.06).view(n, 1, 1, 1)
    m = x.mean(dim=(2, 3), keepdim=True)
    x = ((x - m) * contrast + m + bright).clamp(0, 1)
    # Resolution/JPEG jitter stand-in: a light blur on some scans.
    blur = torch.rand(n, generator=gen) < 0.2
    if bool(blur.any()):
        k = torch.tensor([1.0, 2.0, 1.0])
        k = (k[:, None] * k[None, :] / 16).view(1, 1, 3, 3)
        x[blur] = F.conv2d(F.pad(x[blur], (1, 1, 1, 1), mode="replicate"), k)
    return x


def normalize_t(torch, x01, spec: Preprocessing):
    """(x - mean)/std on 0..1 images, the same affine as normalize_into (u8 * scale + offset)."""
    scale, offset = spec.channel_affine()
    # normalize_into computes u8 * (1/(255 std)) + (-mean/std); x01 = u8/255, so x01 * (1/std) - mean/std.
    return x01 * float(scale[0] * 255.0) + float(offset[0])


def u8_to_input(torch, u8: np.ndarray, spec: Preprocessing):
    """uint8 (N,H,W) -> float32 NCHW with normalize_into itself (used for evaluation in torch)."""
    out = np.empty((len(u8), spec.channels, spec.height, spec.width), np.float32)
    normalize_into(out, u8, spec)
    return torch.from_numpy(out)


def crop_strips(
    torch,
    strips,
    widths,
    idx,
    *,
    out_hw: tuple[int, int],
    resize: str,
    lateral: tuple[float, float] | None,
    gen,
    density: tuple[float, float] | None = None,
    scan_widths=None,
):
    """Crop each strip the way ``resize`` crops a scan, with an optional random lateral scale factor
    (log-uniform in ``lateral``: the crop covers 1/f as many A-scans, i.e. the retina appears f times
    wider, which is what another A-scan density does), then resize to out_hw with antialiasing (close to
    the decoders' area resize). Returns float (N, 1, H, W) in 0..1."""
    F = torch.nn.functional
    h_out, w_out = out_hw
    height = strips.shape[1]
    out = torch.empty((len(idx), 1, h_out, w_out))
    if density is not None:
        # Target A-scan density: every scan, whatever its own width, is shown as if it had been acquired
        # with a width drawn log-uniformly from ``density`` (e.g. 512..1536 A-scans for one scan length),
        # so no class can be recognised by the density it happened to be acquired with.
        target = torch.exp(
            torch.empty(len(idx)).uniform_(math.log(density[0]), math.log(density[1]), generator=gen)
        ).tolist()
        f = [t / float(scan_widths[i]) for t, i in zip(target, idx)]
    elif lateral is not None:
        f = torch.exp(
            torch.empty(len(idx)).uniform_(math.log(lateral[0]), math.log(lateral[1]), generator=gen)
        ).tolist()
    else:
        f = [1.0] * len(idx)
    for k, i in enumerate(idx):
        sw = int(widths[i])
        base = height * w_out / h_out if resize == "center_crop" else sw
        cw = int(round(min(sw, max(8.0, base / f[k]))))
        left = (sw - cw) // 2
        region = torch.from_numpy(strips[i, :, left : left + cw]).float().div_(255.0)[None, None]
        out[k] = F.interpolate(region, size=(h_out, w_out), mode="bilinear", antialias=True, align_corners=False)[0]
    return out
