"""Training data as decoded uint8 arrays: face crops from a ``prepare`` output, or CIFAR-10.

Decoding JPEGs every epoch would starve a GPU, so each split is decoded once into a memory-mapped
``(n, S, S, 3)`` uint8 file (``S`` = the model's input size) plus a small JSON sidecar (labels, class names,
channel mean/std). The cache file name is a hash of the inputs (paths, sizes, mtimes, labels, S), so a
changed dataset builds a new cache and an unchanged one is reused across runs. Under DDP rank 0 builds it
while the other ranks wait at a barrier. Augmentation happens later, on the device (``augment.py``).

Dataset differences (where the images and labels come from, which split validates) live here only; the
trainer sees ``Dataset``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import numpy as np
from PIL import Image

from facesearch.data.images import IMAGE_SUFFIXES, load_image, to_square_rgb
from facesearch.data.manifest import ok_rows, read_manifest, read_settings
from facesearch.errors import BadInput, MissingFile, Remedy
from facesearch.runtime import barrier, is_main_process

log = logging.getLogger(__name__)

KINDS = ("faces", "cifar10")
CIFAR_HELP = (
    "put CIFAR-10 there as train/<class>/*.jpg and test/<class>/*.jpg folders (a copy of ../shared/data/cifar10 "
    "will do) or as torchvision's cifar-10-batches-py folder; nothing is downloaded"
)

Item = Union[Path, np.ndarray]  # an image file, or an already decoded (H, W, 3) uint8 array


UNLABELLED = -1  # the label of a training crop with no identity to learn (a teacher's vector trains it)


@dataclass(frozen=True)
class ImageSet:
    """One split: images (n, S, S, 3) uint8 (a read-only memmap) and labels (n,) int64 (``UNLABELLED`` for a
    face with no trainable identity). ``sources`` are the image files (faces), ``targets`` a teacher's vectors
    (n, dim) float32 of them when a run distils one."""

    images: np.ndarray
    labels: np.ndarray
    sources: tuple[Path, ...] = ()
    targets: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Dataset:
    kind: str  # "faces" or "cifar10"
    root: str
    class_names: tuple[str, ...]
    train: ImageSet
    val: ImageSet | None  # faces: the "val" split; CIFAR-10: its test set (it has no other held-out set)
    mean: tuple[float, float, float]  # per channel, of the training images scaled to [0, 1]
    std: tuple[float, float, float]
    input_size: int


def _decode(item: Item, size: int) -> np.ndarray:
    if isinstance(item, np.ndarray):
        image = Image.fromarray(item)
    else:
        image = load_image(item, min_side=1)  # the one decoder: EXIF-upright 8-bit RGB, bombs refused
    return np.asarray(to_square_rgb(image, size), dtype=np.uint8)


# --- where the images come from ----------------------------------------------------------------------


def face_sources(data_dir: Path, unlabelled: bool = False) -> tuple[list[str], dict[str, tuple[list[Item], list[int]]]]:
    """Class names (sorted identities of the train split) and {split: (crop paths, labels)} of a prepare output.

    With ``unlabelled`` (a teacher trains the run) the train split also holds the faces that have no identity to
    learn, labelled ``UNLABELLED``: the "unlabelled" split (``prepare --unlabelled``) and the strangers (people
    with fewer photos than ``--min-train-photos``, held out because one photo cannot teach a classifier).
    People held out on purpose (``--holdout-identities``) never train.
    """
    rows = ok_rows(read_manifest(data_dir))
    if not rows:
        raise FileNotFoundError(f"{data_dir / 'manifest.csv'}: no usable face crops (no row with status ok)")
    if all(r.split is None for r in rows):
        raise BadInput(f"{data_dir / 'manifest.csv'}: rows carry no split; prepare the photos again",
                       remedy=Remedy.run("prepare"))
    class_names = sorted({r.identity for r in rows if r.split == "train"})
    extra = _unlabelled_rows(rows, int(read_settings(data_dir).get("min_train_photos", 2))) if unlabelled else []
    if len(class_names) < 2:
        if not unlabelled:
            message = f"{data_dir / 'manifest.csv'}: the train split needs at least 2 identities"
            if any(r.split == "unlabelled" for r in rows):
                raise BadInput(f"{message}; its faces have no names: a teacher can train on them",
                               remedy=Remedy.give("teacher"))
            raise BadInput(message)
        class_names, extra = [], extra + [r for r in rows if r.split == "train"]  # a teacher alone trains
    index = {name: i for i, name in enumerate(class_names)}
    splits: dict[str, tuple[list[Item], list[int]]] = {}
    for split in ("train", "val"):
        keep = [r for r in rows if r.split == split and r.identity in index]
        splits[split] = ([data_dir / r.crop for r in keep], [index[r.identity] for r in keep])
    items, labels = splits["train"]
    splits["train"] = (items + [data_dir / r.crop for r in extra], labels + [UNLABELLED] * len(extra))
    return class_names, splits


def identity_folders(data_dir: str | os.PathLike, sources: Sequence[Path]) -> list[str]:
    """The identity folders (relative to the prepare output) of crops: whose faces a run trained on."""
    root = Path(data_dir)
    return sorted({Path(p).relative_to(root).parent.as_posix() for p in sources})


def _unlabelled_rows(rows: list, min_train_photos: int) -> list:
    """The ok rows with no identity to learn: split "unlabelled", and the strangers (split "holdout" for having
    fewer than ``min_train_photos`` photos, not people held out on purpose)."""
    photos = Counter(r.identity for r in rows)
    return [r for r in rows if r.split == "unlabelled"
            or (r.split == "holdout" and photos[r.identity] < min_train_photos)]


def cifar_sources(data_dir: Path) -> tuple[list[str], dict[str, tuple[list[Item], list[int]]]]:
    """Class names and {"train", "val"} (val = the test set) from image folders or cifar-10-batches-py."""
    if (data_dir / "train").is_dir() and (data_dir / "test").is_dir():
        class_names = _folder_classes(data_dir / "train")
        splits = {split: _folder_items(data_dir / folder, class_names)
                  for split, folder in (("train", "train"), ("val", "test"))}
        return class_names, splits
    batches = data_dir if data_dir.name == "cifar-10-batches-py" else data_dir / "cifar-10-batches-py"
    if (batches / "batches.meta").is_file():
        return _cifar_batches(batches)
    raise FileNotFoundError(f"{data_dir}: no CIFAR-10 found; {CIFAR_HELP}")


def _folder_classes(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir())


def _folder_items(root: Path, class_names: Sequence[str]) -> tuple[list[Item], list[int]]:
    items, labels = [], []
    for label, name in enumerate(class_names):
        files = sorted(p for p in (root / name).glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        items += files
        labels += [label] * len(files)
    if not items:
        raise FileNotFoundError(f"{root}: no images in <class>/ folders; {CIFAR_HELP}")
    return items, labels


def _cifar_batches(batches: Path) -> tuple[list[str], dict[str, tuple[list[Item], list[int]]]]:
    # torchvision loads here, not on import (start-up): only CIFAR-10's pickled batches need it. Its CIFAR10
    # reader checks the files' md5 and never downloads with download=False.
    import torchvision

    splits = {}
    for split, train in (("train", True), ("val", False)):
        ds = torchvision.datasets.CIFAR10(str(batches.parent), train=train, download=False)
        splits[split] = (list(ds.data), list(ds.targets))  # (32, 32, 3) uint8 arrays
    return list(ds.classes), splits


# --- the uint8 cache ---------------------------------------------------------------------------------


def _cache_key(kind: str, items: Sequence[Item], labels: Sequence[int], size: int) -> str:
    h = hashlib.sha256(f"{kind}:{size}:v1".encode())
    for item, label in zip(items, labels):
        if isinstance(item, np.ndarray):
            h.update(item.tobytes())
        else:
            st = item.stat()
            h.update(f"{item}|{st.st_size}|{st.st_mtime_ns}".encode())
        h.update(label.to_bytes(4, "little", signed=True))  # -1: a face with no identity
    return h.hexdigest()[:20]


def build_cache(target: Path, items: Sequence[Item], size: int, workers: int = 4) -> None:
    """Decode ``items`` into the raw uint8 file ``target`` ((n, size, size, 3), C order), atomically."""
    tmp = target.with_name(target.name + ".tmp")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(items), size, size, 3))
    chunk = 256

    def fill(start: int) -> None:
        for i in range(start, min(start + chunk, len(items))):
            out[i] = _decode(items[i], size)

    with ThreadPoolExecutor(max(1, workers)) as pool:  # Pillow releases the GIL while decoding
        list(pool.map(fill, range(0, len(items), chunk)))
    out.flush()
    del out
    os.replace(tmp, target)


def channel_stats(images: np.ndarray, chunk: int = 2048) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images (n, S, S, 3), scaled to [0, 1]."""
    total = np.zeros(3)
    total_sq = np.zeros(3)
    for start in range(0, len(images), chunk):
        x = images[start:start + chunk].reshape(-1, 3).astype(np.float64) / 255.0
        total += x.sum(0)
        total_sq += (x * x).sum(0)
    count = max(1, len(images) * images.shape[1] * images.shape[2])
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 1e-12))
    return mean.tolist(), std.tolist()


