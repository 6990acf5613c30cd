"""One trainer for the face identity classifier and CIFAR-10: same model, loop, checkpoints and metrics.

The dataset differences live in ``facesearch.data.datasets``; this module sees a ``Dataset`` of uint8
arrays. Per step: take a batch of indices from the epoch's permutation, gather the uint8 images (resident on
the device when they fit), augment and normalise on the device, bf16 autocast forward (CUDA), backward, step.

Multi-GPU: start the same command under ``torchrun``; RANK / WORLD_SIZE / LOCAL_RANK select
DistributedDataParallel (NCCL + SyncBatchNorm on CUDA, gloo + plain BatchNorm on CPU). ``batch_size`` is the
global batch, split evenly over the processes. Rank 0 alone writes checkpoints, metrics and progress.

Run directory::

    RUN_DIR/last.pt        full state (model, optimizer, scheduler, RNG, sampler, step), every
                           ``checkpoint_every`` seconds and at each epoch's end; ``--resume`` reads it
    RUN_DIR/best.pt        model + metadata at the best validation accuracy (what enroll/who/explain load)
    RUN_DIR/metrics.jsonl  one JSON line per epoch
    RUN_DIR/curves.png     loss and accuracy per epoch (when matplotlib is installed)
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from facesearch.checkpoint import (Preprocess, model_source, payload_fingerprint, read_checkpoint, resolve_checkpoint,
                                   save_checkpoint)
from facesearch.data.augment import AugmentConfig, augment, normalize
from facesearch.data.batches import SAMPLINGS, Batches
from facesearch.data.datasets import Dataset, class_names, default_input_size, identity_folders, load_dataset
from facesearch.distributed import Distributed, setup_distributed
from facesearch.errors import BadInput
from facesearch.models.vgg import VGG16, VGGConfig
from facesearch.teacher import TEACHERS
from facesearch.visualize.curves import write_curves

log = logging.getLogger(__name__)

# Settings that may differ on --resume without changing what is computed (where and how fast, not what).
RUNTIME_FIELDS = ("device", "compile", "workers", "time_budget", "max_steps", "checkpoint_every", "log_every",
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


def lr_factor(progress: float, warmup: float) -> float:
    """Linear warm-up over the first ``warmup`` fraction of training, then cosine from 1 to 0."""
    if progress < warmup:
        return progress / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - warmup) / max(1e-8, 1 - warmup))))


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD (Nesterov) or AdamW; weight decay on weight matrices/kernels only."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = True if next(model.parameters()).is_cuda else None  # CUDA: one kernel for ~50 M parameters
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), fused=fused)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True, fused=fused)


class Trainer:
    """Holds the model, optimizer, data and counters of one run; ``run()`` trains until done or out of time."""

    def __init__(self, data: Dataset, run_dir: Path, cfg: TrainConfig, model_config: VGGConfig,
                 aug: AugmentConfig, ddp: Distributed, device: torch.device,
                 on_progress: Callable[[dict], None] | None = None, state: dict | None = None,
                 init: dict | None = None, teacher: dict | None = None):
        self.data, self.run_dir, self.cfg, self.aug = data, run_dir, cfg, aug
        self.data_teacher = teacher  # TeacherInfo.to_dict() of the distilled teacher, for the checkpoints
        self.ddp, self.device, self.on_progress = ddp, device, on_progress
        self.cuda = device.type == "cuda"
        if self.cuda:
            torch.backends.cudnn.benchmark = True  # fixed input sizes: pick the fastest conv algorithms once
            torch.set_float32_matmul_precision("high")  # TF32 for what runs outside bf16 autocast
        self.preprocess = Preprocess(data.input_size, data.mean, data.std)
        # whose faces train (faces: identity folders, those without a trainable identity too): what a model must
        # never have seen is checked against it
        self._identities = identity_folders(data.root, data.train.sources) if data.kind == "faces" else None
        self._crop = face_crop_settings(data)
        torch.manual_seed(cfg.seed)  # same initial weights in every process
        net = VGG16(model_config)
        self.init = None  # {"source", "fingerprint"} of the checkpoint the run started from (--init)
        if init is not None:
            self.init = init_weights(net, init, data.class_names)
        if ddp.world > 1 and self.cuda:
            net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)  # keys unchanged: checkpoints load into VGG16
        # channels_last on CPU too: oneDNN's NHWC convolutions train VGG16 ~1.5x faster there (measured, 32 px)
        self.net = net.to(device, memory_format=torch.channels_last)
        self.optimizer = build_optimizer(self.net, cfg)
        self.batches = Batches(data.train, cfg.batch_size, cfg.seed, ddp, device, cfg.sampling)
        if model_config.fc_batch_norm and self.batches.local_batch < 2:
            raise BadInput(f"of at least 2 per process is needed: a batch of {self.batches.local_batch} crop per "
                           "process cannot train the fully connected layers' BatchNorm", param="batch_size")
        self.teacher = data.train.targets is not None
        if self.teacher:
            self._check_teacher(model_config, data.train.targets.shape[1])
        if cfg.sampling == "identities" and (data.train.labels < 0).any():
            raise BadInput("'identities' draws people: it cannot draw the faces without an identity that a teacher "
                           "trains on; use 'photos'", param="sampling")
        if cfg.margin_warmup_epochs and model_config.margin is None:
            raise BadInput(f"{cfg.margin_warmup_epochs}: the {model_config.head} head has no margin to warm up (the "
                           "cosface and arcface heads have one)", param="margin_warmup_epochs")
        self.val_batches = Batches(data.val, cfg.batch_size, cfg.seed, ddp, device) if data.val else None
        self.total_steps = cfg.epochs * self.batches.steps_per_epoch
        self.aug_generator = torch.Generator(device).manual_seed(cfg.seed * 1000 + ddp.rank)
        self.epoch = self.step = self.step_in_epoch = 0
        self.elapsed_before, self.history, self.best = 0.0, [], None
        self._budget_elapsed = 0.0  # seconds trained, as all processes last agreed on it
        self._time_origin = None  # elapsed when this run's first step ended (compilation done): budget clock
        self._best_weights = None  # CPU copy of the best weights, written to best.pt at the next save
        if state is not None:
            self._restore(state)
        model = self.net
        if ddp.world > 1:
            model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if self.cuda else None)
        self.model = torch.compile(model) if cfg.compile else model

    # --- the loop -----------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        self._t0 = time.perf_counter()
        self._last_save = self._synced_elapsed()
        self._train_images, self._train_seconds = 0, 0.0
        stop = self.step >= self._step_limit()
        while self.epoch < self.cfg.epochs and not stop:
            epoch_start, first = time.perf_counter(), self.step_in_epoch
            sums, stop = self._train_epoch()
            self._sync()
            self._train_seconds += time.perf_counter() - epoch_start
            steps = (self.step_in_epoch or self.batches.steps_per_epoch) - first
            self._train_images += steps * self.batches.global_batch
            final = stop or self.epoch >= self.cfg.epochs
            self._end_epoch(sums, partial=self.step_in_epoch != 0, final=final)
        return self._result()

    def _train_epoch(self) -> tuple[torch.Tensor, bool]:
        """Steps from ``step_in_epoch`` to the epoch's end, or until the budget/step limit says stop."""
        self.model.train()
        sums = self.new_sums()
        window = (time.perf_counter(), self.step)
        stop = False
        for s in range(self.step_in_epoch, self.batches.steps_per_epoch):
            idx = self.batches.indices(self.epoch, s)
            x, y = self.batches.take(idx)
            self.train_step(x, y, sums, self.batches.targets_of(idx))
            self.step, self.step_in_epoch = self.step + 1, s + 1
            if self._time_origin is None:
                self._time_origin = self._synced_elapsed()
            if self.on_progress and self.ddp.main and self.step % self.cfg.log_every == 0:
                window = self._report(sums, window)
            if self._check_stop():
                stop = True
                break
        if self.step_in_epoch == self.batches.steps_per_epoch:  # epoch complete (also when stopped on its end)
            self.epoch, self.step_in_epoch = self.epoch + 1, 0
        return sums, stop

    def _check_teacher(self, model_config: VGGConfig, dim: int) -> None:
        width = model_config.projection or model_config.embedding_width
        if width != dim:
            raise BadInput(f"the teacher's vectors have {dim} numbers and the distilled layer {width}: give "
                           f"--fc7-width {dim} (fc7 itself learns the teacher's vectors) or --projection {dim}")
        if model_config.embedding != "pre_relu" and not model_config.projection:
            raise BadInput("fc7 distilled itself must be read before its ReLU: give --embedding pre_relu")

    def new_sums(self) -> torch.Tensor:
        """What ``train_step`` and ``evaluate`` add up on the device: loss, correct, labelled, count, cosine."""
        return torch.zeros(5, device=self.device, dtype=torch.float64)

    def train_step(self, x: torch.Tensor, y: torch.Tensor, sums: torch.Tensor, t: torch.Tensor | None = None) -> None:
        """One optimisation step on a uint8 batch (b, S, S, 3) with labels ``y`` (-1: no identity) and, under a
        teacher, its unit vectors ``t`` (b, dim); adds loss, correct, labelled, count, teacher cosine to ``sums``."""
        self._set_lr()
        self._set_margin()
        x = normalize(augment(x, self.aug, self.aug_generator), self.data.mean, self.data.std)
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.cuda):
            if t is None:
                logits, student = self.model(x, y), None  # y: a margin head's true class; ignored by softmax
            else:
                logits, student = self.model(x, y, distill=True)
        labelled = y >= 0
        loss = torch.zeros((), device=x.device)
        if logits is not None and self.cfg.identity_weight:
            ce = F.cross_entropy(logits.float(), y, ignore_index=-1, reduction="sum",
                                 label_smoothing=self.cfg.label_smoothing)
            loss = loss + self.cfg.identity_weight * ce / labelled.sum().clamp(min=1)
        if student is not None:
            cos, relation = distillation_losses(student.float(), t)
            loss = loss + self.cfg.distill_weight * ((1 - cos).mean() + relation)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():  # accumulated on the device: no host sync per step
            sums[0] += loss.detach() * len(y)
            if logits is not None:
                sums[1] += (logits.argmax(1) == y).sum()
            sums[2] += labelled.sum()
            sums[3] += len(y)
            if student is not None:
                sums[4] += cos.sum()

    def _set_lr(self) -> None:
        progress = self.step / self.total_steps
        if self.cfg.time_budget and self._time_origin is not None:
            # anneal by time too, so that the cosine ends when the budget does; the clock of the schedule
            # starts after the first step, so a long compilation does not eat the warm-up
            span = max(1e-9, self.cfg.time_budget - self._time_origin)
            progress = max(progress, (self._budget_elapsed - self._time_origin) / span)
        warmup = min(0.5, self.cfg.warmup_epochs / self.cfg.epochs)
        self.lr = self.cfg.lr * lr_factor(progress, warmup)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr

    def _set_margin(self) -> None:
        """The margin head's margin for this step: ramped over ``margin_warmup_epochs``, then the model's own."""
        full = self.net.config.margin
        if full is None or self.net.head is None:
            return
        ramp = self.cfg.margin_warmup_epochs * self.batches.steps_per_epoch
        self.net.head.margin = full * min(1.0, self.step / ramp) if ramp > 0 else full

    def _check_stop(self) -> bool:
        """Stop at the step limit or the time budget; save last.pt on the time interval."""
        if self.step >= self._step_limit():
            return True
        if self.ddp.world > 1 and self.step % 20:  # DDP: agree on the clock only every 20 steps
            return False
        elapsed = self._synced_elapsed()
        if self.cfg.time_budget and elapsed >= self.cfg.time_budget:
            return True
        if elapsed - self._last_save >= self.cfg.checkpoint_every:
            self._save_last()
            self._last_save = elapsed
        return False

    def _step_limit(self) -> int:
        return min(self.total_steps, self.cfg.max_steps or self.total_steps)

    # --- time, progress, evaluation ------------------------------------------------------------------

    def _elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self._t0

    def _synced_elapsed(self) -> float:
        """Rank 0's clock, so that every process takes the same learning rate and stop decision."""
        elapsed = self._elapsed()
        if self.ddp.world > 1:
            t = torch.tensor([elapsed], dtype=torch.float64, device=self.device)
            dist.broadcast(t, 0)
            elapsed = t.item()
        self._budget_elapsed = elapsed
        return elapsed

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def _report(self, sums: torch.Tensor, window: tuple[float, int]) -> tuple[float, int]:
        loss_sum, _, _, count, _ = sums.tolist()  # a host sync, once every log_every steps
        now = time.perf_counter()
        images = (self.step - window[1]) * self.batches.global_batch
        self.on_progress({"step": self.step, "total_steps": self._step_limit(), "epoch": self.epoch,
                          "loss": loss_sum / max(1, count), "lr": self.lr,
                          "images_per_s": images / max(1e-9, now - window[0])})
        return now, self.step

    @torch.no_grad()
    def evaluate(self, batches: "Batches") -> dict:
        """Loss and accuracy (with an identity head) and the mean cosine to the teacher's vectors (under a
        teacher) over a whole split (eval mode, plain un-compiled module; shards under DDP)."""
        was_training = self.net.training
        self.net.eval()
        sums = self.new_sums()
        for idx in batches.shard().split(self.cfg.eval_batch_size):
            x, y = batches.take(idx)
            x = normalize(x, self.data.mean, self.data.std)
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.cuda):
                logits, student = self.net(x, distill=True)
                if self.cfg.eval_flip and logits is not None:
                    logits = (logits.float() + self.net(x.flip(3)).float()) / 2
            if logits is not None:
                sums[0] += F.cross_entropy(logits.float(), y, reduction="sum")
                sums[1] += (logits.argmax(1) == y).sum()
            sums[2] += len(y)
            sums[3] += len(y)
            t = batches.targets_of(idx)
            if t is not None:
                sums[4] += distillation_losses(student.float(), t)[0].sum()
        self.net.train(was_training)
        return _rates(self._all_reduce(sums))

    def _all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        if self.ddp.world > 1:
            dist.all_reduce(t)
        return t

    def _end_epoch(self, sums: torch.Tensor, partial: bool, final: bool) -> None:
        """Log one metrics line; validate, keep the best weights, save (rate-limited by ``save_gap``)."""
        train = _rates(self._all_reduce(sums))
        due = final or (self.epoch % self.cfg.eval_every == 0)
        val = self.evaluate(self.val_batches) if self.val_batches and due else None
        elapsed = self._synced_elapsed()
        record = {"epoch": self.epoch if not partial else self.epoch + 1, "step": self.step, "partial": partial,
                  "lr": self.lr, "train_loss": train["loss"], "train_acc": train["acc"],
                  "val_loss": val["loss"] if val else None, "val_acc": val["acc"] if val else None,
                  "images_per_s": self._train_images / max(1e-9, self._train_seconds), "elapsed": elapsed}
        if self.teacher:  # the mean cosine of the distilled vector to the teacher's: what picks best.pt
            record.update(train_teacher_cos=train["teacher_cos"], val_teacher_cos=val["teacher_cos"] if val else None)
        if self.net.head is None:  # no identities: no accuracy, no identity loss to report
            record.update(train_acc=None, val_acc=None, val_loss=None)
        self.history.append(record)
        kind = "teacher_cos" if self.teacher else "acc"
        score = record[f"val_{kind}"] if self.val_batches else record[f"train_{kind}"]
        if score is not None and (self.best is None or score > self.best):
            self.best = score
            if self.ddp.main:
                weights = {k: v.detach().to("cpu", copy=True) for k, v in self.net.state_dict().items()}
                weights["embedding_mean"] = self._embedding_mean().cpu()  # best.pt's weights, centred
                self._best_weights = (weights, self._meta())
        if self.ddp.main:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
        if final or elapsed - self._last_save >= self.cfg.save_gap:
            self._save_best()
            self._save_last()
            self._last_save = elapsed
            if self.ddp.main:
                write_curves(self.history, self.run_dir / "curves.png")
        log.info("epoch %s: %s", record["epoch"], record)

    @torch.no_grad()
    def _embedding_mean(self, max_images: int = 4096) -> torch.Tensor:
        """The mean embedding of (up to ``max_images``) un-augmented training images, (fc_width,).

        best.pt stores it as ``embedding_mean``; the live model keeps zero there, so training and its exact
        resume never depend on it. Runs on the main process only, on the plain module (no DDP collective).
        """
        net = self.net
        was_training = net.training
        net.eval()
        total, count = None, 0
        resident = isinstance(self.batches.images, torch.Tensor)  # index on the images' device
        for idx in torch.arange(min(len(self.data.train), max_images)).split(self.cfg.eval_batch_size):
            x, _ = self.batches.take(idx.to(self.device) if resident else idx)
            x = normalize(x, self.data.mean, self.data.std).contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.cuda):
                emb = net.forward_embedding(x).float().sum(0)
            total, count = (emb if total is None else total + emb), count + len(idx)
        net.train(was_training)
        return total / max(1, count) + net.embedding_mean  # forward_embedding subtracted the (zero) buffer

    # --- checkpoints -----------------------------------------------------------------------------------

    def _meta(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "elapsed": self._elapsed(),
                "metrics": self.history[-1] if self.history else {}, "history": list(self.history),
                "best_val_acc": self.best, "train_config": asdict(self.cfg), "augment": asdict(self.aug),
                "dataset": {"kind": self.data.kind, "root": self.data.root, "n_train": len(self.data.train),
                            "n_val": len(self.data.val) if self.data.val else 0,
                            "identities": self._identities},
                "crop": self._crop, "init": self.init, "teacher": self.data_teacher}

    def _save_best(self) -> None:
        if self._best_weights is not None:
            weights, meta = self._best_weights
            save_checkpoint(self.run_dir / "best.pt", self.net, self.data.class_names, self.preprocess,
                            weights=weights, **meta)
            self._best_weights = None

    def _save_last(self) -> None:
        """Full training state to last.pt (collective under DDP: every process's RNG states are gathered)."""
        rng = {"torch": torch.get_rng_state(), "augment": self.aug_generator.get_state(),
               "cuda": torch.cuda.get_rng_state(self.device) if self.cuda else None}
        states = [None] * self.ddp.world
        if self.ddp.world > 1:
            dist.all_gather_object(states, rng)
        else:
            states = [rng]
        if not self.ddp.main:
            return
        sched = {"kind": "warmup_cosine", "total_steps": self.total_steps, "lr": self.lr,
                 "time_budget": self.cfg.time_budget, "budget_elapsed": self._budget_elapsed,
                 "time_origin": self._time_origin}
        sampler = {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "seed": self.cfg.seed,
                   "global_batch": self.batches.global_batch, "world": self.ddp.world}
        save_checkpoint(self.run_dir / "last.pt", self.net, self.data.class_names, self.preprocess,
                        optimizer=self.optimizer.state_dict(), scheduler=sched, sampler=sampler, rng=states,
                        **self._meta())

    def _restore(self, state: dict) -> None:
        """Continue exactly where ``state`` (a last.pt) stopped: weights, optimizer, counters, RNG."""
        self.net.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.step_in_epoch = state["sampler"]["epoch"], state["sampler"]["step_in_epoch"]
        self.step, self.elapsed_before = state["step"], state["elapsed"]
        self._budget_elapsed = state["scheduler"].get("budget_elapsed", state["elapsed"])
        self._time_origin = state["scheduler"].get("time_origin")
        self.history, self.best = list(state["history"]), state["best_val_acc"]
        self.init = state.get("init")
        rng = state["rng"]
        if len(rng) != self.ddp.world:
            log.warning("resuming on %d processes, saved on %d: augmentation draws differ", self.ddp.world, len(rng))
            return
        mine = rng[self.ddp.rank]
        torch.set_rng_state(mine["torch"])
        self.aug_generator.set_state(mine["augment"])
        if self.cuda and mine["cuda"] is not None:
            torch.cuda.set_rng_state(mine["cuda"], self.device)

    def _result(self) -> TrainResult:
        rate = self._train_images / max(1e-9, self._train_seconds)
        if not self.teacher:
            return TrainResult(self.run_dir, self.step, self.epoch, self._elapsed(), rate, self.best, list(self.history))
        key = "val" if self.val_batches else "train"
        best = max(self.history, key=lambda r: r[f"{key}_teacher_cos"] or -1.0, default={})
        acc = best.get(f"{key}_acc") if self.net.head is not None else None
        return TrainResult(self.run_dir, self.step, self.epoch, self._elapsed(), rate, acc, list(self.history),
                           self.best)


