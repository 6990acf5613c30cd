"""Explaining an identification: who the gallery says the largest face of a photo is, against the runner-up."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

from facesearch.explain.core import (
    Clock, Computed, ExplainError, ExplainSettings, Explanation, as_seen, attribute_and_ablate, model_view, to_tensor,
)
from facesearch.explain.files import write_explanation


def explain_identification(
    photo,
    gallery,
    embedder,
    out_dir: str | os.PathLike,
    *,
    against: str | None = None,
    settings: ExplainSettings = ExplainSettings(),
    name: str | None = None,
) -> Explanation:
    """Explain who the gallery says the (largest) face in ``photo`` is.

    Args:
        photo: the query photo (uncropped; the largest face is used): a path, its bytes or an RGB PIL image.
        gallery: an open ``facesearch.gallery.Gallery``.
        embedder: a ``facesearch.embed.Embedder`` of the gallery's model (``Embedder.for_queries``: the face finder
            ``who`` uses); its model is the one explained.
        out_dir: where the PNGs, ``report.html`` and ``explanation.json`` go (created).
        against: explain the match with this identity instead of the top match.
        name: what the report calls the photo (default: its path; "photo" for one in memory).
    Returns:
        The per-layer figures and the files written.
    Raises:
        ExplainError: the photo cannot be read or shows no face, the gallery holds nobody to compare with, no such
            identity ``against``, another model's gallery.
    """
    from facesearch.gallery import GalleryError
    from facesearch.search import answer_threshold

    clock = Clock()
    name = name or (str(photo) if isinstance(photo, (str, os.PathLike)) else "photo")
    view = model_view(embedder.loaded, "embedding")
    query = _query_face(photo, embedder, name)  # detected, cropped and embedded as `who` does
    clock.lap("find and embed the face")
    try:
        gallery.check_model(embedder.fingerprint)
        ranked = _rank_identities(gallery.search(query.embedding[None], k=200)[0])
        chosen = _choose(ranked, against, settings.candidates, gallery)
        candidates = [(n, _gallery_faces(gallery, n, ranked, settings.faces_per_identity)) for n in chosen]
        threshold = answer_threshold(gallery, embedder.loaded)[0]
    except GalleryError as error:
        raise ExplainError(str(error)) from error
    clock.lap("search the gallery")
    best = {n: sim for n, sim, _ in ranked}
    details = {"gallery": str(gallery.folder), "against": against,
               "gallery_similarity": {n: best.get(n) for n in chosen}, "checkpoint": embedder.fingerprint,
               "settings": asdict(settings), "threshold": threshold}
    return _explain_faces(view, query.crop, name, candidates, Path(out_dir), settings, details, clock)


def _query_face(photo, embedder, name: str):
    """The largest face of the photo, detected, cropped and embedded exactly as ``who`` does."""
    found = next(embedder.faces_of([photo], select="largest"))
    if found.image is None:
        raise ExplainError(f"{name}: {found.reason}")
    if not found.faces:
        raise ExplainError(f"{name}: no face found")
    return found.faces[0]


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

    x = to_tensor([crop], view)  # (1, 3, S, S)
    faces = [(name, to_tensor(crops, view)) for name, crops in candidates]
    names = [c[0] for c in candidates]
    size = view.preprocess.input_size
    images = {"query": as_seen(crop, size), "match": as_seen(candidates[0][1][0], size)}
    if len(faces) > 1:
        similarity = layers.layer_similarity(view.forward, view.sites, x, faces, settings.pool)
        counts = [f.shape[0] for _, f in faces]
        groups = torch.split(torch.from_numpy(similarity.embeddings[1:]).to(view.device), counts)
        match, runner = groups[0][0], groups[1][0]  # each identity's face closest to the query: the gallery's rule
        decision_target = targets.MatchMargin(match, runner)
        images["runner_up"] = as_seen(candidates[1][1][0], size)
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
    evidence, decision, ablation = attribute_and_ablate(view, x, targets.CosineTo(match), decision_target,
                                                        settings, clock)
    view_pair = pair.pair_view(view.forward, view.sites, x, faces[0][1][:1], settings.fuse_last)
    clock.lap("pair view")
    computed = Computed("identification", query, labels, evidence, decision, ablation, similarity, view_pair, images)
    return write_explanation(computed, out_dir, settings, details, clock)

