"""Drawing: tile mosaics, the per-layer charts, and one self-contained HTML report.

Charts render with matplotlib's Agg backend (no display needed). Mosaics (feature-map grid, per-layer
heat maps) are composed as one canvas and lettered with Pillow — a matplotlib figure with 150 subplots
takes seconds, this takes a fraction of one. The HTML report embeds every image as base64, so it is one file
that can be mailed or archived.
"""

from __future__ import annotations

import base64
import functools
import html
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from facesearch.visualize.cam import overlay

MATCH, RUNNER, OTHER, RANDOM = "#1a9850", "#d73027", "#9e9e9e", "#878787"


def _agg():
    import matplotlib  # matplotlib loads when a report is drawn, not on import (start-up)

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def colourise(values: np.ndarray, cmap: str = "viridis") -> np.ndarray:
    """A 2-D map scaled to its own min..max -> RGB uint8 (h, w, 3)."""
    from matplotlib import colormaps  # not on import (start-up)

    lo, hi = float(values.min()), float(values.max())
    scaled = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    return (colormaps[cmap](scaled)[..., :3] * 255).astype(np.uint8)


def fit_tile(image: np.ndarray, size: int, smooth: bool = True) -> np.ndarray:
    """Resize an RGB uint8 image to (size, size, 3); ``smooth=False`` keeps feature-map cells square."""
    if image.shape[:2] == (size, size):
        return image
    resample = Image.BILINEAR if smooth else Image.NEAREST
    return np.asarray(Image.fromarray(image).resize((size, size), resample))


@dataclass
class Mosaic:
    """Rows of equal-sized RGB tiles with a label per row and a caption above each tile."""

    rows: list[list[np.ndarray]]
    row_labels: list[str]
    captions: list[list[str]] | None = None
    title: str = ""
    tile: int = 72
    gap: int = 4
    label_width: int = 96
    caption_height: int = 13
    title_height: int = 26

    def draw(self, path: Path) -> Path:
        """Compose the canvas, letter it with Pillow (DejaVu Sans, matplotlib's font) and write a PNG."""
        step_y = self.caption_height + self.tile + self.gap
        width = self.label_width + max(len(r) for r in self.rows) * (self.tile + self.gap)
        width = max(width, int(_font(14, True).getlength(self.title)) + 24)  # room for the title
        height = self.title_height + len(self.rows) * step_y
        canvas = Image.new("RGB", (width, height), "white")
        draw = ImageDraw.Draw(canvas)
        _text(draw, (width / 2, self.title_height / 2), self.title, 14, "mm", bold=True)
        for r, row in enumerate(self.rows):
            y = self.title_height + r * step_y + self.caption_height
            _text(draw, (self.label_width - 6, y + self.tile / 2), self.row_labels[r], 11, "rm")
            for c, tile in enumerate(row):
                x = self.label_width + c * (self.tile + self.gap)
                canvas.paste(Image.fromarray(fit_tile(tile, self.tile)), (x, y))
                if self.captions:
                    _text(draw, (x + self.tile / 2, y - 2), self.captions[r][c], 9, "md", fill="#333333")
        path = Path(path)
        canvas.save(path, compress_level=3)
        return path


@functools.lru_cache(maxsize=16)
def _font(size: int, bold: bool = False):
    """DejaVu Sans from matplotlib's bundled fonts (always installed with it), else Pillow's default."""
    try:
        import matplotlib  # not on import (start-up)

        name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
        return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name), size)
    except (ImportError, OSError):
        return ImageFont.load_default()


def _text(draw, xy, text: str, size: int, anchor: str, bold: bool = False, fill: str = "#111111") -> None:
    """Anchored text; multi-line text is centred on the anchor's vertical position line by line."""
    font = _font(size, bold)
    lines = text.split("\n")
    x, y = xy
    y0 = y - (len(lines) - 1) * (size + 2) / 2 if anchor[1] == "m" else y - (len(lines) - 1) * (size + 2)
    for i, line in enumerate(lines):
        draw.text((x, y0 + i * (size + 2)), line, font=font, fill=fill, anchor=anchor)