def _rates(sums: torch.Tensor) -> dict:
    """{"loss", "acc" (over the labelled faces), "teacher_cos"} of the sums (loss, correct, labelled, count,
    cosine)."""
    loss_sum, correct, labelled, count, cos = sums.tolist()
    return {"loss": loss_sum / max(1, count), "acc": correct / max(1, labelled), "teacher_cos": cos / max(1, count)}


def distillation_losses(student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The cosine (n,) of each student vector (n, d) to its teacher's unit vector, and the mean squared difference
    of the batch's two cosine-similarity matrices (where each face sits among the others, as the teacher has it)."""
    s = F.normalize(student, dim=1)
    relation = (s @ s.T - teacher @ teacher.T).pow(2).mean()
    return (s * teacher).sum(1), relation


# --- entry point ---------------------------------------------------------------------------------------

def face_crop_settings(data: Dataset) -> dict | None:
    """How ``prepare`` cut the training crops (size, margin, align) and how queries look for faces
    (``DetectorSettings``, under "detector"), for checkpoints to hand on to ``Embedder``.

    None for CIFAR-10 (no detection). A gallery must cut faces exactly as the training crops were cut.
    """
    if data.kind != "faces":
        return None
    from facesearch.data.manifest import read_settings
    from facesearch.data.detect import CropSettings, DetectorSettings

    crop = CropSettings.from_dict(read_settings(data.root))  # defaults fill in for outputs older than the file
    return {**asdict(crop), "detector": DetectorSettings().to_dict()}


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
        architecture, aug = VGGConfig.from_dict(state["model_config"]), _augment_from_dict(state["augment"])
    if start is None and state is None:
        architecture = model or model_config(kind, data_dir)
    ddp, device = setup_distributed(cfg.device)
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
        _warn_on_other_crops(start, face_crop_settings(data), data_dir)
    if cfg.teacher is not None and cfg.identity_weight == 0:  # the teacher alone: no identity head
        data = replace(data, class_names=())
    if state is not None and list(data.class_names) != list(state["class_names"]):
        raise BadInput(f"{data_dir}: its classes differ from those of {run_dir / 'last.pt'}; cannot resume")
    if model is not None and data.class_names and model.num_classes != len(data.class_names):
        raise BadInput(f"the model's head has {model.num_classes} classes; {data_dir} has {len(data.class_names)}")
    architecture = replace(architecture, num_classes=len(data.class_names))  # a new head on init
    aug = aug or (AugmentConfig.faces() if kind == "faces" else AugmentConfig.cifar())
    log.info("training %s on %s: %d classes, %d train images, device %s, %d process(es)", kind, data_dir,
             len(data.class_names), len(data.train), device, ddp.world)
    return Trainer(data, run_dir, cfg, architecture, aug, ddp, device, on_progress, state, start, teacher).run()


def with_teacher_targets(data: Dataset, name: str, workers: int = 1,
                         on_progress: Callable[[int, int], None] | None = None) -> tuple[Dataset, dict]:
    """``data`` with the teacher's vectors of its train and validation crops as targets: computed once per crop
    (cached beside the prepared data, resumable; rank 0 computes while the other ranks wait), centred on the
    training crops' mean and scaled to unit length. Raw face descriptors share a large common part (dlib's:
    a mean cosine of 0.84 between different people); a student learning them uncentred learns that part.

    Returns:
        (the dataset, the teacher's ``TeacherInfo`` as a dict).
    """
    from facesearch.data.datasets import _barrier, _is_main_process
    from facesearch.data.manifest import read_settings
    from facesearch.teacher import teacher_vectors

    crop = {k: v for k, v in read_settings(data.root).items() if k in ("size", "margin", "align")}
    sets = [data.train] + ([data.val] if data.val else [])
    sources = [p for s in sets for p in s.sources]
    if not _is_main_process():
        _barrier()  # rank 0 fills the cache first
    vectors, info = teacher_vectors(name, data.root, sources, crop, workers=workers,
                                    on_progress=on_progress if _is_main_process() else None)
    if _is_main_process():
        _barrier()
    n = len(data.train)
    centre = vectors[:n].mean(0)
    unit = vectors - centre
    unit /= np.maximum(np.linalg.norm(unit, axis=1, keepdims=True), 1e-12)
    train = replace(data.train, targets=np.ascontiguousarray(unit[:n], dtype=np.float32))
    val = replace(data.val, targets=np.ascontiguousarray(unit[n:], dtype=np.float32)) if data.val else None
    return replace(data, train=train, val=val), info.to_dict()


def _warn_on_other_crops(start: dict, crop: dict | None, data_dir) -> None:
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


def _augment_from_dict(d: dict) -> AugmentConfig:
    return AugmentConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
