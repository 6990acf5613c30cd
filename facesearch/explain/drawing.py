"""An explanation's figures, one PNG each: heat maps per layer, the layer ablation, the feature maps, the
per-layer similarity and the pair view."""

from __future__ import annotations

from pathlib import Path


def draw_figures(images, maps, sizes, grid, ablation, similarity, view_pair, labels, out_dir: Path) -> dict[str, Path]:
    from facesearch.visualize import report
    from facesearch.visualize.feature_maps import draw_feature_grid
    from facesearch.visualize.pair import draw_pair

    files = {
        "layer_maps": report.draw_layer_maps(images["query"], maps, sizes, out_dir / "layer_maps.png",
                                             f"Where each conv layer sees evidence for {labels['answer']} (LayerCAM)"),
        "ablation": report.draw_ablation_chart(ablation.names, ablation.top, ablation.random_mean, ablation.random_sd,
                                               ablation.base, ablation.fraction, ablation.seeds,
                                               out_dir / "layer_ablation.png"),
        "feature_maps": draw_feature_grid(grid, out_dir / "feature_maps.png", image=images["query"]),
    }
    if similarity is not None:
        files["similarity"] = report.draw_similarity_chart(similarity.names, similarity.identities,
                                                           similarity.similarity, out_dir / "layer_similarity.png",
                                                           similarity.emerges_at)
    if view_pair is not None:
        files["pair"] = draw_pair(view_pair, images["query"], images["match"], out_dir / "pair.png",
                                  ("query", labels["answer"]))
    return files

