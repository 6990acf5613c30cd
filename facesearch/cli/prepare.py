"""``facesearch prepare RAW_DIR OUT_DIR``: photos → face crops + manifest (see ``facesearch.data.prepare``)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated

import typer

from facesearch.cli._app import Device, JsonFlag, Progress, app, fail, printable

_STATUS_ORDER = (
    "ok", "duplicate", "conflict", "no_face", "too_small", "too_large", "truncated", "unreadable", "not_an_image",
    "no_identity", "not_followed",
)


@app.command()
def prepare(
    folders: Annotated[list[Path], typer.Argument(
        help="RAW_DIR... OUT_DIR: photo folders, one sub-folder per identity (nested folders allowed; several "
             "folders merge their identities by name), then where crops, manifest.csv and dataset.json go "
             "(reruns resume).", metavar="RAW_DIR... OUT_DIR")],
    size: Annotated[int, typer.Option(
        min=32, max=1024, help="Crop side in pixels (the model reads 32 at least).")] = 112,
    margin: Annotated[float, typer.Option(help="Context around the face box, as a fraction of its side.")] = 0.2,
    align: Annotated[bool, typer.Option(help="Align by the 5 landmarks (similarity transform).")] = False,
    select: Annotated[str, typer.Option(help='Face kept from group photos: "largest" or "center" (LFW-style).')] = "largest",
    device: Device = "auto",
    workers: Annotated[int, typer.Option(min=1, help="Detection processes on CPU, each single-threaded.")] = 2,
    seed: Annotated[int, typer.Option(help="Seed of the train/val/test and holdout assignment.")] = 0,
    val: Annotated[float, typer.Option(help="Fraction of each identity's photos for validation.")] = 0.1,
    test: Annotated[float, typer.Option(help="Fraction of each identity's photos for test.")] = 0.1,
    min_photos: Annotated[int, typer.Option(min=0, help="Identities with fewer ok photos stay train-only.")] = 5,
    min_train_photos: Annotated[int, typer.Option(
        min=0, help="Identities with fewer ok photos are held out as strangers (one photo cannot teach a "
                    "classifier).")] = 2,
    holdout_identities: Annotated[int, typer.Option(
        min=0, help="Whole identities kept out for open-set evaluation.")] = 0,
    unlabelled: Annotated[bool, typer.Option(
        "--unlabelled", help="Faces with no names: every photo under RAW_DIR (in folders or not) is cropped into "
                             "split 'unlabelled', for `train --teacher` to learn from.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Detect, crop and split every photo; one manifest row per file, with a status and a reason."""
    # here, not at the top: `facesearch --help` stays fast
    from facesearch.data.prepare import PrepareSettings
    from facesearch.data.prepare import prepare as run_prepare

    if select not in ("largest", "center"):
        fail(f"--select must be 'largest' or 'center', not {select!r}")
    if len(folders) < 2:
        fail("give at least one RAW_DIR and the OUT_DIR")
    *raw_dirs, out_dir = folders
    for raw_dir in raw_dirs:
        if not raw_dir.is_dir():
            fail(f"{raw_dir}: not a folder")
    if not (math.isfinite(margin) and margin >= 0):
        fail(f"--margin {margin}: a fraction of the face box's side, 0 or more")
    if not (0 <= val and 0 <= test and val + test < 1):
        fail(f"--val {val} and --test {test} must be fractions that leave some photos for training")
    settings = PrepareSettings(
        size=size, margin=margin, align=align, select=select, seed=seed, val=val, test=test,
        min_photos=min_photos, min_train_photos=min_train_photos, holdout_identities=holdout_identities,
        unlabelled=unlabelled,
    )
    with Progress("detecting faces", enabled=not as_json) as bar:
        report = run_prepare(raw_dirs, out_dir, settings, device=device, workers=workers,
                             progress=bar.update, on_total=bar.start)
    typer.echo(json.dumps(_summary(report, out_dir), indent=2) if as_json else _table(report, out_dir, val + test > 0))


def _summary(report, out_dir: Path) -> dict:
    total = len(report.rows)
    return {
        "out_dir": str(out_dir),
        "photos": total,
        "counts": {s: report.counts.get(s, 0) for s in _STATUS_ORDER if report.counts.get(s, 0)},
        "ok_rate": report.counts.get("ok", 0) / total if total else 0.0,
        "multi_face": report.multi_face,
        "splits": report.split_counts,
        "detected": report.detected,
        "recropped": report.recropped,
        "reused": report.reused,
        "train_only_identities": report.train_only,
        "holdout_identities": report.holdout,
        "stranger_identities": report.strangers,
        "seconds": round(report.seconds, 2),
    }


def _table(report, out_dir: Path, splitting: bool) -> str:
    s = _summary(report, out_dir)
    total = max(s["photos"], 1)
    lines = [f"{'status':<14}{'photos':>8}{'share':>9}"]
    lines += [f"{k:<14}{v:>8}{100 * v / total:>8.1f}%" for k, v in s["counts"].items()]
    lines.append(f"{'total':<14}{s['photos']:>8}")
    lines.append("")
    lines.append(f"ok photos with several faces: {s['multi_face']}")
    lines.append("splits: " + ", ".join(f"{k} {v}" for k, v in sorted(s["splits"].items())))
    if report.train_only and splitting:
        lines.append(f"train-only (fewer ok photos than --min-photos): {len(report.train_only)} identities: "
                     + ", ".join(map(printable, report.train_only[:10])) + (" ..." if len(report.train_only) > 10 else ""))
    if report.holdout:
        lines.append(f"held out: {', '.join(map(printable, report.holdout))}")
    if report.strangers:
        lines.append(f"held out as strangers (fewer ok photos than --min-train-photos): {len(report.strangers)} "
                     "identities")
    rate = f" ({report.detected / report.seconds:.1f} photos/s)" if report.detected and report.seconds else ""
    lines.append(f"this run: {report.detected} photos detected, {report.recropped} re-cropped, {report.reused} "
                 f"reused, {report.seconds:.1f} s{rate}")
    lines.append(f"manifest: {printable(out_dir / 'manifest.csv')}")
    return "\n".join(lines)
