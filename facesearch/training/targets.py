"""Training on a teacher's vectors: each crop's target (computed once, centred, unit length) and the losses that
pull the student's vectors towards them."""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from facesearch.data.datasets import Dataset
from facesearch.data.manifest import read_settings
from facesearch.runtime import barrier, is_main_process
from facesearch.teacher import teacher_vectors


def with_teacher_targets(data: Dataset, name: str, workers: int = 1,
                         on_progress: Callable[[int, int], None] | None = None) -> tuple[Dataset, dict]:
    """``data`` with the teacher's vectors of its train and validation crops as targets: computed once per crop
    (cached beside the prepared data, resumable; rank 0 computes while the other ranks wait), centred on the
    training crops' mean and scaled to unit length. Raw face descriptors share a large common part (dlib's:
    a mean cosine of 0.84 between different people); a student learning them uncentred learns that part.

    Returns:
        (the dataset, the teacher's ``TeacherInfo`` as a dict).
    """
    crop = {k: v for k, v in read_settings(data.root).items() if k in ("size", "margin", "align")}
    sets = [data.train] + ([data.val] if data.val else [])
    sources = [p for s in sets for p in s.sources]
    if not is_main_process():
        barrier()  # rank 0 fills the cache first
    vectors, info = teacher_vectors(name, data.root, sources, crop, workers=workers,
                                    on_progress=on_progress if is_main_process() else None)
    if is_main_process():
        barrier()
    n = len(data.train)
    centre = vectors[:n].mean(0)
    unit = vectors - centre
    unit /= np.maximum(np.linalg.norm(unit, axis=1, keepdims=True), 1e-12)
    train = replace(data.train, targets=np.ascontiguousarray(unit[:n], dtype=np.float32))
    val = replace(data.val, targets=np.ascontiguousarray(unit[n:], dtype=np.float32)) if data.val else None
    return replace(data, train=train, val=val), info.to_dict()


def distillation_losses(student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The cosine (n,) of each student vector (n, d) to its teacher's unit vector, and the mean squared difference
    of the batch's two cosine-similarity matrices (where each face sits among the others, as the teacher has it)."""
    s = F.normalize(student, dim=1)
    relation = (s @ s.T - teacher @ teacher.T).pow(2).mean()
    return (s * teacher).sum(1), relation
