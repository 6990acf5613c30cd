"""End-to-end demo on the bundled sample: prepare → fine-tune → compare → enroll → calibrate → who → explain.

Run through ``scripts/demo.sh`` (which makes the environment first). Each stage is the real
``facesearch`` command, printed before it runs, so the demo doubles as a tour of the CLI. It starts where a
new user starts: with the base model that ships inside the package (trained on thousands of CelebA people,
none of the sample's: see ``facesearch/models/base/MODEL_CARD.md``). The sample holds disjoint populations,
as a deployment does: ``sample/train`` (150 people the base model never saw, four aligned photos each) is what
the base model is fine-tuned on; ``sample/photos`` (20 more never-seen people) is the gallery side;
``sample/strangers`` (30 more, photos like the gallery's) are the strangers of calibration and of the
detection figures. The base model, the fine-tuned one and the same network at random weights are compared on
the gallery people; the best of the three enrolls 15 of them from two photos each, calibrates the
unknown-threshold on their other photos and the strangers, and answers ``who`` for the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENROLL_PHOTOS = 2  # photos per enrolled person
N_STRANGERS = 5  # gallery-side people never enrolled
TRAIN_MIN_PHOTOS = 4  # sample/train has 4 photos a person: enough to validate on some of them
# Fine-tuning runs for a number of epochs, not seconds, so that its result does not depend on how busy the
# machine is (a time budget trained 3x fewer epochs on a loaded laptop); measured in docs/BENCHMARKS.md.
FINE_TUNE_EPOCHS = 30
FPIR = 0.1  # the demo also prints the share named correctly at the threshold naming this share of strangers


def run(args: list[str], log: Path) -> dict:
    """Run one facesearch command with --json; echo it; return its parsed JSON output."""
    print(f"\n$ facesearch {' '.join(args)}", flush=True)
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "facesearch", *args, "--json"], capture_output=True, text=True)
    with open(log, "a") as f:
        f.write(f"$ facesearch {' '.join(args)}\n{proc.stdout}\n{proc.stderr}\n")
    if proc.returncode != 0:
        sys.exit(f"demo: `facesearch {args[0]}` failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    print(f"  ({time.perf_counter() - t:.0f} s)", flush=True)
    return json.loads(proc.stdout)


def link_photos(dst: Path, photos: dict[str, list[Path]]) -> Path:
    """Make ``dst/<identity>/`` folders of symlinks (copies where links are not allowed)."""
    for identity, paths in photos.items():
        (dst / identity).mkdir(parents=True, exist_ok=True)
        for p in paths:
            target = dst / identity / p.name
            if not target.exists():
                try:
                    target.symlink_to(p.resolve())
                except OSError:
                    shutil.copy2(p, target)
    return dst


def ok_photos(prepared: Path, raw: Path, splits: tuple[str, ...] | None = None) -> dict[str, list[Path]]:
    """The photos ``prepare`` kept (status ok), by identity, sorted by file name; optionally of some splits."""
    from facesearch.data.manifest import ok_rows, read_manifest

    by_id: dict[str, list[Path]] = {}
    for r in sorted(ok_rows(read_manifest(prepared)), key=lambda r: r.path):
        if splits is None or r.split in splits:
            by_id.setdefault(r.identity, []).append(raw / r.path)
    return by_id


def plan(train_prepared: Path, train_raw: Path, gallery_prepared: Path, gallery_raw: Path,
         strangers_prepared: Path, strangers_raw: Path) -> dict:
    """Who is enrolled (from which photos), who calibrates, who probes."""
    people = ok_photos(gallery_prepared, gallery_raw)
    names = sorted(people)
    enrolled, strangers = names[:-N_STRANGERS], names[-N_STRANGERS:]
    rest = {i: people[i][ENROLL_PHOTOS:] for i in enrolled}
    # mated calibration probes: every other remaining photo; the others are scored by `who`
    calib_mated = {i: p[0::2] for i, p in rest.items()}
    probe_mated = {i: p[1::2] for i, p in rest.items()}
    # non-mated calibration probes: people never enrolled and never seen by the model, as a deployment's
    # strangers are (the training people's own photos would be a biased sample of strangers)
    unseen = ok_photos(strangers_prepared, strangers_raw)
    return {
        "trained": sorted(ok_photos(train_prepared, train_raw, ("train",))),
        "gallery_people": names, "enrolled": enrolled, "strangers": strangers,
        "enroll": {i: people[i][:ENROLL_PHOTOS] for i in enrolled},
        "calibrate": {**calib_mated, **unseen}, "calibration_strangers": sorted(unseen),
        "probe_mated": probe_mated,
        "probe_strangers": {i: people[i] for i in strangers},
    }


def who_rates(out: Path, p: dict, orl: Path) -> dict:
    """Score `who` on the probes in-process (one model load): accepted-correct and rejected shares."""
    from facesearch.embed import Embedder, gallery_model
    from facesearch.gallery import Gallery
    from facesearch.search import UNKNOWN, who

    strangers = [q for qs in p["probe_strangers"].values() for q in qs] + sorted(orl.glob("*/*.pgm"))
    with Gallery(out / "gallery", create=False) as gallery:
        embedder = Embedder.for_queries(gallery_model(None, gallery), device="cpu")
        mated = [(name, who(gallery, embedder, q, top_k=1)) for name, qs in p["probe_mated"].items() for q in qs]
        others = [who(gallery, embedder, q, top_k=1) for q in strangers]
    answers = [(name, r.faces[0].identity) for name, r in mated if r.faces]
    stranger_answers = [r.faces[0].identity for r in others if r.faces]
    return {
        "threshold": mated[0][1].threshold if mated else None,
        "enrolled_photos": len(mated), "enrolled_with_face": len(answers),
        "accepted": sum(a != UNKNOWN for _, a in answers) / max(1, len(answers)),
        "accepted_correct": sum(a == n for n, a in answers) / max(1, len(answers)),
        "accepted_wrong": sum(a not in (n, UNKNOWN) for n, a in answers) / max(1, len(answers)),
        "stranger_photos": len(strangers), "stranger_with_face": len(stranger_answers),
        "strangers_rejected": sum(a == UNKNOWN for a in stranger_answers) / max(1, len(stranger_answers)),
    }


def base_crop_options() -> list[str]:
    """``prepare`` options that cut faces as the shipped base model's training crops were cut (its checkpoint
    records them): the fine-tuning data, the gallery and the strangers must be cut the same way."""
    from facesearch.checkpoint import read_checkpoint

    crop = read_checkpoint("base").get("crop") or {}
    options = ["--align"] if crop.get("align") else []
    if "margin" in crop:
        options += ["--margin", str(crop["margin"])]
    return options


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "demo-out", help="Where every output goes.")
    ap.add_argument("--train-photos", type=Path, default=REPO / "sample" / "train", help="People to train on.")
    ap.add_argument("--photos", type=Path, default=REPO / "sample" / "photos", help="Gallery-side people.")
    ap.add_argument("--strangers", type=Path, default=REPO / "sample" / "strangers", help="Never-enrolled people.")
    ap.add_argument("--orl", type=Path, default=REPO / "sample" / "orl", help="Extra never-enrolled people.")
    ap.add_argument("--epochs", type=int, default=FINE_TUNE_EPOCHS, help="Fine-tuning epochs.")
    args = ap.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    log = out / "commands.log"
    t0 = time.perf_counter()

    crop = base_crop_options()
    prep = run(["prepare", str(args.train_photos), str(out / "prepared-train"), "--min-photos", str(TRAIN_MIN_PHOTOS),
                *crop], log)
    print(f"  {prep['counts']} ; splits {prep.get('splits')}")
    for name, folder in (("gallery", args.photos), ("strangers", args.strangers)):
        held = run(["prepare", str(folder), str(out / f"prepared-{name}"),
                    "--holdout-identities", str(len([d for d in folder.iterdir() if d.is_dir()])), *crop], log)
        print(f"  {held['counts']} (all held out of training)")
    p = plan(out / "prepared-train", args.train_photos, out / "prepared-gallery", args.photos,
             out / "prepared-strangers", args.strangers)
    # Fine-tune the shipped base model on the sample's training people: its layers start from the base model,
    # only the classifier head is new (sized for these people). A fixed number of epochs: load-independent.
    shutil.rmtree(out / "run", ignore_errors=True)  # a rerun trains afresh (train refuses a folder holding a run)
    train = run(["train", str(out / "prepared-train"), "--out", str(out / "run"), "--init", "base",
                 "--optimizer", "adamw", "--lr", "2e-4", "--batch-size", "64", "--epochs", str(args.epochs),
                 "--device", "cpu"], log)
    print(f"  {train['epochs']} epochs in {train['seconds']:.0f} s ({train['images_per_s']:.0f} images/s); "
          f"closed-set validation accuracy {train['best_val_acc']:.1%} over {len(p['trained'])} people")

    # The same never-seen people for every model: base, fine-tuned, and (inside the first call) random weights.
    evaluations = {}
    for name, model in (("base", []), ("fine-tuned", ["--checkpoint", str(out / "run")])):
        evaluations[name] = run(
            ["evaluate", "open-set", str(out / "prepared-gallery"), "--split", "holdout",
             "--enroll", str(ENROLL_PHOTOS), *model, "--distractors", str(out / "prepared-strangers"),
             "--out", str(out / "evaluation" / name),
             "--results", str(out / "evaluation" / "results.jsonl"), "--device", "cpu", "--bootstrap", "200",
             *([] if name == "base" else ["--no-baseline"])], log)
    best = max(evaluations, key=lambda n: (evaluations[n]["model"]["rank1"], -evaluations[n]["model"]["detection_eer"]))
    print(f"  best on the never-seen people: {best}; it enrolls, calibrates and answers below")
    # The base model is the default of every command: no --checkpoint at all; the gallery records its model.
    ck = ([] if best == "base" else ["--checkpoint", str(out / "run")]) + ["--gallery", str(out / "gallery"),
                                                                          "--device", "cpu"]
    # A fresh gallery each run: an earlier demo's may hold another model's embeddings (or another sample).
    shutil.rmtree(out / "gallery", ignore_errors=True)
    # --largest: these are one-person photos, so the largest face is the person (prepare keeps the same one);
    # without it a photo with a bystander is refused, as it should be for unlabelled group shots
    enr = run(["enroll", str(link_photos(out / "inputs" / "enroll", p["enroll"])), *ck, "--largest"], log)
    print(f"  {enr['counts']} photos of {len(p['enrolled'])} people never seen in training")
    # --balanced: the threshold that names as many strangers as it refuses enrolled people's photos
    gallery_only = ["--gallery", str(out / "gallery"), "--device", "cpu"]  # the gallery knows its model now
    cal = run(["calibrate", str(link_photos(out / "inputs" / "calibrate", p["calibrate"])), *gallery_only,
               "--balanced"], log)
    print(f"  balanced threshold {cal['threshold']:.4f}: names {cal['fpir']:.1%} of {cal['n_nonmated']} photos of "
          f"{len(p['calibration_strangers'])} strangers, and {cal['accepted']:.1%} of {cal['n_mated']} photos of "
          f"enrolled people ({cal['dir']:.1%} correctly)")

    probe = next(iter(p["probe_mated"].values()))[0]
    who = run(["who", str(probe), *gallery_only, "--annotate", str(out / "who-annotated.jpg")], log)
    face = who["faces"][0] if who["faces"] else {}
    print(f"  {probe.name}: {face.get('identity')} (similarity {face.get('similarity')}) → {out / 'who-annotated.jpg'}")
    rates = who_rates(out, p, args.orl)

    exp = run(["explain", str(probe), *gallery_only, "--out", str(out / "explain")], log)
    summary(out, p, rates, evaluations, best, exp, time.perf_counter() - t0)


def pct(figures: dict, name: str, key: str | None = None) -> str:
    """'34.8 % (29.0-39.8)': a figure of ``evaluate``'s JSON with its 95 % CI; 'n/a' where it is missing."""
    value, ci = figures.get(name), figures.get(f"{name}_ci95")
    if key is not None:
        value, ci = (value or {}).get(key), (ci or {}).get(key)
    if not isinstance(value, float):
        return "n/a" if value is None else str(value)
    return f"{value:.1%}" + (f" ({ci[0]:.1%}-{ci[1]:.1%})" if ci else "")


