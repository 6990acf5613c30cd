"""Rebuild the bundled sample (sample/) from ../shared/data. Run once by a developer; the output is committed.

Two disjoint sets of CelebA people, as a deployment has them (train on one population, enroll another):

- ``photos/``: the gallery people: the first N identities (by id) that have 30 photos in celeba-wild-299, the
  first K photos of each (sorted by file name), long side at most 256 px (JPEG q85). The demo enrolls some
  of them and keeps the others as strangers; the tests use them as real photos.
- ``train/``: the people the demo fine-tunes the base model on: the first T identities (by id) of
  celeba-aligned-10k with at least P photos that are not in celeba-wild-299, their first P photos, copied
  byte for byte (89x109 aligned crops, ~2.5 KB each). The shipped base model never saw them (it is
  trained on the rest of both folders: ``tools/base_pool.py``), so fine-tuning on them is fine-tuning on new
  people, as a user's is.

- ``strangers/``: people the demo never enrolls nor trains on, as a deployment's strangers are: the first S
  identities (by id) of celeba-wild-299 with at least 12 photos that are not gallery people (the first S of
  ``bench/transfer.py``'s people), their first K2 photos, like ``photos/`` (uncropped, long side 256 px): the
  strangers of the demo's calibration and of its detection figures, from the same kind of photos as the
  gallery's (aligned crops as strangers would be told apart by their look, not by who they are).

Also three ORL people (greyscale PGM, copied byte for byte).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from transfer import eval_people  # noqa: E402 - bench/ is not a package


def identity_counts(folder: Path) -> dict[str, int]:
    """{identity: photos} from a shared-data folder's identity_counts.tsv."""
    rows = (line.split("\t") for line in (folder / "identity_counts.tsv").read_text().splitlines())
    return {ident: int(n) for ident, n in rows if ident.isdigit()}


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
    p.add_argument("--strangers", type=int, default=30, help="Stranger people (strangers/).")
    p.add_argument("--stranger-photos", type=int, default=6)
    p.add_argument("--train-people", type=int, default=150, help="Fine-tuning people (train/).")
    p.add_argument("--train-photos", type=int, default=4)
    args = p.parse_args()

    celeba, aligned = args.data / "celeba-wild-299", args.data / "celeba-aligned-10k"
    counts, aligned_counts = identity_counts(celeba), identity_counts(aligned)
    gallery = sorted(i for i, n in counts.items() if n >= 30)[: args.people]
    train = sorted(i for i, n in aligned_counts.items() if n >= args.train_photos and i not in counts)
    strangers = eval_people(celeba, set(gallery), 12, args.strangers)  # the first of bench/transfer.py's people
    write_people(celeba, gallery, args.out / "photos", args.photos, args.long_side, 85)
    write_people(celeba, strangers, args.out / "strangers", args.stranger_photos, args.long_side, 85)
    shutil.rmtree(args.out / "train", ignore_errors=True)
    for ident in train[: args.train_people]:
        (args.out / "train" / ident).mkdir(parents=True)
        for src in sorted((aligned / ident).glob("*.jpg"))[: args.train_photos]:
            shutil.copy(src, args.out / "train" / ident / src.name)
    for person in ("s1", "s2", "s3"):
        shutil.copytree(args.data / "orl-faces" / person, args.out / "orl" / person, dirs_exist_ok=True)


if __name__ == "__main__":
    main()
