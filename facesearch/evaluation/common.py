"""What the evaluations share: the model and its random-weights baseline, photos to embeddings, the results file.

The evaluations (:mod:`~facesearch.evaluation.verification`, :mod:`~facesearch.evaluation.identification`,
:mod:`~facesearch.evaluation.closed_set`) take a model (a checkpoint path or a ``LoadedModel``) and photos, embed
every photo once through the same path as ``who`` (``Embedder``), and score with
:mod:`~facesearch.evaluation.metrics`. Photos come either as a raw folder (``<Name>/<Name>_0001.jpg``: faces are
detected, the most central one kept) or as a ``prepare`` output folder (its manifest's crops are used, no
detection). A random-weights model of the same architecture (fixed seed) is evaluated beside the trained one as
the baseline.

Only torch, torchvision, numpy and Pillow are needed here (plus facenet-pytorch for raw photos): the GPU script
imports these modules directly.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from facesearch.data.images import IMAGE_SUFFIXES
from facesearch.data.manifest import MANIFEST_NAME, read_manifest, read_settings
from facesearch.errors import BadInput, Remedy

log = logging.getLogger(__name__)

NOT_MEASURABLE = "not measurable"

Progress = Callable[[int], None]  # called with the number of photos just finished


# ---------------------------------------------------------------- models and embedding


def load_model(model, device: str = "auto"):
    """A ``LoadedModel`` from a checkpoint path (or run directory; None or "base": the shipped base model),
    or the one given."""
    if model is None or isinstance(model, (str, os.PathLike)):
        from facesearch.checkpoint import load_checkpoint

        return load_checkpoint(model, device=device)
    return model


def random_baseline(loaded, seed: int = 0):
    """The same architecture and config with fresh random weights (fixed seed): the chance-level reference."""
    import dataclasses

    import torch

    from facesearch.checkpoint import fingerprint
    from facesearch.models.vgg import VGG16

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VGG16(loaded.config)
    device = next(loaded.model.parameters()).device
    model.to(device).eval()
    return dataclasses.replace(
        loaded, model=model, fingerprint=fingerprint(model.state_dict()), path=None,
        extra={**loaded.extra, "random_seed": seed},  # keeps e.g. the recorded crop settings
    )


def models_to_score(model, device: str, baseline: bool, seed: int) -> list[tuple[str, object]]:
    loaded = load_model(model, device)
    out = [("model", loaded)]
    if baseline:
        out.append(("random_baseline", random_baseline(loaded, seed)))
    return out


@dataclass
class Embedded:
    """Embeddings of photos, keyed by the photo's path relative to the images folder."""

    vectors: dict[str, np.ndarray] = field(default_factory=dict)  # key -> (d,) L2-normalised
    fallback: list[str] = field(default_factory=list)  # no face detected: the centre crop was embedded
    missing: list[str] = field(default_factory=list)  # no photo, unreadable, or no crop and no original


