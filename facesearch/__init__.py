"""facesearch: face recognition trained on your own labelled photos.

Stages (one module each): ``facesearch.data`` (prepare), ``facesearch.models`` (VGG16),
``facesearch.training``, ``facesearch.embed``, ``facesearch.gallery``, ``facesearch.search``,
``facesearch.cluster``, ``facesearch.visualize`` + ``facesearch.explain``, ``facesearch.evaluation``;
``facesearch.serve`` puts a gallery behind a REST API and web pages.

The names below are the public API; they are imported on first use, so ``import facesearch`` loads no
model and no heavy library::

    from facesearch import prepare, train, Embedder, Gallery, who
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "prepare": "facesearch.data.prepare",
    "PrepareSettings": "facesearch.data.prepare",
    "VGG16": "facesearch.models.vgg",
    "VGGConfig": "facesearch.models.vgg",
    "train": "facesearch.training",
    "TrainConfig": "facesearch.training",
    "load_checkpoint": "facesearch.checkpoint",
    "Embedder": "facesearch.embed",
    "Gallery": "facesearch.gallery",
    "who": "facesearch.search",
    "explain_identification": "facesearch.explain",
    "explain_classification": "facesearch.explain",
    "evaluate_pairs": "facesearch.evaluation.verification",
    "evaluate_open_set": "facesearch.evaluation.identification",
    "calibrate_gallery": "facesearch.evaluation.calibrate",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'facesearch' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
