"""Training batches: a seeded permutation per epoch (so a resumed run continues exactly), each process's share
under DDP, and uint8 images gathered from the cache (or kept on the GPU when they fit)."""

from __future__ import annotations

import numpy as np
import torch

from facesearch.data.datasets import ImageSet
from facesearch.errors import BadInput
from facesearch.runtime import Distributed


SAMPLINGS = ("photos", "identities")


class Batches:
    """Index permutations per epoch (seeded by seed and epoch: resumable) and uint8 batch gathering.

    ``sampling``: "photos" (each epoch every crop once, in a random order) or "identities" (each epoch as many
    draws, with replacement, of a person chosen uniformly and then one of their crops: a person with 30 photos is
    seen as often as one with 2).
    """

    def __init__(self, data: ImageSet, batch_size: int, seed: int, ddp: Distributed, device: torch.device,
                 sampling: str = "photos"):
        if sampling not in SAMPLINGS:
            raise BadInput(f"sampling must be one of {SAMPLINGS}, not {sampling!r}")
        self.n, self.seed, self.ddp, self.device, self.sampling = len(data), seed, ddp, device, sampling
        self.global_batch = max(ddp.world, min(batch_size, self.n - self.n % ddp.world))
        if self.global_batch % ddp.world:
            raise BadInput(f"batch size {batch_size} does not split over {ddp.world} processes")
        self.local_batch = self.global_batch // ddp.world
        self.steps_per_epoch = self.n // self.global_batch  # drop the ragged last batch
        self.labels = torch.from_numpy(data.labels).to(device)
        self.targets = None if data.targets is None else torch.from_numpy(data.targets).to(device)  # (n, dim)
        if sampling == "identities":  # per crop: 1 / its person's crops
            self._weights = torch.from_numpy(1.0 / np.bincount(data.labels)[data.labels]).double()
        self.images = _resident(data.images, device)  # device tensor, or the memmap itself
        self._perm_epoch, self._perm = -1, None

    def indices(self, epoch: int, step: int) -> torch.Tensor:
        """This process's share of batch ``step`` of ``epoch`` (on the device when the images are)."""
        if self._perm_epoch != epoch:  # one permutation per epoch, copied to the device once
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            if self.sampling == "photos":
                perm = torch.randperm(self.n, generator=g)
            else:
                perm = torch.multinomial(self._weights, self.n, replacement=True, generator=g)
            self._perm = perm.to(self.device) if isinstance(self.images, torch.Tensor) else perm
            self._perm_epoch = epoch
        start = step * self.global_batch + self.ddp.rank * self.local_batch
        return self._perm[start:start + self.local_batch]

    def shard(self) -> torch.Tensor:
        """All indices in order, this process's share (rank::world): for evaluation."""
        idx = torch.arange(self.ddp.rank, self.n, self.ddp.world)
        return idx.to(self.device) if isinstance(self.images, torch.Tensor) else idx

    def targets_of(self, idx: torch.Tensor) -> torch.Tensor | None:
        """A teacher's unit vectors (b, dim) of these crops on the device (None: no teacher)."""
        return None if self.targets is None else self.targets[idx.to(self.device)]

    def take(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images (b, S, S, 3) and labels (b,) on the device."""
        if isinstance(self.images, torch.Tensor):
            return self.images[idx], self.labels[idx]
        x = torch.from_numpy(self.images[idx.numpy()])
        if self.device.type == "cuda":
            x = x.pin_memory()
        return x.to(self.device, non_blocking=True), self.labels[idx.to(self.device)]


def _resident(images: np.ndarray, device: torch.device):
    """Copy the whole uint8 set onto the GPU when it takes under a quarter of the free memory."""
    if device.type == "cuda" and images.nbytes < torch.cuda.mem_get_info(device)[0] / 4:
        return torch.from_numpy(np.ascontiguousarray(images)).to(device)
    return images  # CPU: gather from the memmap (the OS page cache keeps it in memory)