def is_prepared(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` is a ``prepare`` output (holds a manifest)."""
    return (Path(folder) / MANIFEST_NAME).is_file()


def embed_photos(
    embedder,
    relpaths: Iterable[str],
    images_dir: str | os.PathLike,
    *,
    raw_dir: str | os.PathLike | None = None,
    crop_size: int = 112,
    select: str = "center",
    batch_size: int = 128,
    progress: Progress | None = None,
) -> Embedded:
    """Embed the photos ``relpaths`` of a raw folder or of a ``prepare`` output.

    Args:
        embedder: a ``facesearch.embed.Embedder`` (or anything with its ``embed_crops``/``faces_of``).
        relpaths: photo paths relative to the raw folder, e.g. ``Name/Name_0001.jpg``.
        images_dir: the raw folder, or a ``prepare`` output whose manifest lists those paths.
        raw_dir: for a ``prepare`` output, the raw folder it was made from: photos without a usable
            crop are then centre-cropped from the original instead of counted missing.
        crop_size: side of the centre crop used when no face is found in a raw photo.
        select: which face of a raw photo to keep: "center" (LFW photos are centred on their
            person, often with others around) or "largest".
    """
    relpaths = sorted(set(relpaths))
    if is_prepared(images_dir):
        _check_crops_match(Path(images_dir), getattr(embedder, "crop", None))
        sources, embedded = _prepared_sources(relpaths, Path(images_dir), raw_dir)
        keys = list(sources)
        vectors = _embed_in_batches(embedder, [sources[k] for k in keys], batch_size, progress)
        embedded.vectors.update(zip(keys, vectors))
        return embedded
    return _embed_raw_photos(embedder, relpaths, Path(images_dir), crop_size, select, progress)


def _check_crops_match(out_dir: Path, crop) -> None:
    """A prepare output's crops must be cut as the model's training crops were (``who`` cuts them so), or the
    figures describe another face finder than the product's."""
    if crop is None:
        return
    settings = read_settings(out_dir)
    made = {"align": bool(settings.get("align", False)), "margin": float(settings.get("margin", 0.2))}
    wanted = {"align": bool(crop.align), "margin": float(crop.margin)}
    if made != wanted:
        differ = ", ".join(f"{k} {made[k]} (the model: {wanted[k]})" for k in made if made[k] != wanted[k])
        raise BadInput(f"{out_dir}: its crops were cut with {differ}; give the raw photo folder, or prepare the "
                       "photos again with the model's crop settings",
                       remedy=Remedy.run("prepare", align=wanted["align"], margin=wanted["margin"]))


def _prepared_sources(relpaths: list[str], out_dir: Path, raw_dir) -> tuple[dict[str, Callable], Embedded]:
    """Loader of each photo's crop (a crop file, or a centre crop of the original), and the misses."""
    from facesearch.data.detect import center_crop
    from facesearch.data.images import ImageError, load_image
    from facesearch.data.prepare import raw_source

    rows = {r.path: r for r in read_manifest(out_dir)}
    crop_by_hash = {r.sha256: r.crop for r in rows.values() if r.status == "ok" and r.crop}
    settings = read_settings(out_dir)
    size = int(settings.get("size", 112))
    sources, embedded = {}, Embedded()
    for rel in relpaths:
        row = rows.get(rel)
        crop = row and (row.crop if row.status == "ok" else crop_by_hash.get(row.sha256))  # duplicates share a crop
        original = raw_source(settings, rel, raw_dir)
        if crop and (out_dir / crop).is_file():
            sources[rel] = lambda p=out_dir / crop: load_image(p, min_side=1)
        elif original is not None and original.is_file():
            try:
                image = load_image(original)
            except ImageError:
                embedded.missing.append(rel)
                continue
            sources[rel] = lambda im=image: center_crop(im, size)
            embedded.fallback.append(rel)
        else:
            embedded.missing.append(rel)
    return sources, embedded


def _embed_in_batches(embedder, loaders: Sequence[Callable], batch_size: int, progress: Progress | None) -> np.ndarray:
    """Embed crops made by ``loaders`` a batch at a time (never all crops in memory at once)."""
    chunks = []
    for start in range(0, len(loaders), batch_size):
        batch = [load() for load in loaders[start : start + batch_size]]
        chunks.append(np.asarray(embedder.embed_crops(batch), dtype=np.float32))  # (b, d)
        if progress:
            progress(len(batch))
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)


def _embed_raw_photos(embedder, relpaths, images_dir: Path, crop_size, select, progress) -> Embedded:
    """Detect, keep one face (``select``) and embed, as ``who`` does (``Embedder.faces_of``); centre crop when no
    face is found.

    Each photo's face is found once per process for any number of models (the trained one and its random
    baseline, say): the crops are kept in ``_FACE_CROPS`` by photo file and crop settings, and only the
    embedding is computed again. Photos go a batch at a time (never all crops in memory at once).
    """
    from facesearch.data.detect import center_crop

    embedded = Embedded()
    settings = (embedder.crop, select, getattr(embedder.detector, "min_face_size", None))
    step = 16  # photos per detection batch
    for start in range(0, len(relpaths), step):
        batch = relpaths[start : start + step]
        crops = {rel: _FACE_CROPS.get((images_dir / rel, settings)) for rel in batch}  # (crop, centre crop?)
        todo = [rel for rel in batch if crops[rel] is None]
        found = embedder.faces_of([images_dir / rel for rel in todo], select, batch_size=step, embed=False)
        for rel, photo in zip(todo, found):
            if photo.image is None:  # missing or undecodable
                log.warning("%s: %s: %s", photo.path, photo.status, photo.reason)
                embedded.missing.append(rel)
                continue
            crop = photo.faces[0].crop if photo.faces else center_crop(photo.image, crop_size)
            crops[rel] = _FACE_CROPS.put((images_dir / rel, settings), (crop, not photo.faces))
        keys = [rel for rel in batch if crops[rel] is not None]
        embedded.vectors.update(zip(keys, embedder.embed_crops([crops[k][0] for k in keys])))
        embedded.fallback.extend(k for k in keys if crops[k][1])
        if progress:
            progress(len(batch))
    return embedded


class _CropCache:
    """Face crops by (photo path, its size and mtime, crop settings), within one process: what lets every model
    of an evaluation share one detection pass. Crops are kept losslessly as PNG bytes (~20 KB at 112 px)."""

    def __init__(self) -> None:
        self._items: dict[tuple, tuple[bytes, bool]] = {}

    @staticmethod
    def _key(path: Path, settings) -> tuple | None:
        try:
            st = path.stat()
        except OSError:
            return None
        return (str(path.resolve()), st.st_size, st.st_mtime_ns, settings)

    def get(self, key):
        import io

        from PIL import Image

        path, settings = key
        k = self._key(path, settings)
        item = self._items.get(k) if k else None
        if item is None:
            return None
        with Image.open(io.BytesIO(item[0])) as im:
            return im.convert("RGB"), item[1]

    def put(self, key, value):
        import io

        path, settings = key
        k = self._key(path, settings)
        crop, fallback = value
        if k is not None:
            buffer = io.BytesIO()
            crop.save(buffer, format="PNG", compress_level=1)
            self._items[k] = (buffer.getvalue(), fallback)
        return value


_FACE_CROPS = _CropCache()


def make_embedder(loaded, device: str):
    """The ``Embedder`` that ``who`` uses, for this model."""
    from facesearch.embed import Embedder

    return Embedder.for_queries(loaded, device=device)


def list_photos(data_dir: str | os.PathLike, splits: Sequence[str] | None = None) -> dict[str, list[str]]:
    """identity -> photo keys: the manifest's usable rows of a ``prepare`` output, else ``<identity>/*`` images.

    ``splits`` keeps only a prepare output's rows of those splits (e.g. ``["holdout"]``: people never trained on).
    """
    data_dir = Path(data_dir)
    photos: dict[str, list[str]] = {}
    if is_prepared(data_dir):
        from facesearch.data.manifest import ok_rows

        for row in ok_rows(read_manifest(data_dir)):
            if splits is None or row.split in splits:
                photos.setdefault(row.identity, []).append(row.path)
    elif splits is not None:
        raise BadInput(f"{data_dir}: splits are only known for a prepared folder (prepare's output)",
                       remedy=Remedy.run("prepare"))
    else:
        for path in sorted(data_dir.rglob("*")):
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and path.parent != data_dir:
                identity = path.parent.relative_to(data_dir).as_posix()
                photos.setdefault(identity, []).append(path.relative_to(data_dir).as_posix())
    return photos


def rate_key(rate: float) -> str:
    return f"{rate:g}"


def note_photos(summary: dict, loaded, embedded: Embedded) -> None:
    """Record the model and how many photos fell back to a centre crop or were missing."""
    summary.update(checkpoint=str(loaded.path), fingerprint=loaded.fingerprint)
    summary.update(n_center_crop_fallback=len(embedded.fallback), n_missing_images=len(embedded.missing))
    summary["missing_images"] = embedded.missing[:20]  # a sample, to look at


# ---------------------------------------------------------------- results file


def append_result(path: str | os.PathLike, summary: dict) -> dict:
    """Append one evaluation (its figures, the checkpoint fingerprint, the date) as a line of JSON.

    Returns:
        The record written.
    """
    record = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **summary}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, sort_keys=False) + "\n")
    return record


def read_results(path: str | os.PathLike) -> list[dict]:
    """Every record of a results file, oldest first."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
