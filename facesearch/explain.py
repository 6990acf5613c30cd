"""Explain an identification (or a CIFAR-10 prediction): which layers and which regions drive it.

``explain_identification`` finds the face in a photo, searches the gallery, and explains the top match
(or ``against`` a named identity) against the runner-up identity; ``explain_classification`` explains
a classifier's predicted class against its runner-up class. Both write PNGs and one self-contained HTML
report to ``out_dir`` and return an ``Explanation`` with the per-layer figures.

What is explained (targets, see ``facesearch.visualize.targets``):

- heat maps: the evidence FOR the answer — cosine of the query to the matched identity's closest
  enrolled face (faces), or the predicted class's logit (CIFAR-10);
- layer ablation: the DECISION — the margin over the runner-up (cosine to the match's closest face
  minus to the runner-up's; or logit minus runner-up logit). A fall larger than the margin flips
  the answer. Identities are compared by their closest face because that is how the gallery ranks them.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from facesearch.errors import FacesearchError

log = logging.getLogger(__name__)


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


class _Clock:
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
class _View:
    forward: object  # images (n, 3, S, S) -> outputs (n, d)
    sites: list  # conv sites then fc sites
    preprocess: object  # checkpoint.Preprocess
    device: object  # where the model's weights are
    memory_format: object  # torch.channels_last when the model's weights are


def _view(loaded, output: str) -> _View:
    from facesearch.visualize.hooks import conv_sites, fc_sites

    model = loaded.model
    sites = conv_sites(model, model.conv_layers()) + fc_sites(model.fc_layers())
    forward = model.forward_embedding if output == "embedding" else model.forward
    import torch

    weight = model.conv_layers()[1][1].weight
    layout = torch.channels_last if weight.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    return _View(forward, sites, loaded.preprocess, weight.device, layout)


def _tensor(images: Sequence, view: _View):
    from facesearch.checkpoint import preprocess_batch

    x = preprocess_batch(list(images), view.preprocess).to(view.device)  # (n, 3, S, S)
    return x.contiguous(memory_format=view.memory_format)  # as the model's weights (Embedder: channels-last)


def _rgb(image, size: int) -> np.ndarray:
    """What the model sees, as RGB uint8 (size, size, 3), for overlays."""
    from facesearch.data.images import to_square_rgb

    return np.asarray(to_square_rgb(image, size))


# --- identification ----------------------------------------------------------------------------------


def explain_identification(
    photo: str | os.PathLike,
    gallery: str | os.PathLike,
    checkpoint,
    out_dir: str | os.PathLike,
    *,
    against: str | None = None,
    settings: ExplainSettings = ExplainSettings(),
    device: str = "auto",
    db_url: str | None = None,
) -> Explanation:
    """Explain who the gallery says the (largest) face in ``photo`` is.

    Args:
        photo: the query photo (uncropped; the largest face is used).
        gallery: gallery folder, searched with ``checkpoint``'s model (a LoadedModel is accepted too; None: the
            model the gallery was built with, else the shipped base model).
        out_dir: where the PNGs, ``report.html`` and ``explanation.json`` go (created).
        against: explain the match with this identity instead of the top match.
    Returns:
        The per-layer figures and the files written.
    """
    from facesearch.checkpoint import resolve_checkpoint
    from facesearch.gallery import Gallery, GalleryError
    from facesearch.search import answer_threshold

    clock = _Clock()
    try:
        with Gallery(gallery, db_url, create=False, read_only=None) as g:  # opened once
            if checkpoint is None:  # the model the gallery was built with
                checkpoint = resolve_checkpoint(None, g.model_source)
            loaded = _load(checkpoint, device)
            view = _view(loaded, "embedding")
            clock.lap("load model")
            query = _query_face(photo, loaded, device)  # detected, cropped and embedded as `who` does
            clock.lap("find and embed the face")
            g.check_model(loaded.fingerprint)
            ranked = _rank_identities(g.search(query.embedding[None], k=200)[0])
            chosen = _choose(ranked, against, settings.candidates, g)
            candidates = [(name, _gallery_faces(g, name, ranked, settings.faces_per_identity)) for name in chosen]
            threshold = answer_threshold(g, loaded)[0]
    except GalleryError as error:
        raise ExplainError(str(error)) from error
    clock.lap("search the gallery")
    best = {name: sim for name, sim, _ in ranked}
    details = {"gallery": str(gallery), "against": against, "gallery_similarity": {n: best.get(n) for n in chosen},
               "checkpoint": loaded.fingerprint, "settings": asdict(settings), "threshold": threshold}
    return _explain_faces(view, query.crop, str(photo), candidates, Path(out_dir), settings, details, clock)


def _load(checkpoint, device: str):
    from facesearch.checkpoint import load_checkpoint

    if hasattr(checkpoint, "model"):
        return checkpoint
    try:
        return load_checkpoint(checkpoint, device=device)
    except (FileNotFoundError, ValueError) as error:
        raise ExplainError(str(error)) from error


def _query_face(photo, loaded, device: str):
    """The largest face of the photo, detected, cropped and embedded exactly as ``who`` does."""
    from facesearch.data.images import ImageError, load_image
    from facesearch.embed import Embedder

    try:
        image = load_image(photo)
    except ImageError as error:
        raise ExplainError(f"{photo}: {error.reason}") from error
    found = Embedder.for_queries(loaded, device=device).embed_images([image], select="largest")[0]
    if not found:
        raise ExplainError(f"{photo}: no face found")
    return found[0]


def _rank_identities(hits) -> list[tuple[str, float, object]]:
    """Gallery hits -> (identity, best similarity, face hits best first), best identity first."""
    by_name: dict[str, list] = {}
    for hit in hits:
        by_name.setdefault(hit.identity, []).append(hit)
    ranked = [(name, faces[0].similarity, faces) for name, faces in by_name.items()]
    return sorted(ranked, key=lambda r: -r[1])


def _choose(ranked, against: str | None, k: int, gallery) -> list[str]:
    """Candidate identities: the match (top, or ``against``), the runner-up, then the next best."""
    names = [name for name, _, _ in ranked]
    if against is not None:
        gallery.identity(against)  # raises IdentityNotFound with the gallery's message
        names = [against] + [n for n in names if n != against]
    if not names:
        raise ExplainError("the gallery holds no faces to explain a match with")
    return names[: max(2, k)]  # one name: a one-person gallery, explained against its threshold


def _gallery_faces(gallery, name: str, ranked, m: int) -> list:
    """Up to m enrolled crops of one identity: those most similar to the query first."""
    from facesearch.data.images import load_image

    hits = next((faces for n, _, faces in ranked if n == name), [])
    paths = [h.crop_path for h in hits if h.crop_path]
    paths += [f.crop_path for f in gallery.identity(name).faces if f.crop_path and f.crop_path not in paths]
    crops = [load_image(p, min_side=1) for p in paths[:m] if Path(p).is_file()]
    if not crops:
        raise ExplainError(f"identity {name!r} has no stored face crops in the gallery to compare with")
    return crops


def _explain_faces(view, crop, query: str, candidates, out_dir: Path, settings, details, clock) -> Explanation:
    """The shared core of a face explanation, from the query crop and candidate crops (match first)."""
    import torch
    from facesearch.visualize import layers, pair, targets

    x = _tensor([crop], view)  # (1, 3, S, S)
    faces = [(name, _tensor(crops, view)) for name, crops in candidates]
    names = [c[0] for c in candidates]
    size = view.preprocess.input_size
    images = {"query": _rgb(crop, size), "match": _rgb(candidates[0][1][0], size)}
    if len(faces) > 1:
        similarity = layers.layer_similarity(view.forward, view.sites, x, faces, settings.pool)
        counts = [f.shape[0] for _, f in faces]
        groups = torch.split(torch.from_numpy(similarity.embeddings[1:]).to(view.device), counts)
        match, runner = groups[0][0], groups[1][0]  # each identity's face closest to the query: the gallery's rule
        decision_target = targets.MatchMargin(match, runner)
        images["runner_up"] = _rgb(candidates[1][1][0], size)
        labels = {"answer": names[0], "runner_up": names[1], "target": f"cosine to {names[0]}'s closest face"}
    else:  # a one-person gallery: the decision is naming the face at all, its cosine against the threshold
        similarity = None
        with torch.no_grad():
            own = view.forward(torch.cat([x, faces[0][1]]))
        closest = int(torch.nn.functional.cosine_similarity(own[:1], own[1:]).argmax())
        match = own[1 + closest]
        threshold = float(details["threshold"])
        decision_target = targets.AboveThreshold(match, threshold)
        labels = {"answer": names[0], "runner_up": f"the threshold {threshold:.3f}",
                  "target": f"cosine to {names[0]}'s closest face"}
    clock.lap("per-layer similarity")
    evidence, decision, ablation = _attribute_and_ablate(view, x, targets.CosineTo(match), decision_target,
                                                         settings, clock)
    view_pair = pair.pair_view(view.forward, view.sites, x, faces[0][1][:1], settings.fuse_last)
    clock.lap("pair view")
    return _finish(_Computed("identification", query, labels, evidence, decision, ablation, similarity, view_pair,
                             images), out_dir, settings, details, clock)


def _attribute_and_ablate(view, x, evidence_target, decision_target, settings, clock):
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


# --- classification ----------------------------------------------------------------------------------


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

    clock = _Clock()
    loaded = _load(checkpoint, device)
    if loaded.config.num_classes == 0:
        raise ExplainError(f"{checkpoint}: this model has no classes to explain a prediction over (it was "
                           "distilled from a teacher without labels); explain a match in a gallery instead (-g)")
    view = _view(loaded, "logits")
    clock.lap("load model")
    try:
        picture = load_image(image, min_side=1)
    except ImageError as error:
        raise ExplainError(f"{image}: {error.reason}") from error
    x = _tensor([picture], view)
    with torch.no_grad():
        order = torch.argsort(view.forward(x)[0], descending=True).tolist()
    pred, second = order[0], order[1]
    evidence, decision, ablation = _attribute_and_ablate(view, x, targets.ClassLogit(pred),
                                                         targets.LogitMargin(pred, second), settings, clock)
    names = loaded.class_names
    similarity = None
    if references is not None:
        similarity = _class_similarity(view, x, [names[i] for i in order], Path(references), settings)
        clock.lap("per-layer similarity")
    images = {"query": _rgb(picture, view.preprocess.input_size)}
    labels = {"answer": names[pred], "runner_up": names[second], "target": f"logit of {names[pred]}"}
    details = {"checkpoint": loaded.fingerprint, "settings": asdict(settings),
               "probabilities": {names[i]: float(p) for i, p in enumerate(torch.softmax(evidence.outputs[0], 0))}}
    return _finish(_Computed("classification", str(image), labels, evidence, decision, ablation, similarity, None,
                             images), Path(out_dir), settings, details, clock)


def _class_similarity(view, x, ranked: list[str], references: Path, settings: ExplainSettings):
    """Per-layer similarity of the image to the top classes' reference images (best class first)."""
    from facesearch.visualize import layers

    chosen = ranked[: max(2, settings.candidates)]
    faces = [(n, _tensor(_reference_images(references, n, settings), view)) for n in chosen]
    return layers.layer_similarity(view.forward, view.sites, x, faces, settings.pool)


