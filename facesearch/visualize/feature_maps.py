"""The feature-map grid: every conv layer (13 for VGG16) x N channel maps for one image, one PNG.

Channels are chosen by a stated rule so the figure can be reproduced: ``"strongest"`` takes the N
channels with the highest mean activation for this image, ``"random"`` draws N with a seeded
generator (the same channels for every image, useful to compare images).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from facesearch.errors import BadInput
from facesearch.visualize.hooks import Forward, Recorder, Site
from facesearch.visualize.report import Mosaic, colourise, fit_tile

RULES = ("strongest", "random")


@dataclass(frozen=True)
class FeatureGrid:
    """The maps drawn: per conv layer, the chosen channel indices and their maps (N, h, w)."""

    names: list[str]
    channels: list[np.ndarray]  # per layer (N,) channel indices
    maps: list[np.ndarray]  # per layer (N, h, w) raw activations
    rule: str
    seed: int


def choose_channels(activation: torch.Tensor, n: int, rule: str = "strongest", seed: int = 0) -> np.ndarray:
    """Pick n channel indices of one layer's (C, h, w) activation by ``rule``."""
    count = activation.shape[0]
    n = min(n, count)
    if rule == "strongest":
        return torch.topk(activation.flatten(1).mean(1), n).indices.cpu().numpy()
    if rule == "random":
        generator = torch.Generator().manual_seed(seed)
        return torch.sort(torch.randperm(count, generator=generator)[:n]).values.numpy()
    raise BadInput(f"unknown rule {rule!r}; choose one of {RULES}")


@torch.no_grad()
def feature_grid(
    forward: Forward, sites: Sequence[Site], x: torch.Tensor, n: int = 10, rule: str = "strongest", seed: int = 0
) -> FeatureGrid:
    """Record every conv site for one image x (1, 3, H, W) and keep n maps per layer."""
    with Recorder([s for s in sites if s.kind == "conv"]) as recorder:
        forward(x)
    return grid_from(recorder.ordered(), n, rule, seed)


def grid_from(recorded: Sequence[tuple[str, torch.Tensor]], n: int = 10, rule: str = "strongest",
              seed: int = 0) -> FeatureGrid:
    """The grid from already recorded outputs (name, (1, C, h, w)); fully connected ones are skipped."""
    names, channels, maps = [], [], []
    for name, act in recorded:
        if act.dim() != 4:
            continue
        chosen = choose_channels(act[0], n, rule, seed)
        names.append(name)
        channels.append(chosen)
        maps.append(act[0, torch.from_numpy(chosen).to(act.device)].float().cpu().numpy())  # (N, h, w)
    return FeatureGrid(names, channels, maps, rule, seed)


def draw_feature_grid(grid: FeatureGrid, path: Path, image: np.ndarray | None = None, title: str = "") -> Path:
    """Write the grid as one PNG: a row per layer, a tile per chosen channel (the input image first).

    Each map is scaled to its own range (viridis: dark = low, yellow = high); the tile shows *where* a
    channel fires, the caption gives its channel index and peak activation.
    """
    rows, captions, labels = [], [], []
    for name, chosen, maps in zip(grid.names, grid.channels, grid.maps):
        tiles = [fit_tile(colourise(m), 64, smooth=False) for m in maps]
        texts = [f"#{c} · {m.max():.2g}" for c, m in zip(chosen, maps)]
        if image is not None:
            tiles, texts = [fit_tile(image, 64)] + tiles, ["input"] + texts
        rows.append(tiles)
        captions.append(texts)
        labels.append(f"{name}\n{maps.shape[1]}×{maps.shape[2]}")
    rule = "strongest mean activation" if grid.rule == "strongest" else f"random channels (seed {grid.seed})"
    mosaic = Mosaic(rows, labels, captions, title=title or f"Feature maps per conv layer — {rule}", tile=64, label_width=70)
    return mosaic.draw(path)