def summary(out: Path, p: dict, rates: dict, evaluations: dict, best: str, exp: dict, seconds: float) -> None:
    rows = [(name, ev["model"]) for name, ev in evaluations.items()]
    rows.append(("random weights", evaluations["base"].get("random_baseline", {})))
    first = evaluations["base"]["model"]
    print("\n" + "=" * 72)
    print(f"facesearch demo finished in {seconds / 60:.1f} min; outputs in {out}")
    print(f"  open-set identification over {len(p['gallery_people'])} people never seen in training "
          f"({ENROLL_PHOTOS} photos enrolled each, {first['n_mated_probes']} probes; "
          f"{first['n_nonmated_probes']} photos of {len(p['calibration_strangers'])} other never-seen people as "
          "strangers; 95 % CI):")
    print(f"    {'model':<16}{'rank-1':<24}{'detection equal-error rate':<28}DIR at FPIR {FPIR:g}")
    for name, m in rows:
        print(f"    {name:<16}{pct(m, 'rank1'):<24}{pct(m, 'detection_eer'):<28}{pct(m, 'dir_at_fpir', f'{FPIR:g}')}")
    print("    (detection equal-error rate: strangers named = enrolled photos refused; 50 % is chance)")
    print(f"  who with the {best} model, balanced threshold {rates['threshold']:.4f} (calibrated on other photos "
          "and other strangers):")
    print(f"    enrolled people's photos accepted: {rates['accepted']:.1%} of {rates['enrolled_with_face']} "
          f"(named correctly {rates['accepted_correct']:.1%}, wrongly {rates['accepted_wrong']:.1%})")
    print(f"    never-enrolled photos rejected as unknown: {rates['strangers_rejected']:.1%} "
          f"of {rates['stranger_with_face']}")
    print(f"  fine-tuning curves: {out / 'run' / 'curves.png'}")
    print(f"  annotated photo: {out / 'who-annotated.jpg'}")
    print(f"  explanation report: {exp.get('report', out / 'explain')}")
    (out / "summary.json").write_text(json.dumps({"rates": rates, "open_set": evaluations, "best": best,
                                                  "seconds": seconds}, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("MPLBACKEND", "Agg")
    main()
