"""Where and how the torch code runs: the device, the fast number formats, threads and the ``torchrun`` group.

The lowest layer of facesearch (it imports nothing of facesearch's own): data, models, training, embedding and
evaluation all ask it, so that "auto" means the same device everywhere and rank 0 is found one way.

- ``resolve_device``: "auto" → CUDA when available, else the CPU; a device this machine lacks is refused.
- ``tune_for``: on CUDA, cuDNN's autotuner and TF32 for the float32 matmuls outside bf16 autocast.
- ``uses_bf16`` / ``autocast``: whether the model computes in bf16 (``--precision``: on CUDA by default; on a CPU
  with bf16 instructions when asked), and the autocast context that does it (a no-op when not).
- ``CHANNELS_LAST``: the memory format the VGG16 runs in on every device (oneDNN's NHWC convolutions train it
  ~1.5x faster on the CPU too, measured at 32 px).
- ``set_threads``: torch's intra-op threads (prepare's detector workers run one thread each).
- ``Distributed`` / ``setup_distributed``: this process's rank under ``torchrun`` (RANK / WORLD_SIZE /
  LOCAL_RANK), NCCL on CUDA, gloo on the CPU; ``is_main_process`` / ``barrier`` for code that may or may not
  run inside the group (caches that rank 0 fills while the other ranks wait).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from facesearch.errors import BadInput

CHANNELS_LAST = torch.channels_last


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else as given, if this machine has it.

    Raises:
        ValueError: not a device name, or a GPU this machine does not have.
    """
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise BadInput(f"{str(device)!r}: not a device; use auto, cpu, cuda or cuda:N", param="device") from None
    if resolved.type == "cuda":
        have = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (resolved.index or 0) >= have:
            raise BadInput(f"{str(device)!r}: this machine has {have or 'no'} CUDA GPU{'s' if have != 1 else ''}; use "
                           "cpu (or auto)", param="device")
    elif resolved.type != "cpu" and not (resolved.type == "mps" and torch.backends.mps.is_available()):
        raise BadInput(f"{str(device)!r}: not available on this machine; use auto, cpu, cuda or cuda:N",
                       param="device")
    return resolved


def tune_for(device: torch.device) -> None:
    """On CUDA: let cuDNN pick the fastest convolution algorithms once (the input sizes are fixed) and compute in
    TF32 what runs outside bf16 autocast. Nothing elsewhere."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")


PRECISIONS = ("auto", "bf16", "fp32")  # training's compute precision (the weights stay float32 either way)


def cpu_has_bf16() -> bool:
    """Whether this CPU has the bf16 instructions oneDNN computes with (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch built without oneDNN
        return False


def uses_bf16(precision: str, device: torch.device) -> bool:
    """Whether training computes in bf16 (autocast; the weights and the losses stay float32): "auto" → on CUDA;
    "bf16" → on CUDA or on a CPU with bf16 instructions (``cpu_has_bf16``: oneDNN's bf16 convolutions train the
    VGG16 ~2x faster there); "fp32" → never.

    Raises:
        BadInput: an unknown precision, or "bf16" where it would be emulated (slower than float32).
    """
    if precision not in PRECISIONS:
        raise BadInput(f"{precision!r}: one of {', '.join(PRECISIONS)}", param="precision")
    if precision == "fp32":
        return False
    if device.type == "cuda":
        return True
    if precision == "bf16":
        if device.type == "cpu" and cpu_has_bf16():
            return True
        what = "this CPU has no bf16 instructions (AVX512-BF16 or AMX)" if device.type == "cpu" else \
            f"not on {device.type}"
        raise BadInput(f"bf16: {what}; emulated it would be slower than float32: use fp32", param="precision")
    return False


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast on ``device`` when ``bf16`` (``uses_bf16``); a context that changes nothing otherwise."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def set_threads(threads: int) -> None:
    """torch's intra-op thread pool of this process."""
    torch.set_num_threads(threads)


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> tuple[Distributed, torch.device]:
    """Join the torchrun process group when WORLD_SIZE > 1; pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device)
    if world <= 1:
        return Distributed(), device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size(), local_rank), device


def is_main_process() -> bool:
    """True outside a process group, and on its rank 0."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def barrier() -> None:
    """Wait for every process of the group (nothing outside one)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