def draw_similarity_chart(names: Sequence[str], identities: Sequence[str], similarity: np.ndarray,
                          path: Path, emerges_at: str | None = None) -> Path:
    """Per-layer cosine of the query to each candidate (top) and the match margin (bottom)."""
    plt = _agg()
    x = np.arange(len(names))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9.5, 4.6), sharex=True, height_ratios=(2, 1))
    for k in range(len(identities) - 1, -1, -1):  # match drawn last, on top
        colour, width = (MATCH, 2.4) if k == 0 else (RUNNER, 2.0) if k == 1 else (OTHER, 1.0)
        top.plot(x, similarity[:, k], "o-", color=colour, lw=width, ms=3.5,
                 label=f"{identities[k]}" + (" (match)" if k == 0 else " (runner-up)" if k == 1 else ""))
    top.axhline(0, color="#bbb", lw=0.8)
    top.set_ylabel("cosine (centred,\npooled activations)", fontsize=8)
    handles, texts = top.get_legend_handles_labels()
    top.legend(handles[::-1], texts[::-1], fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    margin = similarity[:, 0] - similarity[:, 1]
    bottom.bar(x, margin, color=[MATCH if m > 0 else RUNNER for m in margin], width=0.7)
    bottom.axhline(0, color="#555", lw=0.8)
    bottom.set_ylabel("margin", fontsize=8)
    if emerges_at in names:
        for ax in (top, bottom):
            ax.axvline(list(names).index(emerges_at) - 0.5, color=MATCH, ls="--", lw=1)
        top.set_title(f"The match leads from {emerges_at} onwards", fontsize=9)
    else:
        top.set_title("The match does not lead consistently up to the last layer", fontsize=9)
    _layer_axis(bottom, names)
    return _save(fig, path)


def draw_ablation_chart(names: Sequence[str], top: np.ndarray, random_mean: np.ndarray, random_sd: np.ndarray,
                        base: float, fraction: float, seeds: int, path: Path, target_label: str = "match margin") -> Path:
    """Per-layer fall of the target: top-k % attributed channels off vs k % random channels off."""
    plt = _agg()
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(9.5, 3.6))
    ax.bar(x - 0.2, top, width=0.4, color="#2c7bb6", label=f"top {fraction:.0%} channels\n(by grad × activation)")
    ax.bar(x + 0.2, random_mean, width=0.4, color=RANDOM, yerr=random_sd, capsize=2,
           error_kw={"lw": 0.8}, label=f"random {fraction:.0%} channels\n(mean ± sd, {seeds} draws)")
    ax.axhline(0, color="#555", lw=0.8)
    if base > 0:
        ax.axhline(base, color=RUNNER, ls="--", lw=1, label=f"{target_label} {base:.4g}:\na fall above this line\nflips the answer")
    ax.set_ylabel(f"fall in {target_label}", fontsize=8)
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title("Which layers carry the decision: switching off one layer's channels at a time", fontsize=9)
    _layer_axis(ax, names)
    return _save(fig, path)


def _layer_axis(ax, names: Sequence[str]) -> None:
    ax.set_xticks(np.arange(len(names)))
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize=7)
    ax.tick_params(axis="y", labelsize=7)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    fig.clf()
    _agg().close(fig)
    return path


# --- HTML -----------------------------------------------------------------------------------------


def data_uri(source: Path | np.ndarray) -> str:
    """A PNG file or an RGB array as a ``data:image/png;base64,...`` URI."""
    if isinstance(source, np.ndarray):
        buffer = io.BytesIO()
        Image.fromarray(source).save(buffer, format="PNG")
        raw = buffer.getvalue()
    else:
        raw = Path(source).read_bytes()
    return "data:image/png;base64," + base64.b64encode(raw).decode("ascii")


@dataclass
class Section:
    heading: str
    text: str = ""  # plain text; paragraphs separated by blank lines
    images: list[Path] = field(default_factory=list)
    table: tuple[list[str], list[list[str]]] | None = None  # (columns, rows)


