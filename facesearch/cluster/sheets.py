"""Contact sheets: one PNG per group of a clusters folder, its faces closest to the centre first."""

from __future__ import annotations

from pathlib import Path

from facesearch.cluster.files import load_crop
from facesearch.cluster.grouping import SHEETS_DIR, Clusters


def draw_sheets(c: Clusters, per_sheet: int = 48, tile: int = 96) -> list[Path]:
    """One PNG per group: its faces closest to the centre first, up to ``per_sheet``; old sheets are replaced."""
    from PIL import Image, ImageDraw

    sheets = c.folder / SHEETS_DIR
    sheets.mkdir(parents=True, exist_ok=True)
    for old in sheets.glob("group-*.png"):
        old.unlink()
    written = []
    for g, members in c.groups().items():
        shown = members[:per_sheet]
        cols = min(8, len(shown))
        rows = (len(shown) + cols - 1) // cols
        sheet = Image.new("RGB", (cols * tile, rows * tile + 24), (255, 255, 255))
        draw = ImageDraw.Draw(sheet)
        title = f"group {g}" + (f": {c.names[g]}" if g in c.names else "") + f" ({len(members)} faces)"
        draw.text((6, 5), title, fill=(0, 0, 0))
        for k, r in enumerate(shown):
            crop = load_crop(c, r)
            if crop is not None:
                sheet.paste(crop.resize((tile, tile)), ((k % cols) * tile, 24 + (k // cols) * tile))
        path = sheets / f"group-{g}.png"
        sheet.save(path)
        written.append(path)
    return written
