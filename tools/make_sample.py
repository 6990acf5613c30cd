"""Rebuild the bundled sample (sample/) from ../shared/data. Run once by a developer; the output is committed.

Takes the first N identities (by id) that have 30 photos in celeba-wild-299, the first K photos of each
(sorted by file name), re-encoded with the long side at most 256 px (JPEG q85) to keep the repo small, and
three ORL people (greyscale PGM, copied byte for byte).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from PIL import Image


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "sample")
    p.add_argument("--people", type=int, default=20)
    p.add_argument("--photos", type=int, default=16)
    p.add_argument("--long-side", type=int, default=256)
    args = p.parse_args()

    celeba = args.data / "celeba-wild-299"
    counts = [line.split("\t") for line in (celeba / "identity_counts.tsv").read_text().splitlines()]
    full = sorted(ident for ident, n in counts if ident.isdigit() and int(n) >= 30)[: args.people]
    for ident in full:
        dst = args.out / "photos" / ident
        dst.mkdir(parents=True, exist_ok=True)
        for src in sorted((celeba / ident).glob("*.jpg"))[: args.photos]:
            im = Image.open(src).convert("RGB")
            im.thumbnail((args.long_side, args.long_side), Image.Resampling.LANCZOS)
            im.save(dst / src.name, quality=85)
    for person in ("s1", "s2", "s3"):
        shutil.copytree(args.data / "orl-faces" / person, args.out / "orl" / person, dirs_exist_ok=True)


if __name__ == "__main__":
    main()
