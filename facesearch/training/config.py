"""Training settings (``TrainConfig``, one preset per dataset kind) and what a run returns (``TrainResult``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path

from facesearch.errors import BadInput
from facesearch.runtime import PRECISIONS
from facesearch.teacher import TEACHERS
from facesearch.training.batches import SAMPLINGS

# Settings that may differ on --resume without changing what is computed (where and how fast, not what).
RUNTIME_FIELDS = ("device", "precision", "compile", "workers", "time_budget", "max_steps", "checkpoint_every", "log_every",
                  "save_gap", "eval_every")


ADAMW_LR, ADAMW_WEIGHT_DECAY = 1e-3, 0.05  # AdamW's preset peak learning rate and decoupled weight decay


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 40
    batch_size: int = 128  # global batch (all DDP processes together)
    lr: float = 0.05  # peak learning rate, reached after warm-up
    optimizer: str = "sgd"  # "sgd" (momentum, Nesterov) or "adamw"
    momentum: float = 0.9
    weight_decay: float = 5e-4  # on conv/linear weights only, not on biases and BatchNorm
    warmup_epochs: float = 2.0  # linear warm-up, then cosine to zero
    # A margin head's margin grows linearly from 0 to its full value over these first epochs (0: the full margin
    # from the first step). ArcFace's margin on a head that cannot yet tell anyone apart can collapse a run.
    margin_warmup_epochs: float = 0.0
    label_smoothing: float = 0.0  # keep 0 for faces: smoothing hurts penultimate-layer embeddings
    sampling: str = "photos"  # "photos": every crop once an epoch; "identities": every person equally often
    eval_flip: bool = False  # validation averages the logits of the image and its mirror image
    seed: int = 0
    time_budget: float | None = None  # seconds of training (compilation and evaluation included); then stop
    max_steps: int | None = None  # stop after this many steps (the schedule still spans ``epochs``)
    checkpoint_every: float = 600.0  # seconds between mid-epoch saves of last.pt
    save_gap: float = 30.0  # at an epoch's end, save last.pt/best.pt/curves only if this long since the last
    #                         save (GPU epochs can take under a second); the run's end always saves
    eval_every: int = 1  # validate every this many epochs (and at the end)
    log_every: int = 20  # steps between progress reports
    device: str = "auto"
    precision: str = "auto"  # compute precision (runtime.uses_bf16): "auto" (bf16 on CUDA), "bf16" or "fp32"
    compile: bool = False  # torch.compile the model (CUDA: a one-off compile, then faster steps)
    workers: int = 4  # threads decoding images when the uint8 cache is built
    eval_batch_size: int = 500
    # Distillation: a public face model ("dlib") whose vector of each crop fc7 (or its projection) learns to point
    # along, by cosine and by the batch's similarity matrix; faces without a trainable identity train too.
    teacher: str | None = None
    distill_weight: float = 1.0  # weight of the teacher's loss
    identity_weight: float = 1.0  # weight of the identity (classification) loss; 0 with a teacher: no head

    # The defaults above are the face recipe; the constructors below are the presets, one per dataset kind.
    @classmethod
    def faces(cls, **overrides) -> TrainConfig:
        """The face-identity recipe (``facesearch train``), with ``overrides`` (None values ignored)."""
        return cls._preset({}, overrides)

    @classmethod
    def cifar10(cls, **overrides) -> TrainConfig:
        """The usual VGG16-BN CIFAR recipe (SGD 0.1 at batch 128, wd 5e-4, flip + 4 px crop: ~92.6 % in 200
        epochs) scaled linearly to batch 512, with warm-up + cosine, label smoothing 0.1 and flip-averaged
        evaluation (``facesearch cifar10 train``)."""
        return cls._preset(dict(epochs=60, batch_size=512, lr=0.4, warmup_epochs=3.0, label_smoothing=0.1,
                                eval_flip=True), overrides)

    @classmethod
    def for_kind(cls, kind: str, **overrides) -> TrainConfig:
        if kind not in ("faces", "cifar10"):
            raise BadInput(f"dataset kind must be 'faces' or 'cifar10', not {kind!r}")
        return cls.faces(**overrides) if kind == "faces" else cls.cifar10(**overrides)

    @classmethod
    def _preset(cls, preset: dict, overrides: dict) -> TrainConfig:
        given = {k: v for k, v in overrides.items() if v is not None}
        if given.get("optimizer") == "adamw":
            # The SGD recipes' learning rate and decay are far too high for AdamW: its own preset values apply
            # to whichever of the two the caller did not give (a given value is always kept).
            preset = {**preset, "lr": ADAMW_LR, "weight_decay": ADAMW_WEIGHT_DECAY}
        return cls(**{**preset, **given})

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """A config saved by ``asdict`` (a checkpoint's ``train_config``); keys this version lacks are refused."""
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise BadInput(f"training settings this version does not know: {sorted(unknown)}")
        return cls(**d)

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adamw"):
            raise BadInput(f"optimizer must be 'sgd' or 'adamw', not {self.optimizer!r}")
        if self.sampling not in SAMPLINGS:
            raise BadInput(f"{self.sampling!r}: one of {', '.join(SAMPLINGS)}", param="sampling")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise BadInput(f"{getattr(self, name)}: must be at least 1", param=name)
        if not (math.isfinite(self.lr) and self.lr > 0):  # also refuses nan
            raise BadInput(f"{self.lr}: a learning rate is a positive number", param="lr")
        if self.precision not in PRECISIONS:
            raise BadInput(f"{self.precision!r}: one of {', '.join(PRECISIONS)}", param="precision")
        if self.teacher is not None and self.teacher not in TEACHERS:
            raise BadInput(f"{self.teacher!r}: one of {', '.join(TEACHERS)}", param="teacher")
        if self.teacher is None and self.identity_weight == 0:
            raise BadInput("0 leaves nothing to train without a teacher", param="identity_weight")
        for name in ("weight_decay", "warmup_epochs", "margin_warmup_epochs", "label_smoothing", "distill_weight",
                     "identity_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise BadInput(f"{value}: must be a number of at least 0", param=name)
        if self.time_budget is not None and not (math.isfinite(self.time_budget) and self.time_budget > 0):
            raise BadInput(f"{self.time_budget}: seconds, more than 0", param="time_budget")
        if self.max_steps is not None and self.max_steps < 1:  # 0 would read as "no limit"
            raise BadInput(f"{self.max_steps}: must be at least 1", param="max_steps")
        if not self.checkpoint_every > 0:  # also refuses nan; inf: no mid-epoch saves
            raise BadInput(f"{self.checkpoint_every}: seconds, more than 0", param="checkpoint_every")


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    epoch: int  # completed epochs
    elapsed: float  # seconds of training
    images_per_s: float  # mean training throughput (all processes)
    best_val_acc: float | None  # closed-set accuracy of best.pt (a teacher's run: at its best cosine)
    history: list[dict] = field(default_factory=list)
    best_val_teacher_cos: float | None = None  # under a teacher: best.pt's mean cosine to the teacher's vectors
