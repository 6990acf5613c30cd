"""Explaining a classification: a classifier's (CIFAR-10) predicted class against its runner-up."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import numpy as np

from facesearch.explain.core import (
    Clock, Computed, ExplainError, ExplainSettings, Explanation, as_seen, attribute_and_ablate, model_view, to_tensor,
)
from facesearch.explain.files import write_explanation


def explain_classification(
    image: str | os.PathLike,
    checkpoint,
    out_dir: str | os.PathLike,
    *,
    references: str | os.PathLike | None = None,
    settings: ExplainSettings = ExplainSettings(),
    device: str = "auto",
) -> Explanation:
    """Explain a classifier's (CIFAR-10) prediction for one image against its runner-up class.

    Args:
        references: optional folder of ``<class>/*`` images (e.g. the CIFAR-10 test split): when given,
            the per-layer similarity compares the image with the top candidate classes' images.
    """
    import torch
    from facesearch.data.images import ImageError, load_image
    from facesearch.visualize import targets

    clock = Clock()
    loaded = _load(checkpoint, device)
    if loaded.config.num_classes == 0:
        raise ExplainError(f"{checkpoint}: this model has no classes to explain a prediction over (it was "
                           "distilled from a teacher without labels); explain a match in a gallery instead (-g)")
    view = model_view(loaded, "logits")
    clock.lap("load model")
    try:
        picture = load_image(image, min_side=1)
    except ImageError as error:
        raise ExplainError(f"{image}: {error.reason}") from error
    x = to_tensor([picture], view)
    with torch.no_grad():
        order = torch.argsort(view.forward(x)[0], descending=True).tolist()
    pred, second = order[0], order[1]
    evidence, decision, ablation = attribute_and_ablate(view, x, targets.ClassLogit(pred),
                                                        targets.LogitMargin(pred, second), settings, clock)
    names = loaded.class_names
    similarity = None
    if references is not None:
        similarity = _class_similarity(view, x, [names[i] for i in order], Path(references), settings)
        clock.lap("per-layer similarity")
    images = {"query": as_seen(picture, view.preprocess.input_size)}
    labels = {"answer": names[pred], "runner_up": names[second], "target": f"logit of {names[pred]}"}
    details = {"checkpoint": loaded.fingerprint, "settings": asdict(settings),
               "probabilities": {names[i]: float(p) for i, p in enumerate(torch.softmax(evidence.outputs[0], 0))}}
    computed = Computed("classification", str(image), labels, evidence, decision, ablation, similarity, None, images)
    return write_explanation(computed, Path(out_dir), settings, details, clock)


def _class_similarity(view, x, ranked: list[str], references: Path, settings: ExplainSettings):
    """Per-layer similarity of the image to the top classes' reference images (best class first)."""
    from facesearch.visualize import layers

    chosen = ranked[: max(2, settings.candidates)]
    faces = [(n, to_tensor(_reference_images(references, n, settings), view)) for n in chosen]
    return layers.layer_similarity(view.forward, view.sites, x, faces, settings.pool)


def _reference_images(root: Path, name: str, settings: ExplainSettings) -> list:
    """``faces_per_identity`` images of one class folder, a seeded choice."""
    from facesearch.data.images import load_image

    files = sorted(p for p in (root / name).glob("*") if p.is_file())
    if not files:
        raise ExplainError(f"{root / name}: no reference images for class {name!r}")
    pick = np.random.default_rng(settings.seed).permutation(len(files))[: settings.faces_per_identity]
    return [load_image(files[i], min_side=1) for i in sorted(pick)]



def _load(checkpoint, device: str):
    from facesearch.checkpoint import load_checkpoint

    if hasattr(checkpoint, "model"):
        return checkpoint
    try:
        return load_checkpoint(checkpoint, device=device)
    except (FileNotFoundError, ValueError) as error:
        raise ExplainError(str(error)) from error