def _reference_images(root: Path, name: str, settings: ExplainSettings) -> list:
    """``faces_per_identity`` images of one class folder, a seeded choice."""
    from facesearch.data.images import load_image

    files = sorted(p for p in (root / name).glob("*") if p.is_file())
    if not files:
        raise ExplainError(f"{root / name}: no reference images for class {name!r}")
    pick = np.random.default_rng(settings.seed).permutation(len(files))[: settings.faces_per_identity]
    return [load_image(files[i], min_side=1) for i in sorted(pick)]


# --- figures, report, numbers --------------------------------------------------------------------------


@dataclass
class _Computed:
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


def _finish(c: _Computed, out_dir: Path, settings, details, clock) -> Explanation:
    """Draw the figures, write the report and the JSON, and return the Explanation."""
    from facesearch.visualize.cam import layer_cams
    from facesearch.visualize.feature_maps import grid_from
    from facesearch.visualize.report import explanation_html

    out_dir.mkdir(parents=True, exist_ok=True)
    maps = {name: m[0] for name, m in layer_cams(c.evidence, settings.cam).items()}
    sizes = {n: tuple(a.shape[-2:]) for n, a in zip(c.evidence.names, c.evidence.activations) if a.dim() == 4}
    grid = grid_from(list(zip(c.evidence.names, c.evidence.activations)), settings.maps_per_layer,
                     settings.map_rule, settings.seed)
    files = _draw(c.images, maps, sizes, grid, c.ablation, c.similarity, c.view_pair, c.labels, out_dir)
    clock.lap("figures")
    figures = _layer_figures(c.evidence, c.ablation, c.similarity)
    explanation = Explanation(
        kind=c.kind, query=c.query, answer=c.labels["answer"], runner_up=c.labels["runner_up"],
        score=float(c.evidence.scores[0]), margin=c.ablation.base, layers=figures,
        emerges_at=c.similarity.emerges_at if c.similarity is not None else None, ranking=c.ablation.ranking(),
        files=files, seconds=clock.total, details={**details, "phase_s": clock.phases},
    )
    files["report"] = out_dir / "report.html"
    files["report"].write_text(explanation_html(explanation, c.images, c.labels, settings), encoding="utf-8")
    clock.lap("report")
    explanation = _replace_seconds(explanation, clock.total)
    files["json"] = out_dir / "explanation.json"
    files["json"].write_text(json.dumps(explanation.to_dict(), indent=1, default=_plain), encoding="utf-8")
    log.info("explanation written to %s in %.1f s", out_dir, explanation.seconds)
    return explanation


