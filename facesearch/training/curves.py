"""Training curves: loss and accuracy per epoch, train and validation, as a PNG in the run folder."""

from __future__ import annotations

from pathlib import Path


def write_curves(history: list[dict], path: Path) -> Path | None:
    """Loss and accuracy (or, under a teacher, the cosine to its vectors) per epoch as a PNG; skipped (None)
    where matplotlib is not installed."""
    try:  # matplotlib is optional here (and loads only when a run saves, not on import)
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    # a run taught by a teacher shows its cosine to the teacher's vectors (and has no accuracy without a head)
    second = "teacher_cos" if history and "train_teacher_cos" in history[0] else "acc"
    labels = {"loss": "loss", "acc": "accuracy", "teacher_cos": "mean cosine to the teacher"}
    fig, (ax_loss, ax_second) = plt.subplots(1, 2, figsize=(10, 4))
    for key, ax in (("loss", ax_loss), (second, ax_second)):
        for split, name in (("train", "train"), ("val", "validation")):
            points = [(h["epoch"], h[f"{split}_{key}"]) for h in history if h.get(f"{split}_{key}") is not None]
            if points:
                ax.plot(*zip(*points), label=name)
        ax.set_xlabel("epoch")
        ax.set_ylabel(labels[key])
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
