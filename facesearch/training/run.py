"""``train``: settle what a run starts from (fresh, ``--init`` or ``--resume``), load the data, run the loop."""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Callable

from facesearch.checkpoint import Preprocess, model_source, read_checkpoint, resolve_checkpoint
from facesearch.data.datasets import class_names, default_input_size, load_dataset
from facesearch.errors import BadInput
from facesearch.models.vgg import VGGConfig
from facesearch.runtime import setup_distributed
from facesearch.training.augment import AugmentConfig
from facesearch.runtime import uses_bf16
from facesearch.training.config import RUNTIME_FIELDS, TrainConfig, TrainResult
from facesearch.training.start import augment_from_dict, face_crop_settings, warn_on_other_crops
from facesearch.training.targets import with_teacher_targets
from facesearch.training.trainer import Trainer

log = logging.getLogger(__name__)


def model_config(kind: str, data_dir: str | os.PathLike, input_size: int | None = None, teacher: bool = False,
                 **overrides) -> VGGConfig:
    """The architecture ``train`` builds for this data unless given one: the kind's preset (``VGGConfig.faces``
    or ``.cifar10``) with ``overrides`` (None values ignored), the head sized for the data's classes (none when
    a ``teacher`` trains a folder without identities), the input the crops' size (``input_size`` None)."""
    classes = len(class_names(kind, data_dir, unlabelled=teacher))
    return VGGConfig.for_kind(kind, classes, input_size or default_input_size(kind, data_dir), **overrides)


def train(kind: str, data_dir: str | os.PathLike, run_dir: str | os.PathLike, cfg: TrainConfig | None = None,
          model: VGGConfig | None = None, aug: AugmentConfig | None = None, cache_dir: str | os.PathLike | None = None, resume: bool = False,
          on_progress: Callable[[dict], None] | None = None, init: str | os.PathLike | None = None,
          on_teacher: Callable[[int, int], None] | None = None) -> TrainResult:
    """Train a VGG16 on faces (a ``prepare`` output) or CIFAR-10; the same code path for both.

    Args:
        kind: "faces" or "cifar10".
        data_dir: the prepare output, or the CIFAR-10 folder.
        run_dir: where checkpoints, metrics.jsonl and curves.png go.
        cfg: training settings (default: the kind's preset).
        model: the architecture (default: ``model_config(kind, data_dir)``, the kind's preset at the crops'
            size); its ``num_classes`` must be the data's number of classes.
        aug: augmentation (default: AugmentConfig.faces() or .cifar()).
        cache_dir: uint8 cache folder (default RUN_DIR/cache).
        resume: continue RUN_DIR/last.pt at its exact step; model, schedule and augmentation come from the
            checkpoint, only runtime settings (device, compile, workers, max_steps, ...) from ``cfg``; the time
            budget counts earlier runs too and is the saved one unless ``cfg`` gives another.
        on_progress: called on rank 0 every ``log_every`` steps with step/total_steps/loss/lr/images_per_s.
        init: fine-tune: a checkpoint (or "base", the model shipped with facesearch) whose architecture, input
            size, normalisation and weights the run starts from; only the classifier head is new, sized for
            this data's identities. ``model`` must then be left out (as on ``resume``).
        on_teacher: with ``cfg.teacher``, called with (done, total) while the teacher encodes the crops its
            cache lacks (rank 0).
    """
    cfg = cfg or TrainConfig.for_kind(kind)
    run_dir = Path(run_dir)
    state = read_checkpoint(run_dir / "last.pt") if resume else None
    start = None
    if model is not None and (init is not None or state is not None):
        raise BadInput("the architecture comes from the checkpoint on resume and init; leave `model` out")
    if init is not None and state is None:  # on --resume the run's own last.pt already holds the weights
        path = resolve_checkpoint(init)
        start = {**read_checkpoint(path), "source": model_source(path)}
        architecture = VGGConfig.from_dict(start["model_config"])
    if state is not None:
        saved = TrainConfig.from_dict(state["train_config"])
        runtime = {k: getattr(cfg, k) for k in RUNTIME_FIELDS}
        runtime["time_budget"] = cfg.time_budget or saved.time_budget  # total seconds, earlier runs included
        cfg = replace(saved, **runtime)
        architecture, aug = VGGConfig.from_dict(state["model_config"]), augment_from_dict(state["augment"])
    if start is None and state is None:
        architecture = model or model_config(kind, data_dir)
    ddp, device = setup_distributed(cfg.device)
    bf16 = uses_bf16(cfg.precision, device)  # a precision this device cannot compute in is refused before the data loads
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.teacher is not None and kind != "faces":
        raise BadInput(f"{cfg.teacher} is a face model: it teaches face crops, not {kind}", param="teacher")
    data = load_dataset(kind, data_dir, architecture.input_size, cache_dir or run_dir / "cache", cfg.workers,
                        unlabelled=cfg.teacher is not None)
    teacher = None
    if cfg.teacher is not None:
        data, teacher = with_teacher_targets(data, cfg.teacher, min(cfg.workers, os.cpu_count() or 1), on_teacher)
    if start is not None:  # the features were learnt on inputs normalised the starting model's way
        pre = Preprocess.from_dict(start["preprocess"])
        data = replace(data, mean=pre.mean, std=pre.std)
        warn_on_other_crops(start, face_crop_settings(data), data_dir)
    if cfg.teacher is not None and cfg.identity_weight == 0:  # the teacher alone: no identity head
        data = replace(data, class_names=())
    if state is not None and list(data.class_names) != list(state["class_names"]):
        raise BadInput(f"{data_dir}: its classes differ from those of {run_dir / 'last.pt'}; cannot resume")
    if model is not None and data.class_names and model.num_classes != len(data.class_names):
        raise BadInput(f"the model's head has {model.num_classes} classes; {data_dir} has {len(data.class_names)}")
    architecture = replace(architecture, num_classes=len(data.class_names))  # a new head on init
    aug = aug or (AugmentConfig.faces() if kind == "faces" else AugmentConfig.cifar())
    log.info("training %s on %s: %d classes, %d train images, device %s (%s), %d process(es)", kind, data_dir,
             len(data.class_names), len(data.train), device, "bf16" if bf16 else "float32",
             ddp.world)
    return Trainer(data, run_dir, cfg, architecture, aug, ddp, device, on_progress, state, start, teacher).run()
