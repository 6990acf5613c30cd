"""Rebuild the bundled sample (sample/) from ../shared/data. Run once by a developer; the output is committed.

Two disjoint sets of CelebA people, as a deployment has them (train on one population, enroll another):

- ``photos/``: the gallery people: the first N identities (by id) that have 30 photos in celeba-wild-299, the
  first K photos of each (sorted by file name), long side at most 256 px (JPEG q85). The demo enrolls some
  of them and keeps the others as strangers; the tests use them as real photos.
- ``train/``: the training people: the next T identities (by id) with at least 16 photos, none of them a
  gallery person, the first P photos of each, long side at most 96 px (JPEG q80): small, since the demo's
  model reads 32 px faces, and many people, since an embedding generalises with the number of identities
  it was trained on, not with resolution.

Also three ORL people (greyscale PGM, copied byte for byte).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from PIL import Image


def write_people(celeba: Path, people: list[str], out: Path, photos: int, long_side: int, quality: int) -> None:
    for ident in people:
        dst = out / ident
        dst.mkdir(parents=True, exist_ok=True)
        for src in sorted((celeba / ident).glob("*.jpg"))[:photos]:
            im = Image.open(src).convert("RGB")
            im.thumbnail((long_side, long_side), Image.Resampling.LANCZOS)
            im.save(dst / src.name, quality=quality)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "sample")
    p.add_argument("--people", type=int, default=20, help="Gallery people (photos/).")
    p.add_argument("--photos", type=int, default=16)
    p.add_argument("--long-side", type=int, default=256)
    p.add_argument("--train-people", type=int, default=150, help="Training people (train/).")
    p.add_argument("--train-photos", type=int, default=10)
    p.add_argument("--train-long-side", type=int, default=96)
    args = p.parse_args()

    celeba = args.data / "celeba-wild-299"
    counts = {ident: int(n) for ident, n in
              (line.split("\t") for line in (celeba / "identity_counts.tsv").read_text().splitlines())
              if ident.isdigit()}
    gallery = sorted(i for i, n in counts.items() if n >= 30)[: args.people]
    train = sorted(i for i, n in counts.items() if n >= 16 and i not in gallery)[: args.train_people]
    write_people(celeba, gallery, args.out / "photos", args.photos, args.long_side, 85)
    write_people(celeba, train, args.out / "train", args.train_photos, args.train_long_side, 80)
    for person in ("s1", "s2", "s3"):
        shutil.copytree(args.data / "orl-faces" / person, args.out / "orl" / person, dirs_exist_ok=True)


if __name__ == "__main__":
    main()
