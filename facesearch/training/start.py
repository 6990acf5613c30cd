"""What a run starts from and hands on: a checkpoint's weights (``--init``), the augmentation a ``--resume``
continues with, and how the training crops were cut (for checkpoints to tell ``Embedder``)."""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Sequence

from facesearch.checkpoint import payload_fingerprint
from facesearch.data.datasets import Dataset
from facesearch.data.detect import CropSettings, DetectorSettings
from facesearch.data.manifest import read_settings
from facesearch.errors import BadInput
from facesearch.models.vgg import VGG16
from facesearch.training.augment import AugmentConfig

log = logging.getLogger(__name__)


def face_crop_settings(data: Dataset) -> dict | None:
    """How ``prepare`` cut the training crops (size, margin, align) and how queries look for faces
    (``DetectorSettings``, under "detector"), for checkpoints to hand on to ``Embedder``.

    None for CIFAR-10 (no detection). A gallery must cut faces exactly as the training crops were cut.
    """
    if data.kind != "faces":
        return None
    crop = CropSettings.from_dict(read_settings(data.root))  # defaults fill in for outputs older than the file
    return {**asdict(crop), "detector": DetectorSettings().to_dict()}


def warn_on_other_crops(start: dict, crop: dict | None, data_dir) -> None:
    """Fine-tuning on faces cut another way (aligned or not, another margin) than the starting model's wastes
    what it learnt; say so (it is allowed: a long enough run adapts)."""
    theirs = start.get("crop") or {}
    if crop is None or not theirs:
        return
    differ = [f"{k} {crop[k]} (the starting model: {theirs[k]})" for k in ("align", "margin")
              if k in theirs and crop.get(k) != theirs[k]]
    if differ:
        log.warning("%s: its crops were cut with %s; prepare them as the starting model's were for a fine-tune "
                    "to build on it", data_dir, ", ".join(differ))


def init_weights(net: VGG16, init: dict, class_names: Sequence[str] | None = None) -> dict:
    """Start ``net`` from a checkpoint's weights (``--init``): every conv, BatchNorm and fully connected layer
    is copied; the classifier head keeps its fresh initialisation, sized for the new identities, unless the
    identities are the checkpoint's own (``class_names`` equal: a second schedule on the same people).

    Returns:
        {"source", "fingerprint"} of the checkpoint, for the run's own checkpoints to record.
    """
    same_people = class_names is not None and list(class_names) == list(init["class_names"])
    weights = {k: v for k, v in init["model"].items()
               if (same_people or not k.startswith("head.")) and k != "embedding_mean"}
    missing, unexpected = net.load_state_dict(weights, strict=False)
    # a new head, and a new teacher projection when the starting model had none, start fresh
    fresh = [k for k in missing if not k.startswith(("head.", "projection.")) and k != "embedding_mean"]
    if fresh or unexpected:
        raise BadInput(f"{init['source']}: its layers do not fit this model (missing {fresh}, extra {unexpected})")
    return {"source": init["source"], "fingerprint": payload_fingerprint(init)}


def augment_from_dict(d: dict) -> AugmentConfig:
    return AugmentConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
