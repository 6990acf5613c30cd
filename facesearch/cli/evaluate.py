"""``facesearch evaluate pairs|open-set|closed-set`` and ``facesearch calibrate``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from facesearch.cli._app import (
    DEFAULT_GALLERY, Checkpoint, DbUrl, Device, GalleryDir, JsonFlag, Progress, app, evaluate_app, fail, printable,
)

DEFAULT_RESULTS = Path("results/evaluations.jsonl")

OutDir = Annotated[Optional[Path], typer.Option("--out", help="Folder for the PNG plots.")]
Results = Annotated[Path, typer.Option("--results", help="JSONL file each evaluation is appended to.")]
Baseline = Annotated[bool, typer.Option("--baseline/--no-baseline", help="Also score a random-weights model.")]
Boot = Annotated[int, typer.Option("--bootstrap", min=0, help="Bootstrap resamples for the 95 % intervals.")]
Seed = Annotated[int, typer.Option(help="Seed of the enrolment choice, the baseline's weights and the bootstrap.")]
PAIRS_HELP = (
    "PAIRS_FILE [PAIRS_FILE2] IMAGES_DIR: one 10-fold file, or a train and a test file (LFW View 1); "
    "then the images folder or a prepare output made from it."
)


def _fmt(value, pct: bool = True) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{100 * value:.2f} %" if pct else f"{value:.4f}"
    return str(value)


def _ci(interval) -> str:
    return "" if not interval else f" (95 % CI {100 * interval[0]:.2f}-{100 * interval[1]:.2f})"


def _finish(summary: dict, results: Path, as_json: bool, lines: list[str]) -> None:
    # here, not at the top: `facesearch --help` stays fast
    from facesearch.evaluation.common import append_result

    record = append_result(results, summary)
    if as_json:
        typer.echo(json.dumps(record, indent=2))
    else:
        typer.echo("\n".join(lines + [f"appended to {printable(results)}"]))


def _pairs_lines(s: dict) -> list[str]:
    lines = [f"{s['protocol']} pairs, {s['n_images']} photos ({s['n_center_crop_fallback']} without a detected face: "
             f"centre crop; {s['n_missing_images']} missing)"]
    for name in ("model", "random_baseline"):
        if name in s:
            m = s[name]
            std = f" ± {100 * m['accuracy_std']:.2f}" if "accuracy_std" in m else ""
            tar = ", ".join(f"TAR@FAR={k}: {_fmt(v)}" for k, v in m["tar_at_far"].items())
            lines.append(f"{name}: accuracy {_fmt(m['accuracy'])}{std}{_ci(m['accuracy_ci95'])}, threshold "
                         f"{m['threshold']:.4f}, AUC {m['auc']:.4f}, {tar}  [{m['n_pairs']} pairs]")
    return lines


@evaluate_app.command("pairs")
def pairs(
    paths: Annotated[list[Path], typer.Argument(help=PAIRS_HELP)],
    raw_dir: Annotated[
        Optional[Path], typer.Option(help="For a prepare output: the raw photos, to centre-crop those without a crop.")
    ] = None,
    out: OutDir = None,
    results: Results = DEFAULT_RESULTS,
    checkpoint: Checkpoint = None,
    device: Device = "auto",
    baseline: Baseline = True,
    bootstrap: Boot = 1000,
    seed: Seed = 0,
    as_json: JsonFlag = False,
) -> None:
    """LFW pairs protocol: accuracy (threshold chosen on train folds), AUC, TAR at FAR, with 95 % CIs."""
    # here, not at the top: `facesearch --help` stays fast
    from facesearch.evaluation.verification import evaluate_pairs, parse_pairs

    if len(paths) not in (2, 3):
        fail("give PAIRS_FILE [PAIRS_FILE2] IMAGES_DIR")
    *pair_files, images = paths
    for p in paths:
        if not p.exists():
            fail(f"{p}: no such file or folder")
    n = len({x for f in pair_files for pair in parse_pairs(f).pairs for x in pair.paths})
    with Progress("embedding", n * (2 if baseline else 1)) as bar:
        report = evaluate_pairs(checkpoint, pair_files, images, device=device, raw_dir=raw_dir, baseline=baseline,
                                n_boot=bootstrap, seed=seed, progress=bar.update)
    lines = _pairs_lines(report.summary)
    if out is not None:
        # here, not at the top: `facesearch --help` stays fast
        from facesearch.evaluation.plots import save_pairs_plots

        lines += [f"plot: {p}" for p in save_pairs_plots(report, out)]
    _finish(report.summary, results, as_json, lines)


def _open_set_lines(s: dict) -> list[str]:
    lines = [f"{s['n_enrolled_identities']} identities enrolled ({s['n_templates']} photos), "
             f"{s['n_distractor_identities']} never-enrolled identities as distractors"]
    for name in ("model", "random_baseline"):
        if name in s:
            m = s[name]
            ci = m["dir_at_fpir_ci95"]
            dirs = ", ".join(f"DIR@FPIR={k}: {_fmt(v)}{_ci(ci[k])}" for k, v in m["dir_at_fpir"].items())
            lines.append(f"{name}: rank-1 {_fmt(m['rank1'])}{_ci(m['rank1_ci95'])}, rank-5 {_fmt(m['rank5'])}, {dirs}, "
                         f"detection EER {_fmt(m['detection_eer'])}{_ci(m['detection_eer_ci95'])}  "
                         f"[{m['n_mated_probes']} mated, {m['n_nonmated_probes']} non-mated probes]")
    return lines


@evaluate_app.command("open-set")
def open_set(
    data_dir: Annotated[Path, typer.Argument(help="<identity>/*.jpg photos, or a prepare output.")],
    enroll: Annotated[int, typer.Option(
        min=1, help="Photos enrolled per identity; identities with no more are distractors.")] = 1,
    split: Annotated[
        Optional[list[str]],
        typer.Option(help="With a prepare output: only its photos of this split (repeatable), e.g. holdout."),
    ] = None,
    distractors: Annotated[
        Optional[Path],
        typer.Option(help="Photos (or a prepare output) of identities never enrolled: all of them probe as strangers."),
    ] = None,
    distractor_split: Annotated[
        Optional[list[str]],
        typer.Option(help="With a prepare output as --distractors: only its photos of this split (repeatable)."),
    ] = None,
    out: OutDir = None,
    results: Results = DEFAULT_RESULTS,
    checkpoint: Checkpoint = None,
    device: Device = "auto",
    baseline: Baseline = True,
    bootstrap: Boot = 1000,
    seed: Seed = 0,
    as_json: JsonFlag = False,
) -> None:
    """Open-set identification: rank-1, rank-5 and DIR at FPIR 1e-2 / 1e-1 over enrolled identities and strangers."""
    # here, not at the top: `facesearch --help` stays fast
    from facesearch.evaluation.common import list_photos
    from facesearch.evaluation.identification import evaluate_open_set

    if not data_dir.is_dir():
        fail(f"{data_dir}: no such folder")
    if distractors is not None and not distractors.is_dir():
        fail(f"{distractors}: no such folder of distractor photos")
    n = sum(len(v) for v in list_photos(data_dir, split).values())
    if distractors is not None:
        n += sum(len(v) for v in list_photos(distractors, distractor_split).values())
    with Progress("embedding", n * (2 if baseline else 1)) as bar:
        report = evaluate_open_set(checkpoint, data_dir, enroll_per_identity=enroll, device=device, baseline=baseline,
                                   n_boot=bootstrap, seed=seed, progress=bar.update, splits=split,
                                   distractors=distractors, distractor_splits=distractor_split)
    lines = _open_set_lines(report.summary)
    if out is not None:
        # here, not at the top: `facesearch --help` stays fast
        from facesearch.evaluation.plots import save_open_set_plots

        lines += [f"plot: {p}" for p in save_open_set_plots(report, out)]
    _finish(report.summary, results, as_json, lines)


@evaluate_app.command("closed-set")
def closed_set(
    run_dir: Annotated[Path, typer.Argument(help="Training run folder (or checkpoint file).")],
    data_dir: Annotated[Optional[Path], typer.Option(
        "--data", help="Dataset; default: the one the run was trained on.")] = None,
    split: Annotated[str, typer.Option(help="Manifest split to score (faces).")] = "test",
    results: Results = DEFAULT_RESULTS,
    device: Device = "auto",
    baseline: Baseline = True,
    as_json: JsonFlag = False,
) -> None:
    """Classifier accuracy on the held-out test split, and the most-confused pairs."""
    # here, not at the top: `facesearch --help` stays fast
    from facesearch.evaluation.closed_set import evaluate_closed_set

    if not run_dir.exists():
        fail(f"{run_dir}: no such run folder or checkpoint")
    summary = evaluate_closed_set(run_dir, data_dir=data_dir, split=split, device=device, baseline=baseline)
    lines = [f"{summary['n_images']} {split} images of {summary['n_classes']} classes"]
    for name in ("model", "random_baseline"):
        if name in summary:
            lines.append(f"{name}: accuracy {_fmt(summary[name]['accuracy'])}")
    lines += [f"  {c['true']} -> {c['predicted']}: {c['count']}" for c in summary["model"]["most_confused"]]
    _finish(summary, results, as_json, lines)


@app.command("calibrate")
def calibrate(
    data_dir: Annotated[
        Path, typer.Argument(help="<identity>/*.jpg photos of enrolled identities and of identities not enrolled.")
    ],
    gallery: GalleryDir = DEFAULT_GALLERY,
    fpir: Annotated[
        Optional[float],
        typer.Option(help="Target share of strangers given a name (false-positive identification rate); default 0.01."),
    ] = None,
    balanced: Annotated[
        bool,
        typer.Option("--balanced", help="Instead of --fpir: the threshold naming as many strangers as it refuses "
                                         "enrolled identities' photos (the equal-error point)."),
    ] = False,
    db: DbUrl = None,
    checkpoint: Checkpoint = None,
    device: Device = "auto",
    as_json: JsonFlag = False,
) -> None:
    """Pick the gallery's unknown-threshold from data (at a target FPIR, or balanced), and store it; `who` uses it."""
    # here, not at the top: `facesearch --help` stays fast
    from facesearch.cli.gallery import _open
    from facesearch.embed import Embedder, gallery_model
    from facesearch.evaluation.calibrate import DEFAULT_FPIR, calibrate_gallery

    if not data_dir.is_dir():
        fail(f"{data_dir}: no such folder")
    if balanced and fpir is not None:
        fail("give --fpir or --balanced, not both")
    if fpir is not None and not 0 < fpir < 1:  # also refuses nan
        fail(f"--fpir {fpir}: a share of strangers strictly between 0 and 1, e.g. 0.01")
    target = None if balanced else (DEFAULT_FPIR if fpir is None else fpir)
    with _open(gallery, db) as g:
        embedder = Embedder.for_queries(gallery_model(checkpoint, g), device)
        cal = calibrate_gallery(g, embedder, data_dir, target_fpir=target)
    if as_json:
        typer.echo(json.dumps(cal.to_dict(), indent=2))
        return
    dir_text = "n/a" if cal.dir is None else _fmt(cal.dir)
    accepted = "n/a" if cal.accepted is None else _fmt(cal.accepted)
    target_text = "balanced" if cal.target_fpir is None else f"target {_fmt(cal.target_fpir)}"
    typer.echo(
        f"threshold {cal.threshold:.4f} stored in {printable(gallery)}: names {_fmt(cal.fpir)} of {cal.n_nonmated} strangers "
        f"({target_text}); of {cal.n_mated} enrolled identities' photos, names {accepted} "
        f"({dir_text} correctly)"
    )
