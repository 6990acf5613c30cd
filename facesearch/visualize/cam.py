"""Per-layer heat maps for a target, every layer from ONE forward and ONE backward pass.

``attribute`` records every site's output and gets all their gradients with a single
``torch.autograd.grad`` call; ``layer_cams`` turns them into one heat map per layer, upsampled to the
input size and scaled to [0, 1]. Two rules:

- ``"layercam"`` (default; Jiang et al., "LayerCAM", IEEE TIP 2021): ``relu(sum_c relu(g_c) * A_c)``,
  weighting every position by its own gradient. It stays sharp at shallow layers, where Grad-CAM's
  channel-averaged weights cancel out into noise — and this report draws all 13 convs.
- ``"gradcam"`` (Selvaraju et al., ICCV 2017): ``relu(sum_c mean(g_c) * A_c)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from facesearch.errors import BadInput
from facesearch.visualize.hooks import Forward, Recorder, Site

Target = Callable[[torch.Tensor], torch.Tensor]  # outputs (n, d) -> scores (n,)
CAM_METHODS = ("layercam", "gradcam")


@dataclass(frozen=True)
class Attribution:
    """Each site's output and the target's gradient there, for a batch of n images (detached)."""

    names: list[str]
    activations: list[torch.Tensor]  # per site (n, C, h, w) or (n, C)
    gradients: list[torch.Tensor]  # same shapes
    scores: torch.Tensor  # (n,) target value per image
    outputs: torch.Tensor  # (n, d) model outputs
    input_size: tuple[int, int]  # (H, W)


def attribute(forward: Forward, sites: Sequence[Site], x: torch.Tensor, target: Target) -> Attribution:
    """One forward with every site recorded, then one backward for all sites' gradients.

    Images in the batch do not interact (eval mode), so ``scores.sum()`` gives each image its own
    gradients.
    """
    return attribute_many(forward, sites, x, [target])[0]


def attribute_many(forward: Forward, sites: Sequence[Site], x: torch.Tensor,
                   targets: Sequence[Target]) -> list[Attribution]:
    """Several targets from ONE forward pass: one backward each, sharing the recorded graph."""
    x = x.detach().requires_grad_(True)  # so a frozen model still builds a graph
    results = []
    with torch.enable_grad(), Recorder(sites) as recorder:
        outputs = forward(x)
        recorded = recorder.ordered()
        tensors = [t for _, t in recorded]
        for i, target in enumerate(targets):
            scores = target(outputs)  # (n,)
            grads = torch.autograd.grad(scores.sum(), tensors, allow_unused=True, retain_graph=i + 1 < len(targets))
            grads = [torch.zeros_like(t) if g is None else g for t, g in zip(tensors, grads)]
            results.append(Attribution(
                names=[name for name, _ in recorded],
                activations=[t.detach() for t in tensors],
                gradients=[g.detach() for g in grads],
                scores=scores.detach(),
                outputs=outputs.detach(),
                input_size=(x.shape[-2], x.shape[-1]),
            ))
    return results


def channel_scores(attribution: Attribution) -> list[torch.Tensor]:
    """Gradient x activation summed over positions, per site (n, C).

    A first-order estimate of how much the target falls when a channel is switched off; used to pick
    the channels to ablate.
    """
    out = []
    for act, grad in zip(attribution.activations, attribution.gradients):
        prod = act * grad
        out.append(prod.flatten(2).sum(-1) if prod.dim() == 4 else prod)
    return out


def _cam(act: torch.Tensor, grad: torch.Tensor, method: str) -> torch.Tensor:
    """(n, C, h, w) activations and gradients -> (n, h, w) non-negative map."""
    if method == "layercam":
        return F.relu((F.relu(grad) * act).sum(1))
    if method == "gradcam":
        weights = grad.mean(dim=(2, 3), keepdim=True)  # (n, C, 1, 1)
        return F.relu((weights * act).sum(1))
    raise BadInput(f"unknown CAM method {method!r}; choose one of {CAM_METHODS}")


def normalise(maps: torch.Tensor) -> torch.Tensor:
    """Scale each map (n, H, W) by its maximum into [0, 1]; an all-zero map stays zero."""
    peak = maps.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)
    return (maps / peak).clamp(0.0, 1.0)


def layer_cams(attribution: Attribution, method: str = "layercam") -> dict[str, np.ndarray]:
    """Heat map per conv site: name -> (n, H, W) float32 in [0, 1], upsampled to the input size."""
    maps = {}
    for name, act, grad in zip(attribution.names, attribution.activations, attribution.gradients):
        if act.dim() != 4:
            continue  # fully connected sites have no spatial map
        cam = _cam(act, grad, method).unsqueeze(1)  # (n, 1, h, w)
        cam = F.interpolate(cam, size=attribution.input_size, mode="bilinear", align_corners=False)
        maps[name] = normalise(cam[:, 0].clamp_min(0)).cpu().numpy().astype(np.float32)
    return maps


def fuse(maps: dict[str, np.ndarray], names: Sequence[str]) -> np.ndarray:
    """Mean of the named layers' maps (n, H, W), rescaled to [0, 1] (LayerCAM's multi-layer fusion)."""
    stacked = torch.from_numpy(np.mean([maps[n] for n in names], axis=0))
    return normalise(stacked).numpy()


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.45, cmap: str = "jet") -> np.ndarray:
    """Blend a heat map (H, W) in [0, 1] over an RGB image (H, W, 3) uint8; returns uint8."""
    from matplotlib import colormaps  # matplotlib loads when a map is drawn, not on import (start-up)

    colour = colormaps[cmap](heat)[..., :3]  # (H, W, 3) in [0, 1]
    blended = (1 - alpha) * image.astype(np.float32) / 255.0 + alpha * colour
    return (blended.clip(0, 1) * 255).round().astype(np.uint8)
