"""Plots of an evaluation, saved as PNGs: ROC curve, similarity histogram, DIR against FPIR.

matplotlib with the Agg backend (no display needed); imported only when plots are asked for.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from facesearch.evaluation import metrics

_LABELS = {"model": "trained model", "random_baseline": "random weights (baseline)"}


def _pyplot():
    import matplotlib  # matplotlib loads when a plot is drawn, not on import (start-up)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_roc(report, path: str | os.PathLike) -> Path:
    """ROC of each model on a log FAR axis (FAR = 0 points sit at the smallest measurable rate)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    floor = 1.0 / max(int((~report.labels).sum()), 1)  # one impostor: the left end of a log axis
    for name, scores in report.scores.items():
        roc = metrics.roc_curve(scores, report.labels)
        label = f"{_LABELS.get(name, name)} (AUC {metrics.auc(roc):.3f})"
        ax.plot(np.maximum(roc.far, floor), roc.tar, label=label, drawstyle="steps-post")
    ax.set(xscale="log", xlim=(floor, 1), ylim=(0, 1.01), xlabel="false accept rate", ylabel="true accept rate")
    ax.set_title("ROC, face verification pairs")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_similarity_histogram(report, path: str | os.PathLike) -> Path:
    """Cosine similarity of same-person and different-person pairs, one panel per model, with its threshold."""
    plt = _pyplot()
    names = list(report.scores)
    fig, axes = plt.subplots(len(names), 1, figsize=(6, 2.6 * len(names)), squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        scores = report.scores[name]
        bins = np.linspace(scores.min(), scores.max(), 41)
        ax.hist(scores[report.labels], bins=bins, alpha=0.6, label="same person")
        ax.hist(scores[~report.labels], bins=bins, alpha=0.6, label="different people")
        threshold = report.thresholds[name]
        ax.axvline(threshold, color="k", linestyle="--", label=f"threshold {threshold:.4f}")
        ax.set(title=_LABELS.get(name, name), xlabel="cosine similarity", ylabel="pairs")
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_dir_fpir(report, path: str | os.PathLike) -> Path:
    """Open-set DIR against FPIR of each model, log FPIR axis."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    floor = 1.0
    for name, curve in report.curves.items():
        n_nonmated = report.summary.get(name, {}).get("n_nonmated_probes", 1)
        floor = min(floor, 1.0 / max(n_nonmated, 1))  # one stranger: the left end of a log axis
        fpir = np.maximum(curve.fpir, 1.0 / max(n_nonmated, 1))
        ax.plot(fpir, curve.dir, label=_LABELS.get(name, name), drawstyle="steps-post")
    ax.set(xscale="log", xlim=(floor, 1), ylim=(0, 1.01))
    ax.set(xlabel="false positive identification rate", ylabel="detection and identification rate")
    ax.set_title("Open-set identification")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def save_pairs_plots(report, out_dir: str | os.PathLike) -> list[Path]:
    """``roc.png`` and ``similarity_histogram.png`` in ``out_dir``."""
    out_dir = Path(out_dir)
    return [
        plot_roc(report, out_dir / "roc.png"),
        plot_similarity_histogram(report, out_dir / "similarity_histogram.png"),
    ]


def save_open_set_plots(report, out_dir: str | os.PathLike) -> list[Path]:
    """``dir_fpir.png`` in ``out_dir``."""
    return [plot_dir_fpir(report, Path(out_dir) / "dir_fpir.png")]


def _save(fig, path: str | os.PathLike) -> Path:
    import matplotlib.pyplot as plt  # not on import (start-up)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
