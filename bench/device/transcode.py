"""Copy a `prepare` output with its crops re-encoded at a lower JPEG quality, to fit the GPU transfer.

``prepare`` writes crops at quality 95 (~6.6 kB at 112 px); at 85 they are about half the size, which lets
the CelebA crops and the LFW crops travel together under the 64 MB limit. Used only for the GPU benchmark.

    python bench/device/transcode.py /tmp/celeba /tmp/celeba-q85 --quality 85
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from PIL import Image


def transcode(src: Path, dst: Path, quality: int) -> int:
    n = 0
    for f in sorted(src.rglob("*")):
        if not f.is_file() or f.suffix == ".tmp":
            continue
        out = dst / f.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        if f.suffix.lower() == ".jpg":
            with Image.open(f) as im:
                im.convert("RGB").save(out, quality=quality)
            n += 1
        else:
            shutil.copy2(f, out)
    settings = dst / "dataset.json"
    if settings.is_file():
        s = json.loads(settings.read_text())
        s["jpeg_quality"] = quality
        settings.write_text(json.dumps(s, indent=2, sort_keys=True))
    return n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p.add_argument("--quality", type=int, default=85)
    args = p.parse_args()
    print(json.dumps({"crops": transcode(args.src, args.dst, args.quality)}))


if __name__ == "__main__":
    main()