def _replace_seconds(explanation: Explanation, seconds: float) -> Explanation:
    from dataclasses import replace

    return replace(explanation, seconds=round(seconds, 3))


def _plain(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return str(value)


def _draw(images, maps, sizes, grid, ablation, similarity, view_pair, labels, out_dir: Path) -> dict[str, Path]:
    from facesearch.visualize import report
    from facesearch.visualize.feature_maps import draw_feature_grid
    from facesearch.visualize.pair import draw_pair

    files = {
        "layer_maps": report.draw_layer_maps(images["query"], maps, sizes, out_dir / "layer_maps.png",
                                             f"Where each conv layer sees evidence for {labels['answer']} (LayerCAM)"),
        "ablation": report.draw_ablation_chart(ablation.names, ablation.top, ablation.random_mean, ablation.random_sd,
                                               ablation.base, ablation.fraction, ablation.seeds,
                                               out_dir / "layer_ablation.png"),
        "feature_maps": draw_feature_grid(grid, out_dir / "feature_maps.png", image=images["query"]),
    }
    if similarity is not None:
        files["similarity"] = report.draw_similarity_chart(similarity.names, similarity.identities,
                                                           similarity.similarity, out_dir / "layer_similarity.png",
                                                           similarity.emerges_at)
    if view_pair is not None:
        files["pair"] = draw_pair(view_pair, images["query"], images["match"], out_dir / "pair.png",
                                  ("query", labels["answer"]))
    return files


def _layer_figures(evidence, ablation, similarity) -> list[LayerFigures]:
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
