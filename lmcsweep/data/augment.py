"""Seeded batch augmentation and normalisation, shared by every loader.

`prepare_batch(x_uint8, kind, draws, ...)` turns a uint8 batch [B, C, H, W] into the float32
normalised batch the model sees. `draws` holds each example's uniform draws in [0, 1), one row per
image (`epoch_draws` makes them for a whole epoch from one CPU generator, so they depend neither on
the device nor on where an example falls in the data order); the FFCV and tensor loaders both call
this function, which is what makes their batches bit-identical.

Kinds: 'none'; 'crop_flip' (zero-pad 4, random crop back to H x W, horizontal flip with p=1/2,
done as one gather over the batch); 'rrc_flip' (random resized crop, scale (0.08, 1), ratio
(3/4, 4/3), as one batched `grid_sample`, then flip).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

AUGMENTATIONS = ("none", "crop_flip", "rrc_flip")
DRAWS = {"none": 0, "crop_flip": 3, "rrc_flip": 5}  # uniforms per image: (dy, dx, flip); (area, ratio, cx, cy, flip)
CROP_PAD = 4


def epoch_draws(kind: str, num_examples: int, gen: torch.Generator) -> torch.Tensor:
    """Every example's draws for one epoch: row i belongs to example i (CPU float32 [N, DRAWS])."""
    return torch.rand(num_examples, DRAWS[kind], generator=gen)


def normalizer(mean, std, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) so that x_uint8 * scale + shift == (x/255 - mean) / std."""
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return (1.0 / (255.0 * std_t)), (-mean_t / std_t)


def normalize(x: torch.Tensor, norm: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    scale, shift = norm
    return x.to(torch.float32).mul_(scale).add_(shift)


def crop_flip(x: torch.Tensor, draws: torch.Tensor, pad: int = CROP_PAD) -> torch.Tensor:
    """Zero-pad by `pad`, crop back to H x W at each image's offset, flip where its draw is < 1/2;
    any dtype. `draws`: [B, 3] uniforms (row offset, column offset, flip)."""
    b, c, h, w = x.shape
    dev = x.device
    offsets = (draws[:, :2] * (2 * pad + 1)).long().clamp_(max=2 * pad).to(dev)  # each of 0..2*pad
    dy, dx, flip = offsets[:, 0], offsets[:, 1], (draws[:, 2] < 0.5).to(dev)
    padded = F.pad(x, (pad, pad, pad, pad))
    ar_h = torch.arange(h, device=dev)
    ar_w = torch.arange(w, device=dev)
    rows = dy[:, None] + ar_h                                        # [B, H]
    cols = dx[:, None] + torch.where(flip[:, None], (w - 1) - ar_w, ar_w)  # [B, W], flip folded in
    # Gather rows, then columns: two cheap index ops instead of a per-image loop.
    wp = w + 2 * pad
    out = padded.gather(2, rows[:, None, :, None].expand(b, c, h, wp))
    return out.gather(3, cols[:, None, None, :].expand(b, c, h, w))


def rrc_flip(x: torch.Tensor, draws: torch.Tensor, size: tuple[int, int],
             scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> torch.Tensor:
    """Random resized crop to `size` and horizontal flip for a float batch, via one grid_sample.

    Simpler than torchvision's rejection sampling: per image one uniform area fraction and log
    aspect ratio, the crop clipped to the image. `draws`: [B, 5] uniforms (area, ratio, centre x,
    centre y, flip).
    """
    b = x.shape[0]
    area = scale[0] + (scale[1] - scale[0]) * draws[:, 0]
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * draws[:, 1]
    cx, cy, flip = draws[:, 2], draws[:, 3], draws[:, 4] < 0.5
    r = torch.exp(log_r)
    sw = torch.sqrt(area * r).clamp(max=1.0)   # crop width / image width
    sh = torch.sqrt(area / r).clamp(max=1.0)
    # centre in [-1 + s, 1 - s] in normalised coordinates
    tx = (cx * 2 - 1) * (1 - sw)
    ty = (cy * 2 - 1) * (1 - sh)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = torch.where(flip, -sw, sw)
    theta[:, 0, 2] = tx
    theta[:, 1, 1] = sh
    theta[:, 1, 2] = ty
    theta = theta.to(x.device)
    grid = F.affine_grid(theta, (b, x.shape[1], size[0], size[1]), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def prepare_batch(x: torch.Tensor, kind: str, draws: torch.Tensor | None,
                  norm: tuple[torch.Tensor, torch.Tensor],
                  size: tuple[int, int] | None = None) -> torch.Tensor:
    """uint8 [B, C, H, W] -> augmented (kind, each image by its row of `draws`), normalised
    float32 [B, C, h, w]."""
    if kind == "none" or draws is None:
        if size is not None and tuple(x.shape[-2:]) != tuple(size):
            return center_resize(normalize(x, norm), size)
        return normalize(x, norm)
    if kind == "crop_flip":
        return normalize(crop_flip(x, draws), norm)
    if kind == "rrc_flip":
        return rrc_flip(normalize(x, norm), draws, size or tuple(x.shape[-2:]))
    raise ValueError(f"augmentation must be one of {AUGMENTATIONS}, not {kind!r}")


def center_resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a float batch to `size` (evaluation of data stored larger than the model input)."""
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
