"""Ship a trained run as the package's base model: ``facesearch/models/base/model.pt`` in half precision.

    python tools/ship_base.py RUN_DIR POOL_DIR [--threshold T --fpir F --measured-on TEXT]

Copies RUN_DIR's best checkpoint without its training state (optimizer, RNG, history) and with half-precision
weights, and POOL_DIR/never_seen.txt (written by ``tools/base_pool.py``) beside it; prints the fingerprint
that MODEL_CARD.md must name. Check that half precision loses nothing measurable before committing
(``facesearch evaluate pairs`` on both files: docs/BENCHMARKS.md). ``--threshold`` records the similarity that
``who`` names faces at in a gallery never calibrated: measure it on people the model never saw at a stated
false-positive identification rate (``bench/threshold.py``) and name both in MODEL_CARD.md.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from facesearch.checkpoint import export_checkpoint, load_checkpoint

BASE_DIR = Path(__file__).resolve().parents[1] / "facesearch" / "models" / "base"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="The training run folder (its best.pt) or a checkpoint.")
    ap.add_argument("pool", type=Path, help="The tools/base_pool.py folder the run was prepared from.")
    ap.add_argument("--threshold", type=float, help="The default unknown-threshold (cosine similarity).")
    ap.add_argument("--fpir", type=float, help="The false-positive identification rate it was chosen at.")
    ap.add_argument("--measured-on", help="What it was measured on (people, photos, protocol).")
    args = ap.parse_args()
    if args.threshold is not None and (args.fpir is None or not args.measured_on):
        ap.error("--threshold needs --fpir and --measured-on: the model card states both")

    record = {"dataset": _dataset_with_identities(args.run)}
    if args.threshold is not None:
        record["threshold"] = {"value": args.threshold, "fpir": args.fpir, "measured_on": args.measured_on}
    target = export_checkpoint(args.run, BASE_DIR / "model.pt", half=True, record=record)
    shutil.copy(args.pool / "never_seen.txt", BASE_DIR / "never_seen.txt")
    loaded = load_checkpoint(target)
    print(f"{target}: {target.stat().st_size / 2**20:.1f} MB, fingerprint {loaded.fingerprint}, "
          f"{len(loaded.class_names)} identities, {loaded.preprocess.input_size} px, fc7 {loaded.config.embedding_width}-d")


def _dataset_with_identities(run: Path) -> dict:
    """The run's ``dataset`` record with whose faces trained (``identities``); runs from before the trainer
    recorded it get it recomputed from their prepare output, as the trainer chose its crops."""
    from facesearch.checkpoint import read_checkpoint
    from facesearch.data.datasets import face_sources, identity_folders

    payload = read_checkpoint(run)
    dataset = dict(payload.get("dataset") or {})
    if dataset.get("identities") is None:
        _, splits = face_sources(Path(dataset["root"]), unlabelled=payload.get("teacher") is not None)
        dataset["identities"] = identity_folders(dataset["root"], splits["train"][0])
    return dataset


if __name__ == "__main__":
    main()
