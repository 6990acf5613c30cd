"""The base model's training pool: the CelebA folders of ../shared/data minus every person scored as never seen.

The demo and the benchmarks measure the base model on people it never saw, so those people stay out of its
training data: the sample's gallery people (``sample/photos``), the people the demo fine-tunes on
(``sample/train``: aligned CelebA people outside celeba-wild-299), its strangers (``sample/strangers``) and the
60 people of ``bench/transfer.py`` (the strangers are the first 30 of them).

Writes symlink folders ``OUT/celeba-wild-299``, ``OUT/celeba-aligned-10k`` and, with ``--tail``,
``OUT/celeba-test-tail`` (one sub-folder per person, the folder names that ``prepare`` labels their rows with)
and ``OUT/never_seen.txt``; then::

    facesearch prepare OUT/celeba-wild-299 OUT/celeba-aligned-10k OUT/celeba-test-tail PREPARED --align

``--tail`` is CelebA's test partition as ``../shared/data/celeba-test-tail/README.md`` lays it out (outside the
repository: those photos are never committed). 58 of its people are also in celeba-wild-299 with the same files;
``prepare`` keeps such a photo once (same identity and file name in two folders).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

FOLDERS = ("celeba-wild-299", "celeba-aligned-10k")
TAIL = "celeba-test-tail"


def never_seen(data: Path) -> dict[str, list[str]]:
    """The identities the demo and benchmarks score as never trained on, by who scores them."""
    from transfer import eval_people

    photos, train, strangers = (sorted(d.name for d in (REPO / "sample" / part).iterdir() if d.is_dir())
                                for part in ("photos", "train", "strangers"))
    transfer = eval_people(data / "celeba-wild-299", set(photos) | set(train), 12, 60)
    return {"sample/photos": photos, "sample/train (the demo's fine-tuning people)": train,
            "sample/strangers": strangers, "bench/transfer.py": transfer}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="Folder for the symlink pool.")
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--tail", type=Path, help="CelebA's test partition laid out by ../shared/tools/celeba_test_tail.py.")
    args = ap.parse_args()
    if args.tail is not None and not args.tail.is_dir():
        sys.exit(f"error: {args.tail}: not a folder (lay it out with ../shared/tools/celeba_test_tail.py)")

    groups = never_seen(args.data)
    excluded = set().union(*groups.values())
    args.out.mkdir(parents=True, exist_ok=True)
    photos = identities = 0
    sources = [(folder, args.data / folder) for folder in FOLDERS] + ([(TAIL, args.tail)] if args.tail else [])
    for folder, source in sources:
        for person in sorted(p for p in source.iterdir() if p.is_dir()):
            if person.name in excluded:
                continue
            target = args.out / folder / person.name
            target.mkdir(parents=True, exist_ok=True)
            for src in sorted(person.iterdir()):
                if not (target / src.name).exists():
                    (target / src.name).symlink_to(src.resolve())
                photos += 1
            identities += 1
    with open(args.out / "never_seen.txt", "w") as f:
        for name, people in groups.items():
            f.write(f"# {name}: {len(people)}\n" + "".join(f"{p}\n" for p in people))
    print(f"{args.out}: {photos} photos in {identities} folders; {len(excluded)} never-seen people kept out "
          + ", ".join(f"({name}: {len(p)})" for name, p in groups.items()))


if __name__ == "__main__":
    main()
