"""The loop of one run: steps, evaluation, the best weights, last.pt/best.pt/metrics.jsonl/curves.png."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F

from facesearch.checkpoint import Preprocess, save_checkpoint
from facesearch.data.datasets import Dataset, identity_folders
from facesearch.errors import BadInput, Remedy
from facesearch.models.vgg import VGG16, VGGConfig
from facesearch.runtime import CHANNELS_LAST, Distributed, autocast, tune_for, uses_bf16
from facesearch.training.augment import AugmentConfig, augment, normalize
from facesearch.training.batches import Batches
from facesearch.training.config import TrainConfig, TrainResult
from facesearch.training.curves import write_curves
from facesearch.training.optim import build_optimizer, lr_factor
from facesearch.training.start import face_crop_settings, init_weights
from facesearch.training.targets import distillation_losses

log = logging.getLogger(__name__)


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
        self.bf16 = uses_bf16(cfg.precision, device)
        tune_for(device)
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
        self.net = net.to(device, memory_format=CHANNELS_LAST)  # on the CPU too (see ``runtime``)
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
            raise BadInput(f"the teacher's vectors have {dim} numbers and the distilled layer {width}: give fc7 "
                           "the teacher's width (fc7 itself learns the teacher's vectors) or a projection of it",
                           remedy=(Remedy.give(fc7_width=dim), Remedy.give(projection=dim)))
        if model_config.embedding != "pre_relu" and not model_config.projection:
            raise BadInput("fc7 distilled itself must be read before its ReLU",
                           remedy=Remedy.give(embedding="pre_relu"))

    def new_sums(self) -> torch.Tensor:
        """What ``train_step`` and ``evaluate`` add up on the device: loss, correct, labelled, count, cosine."""
        return torch.zeros(5, device=self.device, dtype=torch.float64)

    def train_step(self, x: torch.Tensor, y: torch.Tensor, sums: torch.Tensor, t: torch.Tensor | None = None) -> None:
        """One optimisation step on a uint8 batch (b, S, S, 3) with labels ``y`` (-1: no identity) and, under a
        teacher, its unit vectors ``t`` (b, dim); adds loss, correct, labelled, count, teacher cosine to ``sums``."""
        self._set_lr()
        self._set_margin()
        x = normalize(augment(x, self.aug, self.aug_generator), self.data.mean, self.data.std)
        x = x.contiguous(memory_format=CHANNELS_LAST)
        with autocast(self.device, self.bf16):
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
            x = x.contiguous(memory_format=CHANNELS_LAST)
            with autocast(self.device, self.bf16):
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
            x = normalize(x, self.data.mean, self.data.std).contiguous(memory_format=CHANNELS_LAST)
            with autocast(self.device, self.bf16):
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
