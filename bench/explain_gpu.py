"""GPU-side helpers for the explain benchmark: what a lent GPU machine computes and sends back.

The GPU machine has torch, torchvision, numpy and Pillow only, and at most 8 files of 16 MiB (64 MiB in
all) come back from it. So after ``bench/gpu.py`` has trained the CIFAR-10 and face models there:

    python3 bench/explain_gpu.py grid CIFAR_RUN/best.pt CIFAR_DIR OUT/cifar_grid.npz   # 13 x 10 maps per class
    python3 bench/explain_gpu.py export FACES_RUN/best.pt OUT/faces                    # fp16, 16 MB parts

and back on the development machine:

    python bench/explain_gpu.py join OUT/faces runs/faces-gpu.pt     # a normal fp32 checkpoint again
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

CHUNK = 16_000_000  # bytes per part, under the 16 MiB limit


def export(checkpoint: Path, prefix: Path) -> list[Path]:
    """The checkpoint's weights in fp16 (inference only), split into ``prefix.partNN`` files."""
    from facesearch.checkpoint import read_checkpoint

    payload = read_checkpoint(checkpoint)
    keep = {k: payload[k] for k in ("format", "model_config", "class_names", "preprocess", "epoch", "step", "metrics")
            if k in payload}
    keep["model"] = {k: v.half() if v.is_floating_point() else v for k, v in payload["model"].items()}
    prefix.parent.mkdir(parents=True, exist_ok=True)
    tmp = prefix.with_suffix(".fp16.pt")
    torch.save(keep, tmp)
    data = tmp.read_bytes()
    tmp.unlink()
    parts = []
    for i in range(0, len(data), CHUNK):
        part = prefix.with_name(f"{prefix.name}.part{i // CHUNK:02d}")
        part.write_bytes(data[i : i + CHUNK])
        parts.append(part)
    return parts


def join(prefix: Path, dst: Path) -> Path:
    """Reassemble ``prefix.partNN`` into a facesearch checkpoint with fp32 weights."""
    parts = sorted(prefix.parent.glob(prefix.name + ".part*"))
    tmp = dst.with_suffix(".fp16.pt")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_bytes(b"".join(p.read_bytes() for p in parts))
    payload = torch.load(tmp, map_location="cpu", weights_only=True)
    tmp.unlink()
    payload["model"] = {k: v.float() if v.is_floating_point() else v for k, v in payload["model"].items()}
    torch.save(payload, dst)
    return dst


@torch.no_grad()
def grid(checkpoint: Path, cifar: Path, out: Path, n: int = 10) -> Path:
    """Feature-map grids (strongest n channels per conv layer) of the first test image of every class."""
    from PIL import Image

    from facesearch.checkpoint import load_checkpoint, preprocess_batch
    from facesearch.visualize.feature_maps import feature_grid
    from facesearch.visualize.hooks import conv_sites

    device = "cuda" if torch.cuda.is_available() else "cpu"
    loaded = load_checkpoint(checkpoint, device=device)
    model, names = loaded.model, loaded.class_names
    sites = conv_sites(model, model.conv_layers())
    arrays = {"class_names": np.array(names)}
    for c, name in enumerate(names):
        path = sorted((cifar / "test" / name).glob("*"))[0]
        image = Image.open(path).convert("RGB")
        x = preprocess_batch([image], loaded.preprocess).to(device)
        probs = torch.softmax(model(x).float(), 1)[0].cpu().numpy()
        g = feature_grid(model.forward, sites, x, n=n)
        arrays[f"{name}/image"] = np.asarray(image)
        arrays[f"{name}/probs"] = probs
        arrays[f"{name}/path"] = np.array(str(path.relative_to(cifar)))
        for layer, chosen, maps in zip(g.names, g.channels, g.maps):
            arrays[f"{name}/{layer}/channels"] = chosen
            arrays[f"{name}/{layer}/maps"] = maps.astype(np.float16)
    np.savez_compressed(out, **arrays)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="verb", required=True)
    e = sub.add_parser("export")
    e.add_argument("checkpoint", type=Path)
    e.add_argument("prefix", type=Path)
    j = sub.add_parser("join")
    j.add_argument("prefix", type=Path)
    j.add_argument("dst", type=Path)
    g = sub.add_parser("grid")
    g.add_argument("checkpoint", type=Path)
    g.add_argument("cifar", type=Path)
    g.add_argument("out", type=Path)
    args = p.parse_args()
    if args.verb == "export":
        print(*export(args.checkpoint, args.prefix), sep="\n")
    elif args.verb == "join":
        print(join(args.prefix, args.dst))
    else:
        print(grid(args.checkpoint, args.cifar, args.out))


if __name__ == "__main__":
    main()
