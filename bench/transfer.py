"""Does a trained model recognise people it never saw? Open-set rank-1 on CelebA people outside the sample.

The demo scores its model on the sample's 20 gallery people; this asks the same question of more people, so
that training recipes can be compared without the noise of 20 people. It takes every celeba-wild-299
identity with at least ``--min-photos`` photos that is in neither ``sample/photos`` nor ``sample/train``,
the first ``--photos`` photos of each, prepares them (all held out), and runs ``facesearch evaluate
open-set --split holdout --enroll 2`` per run folder: rank-1 of the trained model next to the same
architecture with random weights.

    python bench/transfer.py RUN_DIR [RUN_DIR ...] [--people 60] [--distractors PREPARED] [--align]

With ``--distractors`` (a prepare output whose "holdout" rows are people no run trained on, e.g. the one-photo
people of the base model's pool) their photos probe as strangers too, and the detection equal-error rate
(telling enrolled people from strangers; 50 % is chance) is reported beside rank-1. ``base`` scores the
shipped base model.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def eval_people(celeba: Path, exclude: set[str], min_photos: int, n: int) -> list[str]:
    counts = (line.split("\t") for line in (celeba / "identity_counts.tsv").read_text().splitlines())
    return sorted(i for i, c in counts if i.isdigit() and int(c) >= min_photos and i not in exclude)[:n]


def facesearch(*args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "facesearch", *args, "--json"], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"facesearch {args[0]} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help='Run folders or checkpoints to score ("base": the shipped model).')
    ap.add_argument("--distractors", type=Path, help="A prepare output whose holdout people probe as strangers.")
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--work", type=Path, default=Path("/tmp/facesearch-transfer"))
    ap.add_argument("--people", type=int, default=60)
    ap.add_argument("--photos", type=int, default=10)
    ap.add_argument("--min-photos", type=int, default=12)
    ap.add_argument("--align", action="store_true", help="Prepare the photos aligned (for models trained so).")
    args = ap.parse_args()

    celeba = args.data / "celeba-wild-299"
    sample = {d.name for part in ("photos", "train") for d in (REPO / "sample" / part).iterdir() if d.is_dir()}
    people = eval_people(celeba, sample, args.min_photos, args.people)
    tag = f"{len(people)}x{args.photos}" + ("-aligned" if args.align else "")
    raw, prepared = args.work / f"photos-{tag}", args.work / f"prepared-{tag}"
    if not (prepared / "manifest.csv").is_file():
        for ident in people:
            (raw / ident).mkdir(parents=True, exist_ok=True)
            for src in sorted((celeba / ident).glob("*.jpg"))[: args.photos]:
                if not (raw / ident / src.name).exists():
                    (raw / ident / src.name).symlink_to(src.resolve())
        facesearch("prepare", str(raw), str(prepared), "--holdout-identities", str(len(people)),
                   *(["--align"] if args.align else []))
    print(f"{len(people)} people outside the sample ({people[0]}..{people[-1]}), {args.photos} photos each, "
          "2 enrolled per person")
    extra = ["--distractors", str(args.distractors), "--distractor-split", "holdout"] if args.distractors else []
    print("| run | probes | strangers | rank-1 trained (95 % CI) | rank-1 random weights | detection EER trained "
          "| detection EER random |")
    print("|---|---|---|---|---|---|---|")
    for run in args.runs:
        r = facesearch("evaluate", "open-set", str(prepared), "--split", "holdout", "--enroll", "2",
                       "--checkpoint", str(run), "--out", str(args.work / "evaluation"), "--device", "cpu",
                       "--bootstrap", "200", "--results", str(args.work / "evaluations.jsonl"), *extra)
        m, b = r["model"], r["random_baseline"]
        print(f"| {run} | {m['n_mated_probes']} | {m['n_nonmated_probes']} | {fmt(m, 'rank1')} | {fmt(b, 'rank1')} "
              f"| {fmt(m, 'detection_eer')} | {fmt(b, 'detection_eer')} |", flush=True)


def fmt(figures: dict, key: str) -> str:
    value, ci = figures.get(key), figures.get(f"{key}_ci95")
    if not isinstance(value, float):
        return "n/a"
    return f"{value:.1%}" + (f" ({ci[0]:.1%}–{ci[1]:.1%})" if ci else "")


if __name__ == "__main__":
    main()
