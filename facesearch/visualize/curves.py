"""Training curves: loss and accuracy per epoch, train and validation, as a PNG in the run folder."""

from __future__ import annotations

from pathlib import Path


def write_curves(history: list[dict], path: Path) -> Path | None:
    """Loss and accuracy per epoch as a PNG; skipped (None) where matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for key, ax in (("loss", ax_loss), ("acc", ax_acc)):
        ax.plot(epochs, [h[f"train_{key}"] for h in history], label="train")
        if any(h[f"val_{key}"] is not None for h in history):
            ax.plot(epochs, [h[f"val_{key}"] for h in history], label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy" if key == "acc" else "cross-entropy loss")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
