"""Self-describing checkpoints: everything ``enroll``/``who``/``explain`` need comes from the file alone.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads with
``torch.load(weights_only=True)`` (no pickled classes)::

    format          "facesearch-checkpoint/1"
    model_config    VGGConfig as a dict
    class_names     list[str], index = class id
    preprocess      {"input_size", "mean", "std"}
    model           state dict (fp32, unwrapped from DDP / torch.compile; fp16 in the shipped base model)
    fingerprint     sha256 of ``model`` (see ``fingerprint``), recorded when saved; loading hashes the weights
                    once and refuses a file whose weights do not match it (damaged or altered)
    crop            {"size", "margin", "align"}: how prepare cut the training faces (faces only; Embedder
                    cuts gallery and query faces the same way)
    threshold       optional {"value", "fpir", "measured_on"}: the similarity ``who`` names faces at in a gallery
                    never calibrated (the base model's, measured on held-out people)
    teacher         optional: the teacher a distilled model learnt from (name, version, weights, licence)
    dataset         optional {"kind", ...}: what it was trained on, "faces" or "cifar10" (only face models
                    embed faces: ``load_checkpoint(kind="faces")`` refuses the others)
    training state  optimizer, scheduler, rng, sampler, epoch, step, elapsed, metrics, history, train_config
                    (all optional: a checkpoint made for inference only may leave them out)
"""

from __future__ import annotations

import hashlib
import os
import pickle
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from facesearch.data.images import to_square_rgb
from facesearch.errors import BadInput, Remedy
from facesearch.models.vgg import VGG16, VGGConfig
from facesearch.runtime import resolve_device

FORMAT = "facesearch-checkpoint/1"


class CheckpointError(BadInput):
    """A checkpoint that cannot be used: missing, refused as unsafe, damaged, foreign, or not fitting its model.
    The message names the file and what to do."""


@dataclass(frozen=True)
class Preprocess:
    """How an RGB image becomes a model input: resize to a square, scale to [0, 1], normalise per channel."""

    input_size: int
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def to_dict(self) -> dict:
        return {"input_size": self.input_size, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        return cls(int(d["input_size"]), tuple(float(v) for v in d["mean"]), tuple(float(v) for v in d["std"]))


@dataclass
class LoadedModel:
    model: torch.nn.Module  # VGG16 in eval mode on the requested device
    config: VGGConfig
    class_names: list[str]
    preprocess: Preprocess
    fingerprint: str  # stable hash of the weights: tells two checkpoints (and their embeddings) apart
    path: Path | None = None
    extra: dict = field(default_factory=dict)  # epoch, step, metrics, crop (prepare's size/margin/align) of the file
    kind: str | None = None  # what it was trained on ("faces", "cifar10"); None: not recorded (hand-made files)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DistributedDataParallel and/or torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        elif hasattr(model, "module") and isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def fingerprint(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over parameter names and bytes (sorted by name), first 16 hex digits."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().to("cpu").contiguous().reshape(-1)
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def payload_fingerprint(payload: dict, path: str | os.PathLike | None = None) -> str:
    """A read checkpoint's fingerprint, hashed from its weights (one pass over them: call it once per load).

    Raises:
        CheckpointError: the file records another fingerprint than its weights have: the weights were damaged
            or altered after it was saved, and it must not pass for the model it names.
    """
    hashed = fingerprint(payload["model"])
    recorded = payload.get("fingerprint")
    if recorded is not None and recorded != hashed:
        where = path or payload.get("source") or "the checkpoint"
        raise CheckpointError(f"{where}: its weights do not match its recorded fingerprint (records {recorded}, "
                              f"its weights hash to {hashed}): damaged or altered; copy the original file again")
    return hashed


KINDS = {"faces": "a face model", "cifar10": "a CIFAR-10 image classifier"}


def checkpoint_kind(payload: dict) -> str | None:
    """What a checkpoint's model was trained on ("faces", "cifar10"), as its ``dataset`` records; None if it does
    not say (a checkpoint written by hand, e.g. the tests' random-weight ones)."""
    dataset = payload.get("dataset")
    kind = dataset.get("kind") if isinstance(dataset, dict) else None
    return str(kind) if kind is not None else None


def require_kind(recorded: str | None, kind: str, path: str | os.PathLike | None) -> None:
    """Refuse a model trained on something else than ``kind`` (e.g. a CIFAR-10 classifier given as a face model),
    naming the file and what it is. A checkpoint that records no kind (``recorded`` None) passes."""
    if recorded is None or recorded == kind:
        return
    what = KINDS.get(recorded, f"a model trained on {recorded!r} data")
    message = f"{path or 'the model'}: {what}, not {KINDS.get(kind, repr(kind))}"
    if kind != "faces":
        raise CheckpointError(f"{message}; give {KINDS.get(kind, kind)}")
    raise CheckpointError(f'{message}; give a face checkpoint (one trained on prepared face crops) or "base", the '
                          "face model shipped with facesearch", remedy=(Remedy.run("prepare"), Remedy.run("train")))


def save_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module,
    class_names: Sequence[str],
    preprocess: Preprocess,
    weights: dict[str, torch.Tensor] | None = None,
    **state,
) -> Path:
    """Write a checkpoint atomically (temp file + rename: a crash never leaves a half-written file).

    Args:
        path: target file, e.g. ``RUN_DIR/last.pt``.
        model: the VGG16, possibly wrapped in DDP / torch.compile (unwrapped here).
        class_names: index = class id.
        preprocess: input size and normalisation the model was trained with.
        weights: a state dict to store instead of the model's current one (e.g. the best weights, kept aside).
        **state: plain-data training state (optimizer, scheduler, rng, sampler, epoch, step, metrics, ...).
    Returns:
        The path written.
    """
    net = unwrap(model)
    payload = {
        "format": FORMAT,
        "model_config": net.config.to_dict(),
        "class_names": list(class_names),
        "preprocess": preprocess.to_dict(),
        "model": {k: v.detach().to("cpu") for k, v in (weights or net.state_dict()).items()},
        **state,
    }
    payload["fingerprint"] = fingerprint(payload["model"])  # loading hashes the weights again and compares
    return _save_atomically(payload, path)


