"""What to explain: small callables that turn a model's outputs (n, d) into one score per image (n,).

A heat map or an ablation says which parts of the network raise *this* score. For a classifier the
score is a class logit; for a face search it is the cosine similarity of the query's embedding to the
matched face (or identity centroid), or the match margin over the runner-up, which is what decides
"who is this".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class ClassLogit:
    """The logit of one class. Model outputs are logits (n, num_classes)."""

    def __init__(self, index: int) -> None:
        self.index = int(index)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return logits[:, self.index]  # (n,)

    def __repr__(self) -> str:
        return f"ClassLogit({self.index})"


def centroid(embeddings: torch.Tensor) -> torch.Tensor:
    """The L2-normalised mean of L2-normalised embeddings (m, d) -> (d,): an identity's direction."""
    return F.normalize(F.normalize(embeddings, dim=-1).mean(0), dim=0)


class CosineTo:
    """Cosine similarity to a reference embedding (d,) — one gallery face or an identity centroid.

    Model outputs are raw embeddings (n, d); they are normalised here, as the gallery does.
    """

    def __init__(self, reference: torch.Tensor) -> None:
        self.reference = F.normalize(reference.detach().flatten().float(), dim=0)

    def __call__(self, embeddings: torch.Tensor) -> torch.Tensor:
        return F.normalize(embeddings, dim=-1) @ self.reference.to(embeddings)  # (n,)


class MatchMargin:
    """cos(query, match) - cos(query, runner-up): positive while the match wins, the decision itself."""

    def __init__(self, match: torch.Tensor, runner_up: torch.Tensor) -> None:
        self.match = CosineTo(match)
        self.runner_up = CosineTo(runner_up)

    def __call__(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.match(embeddings) - self.runner_up(embeddings)  # (n,)


class AboveThreshold:
    """cos(query, match) - threshold: positive while the face is named at all (a one-person gallery's decision)."""

    def __init__(self, match: torch.Tensor, threshold: float) -> None:
        self.match = CosineTo(match)
        self.threshold = float(threshold)

    def __call__(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.match(embeddings) - self.threshold  # (n,)


class LogitMargin:
    """logit[index] - logit[other]: positive while the predicted class beats the runner-up class."""

    def __init__(self, index: int, other: int) -> None:
        self.index, self.other = int(index), int(other)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return logits[:, self.index] - logits[:, self.other]  # (n,)
