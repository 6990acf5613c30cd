"""What an explanation is (``Explanation``, ``LayerFigures``, its settings) and the parts both kinds share: the
model as the visualizer sees it, attribution then ablation, the per-layer figures."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from facesearch.errors import FacesearchError

class ExplainError(FacesearchError):
    """The explanation cannot be made for a reason the user can act on (the message says which)."""

    http_status, status = 422, "cannot_explain"


@dataclass(frozen=True)
class ExplainSettings:
    fraction: float = 0.10  # share of one layer's channels switched off in the ablation
    seeds: int = 3  # random channel draws per layer (mean ± sd)
    candidates: int = 4  # identities / classes compared per layer: match, runner-up, the next best
    faces_per_identity: int = 2  # gallery faces per candidate identity (its most similar ones)
    maps_per_layer: int = 10  # columns of the feature-map grid
    map_rule: str = "strongest"  # "strongest" mean activation, or "random" (seeded)
    seed: int = 0
    cam: str = "layercam"  # "layercam" or "gradcam"
    pool: str = "gap"  # pooling for the per-layer similarity: "gap" or "gem"
    fuse_last: int = 6  # deepest conv layers fused into the pair-view maps


@dataclass(frozen=True)
class LayerFigures:
    """One layer's numbers. Similarities are None where no candidates were compared."""

    name: str
    kind: str  # "conv" or "fc"
    channels: int
    size: list[int] | None  # [h, w] of a conv map
    similarity: dict[str, float] | None  # candidate -> cosine on pooled, centred activations
    margin: float | None  # similarity to the match minus to the runner-up
    rank: int | None  # rank of the match among the candidates
    ablated: int  # channels switched off
    fall_top: float  # fall of the decision margin, top-attributed channels off
    fall_random: float  # mean fall, random channels off
    fall_random_sd: float


@dataclass(frozen=True)
class Explanation:
    kind: str  # "identification" or "classification"
    query: str  # the photo / image explained
    answer: str  # matched identity, or predicted class
    runner_up: str
    score: float  # heat-map target: cosine to the match's closest face, or the class logit
    margin: float  # decision margin over the runner-up (the ablation's target, unablated)
    layers: list[LayerFigures]
    emerges_at: str | None  # first layer from which the match leads the candidates to the end
    ranking: list[str]  # layers by fall under top-channel ablation, largest first
    files: dict[str, Path]  # figure name -> PNG, plus "report" (HTML) and "json"
    seconds: float  # time to compute and write everything
    details: dict = field(default_factory=dict)  # gallery similarities, checkpoint, settings

    def to_dict(self) -> dict:
        out = asdict(self)
        out["files"] = {k: str(v) for k, v in self.files.items()}
        return out


class Clock:
    """Seconds per phase (``details["phase_s"]``): where an explanation's time goes."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.phases: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.phases[name] = round(now - self.last, 3)
        self.last = now

    @property
    def total(self) -> float:
        return round(time.perf_counter() - self.start, 3)


# --- the model as the visualizer sees it -----------------------------------------------------------


@dataclass(frozen=True)
class ModelView:
    forward: object  # images (n, 3, S, S) -> outputs (n, d)
    sites: list  # conv sites then fc sites
    preprocess: object  # checkpoint.Preprocess
    device: object  # where the model's weights are
    memory_format: object  # torch.channels_last when the model's weights are


def model_view(loaded, output: str) -> ModelView:
    from facesearch.visualize.hooks import conv_sites, fc_sites

    model = loaded.model
    sites = conv_sites(model, model.conv_layers()) + fc_sites(model.fc_layers())
    forward = model.forward_embedding if output == "embedding" else model.forward
    import torch

    weight = model.conv_layers()[1][1].weight
    layout = torch.channels_last if weight.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    return ModelView(forward, sites, loaded.preprocess, weight.device, layout)


def to_tensor(images: Sequence, view: ModelView):
    from facesearch.checkpoint import preprocess_batch

    x = preprocess_batch(list(images), view.preprocess).to(view.device)  # (n, 3, S, S)
    return x.contiguous(memory_format=view.memory_format)  # as the model's weights (Embedder: channels-last)


def as_seen(image, size: int) -> np.ndarray:
    """What the model sees, as RGB uint8 (size, size, 3), for overlays."""
    from facesearch.data.images import to_square_rgb

    return np.asarray(to_square_rgb(image, size))


def attribute_and_ablate(view, x, evidence_target, decision_target, settings, clock):
    """Attribute ``x`` toward both targets in one pass per layer, then ablate each layer's channels for the decision.

    Returns:
        ``(evidence, decision, ablation)``: per-layer attribution toward the answer (what the heat maps show),
        toward the decision margin (what picks the channels to switch off), and the ablation's result.
    """
    from facesearch.visualize import cam, layers

    evidence, decision = cam.attribute_many(view.forward, view.sites, x, [evidence_target, decision_target])
    clock.lap("attribution")
    ablation = layers.layer_ablation(view.forward, view.sites, x, decision_target, decision,
                                     settings.fraction, settings.seeds)
    clock.lap("ablation")
    return evidence, decision, ablation



@dataclass
class Computed:
    """What one explanation computed, before anything is drawn or written."""

    kind: str  # "identification" or "classification"
    query: str
    labels: dict  # answer, runner_up, target: the words the figures and the report use
    evidence: object  # attribution toward the answer (heat maps)
    decision: object  # attribution toward the decision margin (picks the channels to switch off)
    ablation: object  # the layer ablation's result
    similarity: object | None  # per-layer similarity to the candidates (None: nothing to compare)
    view_pair: object | None  # the pair view (identification only)
    images: dict  # query, match, runner_up as RGB arrays (what exists)


def layer_figures(evidence, ablation, similarity) -> list[LayerFigures]:
    sim_rows = {n: i for i, n in enumerate(similarity.names)} if similarity is not None else {}
    figures = []
    for i, (name, act) in enumerate(zip(ablation.names, evidence.activations)):
        row = sim_rows.get(name)
        sims = None if row is None else {k: round(float(v), 4) for k, v in zip(similarity.identities, similarity.similarity[row])}
        figures.append(LayerFigures(
            name=name, kind="conv" if act.dim() == 4 else "fc", channels=int(ablation.channels[i]),
            size=list(act.shape[-2:]) if act.dim() == 4 else None, similarity=sims,
            margin=None if row is None else round(float(similarity.margin[row]), 4),
            rank=None if row is None else int(similarity.rank[row]), ablated=int(ablation.ablated[i]),
            fall_top=round(float(ablation.top[i]), 5), fall_random=round(float(ablation.random_mean[i]), 5),
            fall_random_sd=round(float(ablation.random_sd[i]), 5),
        ))
    return figures