def _save_atomically(payload: dict, path: str | os.PathLike) -> Path:
    """torch.save to a temp file, then rename: a crash never leaves a half-written checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


BASE = "base"  # what a ``checkpoint`` (or ``init``) argument calls the model shipped inside the package


def base_model_path() -> Path:
    """The base model that ships with facesearch (``facesearch/models/base/model.pt``; see its MODEL_CARD.md)."""
    path = Path(__file__).resolve().parent / "models" / "base" / "model.pt"
    if not path.is_file():
        raise CheckpointError(f"{path}: the base model is missing from this installation; reinstall facesearch "
                              "or give a checkpoint", remedy=Remedy.give("checkpoint"))
    return path


def resolve_checkpoint(checkpoint: str | os.PathLike | None, recorded: str | None = None) -> Path:
    """A checkpoint argument as a path. ``None``: the model a gallery ``recorded`` it was built with
    (``Gallery.model_source``), else the shipped base model; ``"base"`` is always the shipped base model."""
    if checkpoint is None and recorded:
        checkpoint = recorded
    if checkpoint is None or str(checkpoint) == BASE:
        return base_model_path()
    return Path(checkpoint)


def model_source(path: str | os.PathLike) -> str:
    """How a gallery records the model it was built with: ``"base"`` for the shipped one (wherever the
    package is installed), else the checkpoint's absolute path."""
    path = Path(path).resolve()
    try:
        if path == base_model_path():
            return BASE
    except CheckpointError:  # no base model installed: this one is not it
        pass
    return str(path)


INFERENCE_KEYS = ("format", "fingerprint", "model_config", "class_names", "preprocess", "model", "crop", "epoch", "step",
                  "elapsed", "metrics", "best_val_acc", "train_config", "augment", "dataset", "init",
                  "teacher", "threshold")


