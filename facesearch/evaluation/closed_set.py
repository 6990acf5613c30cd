"""Closed-set check of a trained classifier: accuracy on the held-out test split, and the most-confused pairs.

The run's checkpoint names the data it was trained on (``dataset`` in its training state); a face
dataset's test split comes from its manifest (rows with ``split == "test"``), CIFAR-10's from its
``test/<class>/`` folders. The classifier's own argmax is scored, so only the people (classes) it was
trained on count; photos of anyone else are skipped and counted.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from facesearch.checkpoint import preprocess_batch, read_checkpoint
from facesearch.data.images import IMAGE_SUFFIXES, load_image
from facesearch.data.manifest import ok_rows, read_manifest
from facesearch.errors import BadInput
from facesearch.evaluation.common import load_model, random_baseline
from facesearch.runtime import resolve_device

log = logging.getLogger(__name__)


def dataset_of_run(run_dir: str | os.PathLike) -> tuple[str | None, str | None]:
    """``(kind, data_dir)`` the run's checkpoint was trained on, as far as it says."""
    info = read_checkpoint(run_dir).get("dataset")
    if isinstance(info, str):
        return None, info
    if isinstance(info, dict):
        root = info.get("root") or info.get("data_dir") or info.get("path")
        return info.get("kind"), root
    return None, None


def held_out_items(
    kind: str, data_dir: str | os.PathLike, class_names: list[str], split: str = "test"
) -> tuple[list[Path], np.ndarray, int]:
    """Image files and class labels of the held-out split, and how many photos were of unknown classes."""
    data_dir = Path(data_dir)
    index = {name: i for i, name in enumerate(class_names)}
    if kind == "cifar10":
        files = sorted(p for p in (data_dir / "test").glob("*/*") if p.suffix.lower() in IMAGE_SUFFIXES)
        pairs = [(p, p.parent.name) for p in files]
    else:
        pairs = [(data_dir / r.crop, r.identity) for r in ok_rows(read_manifest(data_dir), split=split)]
    known = [(p, index[name]) for p, name in pairs if name in index]
    return [p for p, _ in known], np.array([c for _, c in known], dtype=np.int64), len(pairs) - len(known)


def predict(loaded, files: list[Path], device, batch_size: int = 128) -> np.ndarray:
    """(n,) argmax class of each image under the model's own preprocessing."""
    out = []
    with torch.inference_mode():
        for start in range(0, len(files), batch_size):
            images = []
            for path in files[start : start + batch_size]:
                images.append(load_image(path, min_side=1))
            x = preprocess_batch(images, loaded.preprocess).to(device)  # (b, 3, S, S)
            out.append(loaded.model(x).argmax(dim=1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def confused_pairs(labels: np.ndarray, predicted: np.ndarray, class_names: list[str], top: int = 10) -> list[dict]:
    """The most frequent (true, predicted) mistakes, most frequent first."""
    n = len(class_names)
    confusion = np.zeros((n, n), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    np.fill_diagonal(confusion, 0)
    order = np.argsort(-confusion, axis=None, kind="stable")[:top]
    pairs = []
    for flat in order:
        t, p = divmod(int(flat), n)
        if confusion[t, p] == 0:
            break
        pairs.append({"true": class_names[t], "predicted": class_names[p], "count": int(confusion[t, p])})
    return pairs


def evaluate_closed_set(
    run_dir: str | os.PathLike,
    *,
    data_dir: str | os.PathLike | None = None,
    kind: str | None = None,
    split: str = "test",
    device: str = "auto",
    baseline: bool = True,
    seed: int = 0,
) -> dict:
    """Test-split accuracy of a run's classifier (and of its random-weights baseline), most-confused pairs.

    Args:
        run_dir: a training run folder (``best.pt``, else ``last.pt``) or a checkpoint file.
        data_dir: the dataset; default: the one the checkpoint was trained on.
        kind: "faces" or "cifar10"; default: from the checkpoint, else "faces".
        split: the manifest split to score (faces only).
    Returns:
        A JSON-ready summary.
    """
    run_kind, run_data = dataset_of_run(run_dir)
    kind, data_dir = kind or run_kind or "faces", data_dir or run_data
    if data_dir is None:
        raise BadInput(f"not given, and the checkpoint of {run_dir} does not say which data it was trained on",
                       param="data_dir")
    device = resolve_device(device)
    loaded = load_model(run_dir, device)
    files, labels, n_unknown = held_out_items(kind, data_dir, loaded.class_names, split)
    if not files:
        raise BadInput(f"{data_dir}: no {split} images of the {len(loaded.class_names)} trained classes")
    summary = {
        "kind": "closed-set", "run": str(run_dir), "data_dir": str(data_dir), "split": split,
        "checkpoint": str(loaded.path), "fingerprint": loaded.fingerprint, "n_images": len(files),
        "n_skipped_unknown_class": n_unknown, "n_classes": len(loaded.class_names),
    }
    models = [("model", loaded)] + ([("random_baseline", random_baseline(loaded, seed))] if baseline else [])
    for name, model in models:
        predicted = predict(model, files, device)
        summary[name] = {"fingerprint": model.fingerprint, "accuracy": float(np.mean(predicted == labels))}
        if name == "model":
            summary[name]["most_confused"] = confused_pairs(labels, predicted, loaded.class_names)
    return summary
