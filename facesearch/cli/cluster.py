"""``facesearch cluster PHOTOS... --out CLUSTERS`` and ``facesearch clusters name|merge|split|remove|show``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from facesearch.cli._app import (
    DEFAULT_GALLERY, Checkpoint, DbUrl, Device, GalleryDir, JsonFlag, Progress, app, clusters_app, fail, printable,
)

ClustersDir = Annotated[Path, typer.Argument(help="A clusters folder written by `facesearch cluster`.")]


def _summary_text(summary: dict, failures: dict | None = None) -> str:
    lines = [f"{summary['faces']} faces in {summary['photos']} photos: {summary['groups']} groups, "
             f"{summary['unclustered']} faces unclustered ({printable(summary['folder'])})"]
    for g in summary["group_list"]:
        label = f" = {printable(g['name'])}" if g["name"] else ""
        match = f"  (gallery: {printable(g['identity'])})" if g["identity"] else ""
        lines.append(f"  group {g['group']}{label}: {g['faces']} faces{match}  {printable(g['sheet'])}")
    for path, reason in (failures or {}).items():
        lines.append(printable(f"{path}: {reason}"))
    return "\n".join(lines)


@app.command("cluster")
def cluster(
    photos: Annotated[list[Path], typer.Argument(help="Photo folders (searched recursively) or photos.",
                                                 readable=False)],  # an unreadable photo is reported, not fatal
    out: Annotated[Path, typer.Option("--out", "-o", help="The clusters folder (an earlier run's is updated).")],
    gallery: Annotated[Optional[Path], typer.Option(
        "--gallery", "-g", envvar="FACESEARCH_GALLERY",
        help="Label faces that match an enrolled identity (and use the gallery's model).")] = None,
    algorithm: Annotated[Optional[str], typer.Option(
        help='"complete" (default: every two faces of a group are close), "average" or "dbscan".')] = None,
    eps: Annotated[Optional[float], typer.Option(
        help="Cosine distance (1 - similarity) under which faces group (default: the earlier run's, else the "
             "measured default).")] = None,
    min_size: Annotated[Optional[int], typer.Option(help="Faces a group needs (default 3).")] = None,
    db: DbUrl = None,
    checkpoint: Checkpoint = None,
    device: Device = "auto",
    as_json: JsonFlag = False,
) -> None:
    """Group the faces of unlabelled photos by identity: every face found, embedded as `who` does, grouped.

    Writes faces.csv (one row per face: photo, box, group, distance to the group's centre), a contact sheet per
    group (sheets/group-N.png) and clusters.json. Re-running over the folder keeps the groups' ids and names.
    Name a group with `facesearch clusters name CLUSTERS GROUP NAME -g GALLERY`.

    Exit status: 0 when every photo was read (photos without a face are listed), 2 when some could not be read,
    1 when no photo gave a face (nothing is written).
    """
    from facesearch.cli.gallery import _open, _photo_list
    from facesearch.cluster import cluster_folder
    from facesearch.embed import Embedder, gallery_model

    for path in photos:
        if not path.exists():
            fail(f"{path}: no such file or folder")
    files = _photo_list(photos)
    given = {k: v for k, v in dict(algorithm=algorithm, eps=eps, min_size=min_size).items() if v is not None}
    g = _open(gallery, db, reads_only=True) if gallery is not None else None
    try:
        embedder = Embedder.for_queries(gallery_model(checkpoint, g), device)
        with Progress("finding faces", len(files)) as bar:
            report = cluster_folder(files, out, embedder, given, gallery=g, progress=bar.update)
    finally:
        if g is not None:
            g.close()
    summary = {**report.clusters.summary(), "new_photos": report.new_photos, "reused_photos": report.reused_photos,
               "failures": report.failures}
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    elif report.clusters.rows:
        typer.echo(_summary_text(summary, report.failures))
    else:  # nothing clustered: the reasons, not a summary of a folder that was not written
        typer.echo("\n".join(printable(f"{path}: {reason}") for path, reason in report.failures.items()))
    _exit_status(report, len(files), out, as_json)


def _exit_status(report, n_photos: int, out: Path, as_json: bool) -> None:
    """Exit status 1 when no photo gave a face, 2 when some photos could not be read (as `who` does)."""
    unreadable = [p for p, reason in report.failures.items() if not reason.startswith("no_face")]
    if not report.clusters.rows:
        message, code = (f"no face found in any of the {n_photos} photos (reasons above); nothing written to "
                         f"{printable(out)}", 1)
    elif unreadable:
        message, code = f"{len(unreadable)} of {n_photos} photos could not be read (listed above)", 2
    else:
        return
    if not as_json:
        typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=code)


def _edit(folder: Path, change) -> dict:
    from facesearch.cluster import edit

    result, c = edit(folder, change)
    return {"result": result, **c.summary()}


@clusters_app.command("show")
def clusters_show(clusters: ClustersDir, as_json: JsonFlag = False) -> None:
    """The groups of a clusters folder: size, name, gallery match, contact sheet."""
    from facesearch.cluster import load

    summary = load(clusters).summary()
    typer.echo(json.dumps(summary, indent=2) if as_json else _summary_text(summary))


@clusters_app.command("name")
def clusters_name(
    clusters: ClustersDir,
    group: Annotated[int, typer.Argument(help="The group's number.")],
    name: Annotated[str, typer.Argument(help="Who the group's faces are (a new or an existing identity).")],
    gallery: GalleryDir = DEFAULT_GALLERY,
    db: DbUrl = None,
    as_json: JsonFlag = False,
) -> None:
    """Enroll the group's faces in the gallery as NAME (each face once: faces already enrolled are skipped).

    Exit status: 0 when every face is NAME's (enrolled now or before), 2 when some are already another identity's
    (each listed; the group is named), 1 when all are (nothing changes: the group is not named).
    """
    from facesearch.cli.gallery import _open
    from facesearch.cluster import name_group

    with _open(gallery, db, create=True) as g:
        out = _edit(clusters, lambda c: name_group(c, group, name, g))
    r = out["result"]
    elsewhere = sum(map(len, r["elsewhere"].values()))
    if as_json:
        typer.echo(json.dumps(out, indent=2, default=str))
    else:
        named = len(r["duplicates"]) - elsewhere
        typer.echo(f"group {group} = {name!r}: {r['enrolled']} faces enrolled in {printable(gallery)}"
                   + (f", {named} already enrolled" if named else "")
                   + "".join(f", {len(ids)} already enrolled as {holder!r} (faces {', '.join(map(str, ids))})"
                             for holder, ids in r["elsewhere"].items()))
    if elsewhere:  # as `enroll` does: some faces are not NAME's (every face another's is refused by name_group)
        if not as_json:
            typer.echo(f"error: {elsewhere} of {len(r['duplicates']) + r['enrolled']} faces not enrolled as {name!r} "
                       "(already another identity's, above)", err=True)
        raise typer.Exit(code=2)


@clusters_app.command("merge")
def clusters_merge(
    clusters: ClustersDir,
    target: Annotated[int, typer.Argument(help="The group that stays.")],
    sources: Annotated[list[int], typer.Argument(help="Groups whose faces move into TARGET.")],
) -> None:
    """Move every face of the SOURCES groups into TARGET (kept so on later runs)."""
    from facesearch.cluster import merge

    out = _edit(clusters, lambda c: merge(c, target, sources))
    typer.echo(f"{out['result']} faces moved into group {target}")


@clusters_app.command("split")
def clusters_split(
    clusters: ClustersDir,
    group: Annotated[int, typer.Argument(help="The group to split.")],
    eps: Annotated[Optional[float], typer.Option(help="The tighter distance (default: half the folder's).")] = None,
) -> None:
    """Cluster one group again, tighter; its parts become groups of their own."""
    from facesearch.cluster import split

    out = _edit(clusters, lambda c: split(c, group, eps))
    typer.echo(f"group {group} became groups {', '.join(map(str, out['result'])) or '(none: all unclustered)'}")


@clusters_app.command("remove")
def clusters_remove(
    clusters: ClustersDir,
    faces: Annotated[list[int], typer.Argument(help="Face ids (faces.csv's face_id) to take out of their groups.")],
) -> None:
    """Take faces out of their groups (they stay out on later runs)."""
    from facesearch.cluster import remove

    out = _edit(clusters, lambda c: remove(c, faces))
    typer.echo(f"{out['result']} faces taken out of their groups")
