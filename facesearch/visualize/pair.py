"""The pair view: which regions of the query and of the matched gallery face make them similar.

Both faces go through the network as one batch of two; the target is the cosine similarity of their
embeddings, so ONE backward pass gives a similarity-gradient (LayerCAM) map on each side. On top, a
spatial correspondence: mutual nearest neighbours between the two faces' feature vectors at a
mid-depth conv layer, weighted by both maps, drawn as lines between the faces.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from facesearch.visualize.cam import attribute, fuse, layer_cams, overlay
from facesearch.visualize.hooks import Forward, Site


@dataclass(frozen=True)
class PairView:
    """Heat maps (H, W) in [0, 1] on both faces and the strongest region correspondences."""

    similarity: float  # cosine of the two embeddings
    query_map: np.ndarray
    gallery_map: np.ndarray
    layers: list[str]  # the conv layers whose maps were fused
    matches: list[tuple[float, float, float, float, float]]  # (qx, qy, gx, gy, strength), input pixels
    match_layer: str


def _pair_similarity(outputs: torch.Tensor) -> torch.Tensor:
    """(2, d) embeddings -> (1,) their cosine: one score whose gradient reaches both faces."""
    return F.cosine_similarity(outputs[:1], outputs[1:2], dim=1)


def _correspondences(act: torch.Tensor, q_map: np.ndarray, g_map: np.ndarray, n: int, size: tuple[int, int]):
    """Mutual nearest neighbours between the two faces' positions at one layer (2, C, h, w)."""
    act = act.float().cpu()
    h, w = act.shape[-2:]
    feats = F.normalize(act.flatten(2), dim=1)  # (2, C, h*w)
    sim = feats[0].T @ feats[1]  # (h*w, h*w) cosine between query and gallery positions
    best_g, best_q = sim.argmax(1), sim.argmax(0)
    small = lambda m: F.adaptive_avg_pool2d(torch.from_numpy(m)[None, None], (h, w)).flatten()  # noqa: E731
    qw, gw = small(q_map), small(g_map)
    sy, sx = size[0] / h, size[1] / w
    found = []
    for qi in range(h * w):
        gi = int(best_g[qi])
        if int(best_q[gi]) != qi:
            continue  # keep mutual matches only
        strength = float(sim[qi, gi] * torch.sqrt(qw[qi] * gw[gi]))
        centre = lambda i: ((i % w + 0.5) * sx, (i // w + 0.5) * sy)  # noqa: E731
        found.append((*centre(qi), *centre(gi), strength))
    return sorted(found, key=lambda m: -m[4])[:n]


def pair_view(
    forward: Forward,
    sites: Sequence[Site],
    query: torch.Tensor,
    gallery: torch.Tensor,
    fuse_last: int = 6,
    n_matches: int = 12,
) -> PairView:
    """Similarity-gradient maps on both faces (1, 3, H, W) each, fused over the last conv layers.

    Args:
        fuse_last: how many of the deepest conv layers to average (6 = VGG16's last two stages).
        n_matches: correspondences to keep, strongest first.
    """
    convs = [s for s in sites if s.kind == "conv"]
    attribution = attribute(forward, convs, torch.cat([query, gallery]), _pair_similarity)
    maps = layer_cams(attribution)  # name -> (2, H, W)
    names = attribution.names[-fuse_last:]
    fused = fuse(maps, names)  # (2, H, W)
    # Correspond at the deepest conv that still has a usable grid (at least 12 positions a side).
    sized = [(n, a) for n, a in zip(attribution.names, attribution.activations) if min(a.shape[-2:]) >= 12]
    match_layer, act = sized[-1] if sized else (attribution.names[-1], attribution.activations[-1])
    matches = _correspondences(act, fused[0], fused[1], n_matches, attribution.input_size)
    return PairView(float(attribution.scores[0]), fused[0], fused[1], list(names), matches, match_layer)


def draw_pair(view: PairView, query_image: np.ndarray, gallery_image: np.ndarray, path: Path,
              labels: tuple[str, str] = ("query", "gallery")) -> Path:
    """One PNG: both faces with their maps, and the correspondences as lines between them."""
    import matplotlib.pyplot as plt  # matplotlib loads when a pair is drawn, not on import (start-up)
    from matplotlib import patheffects
    from matplotlib.patches import ConnectionPatch

    fig, axes = plt.subplots(1, 2, figsize=(7.2, 4.0))
    for ax, image, heat, label in zip(axes, (query_image, gallery_image), (view.query_map, view.gallery_map), labels):
        ax.imshow(overlay(image, heat))
        ax.set_title(label, fontsize=10)
        ax.axis("off")
    top = max((m[4] for m in view.matches), default=1.0) or 1.0
    outline = [patheffects.Stroke(linewidth=3.2, foreground="black", alpha=0.6), patheffects.Normal()]
    for qx, qy, gx, gy, strength in view.matches:
        weight = max(strength / top, 0.0)
        line = ConnectionPatch((gx, gy), (qx, qy), "data", "data", axesA=axes[1], axesB=axes[0], color="white",
                               lw=0.6 + 1.6 * weight, alpha=0.35 + 0.65 * weight, path_effects=outline)
        fig.add_artist(line)
        for ax, (x, y) in ((axes[0], (qx, qy)), (axes[1], (gx, gy))):
            ax.plot(x, y, "o", ms=4.5, color="white", mec="black", mew=0.8)
    fig.suptitle(f"What makes them similar (cosine {view.similarity:.3f}; maps fused over "
                 f"{view.layers[0]}…{view.layers[-1]}, lines: matching regions at {view.match_layer})", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