def cached_split(name: str, items: Sequence[Item], labels: Sequence[int], size: int, cache_dir: Path,
                 workers: int = 4) -> tuple[ImageSet, dict]:
    """The split's images as a read-only memmap, decoding them first if no matching cache exists.

    Returns:
        (ImageSet, sidecar dict with "mean"/"std" of the images).
    """
    key = _cache_key(name, items, labels, size)
    path = cache_dir / f"{name}-{size}px-{key}.npy"
    sidecar = path.with_suffix(".json")
    if is_main_process() and not sidecar.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        log.info("decoding %d images into %s", len(items), path)
        build_cache(path, items, size, workers)
        mean, std = channel_stats(np.load(path, mmap_mode="r"))
        tmp = sidecar.with_name(sidecar.name + ".tmp")
        tmp.write_text(json.dumps({"n": len(items), "size": size, "mean": mean, "std": std}))
        os.replace(tmp, sidecar)  # written last: its presence says the cache is complete
    barrier()  # other DDP ranks wait here for rank 0's cache
    images = np.load(path, mmap_mode="r")
    sources = tuple(item for item in items if isinstance(item, Path))
    return ImageSet(images, np.asarray(labels, dtype=np.int64), sources), json.loads(sidecar.read_text())


def load_dataset(kind: str, data_dir: str | os.PathLike, input_size: int, cache_dir: str | os.PathLike,
                 workers: int = 4, unlabelled: bool = False) -> Dataset:
    """Faces (a ``prepare`` output: train on its "train" split, validate on "val") or CIFAR-10.

    Args:
        kind: "faces" or "cifar10".
        data_dir: the prepare output folder, or the CIFAR-10 folder.
        input_size: side in px the images are cached at (the model's input size).
        cache_dir: where the uint8 caches live (reused across runs when the inputs are unchanged).
        workers: decoding threads when a cache is built.
        unlabelled: faces only: train on the faces with no identity to learn too (``face_sources``).
    """
    data_dir = _dataset_folder(kind, data_dir)
    if kind == "faces":
        class_names, splits = face_sources(data_dir, unlabelled)
    else:
        class_names, splits = cifar_sources(data_dir)
    sets, stats = {}, {}
    for split, (items, labels) in splits.items():
        if items:
            sets[split], stats[split] = cached_split(f"{kind}-{split}", items, labels, input_size,
                                                     Path(cache_dir), workers)
    if "train" not in sets:
        raise BadInput(f"{data_dir}: the train split is empty")
    if "val" not in sets:
        log.warning("%s: no validation images; best.pt will follow training accuracy", data_dir)
    return Dataset(kind, str(data_dir), tuple(class_names), sets["train"], sets.get("val"),
                   tuple(stats["train"]["mean"]), tuple(stats["train"]["std"]), input_size)


