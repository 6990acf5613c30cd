"""Which layers drive an identification — two measures that, unlike activation patching or layer
conductance on a plain chain like VGG16, can differ from one layer to the next.

(a) ``layer_similarity``: at every layer, how close the query is to each candidate identity on that
    layer's pooled activations. Where the match overtakes the runner-up is where the match *emerges*.
(b) ``layer_ablation``: switch off the k % channels of one layer that gradient x activation says help
    the target most, and compare the fall of the target with switching off k % random channels of the
    same layer (several seeds, mean ± sd). A layer whose few top channels carry the decision shows a
    large gap; a layer where the evidence is spread thin shows none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from facesearch.errors import BadInput
from facesearch.visualize.cam import Attribution, Target, channel_scores
from facesearch.visualize.hooks import ChannelAblation, Forward, Recorder, Site


@dataclass(frozen=True)
class LayerSimilarity:
    """Query-to-identity cosine per layer. Candidate 0 is the match, candidate 1 the runner-up."""

    names: list[str]  # layers, input to output
    identities: list[str]  # candidates
    similarity: np.ndarray  # (L, K)
    embeddings: np.ndarray  # (1 + sum m_k, d) model outputs: the query, then each candidate's faces

    @property
    def margin(self) -> np.ndarray:
        """(L,) similarity to the match minus similarity to the runner-up."""
        return self.similarity[:, 0] - self.similarity[:, 1]

    @property
    def rank(self) -> np.ndarray:
        """(L,) 1-based rank of the match among the candidates at each layer."""
        return 1 + (self.similarity[:, 1:] > self.similarity[:, :1]).sum(1)

    @property
    def emerges_at(self) -> str | None:
        """The first layer from which the match ranks first at every later layer (None if never)."""
        first = None
        for name, r in zip(self.names, self.rank):
            first = (first or name) if r == 1 else None
        return first


def pool(activation: torch.Tensor, how: str = "gap", p: float = 3.0) -> torch.Tensor:
    """(n, C, h, w) -> (n, C) by global average ("gap") or generalised-mean ("gem", p=3) pooling.

    Fully connected outputs (n, C) pass through unchanged.
    """
    if activation.dim() == 2:
        return activation
    if how == "gap":
        return activation.mean(dim=(2, 3))
    if how == "gem":
        return activation.clamp_min(1e-6).pow(p).mean(dim=(2, 3)).pow(1.0 / p)
    raise BadInput(f"unknown pooling {how!r}; choose 'gap' or 'gem'")


@torch.no_grad()
def layer_similarity(
    forward: Forward,
    sites: Sequence[Site],
    query: torch.Tensor,
    candidates: Sequence[tuple[str, torch.Tensor]],
    how: str = "gap",
) -> LayerSimilarity:
    """Similarity of the query to each candidate identity on every layer's pooled activations.

    An identity's similarity is that of its closest face (the gallery's own rule: an identity ranks by
    its best-matching face). Pooled activations after a ReLU are all non-negative, so raw cosines sit
    near 1 for any two faces; every vector is therefore centred first on the mean of the identities'
    mean vectors, so the numbers measure what tells the candidates apart. Use three or more candidates:
    with two, centring makes them mirror images.

    Args:
        query: (1, 3, H, W) preprocessed query.
        candidates: (identity, (m_k, 3, H, W) preprocessed faces), match first, runner-up second.
    """
    counts = [faces.shape[0] for _, faces in candidates]
    batch = torch.cat([query] + [faces for _, faces in candidates])  # (1 + sum m_k, 3, H, W)
    with Recorder(sites) as recorder:
        outputs = forward(batch)
    names, rows = [], []
    for name, act in recorder.ordered():
        pooled = pool(act.float(), how)  # (1 + sum m_k, C)
        centre = torch.stack([g.mean(0) for g in torch.split(pooled[1:], counts)]).mean(0)  # (C,)
        cos = torch.nn.functional.cosine_similarity(pooled[:1] - centre, pooled[1:] - centre, dim=1)
        rows.append(torch.stack([c.max() for c in torch.split(cos, counts)]))  # (K,) best face per identity
        names.append(name)
    return LayerSimilarity(names, [n for n, _ in candidates], torch.stack(rows).cpu().numpy(), outputs.float().cpu().numpy())


@dataclass(frozen=True)
class LayerAblation:
    """Fall of the target when k % of one layer's channels are switched off (positive = it fell)."""

    names: list[str]
    channels: np.ndarray  # (L,) channels per layer
    ablated: np.ndarray  # (L,) channels switched off (k % of channels, at least one)
    base: float  # target with nothing ablated
    top: np.ndarray  # (L,) fall when the top-attributed channels are off
    random_mean: np.ndarray  # (L,) mean fall over random channel draws
    random_sd: np.ndarray  # (L,) their standard deviation
    fraction: float
    seeds: int

    @property
    def excess(self) -> np.ndarray:
        """(L,) how much more the top channels matter than random ones: top - random_mean."""
        return self.top - self.random_mean

    def ranking(self) -> list[str]:
        """Layers ordered by the fall under top-channel ablation, largest first."""
        return [self.names[i] for i in np.argsort(-self.top, kind="stable")]


def _masks(score: torch.Tensor, k: int, seeds: int, layer_seed: int) -> torch.Tensor:
    """(1 + seeds, C) masks: row 0 switches off the k highest-scoring channels, the rest k random."""
    masks = torch.ones(1 + seeds, score.numel())
    masks[0, torch.topk(score, k).indices] = 0.0
    for s in range(seeds):
        generator = torch.Generator().manual_seed(1_000_003 * s + layer_seed)
        masks[1 + s, torch.randperm(score.numel(), generator=generator)[:k]] = 0.0
    return masks


@torch.no_grad()
def layer_ablation(
    forward: Forward,
    sites: Sequence[Site],
    x: torch.Tensor,
    target: Target,
    attribution: Attribution,
    fraction: float = 0.1,
    seeds: int = 3,
) -> LayerAblation:
    """Ablate top-k % vs random k % channels, one layer at a time, for one image x (1, 3, H, W).

    All layers' ablations run in ONE forward pass (see ``ChannelAblation``): the copies for a layer
    are made at that layer, so nothing before it is recomputed. ``attribution`` must be
    ``attribute(forward, sites, x, target)``; its gradient x activation picks the top channels.
    """
    by_name = {site.name: site for site in sites}
    ablations, counts = [], []
    for index, (name, score) in enumerate(zip(attribution.names, channel_scores(attribution))):
        channels = score.shape[1]
        k = max(1, int(round(fraction * channels)))
        ablations.append((by_name[name], _masks(score[0].cpu(), k, seeds, layer_seed=index)))
        counts.append((channels, k))
    with ChannelAblation(ablations) as ablation:
        scores = target(forward(x)).float()  # (1 + layers * (1 + seeds),)
    base = float(scores[0])
    falls = torch.stack([base - scores[ablation.slices[name]] for name in attribution.names]).cpu()  # (L, 1 + seeds)
    randoms = falls[:, 1:]
    return LayerAblation(
        names=list(attribution.names),
        channels=np.array([c for c, _ in counts]),
        ablated=np.array([k for _, k in counts]),
        base=base,
        top=falls[:, 0].numpy(),
        random_mean=randoms.mean(1).numpy(),
        random_sd=(randoms.std(1) if seeds > 1 else torch.zeros(len(counts))).numpy(),
        fraction=fraction,
        seeds=seeds,
    )
