"""``facesearch serve`` (the REST API and web pages over a gallery) and ``facesearch keys`` (its API keys)."""

from __future__ import annotations

import json
import logging
import signal
from pathlib import Path
from typing import Annotated, Optional

import typer

from facesearch.cli._app import (
    DEFAULT_GALLERY, Checkpoint, DbUrl, Device, GalleryDir, JsonFlag, app, fail, keys_app, printable,
)

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _open(gallery: Path, db: str | None, writes: bool, starts: bool = False):
    """The gallery; one that ``starts`` it may be an empty folder (a server set up before anyone is enrolled)."""
    # here, not at the top: `facesearch --help` stays fast
    from facesearch.gallery import Gallery

    return Gallery(gallery, db, create=starts and gallery.is_dir(), read_only=False if writes else None)


@app.command()
def serve(
    gallery: GalleryDir = DEFAULT_GALLERY,
    db: DbUrl = None,
    checkpoint: Checkpoint = None,
    host: Annotated[str, typer.Option(help="Address to listen on; anything but loopback needs --public.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
    public: Annotated[bool, typer.Option("--public", help="Allow listening on a non-loopback address.")] = False,
    threads: Annotated[int, typer.Option("--threads", min=1, max=256,
                                                 help="Requests handled at once (the thread pool's size).")] = 16,
    compute_slots: Annotated[Optional[int], typer.Option(min=1, max=64, help=(
        "Recognitions and enrollments computing at once; the rest wait their turn (default: the CPUs, at most 8)."))] = None,
    max_batch: Annotated[Optional[int], typer.Option(min=1, max=64, help=(
        "Recognitions (detections, verifications) waiting for a compute slot computed together, at most: one "
        "detection and one forward pass for all (default: 8; 1: each alone)."))] = None,
    max_upload_mb: Annotated[float, typer.Option(min=0.01, help="Largest photo accepted, in MB.")] = 20.0,
    max_megapixels: Annotated[Optional[float], typer.Option(min=0.01, help=(
        "Largest photo accepted, in megapixels. (default: 40, the limit every command reads photos with)"))] = None,
    clusters: Annotated[Optional[Path], typer.Option(
        help="A `facesearch cluster` output: its groups are shown, and named (enrolled), on the /clusters page.")] = None,
    device: Device = "cpu",
) -> None:
    """Serve the gallery: a JSON API under /api/v1 (docs at /api/docs) and web pages, model and index loaded once.

    Every request needs an API key of the gallery: create one first with `facesearch keys create NAME`.
    """
    if host not in LOOPBACK and not public:
        fail(f"--host {host}: not a loopback address; the service would be reachable from other machines. "
             "Pass --public to allow it (behind TLS and a firewall)")
    try:
        import fastapi  # noqa: F401
        import fastapi_offline  # noqa: F401  (the Swagger UI files of /api/docs)
        import uvicorn
    except ImportError as e:
        fail(f"facesearch serve needs FastAPI, fastapi-offline and uvicorn ({e.name} is missing): "
             "pip install 'facesearch[serve]'")
    # here, not at the top: `facesearch --help` stays fast
    from facesearch.data.images import MAX_PIXELS
    from facesearch.serve.app import create_app, listen
    from facesearch.serve.service import Limits, Service

    pixels = MAX_PIXELS if max_megapixels is None else int(max_megapixels * 1e6)
    service = Service(gallery, db, checkpoint, device=device, compute_slots=compute_slots, max_batch=max_batch,
                      clusters=clusters, limits=Limits(max_bytes=int(max_upload_mb * 1024 * 1024), max_pixels=pixels))
    # uvicorn stops gracefully on SIGTERM, then raises the signal again: with its default action the process would
    # die there, before the `finally` that removes the scratch folder (uploads in flight, explain reports: faces of
    # the queries). As an exception it unwinds through it. SIGINT the same way: started in the background by a
    # shell, a process inherits SIGINT ignored, and uvicorn's re-raised SIGINT would then end it with status 0.
    previous = {sig: signal.signal(sig, _exit_on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        if not service.gallery.api_keys():
            fail(f"{service.gallery.folder}: the gallery has no API key, so nobody could use the service; "
                 f"create one first: facesearch keys create NAME -g {gallery}")
        sock = listen(host, port)  # before the service is announced: a busy port is told (ListenError), not a URL
        service.warm_up()
        logging.getLogger("facesearch").setLevel(logging.INFO)
        typer.echo(f"facesearch serve: {printable(service.gallery.folder)} ({service.gallery.stats()['faces']} faces), model "
                   f"{service.embedder.fingerprint}, on http://{host}:{port}/ (API docs /api/docs)", err=True)
        config = uvicorn.Config(create_app(service, threads), log_level="warning", access_log=False)
        with sock:
            uvicorn.Server(config).run(sockets=[sock])
    finally:
        service.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _exit_on_signal(signum: int, frame) -> None:
    raise SystemExit(128 + signum)  # the shell's status for a process ended by that signal


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="A name for the key (who or what uses it).")],
    read_only: Annotated[bool, typer.Option("--read-only", help="May recognize and read, not change the gallery.")] = False,
    gallery: GalleryDir = DEFAULT_GALLERY,
    db: DbUrl = None,
    as_json: JsonFlag = False,
) -> None:
    """Create an API key; it is printed once (only its SHA-256 digest is stored)."""
    with _open(gallery, db, writes=True, starts=True) as g:
        key = g.create_key(name, read_only=read_only)
    if as_json:
        typer.echo(json.dumps({"name": name, "read_only": read_only, "key": key}))
        return
    typer.echo(key)
    typer.echo(f"API key {name!r}{' (read-only)' if read_only else ''} created; it is shown only this once. "
               f"Send it as the X-API-Key header.", err=True)


@keys_app.command("list")
def keys_list(gallery: GalleryDir = DEFAULT_GALLERY, db: DbUrl = None, as_json: JsonFlag = False) -> None:
    """The gallery's API keys (names and rights; the keys themselves are not stored)."""
    with _open(gallery, db, writes=False) as g:
        keys = g.api_keys()
    if as_json:
        typer.echo(json.dumps([{"name": k.name, "read_only": k.read_only, "created_at": k.created_at.isoformat()}
                               for k in keys], indent=2))
        return
    for k in keys:
        typer.echo(f"{printable(k.name)}\t{'read-only' if k.read_only else 'full'}\t{k.created_at:%Y-%m-%d %H:%M}")
    if not keys:
        typer.echo("no API keys: create one with `facesearch keys create NAME`", err=True)


@keys_app.command("revoke")
def keys_revoke(name: Annotated[str, typer.Argument(help="The key's name.")],
                gallery: GalleryDir = DEFAULT_GALLERY, db: DbUrl = None) -> None:
    """Revoke an API key: the service refuses it from the next request on."""
    with _open(gallery, db, writes=True) as g:
        g.revoke_key(name)
    typer.echo(f"revoked API key {name!r}")