def class_names(kind: str, data_dir: str | os.PathLike, unlabelled: bool = False) -> list[str]:
    """The classes ``load_dataset`` will train on, read without decoding an image (a model's head is sized by
    them before the data is loaded)."""
    data_dir = _dataset_folder(kind, data_dir)
    if kind == "cifar10" and (data_dir / "train").is_dir() and (data_dir / "test").is_dir():
        return _folder_classes(data_dir / "train")
    return face_sources(data_dir, unlabelled)[0] if kind == "faces" else cifar_sources(data_dir)[0]


def _dataset_folder(kind: str, data_dir: str | os.PathLike) -> Path:
    if kind not in KINDS:
        raise BadInput(f"kind must be one of {KINDS}, not {kind!r}")
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        if kind == "cifar10":
            raise MissingFile(f"{data_dir}: no such folder; {CIFAR_HELP}")
        raise MissingFile(f"{data_dir}: no such folder; prepare photos into it",
                          remedy=Remedy.run("prepare", raw_dir="RAW_DIR", out_dir=data_dir))
    return data_dir


def default_input_size(kind: str, data_dir: str | os.PathLike) -> int:
    """Faces: the crop size the prepare output was made with (dataset.json, else 112); CIFAR-10: 32."""
    if kind == "cifar10":
        return 32
    return int(read_settings(data_dir).get("size", 112))
