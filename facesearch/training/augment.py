"""Batched augmentation on the training device: flip, pad-and-crop shift, random resized crop, colour jitter.

Batches arrive as uint8 ``(n, S, S, 3)`` from the cache; every transform draws per-image parameters from one
``torch.Generator`` on the device (saved in checkpoints, so a resumed run draws the same numbers) and runs
as a handful of tensor ops over the whole batch, so augmentation costs the GPU microseconds, not a CPU
worker pool.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

# ITU-R 601 luma weights, as torchvision's rgb_to_grayscale uses them.
_LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class AugmentConfig:
    flip: bool = True  # horizontal flip with probability 1/2
    pad_crop: int = 0  # pad by this many px (reflect) and crop back at a random offset (CIFAR: 4)
    scale: tuple[float, float] = (1.0, 1.0)  # random resized crop: range of the crop's area fraction
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # ... and of its aspect ratio
    shift: float = 0.0  # extra random translation, a fraction of the side (borders padded with zeros)
    brightness: float = 0.0  # factors drawn from [1 - b, 1 + b]
    contrast: float = 0.0
    saturation: float = 0.0

    @classmethod
    def faces(cls) -> "AugmentConfig":
        """Crops are already centred on the face: mild zoom/shift and colour, no pad-crop."""
        return cls(flip=True, scale=(0.75, 1.0), ratio=(0.9, 1.1), shift=0.05,
                   brightness=0.3, contrast=0.3, saturation=0.3)

    @classmethod
    def faces_strong(cls) -> "AugmentConfig":
        """For many people with few photos each (a margin head memorises them): wider zoom and shift, more colour."""
        return cls(flip=True, scale=(0.5, 1.0), ratio=(0.8, 1.25), shift=0.1,
                   brightness=0.4, contrast=0.4, saturation=0.5)

    @classmethod
    def cifar(cls) -> "AugmentConfig":
        """The standard CIFAR recipe: flip + 4 px reflect-pad random crop."""
        return cls(flip=True, pad_crop=4)

    @classmethod
    def none(cls) -> "AugmentConfig":
        return cls(flip=False)


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 (n, S, S, 3) or float [0, 1] (n, 3, S, S) -> normalised float (n, 3, S, S)."""
    if x.dtype == torch.uint8:
        x = x.permute(0, 3, 1, 2).float().div_(255)
    return (x - _channels(tuple(mean), x.device, x.dtype)) / _channels(tuple(std), x.device, x.dtype)


@lru_cache(maxsize=32)
def _channels(values: tuple[float, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A (1, 3, 1, 1) constant, made once per device: a host-to-device copy per step would stall the GPU queue."""
    return torch.tensor(values, device=device, dtype=dtype).view(1, 3, 1, 1)


def augment(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Augment a uint8 batch (n, S, S, 3) on its device; returns float (n, 3, S, S) in [0, 1]."""
    x = x.permute(0, 3, 1, 2).float().div_(255)
    if cfg.flip:
        flip = _uniform(x.shape[0], generator) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
    if cfg.pad_crop:
        x = _pad_crop(x, cfg.pad_crop, generator)
    if cfg.scale != (1.0, 1.0) or cfg.shift:
        x = _resized_crop(x, cfg, generator)
    if cfg.brightness or cfg.contrast or cfg.saturation:
        x = _colour_jitter(x, cfg, generator)
    return x


def _uniform(n: int, generator: torch.Generator, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=generator.device) * (high - low) + low


def _pad_crop(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Reflect-pad by ``pad`` and take an S x S window at a random offset per image (a shift of up to pad px)."""
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")  # (n, c, h + 2p, w + 2p)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (n, 1, h, 1)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (n, 1, 1, w)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chan, rows, cols]  # (n, c, h, w)


def _resized_crop(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Random resized crop + shift as one affine resampling (bilinear) per image."""
    n = x.shape[0]
    area = _uniform(n, generator, *cfg.scale)
    log_ratio = _uniform(n, generator, math.log(cfg.ratio[0]), math.log(cfg.ratio[1]))
    w = torch.sqrt(area * log_ratio.exp()).clamp(max=1.0)  # crop width, a fraction of the side
    h = torch.sqrt(area / log_ratio.exp()).clamp(max=1.0)
    # the crop's centre anywhere that keeps it inside the image, plus the extra shift (normalised coords)
    tx = (_uniform(n, generator, -1, 1) * (1 - w)) + _uniform(n, generator, -2 * cfg.shift, 2 * cfg.shift)
    ty = (_uniform(n, generator, -1, 1) * (1 - h)) + _uniform(n, generator, -2 * cfg.shift, 2 * cfg.shift)
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w, tx, h, ty
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _colour_jitter(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Brightness, contrast and saturation factors per image (torchvision's definitions), clamped to [0, 1]."""
    n = x.shape[0]
    luma = _channels(_LUMA, x.device, x.dtype)
    if cfg.brightness:
        x = x * _uniform(n, generator, 1 - cfg.brightness, 1 + cfg.brightness).view(-1, 1, 1, 1)
    if cfg.contrast:
        grey_mean = (x * luma).sum(1, keepdim=True).mean((2, 3), keepdim=True)  # (n, 1, 1, 1)
        c = _uniform(n, generator, 1 - cfg.contrast, 1 + cfg.contrast).view(-1, 1, 1, 1)
        x = (x - grey_mean) * c + grey_mean
    if cfg.saturation:
        grey = (x * luma).sum(1, keepdim=True)  # (n, 1, S, S)
        s = _uniform(n, generator, 1 - cfg.saturation, 1 + cfg.saturation).view(-1, 1, 1, 1)
        x = (x - grey) * s + grey
    return x.clamp_(0, 1)