@dataclass
class FaceCard:
    """One face shown at the head of a report: its label, its pixels and a caption."""

    label: str
    image: np.ndarray  # RGB uint8
    caption: str = ""


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f4f5f7;color:#222}
main{max-width:1000px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.sub{color:#666;font-size:13px;margin-bottom:16px}
.faces{display:flex;gap:18px;flex-wrap:wrap}
.face{background:#fff;border-radius:8px;padding:10px;box-shadow:0 1px 3px rgba(0,0,0,.12);text-align:center}
.face img{width:168px;height:168px;image-rendering:auto;border-radius:4px}
.face b{display:block;margin-top:6px} .face span{font-size:12px;color:#555}
.card{background:#fff;border-radius:8px;padding:14px;box-shadow:0 1px 3px rgba(0,0,0,.12);margin-bottom:14px}
.card img{max-width:100%} p{font-size:14px;line-height:1.45;margin:6px 0}
table{border-collapse:collapse;font-size:12px;width:100%} th,td{padding:3px 8px;text-align:right}
th{background:#eef0f3} td:first-child,th:first-child{text-align:left} tr:nth-child(even) td{background:#fafafa}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 14px;font-size:13px;margin:10px 0}
dt{color:#666} dd{margin:0}
"""


def render_html(title: str, subtitle: str, faces: Sequence[FaceCard], facts: Sequence[tuple[str, str]],
                sections: Sequence[Section]) -> str:
    """The whole report as one HTML string with every image inlined."""
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>",
             f"<style>{_CSS}</style></head><body><main>", f"<h1>{e(title)}</h1><div class='sub'>{e(subtitle)}</div>",
             "<div class='faces'>"]
    for face in faces:
        parts.append(f"<div class='face'><img src='{data_uri(face.image)}' alt='{e(face.label)}'>"
                     f"<b>{e(face.label)}</b><span>{e(face.caption)}</span></div>")
    parts.append("</div><dl>" + "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in facts) + "</dl>")
    for section in sections:
        parts.append(f"<h2>{e(section.heading)}</h2><div class='card'>")
        parts.extend(f"<p>{e(p.strip())}</p>" for p in section.text.split("\n\n") if p.strip())
        parts.extend(f"<img src='{data_uri(p)}' alt='{e(Path(p).name)}'>" for p in section.images)
        if section.table:
            columns, rows = section.table
            parts.append("<table><tr>" + "".join(f"<th>{e(c)}</th>" for c in columns) + "</tr>")
            parts.extend("<tr>" + "".join(f"<td>{e(v)}</td>" for v in row) + "</tr>" for row in rows)
            parts.append("</table>")
        parts.append("</div>")
    parts.append("</main></body></html>")
    return "\n".join(parts)


def draw_layer_maps(image: np.ndarray, maps: dict[str, np.ndarray], sizes: dict[str, tuple[int, int]],
                    path: Path, title: str, tile: int = 112) -> Path:
    """Heat maps (H, W) in [0, 1] overlaid on the image, one row per map resolution (= VGG block)."""
    rows, captions, labels = [], [], []
    for name, heat in maps.items():
        label = "{}×{}".format(*sizes[name])
        if not labels or labels[-1] != label:
            rows.append([]), captions.append([]), labels.append(label)
        rows[-1].append(fit_tile(overlay(image, heat), tile))
        captions[-1].append(name)
    rows[0].insert(0, fit_tile(image, tile))  # the face itself, beside the first block's two maps
    captions[0].insert(0, "input")
    return Mosaic(rows, labels, captions, title=title, tile=tile, label_width=64).draw(path)


# --- the explanation's report -------------------------------------------------------------------------------


def explanation_html(e, images: dict, labels: dict, settings) -> str:
    """``report.html`` of an explanation (``facesearch.explain.Explanation``): the faces, the facts, one section per
    figure with what it shows, and the per-layer table."""
    decision = "margin" if e.kind == "identification" else "logit margin"
    faces = [FaceCard("query", images["query"], Path(e.query).name)]
    sims = e.details.get("gallery_similarity", {})
    cosine = lambda name: "—" if sims.get(name) is None else f"{sims[name]:.3f}"  # noqa: E731 (not in the top hits)
    if "match" in images:
        faces.append(FaceCard(e.answer, images["match"], f"match · gallery cosine {cosine(e.answer)}"))
        if "runner_up" in images:
            faces.append(FaceCard(e.runner_up, images["runner_up"], f"runner-up · gallery cosine {cosine(e.runner_up)}"))
    top3 = ", ".join(e.ranking[:3])
    verdict, answer = _verdict(e)
    facts = [("answer", answer), ("runner-up", e.runner_up), ("heat-map target", f"{labels['target']} = {e.score:.4f}"),
             (f"decision {decision}", f"{e.margin:.4f} over {e.runner_up}"),
             ("match emerges at", e.emerges_at or "—"), ("layers carrying it (ablation)", top3),
             ("model", e.details.get("checkpoint", "")), ("time", f"{e.seconds:.1f} s")]
    if e.kind == "identification" and e.margin <= 0 and not e.details.get("against"):
        facts.append(("caution", "measured without the gallery's mirror-image averaging the margin is not positive: "
                                 "the answer and the runner-up are too close to call"))
    sections = _sections(e, settings, decision)
    title = f"Why facesearch says: {verdict}" if e.kind == "identification" else f"Why the model says: {e.answer}"
    return render_html(title, f"{e.kind} of {e.query}", faces, facts, sections)


def _verdict(e) -> tuple[str, str]:
    """What ``who`` answers for the face (its closest identity, or "unknown" below the threshold), and the answer
    told with the similarity and the threshold that decide it. An explanation ``against`` a chosen identity, or
    one without the numbers, is told as the identity explained."""
    similarity = e.details.get("gallery_similarity", {}).get(e.answer)
    threshold = e.details.get("threshold")
    if e.kind != "identification" or e.details.get("against") or similarity is None or threshold is None:
        return e.answer, e.answer
    n = next((n for n in range(3, 7) if f"{similarity:.{n}f}" != f"{threshold:.{n}f}"), 7)  # digits that differ
    if similarity < threshold:
        return "unknown", (f"unknown: the closest identity, {e.answer}, reaches cosine {similarity:.{n}f}, below the "
                           f"threshold {threshold:.{n}f}; what follows explains why the face looks most like "
                           f"{e.answer}")
    return e.answer, f"{e.answer}: cosine {similarity:.{n}f}, at or above the threshold {threshold:.{n}f}"


def _sections(e, settings, decision: str) -> list:
    best = max(e.layers, key=lambda l: l.fall_top)
    sections = []
    if "similarity" in e.files:
        sections.append(Section("Where the match emerges", (
            "At every layer the query is compared with each candidate's closest face on that layer's pooled activations "
            f"({'global average' if settings.pool == 'gap' else 'generalised-mean'} pooling, centred on the candidates' mean). Green: the answer, red: the "
            f"runner-up. {'The answer leads from ' + e.emerges_at + ' onwards.' if e.emerges_at else 'The answer does not lead throughout the deep layers.'}"
        ), [e.files["similarity"]]))
    sections.append(Section("Which layers carry the decision", (
        f"One layer at a time, the {settings.fraction:.0%} of its channels that gradient × activation credits most "
        f"with the {decision} are switched off, against {settings.fraction:.0%} random channels ({settings.seeds} draws). "
        f"The largest fall is at {best.name}: {best.fall_top:.4f} (random {best.fall_random:.4f} ± {best.fall_random_sd:.4f}); "
        f"the {decision} itself is {e.margin:.4f}."
    ), [e.files["ablation"]]))
    sections.append(Section("Per-layer heat maps", (
        "LayerCAM maps of the evidence for the answer at each conv layer (red: strong), each scaled to its own peak. "
        "Shallow layers respond to edges and texture; deep layers to the parts the decision uses."
    ), [e.files["layer_maps"]]))
    if "pair" in e.files:
        sections.append(Section("What makes the two faces similar", (
            "Gradients of the cosine between the two embeddings, on both faces; lines join mutually most similar "
            "regions, brighter and thicker for stronger ones."
        ), [e.files["pair"]]))
    sections.append(Section("Feature maps", (
        f"{settings.maps_per_layer} channels per conv layer ({'strongest mean activation' if settings.map_rule == 'strongest' else 'seeded random'}), "
        "each in its own colour range."
    ), [e.files["feature_maps"]]))
    sections.append(Section("The numbers", "", table=_table(e)))
    return sections


def _table(e) -> tuple[list[str], list[list[str]]]:
    columns = ["layer", "channels", "map", f"cos {e.answer}", f"cos {e.runner_up}", "rank",
               "fall, top channels", "fall, random (± sd)"]
    rows = []
    for l in e.layers:
        sims = l.similarity or {}
        fmt = lambda v: "—" if v is None else f"{v:.3f}"  # noqa: E731
        rows.append([l.name, str(l.channels), "×".join(map(str, l.size)) if l.size else "—",
                     fmt(sims.get(e.answer)), fmt(sims.get(e.runner_up)), "—" if l.rank is None else str(l.rank),
                     f"{l.fall_top:.4f}", f"{l.fall_random:.4f} ± {l.fall_random_sd:.4f}"])
    return columns, rows
