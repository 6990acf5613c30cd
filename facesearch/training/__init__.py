"""One trainer for the face identity classifier and CIFAR-10: same model, loop, checkpoints and metrics.

The dataset differences live in ``facesearch.data.datasets``; this package sees a ``Dataset`` of uint8
arrays. Per step: take a batch of indices from the epoch's permutation, gather the uint8 images (resident on
the device when they fit), augment and normalise on the device, bf16 autocast forward (CUDA; a CPU with bf16
instructions with ``precision="bf16"``), backward, step.

Multi-GPU: start the same command under ``torchrun``; RANK / WORLD_SIZE / LOCAL_RANK select
DistributedDataParallel (NCCL + SyncBatchNorm on CUDA, gloo + plain BatchNorm on CPU). ``batch_size`` is the
global batch, split evenly over the processes. Rank 0 alone writes checkpoints, metrics and progress.

Run directory::

    RUN_DIR/last.pt        full state (model, optimizer, scheduler, RNG, sampler, step), every
                           ``checkpoint_every`` seconds and at each epoch's end; ``--resume`` reads it
    RUN_DIR/best.pt        model + metadata at the best validation accuracy (what enroll/who/explain load)
    RUN_DIR/metrics.jsonl  one JSON line per epoch
    RUN_DIR/curves.png     loss and accuracy per epoch (when matplotlib is installed)

The package, by job: ``config`` (TrainConfig, TrainResult), ``run`` (``train``: what a run starts from, then
the loop), ``trainer`` (the loop, evaluation, saving), ``optim`` (optimizer and learning-rate schedule),
``batches`` (epoch permutations and gathering), ``augment`` (on the device), ``targets`` (a teacher's vectors
and the distillation losses), ``start`` (--init weights, --resume settings, the crop settings checkpoints hand
on), ``curves`` (curves.png).
"""

from facesearch.training.config import TrainConfig, TrainResult
from facesearch.training.run import model_config, train

__all__ = ["TrainConfig", "TrainResult", "model_config", "train"]
