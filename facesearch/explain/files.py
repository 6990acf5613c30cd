"""An explanation's files: the figures (``facesearch.explain.drawing``), one self-contained ``report.html`` and
``explanation.json``."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np

from facesearch.explain.core import Computed, Explanation, layer_figures
from facesearch.explain.drawing import draw_figures

log = logging.getLogger(__name__)


def write_explanation(c: Computed, out_dir: Path, settings, details, clock) -> Explanation:
    """Draw the figures, write the report and the JSON, and return the Explanation."""
    from facesearch.visualize.cam import layer_cams
    from facesearch.visualize.feature_maps import grid_from
    from facesearch.visualize.report import explanation_html

    out_dir.mkdir(parents=True, exist_ok=True)
    maps = {name: m[0] for name, m in layer_cams(c.evidence, settings.cam).items()}
    sizes = {n: tuple(a.shape[-2:]) for n, a in zip(c.evidence.names, c.evidence.activations) if a.dim() == 4}
    grid = grid_from(list(zip(c.evidence.names, c.evidence.activations)), settings.maps_per_layer,
                     settings.map_rule, settings.seed)
    files = draw_figures(c.images, maps, sizes, grid, c.ablation, c.similarity, c.view_pair, c.labels, out_dir)
    clock.lap("figures")
    figures = layer_figures(c.evidence, c.ablation, c.similarity)
    explanation = Explanation(
        kind=c.kind, query=c.query, answer=c.labels["answer"], runner_up=c.labels["runner_up"],
        score=float(c.evidence.scores[0]), margin=c.ablation.base, layers=figures,
        emerges_at=c.similarity.emerges_at if c.similarity is not None else None, ranking=c.ablation.ranking(),
        files=files, seconds=clock.total, details={**details, "phase_s": clock.phases},
    )
    files["report"] = out_dir / "report.html"
    files["report"].write_text(explanation_html(explanation, c.images, c.labels, settings), encoding="utf-8")
    clock.lap("report")
    explanation = replace(explanation, seconds=round(clock.total, 3))
    files["json"] = out_dir / "explanation.json"
    files["json"].write_text(json.dumps(explanation.to_dict(), indent=1, default=_plain), encoding="utf-8")
    log.info("explanation written to %s in %.1f s", out_dir, explanation.seconds)
    return explanation


def _plain(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return str(value)

