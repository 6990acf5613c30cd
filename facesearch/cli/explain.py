"""``facesearch explain`` and ``facesearch cifar10 explain``: per-layer figures and one HTML report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from facesearch.cli._app import (
    DEFAULT_GALLERY, Checkpoint, DbUrl, Device, GalleryDir, JsonFlag, RequiredCheckpoint, app, cifar10_app, fail,
    printable,
)

OutDir = Annotated[Path, typer.Option("--out", "-o", help="Folder for the PNGs, report.html and explanation.json.")]
Fraction = Annotated[float, typer.Option(help="Share of one layer's channels switched off in the ablation.")]
Seeds = Annotated[int, typer.Option(min=1, help="Random channel draws per layer, against which the top channels are compared.")]
Maps = Annotated[int, typer.Option("--maps", min=1, max=64, help="Feature maps drawn per conv layer.")]
Rule = Annotated[str, typer.Option(help='Which feature maps: "strongest" mean activation or seeded "random".')]
Seed = Annotated[int, typer.Option(help="Seed of the random channel choices.")]


def _settings(fraction: float, seeds: int, maps: int, rule: str, seed: int):
    from facesearch.explain import ExplainSettings

    if not 0 < fraction < 1:
        fail(f"--fraction must lie between 0 and 1, not {fraction}")
    if rule not in ("strongest", "random"):
        fail(f'--rule must be "strongest" or "random", not {rule!r}')
    return ExplainSettings(fraction=fraction, seeds=max(1, seeds), maps_per_layer=maps, map_rule=rule, seed=seed)


def _print(explanation, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(explanation.to_dict(), indent=1, default=str))
        return
    e = explanation
    typer.echo(printable(f"{e.query}: {e.answer} (runner-up {e.runner_up}; margin {e.margin:.4f})"))
    if e.emerges_at:
        typer.echo(f"  the answer leads from {e.emerges_at} onwards (pooled activations per layer)")
    falls = {l.name: l for l in e.layers}
    for name in e.ranking[:3]:
        l = falls[name]
        typer.echo(f"  {name:8s} top {l.ablated} channels off: margin falls {l.fall_top:.4f} "
                   f"(random: {l.fall_random:.4f} ± {l.fall_random_sd:.4f})")
    typer.echo(f"  report: {printable(e.files['report'])}  ({e.seconds:.1f} s)")


@app.command()
def explain(
    photo: Annotated[Path, typer.Argument(help="Photo of the identity to explain (its largest face is used).")],
    out: OutDir,
    gallery: GalleryDir = DEFAULT_GALLERY,
    against: Annotated[Optional[str], typer.Option(help="Explain the match with this identity instead of the top one.")] = None,
    db: DbUrl = None,
    fraction: Fraction = 0.10,
    seeds: Seeds = 3,
    maps: Maps = 10,
    rule: Rule = "strongest",
    seed: Seed = 0,
    checkpoint: Checkpoint = None,
    device: Device = "auto",
    as_json: JsonFlag = False,
) -> None:
    """Why is this face who the gallery says? Per-layer heat maps, where the match emerges, which layers carry it."""
    from facesearch.embed import Embedder, gallery_model
    from facesearch.explain import explain_identification
    from facesearch.gallery import Gallery

    settings = _settings(fraction, seeds, maps, rule, seed)
    with Gallery(gallery, db, create=False, read_only=None) as g:
        embedder = Embedder.for_queries(gallery_model(checkpoint, g), device)
        result = explain_identification(photo, g, embedder, out, against=against, settings=settings)
    _print(result, as_json)


@cifar10_app.command("explain")
def cifar10_explain(
    image: Annotated[Path, typer.Argument(help="The image to explain (any size; resized as in training).")],
    checkpoint: RequiredCheckpoint,
    out: OutDir,
    references: Annotated[Optional[Path], typer.Option(help="Folder of <class>/ images (e.g. the CIFAR-10 test split) for the per-layer similarity.")] = None,
    fraction: Fraction = 0.10,
    seeds: Seeds = 3,
    maps: Maps = 10,
    rule: Rule = "strongest",
    seed: Seed = 0,
    device: Device = "auto",
    as_json: JsonFlag = False,
) -> None:
    """Why does the CIFAR-10 model predict this class? Feature maps (13 × N), heat maps, layer ablation."""
    from facesearch.explain import explain_classification

    settings = _settings(fraction, seeds, maps, rule, seed)
    result = explain_classification(image, checkpoint, out, references=references, settings=settings,
                                    device=device)
    _print(result, as_json)