def export_checkpoint(source: str | os.PathLike, target: str | os.PathLike, half: bool = True,
                      record: dict | None = None) -> Path:
    """A compact copy of a checkpoint for inference and ``--init``: no optimizer, RNG or history; floating
    point weights in half precision when ``half`` (``load_checkpoint`` computes in float32 either way);
    ``record`` adds or replaces metadata (e.g. ``threshold``: {"value", "fpir", "measured_on"}, for galleries
    never calibrated)."""
    payload = read_checkpoint(source)
    payload_fingerprint(payload, source)  # a copy of damaged or altered weights would get a fingerprint of its own
    out = {k: payload[k] for k in INFERENCE_KEYS if payload.get(k) is not None}
    out.update({k: v for k, v in (record or {}).items() if k in INFERENCE_KEYS})
    if half:
        out["model"] = {k: v.half() if v.is_floating_point() else v for k, v in payload["model"].items()}
    out["fingerprint"] = fingerprint(out["model"])
    return _save_atomically(out, target)


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The raw checkpoint dict (CPU tensors), loaded safely; a clear error for a missing or foreign file.
    ``"base"`` reads the shipped base model."""
    path = resolve_checkpoint(path)
    if path.is_dir():  # a run directory: its best checkpoint, else its last one
        path = next((p for p in (path / "best.pt", path / "last.pt") if p.is_file()), path / "best.pt")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint (give a checkpoint file, a training run folder or \"base\")")
    payload = _torch_load(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a facesearch checkpoint (format {FORMAT!r} expected)")
    for key, kind in (("model_config", dict), ("class_names", list), ("preprocess", dict), ("model", dict)):
        if not isinstance(payload.get(key), kind):
            raise CheckpointError(f"{path}: incomplete facesearch checkpoint ({key!r} missing or malformed)")
    return payload


def _torch_load(path: Path):
    """``torch.load`` restricted to tensors and plain data; each way it fails becomes its own message."""
    with open(path, "rb") as f:
        head = f.read(2)
    if head and not head.startswith((b"PK", b"\x80")):  # neither torch's zip format nor a pickle: a photo, text...
        raise CheckpointError(f"{path}: not a checkpoint (facesearch checkpoints are the torch files its training "
                              'writes: give one, a training run folder or "base")', remedy=Remedy.run("train"))
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols before refusing them
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower() or "weights_only" in str(e):
            raise CheckpointError(
                f"{path}: refused: it holds Python objects, not only tensors and plain data, and loading those "
                "could run code from the file; facesearch loads only its own checkpoints (made by its training); "
                "re-export the model with facesearch", remedy=Remedy.run("train")) from None
        raise CheckpointError(f"{path}: not a checkpoint torch can read ({e})") from None
    except (EOFError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path}: damaged or truncated checkpoint ({type(e).__name__}); copy it again") from None
    except RuntimeError as e:
        reason = str(e).splitlines()[0].split(". ")[0]  # torch's first sentence; the rest is advice
        if "zip" in reason.lower() or "archive" in reason.lower() or "stream" in reason.lower():
            raise CheckpointError(f"{path}: damaged or truncated checkpoint ({reason}); copy it again") from None
        raise CheckpointError(f"{path}: not a checkpoint torch can read ({reason})") from None
    except (OSError, MemoryError):
        raise
    except Exception as e:  # any other way a foreign file fails to unpickle
        raise CheckpointError(f"{path}: not a checkpoint torch can read ({type(e).__name__}: {e})") from None


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu", kind: str | None = None) -> LoadedModel:
    """Rebuild the model from a checkpoint file (or a run directory: ``best.pt``, else ``last.pt``).

    Args:
        kind: the model must have been trained on this ("faces": a face model), when its checkpoint says.
    Returns:
        LoadedModel with the VGG16 in eval mode on ``device`` ("auto": CUDA when available), its fingerprint
        hashed from the weights (and checked against the recorded one).
    Raises:
        CheckpointError: missing, unsafe, damaged, altered, foreign, of another kind, or not fitting its model.
    """
    path = resolve_checkpoint(path)
    payload = read_checkpoint(path)
    recorded_kind = checkpoint_kind(payload)
    if kind is not None:  # before anything is hashed or built
        require_kind(recorded_kind, kind, path)
    digest = payload_fingerprint(payload, path)
    try:
        config = VGGConfig.from_dict(payload["model_config"])
        with torch.device("meta"):  # no memory and no random initialisation: the weights come from the file
            model = VGG16(config)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: its architecture is not one this version of facesearch builds ({e})") from None
    # float32 compute whatever the file stores (the base model is half precision)
    state = {k: v.float() if v.is_floating_point() else v for k, v in payload["model"].items()}
    state.setdefault("embedding_mean", torch.zeros(config.embedding_width))  # checkpoints from before centring
    try:
        model.load_state_dict(state, assign=True)
    except RuntimeError as e:
        problems = [line.strip() for line in str(e).splitlines()[1:] if line.strip()][:3]
        raise CheckpointError(f"{path}: its weights do not fit the architecture it records "
                              f"({'; '.join(problems) or str(e).splitlines()[0]})") from None
    model.to(resolve_device(device)).eval()
    extra = {k: payload[k] for k in ("epoch", "step", "metrics", "crop", "threshold") if payload.get(k) is not None}
    return LoadedModel(
        model=model,
        config=config,
        class_names=list(payload["class_names"]),
        preprocess=Preprocess.from_dict(payload["preprocess"]),
        fingerprint=digest,
        path=Path(path),
        extra=extra,
        kind=recorded_kind,
    )


def preprocess_batch(images: Sequence, preprocess: Preprocess) -> torch.Tensor:
    """PIL images -> normalised float tensor (n, 3, S, S), the way the model was trained.

    Each image is converted to RGB, centre-cropped to a square (face crops already are) and resized to
    ``input_size`` with Pillow's antialiased bilinear filter, as the training cache was built.
    """
    size = preprocess.input_size
    arrays = np.stack([np.asarray(to_square_rgb(im, size)) for im in images])  # (n, S, S, 3) uint8
    x = torch.from_numpy(arrays).permute(0, 3, 1, 2).float().div_(255)  # (n, 3, S, S) in [0, 1]
    mean = torch.tensor(preprocess.mean).view(1, 3, 1, 1)
    std = torch.tensor(preprocess.std).view(1, 3, 1, 1)
    return (x - mean) / std
