"""The teacher itself on the protocols the VGG16 models are scored on, for the rows beside them in BENCHMARKS.

``facesearch evaluate pairs`` and ``evaluate open-set``, run with dlib's vectors of the same aligned crops in
place of a checkpoint's embeddings (the base model's checkpoint only stands in for the evaluation's
bookkeeping; its weights are not used):

    python bench/teacher.py pairs PAIRS_DEV_TRAIN PAIRS_DEV_TEST LFW_PREPARED --raw-dir LFW_IMAGES
    python bench/teacher.py open-set PREPARED --enroll 2 [--split holdout] [--distractors PREPARED]

The teacher reads the 112 px crops that ``prepare --align`` cut (the student reads the same crops at 64 px);
vectors are L2-normalised and compared by cosine, as every facesearch model is. Needs the teacher extra
(``pip install 'facesearch[teacher]'``). Prints the evaluation's JSON summary.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


class TeacherEmbedder:
    """What the evaluations ask of an ``Embedder`` (``crop`` and ``embed_crops``), answered by the teacher."""

    def __init__(self, prepared: Path, name: str = "dlib"):
        from facesearch.data.detect import CropSettings
        from facesearch.data.manifest import read_settings
        from facesearch.teacher import load_teacher

        self.crop = CropSettings.from_dict(read_settings(prepared))
        self.teacher = load_teacher(name)

    def embed_crops(self, crops) -> np.ndarray:
        arrays = [np.asarray(c.convert("RGB")) for c in crops]
        v = self.teacher.encode(arrays, {"size": self.crop.size, "margin": self.crop.margin, "align": self.crop.align})
        return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def _use_teacher(prepared: Path) -> TeacherEmbedder:
    from facesearch.evaluation import identification, verification

    embedder = TeacherEmbedder(prepared)
    identification.make_embedder = verification.make_embedder = lambda loaded, device: embedder
    return embedder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="protocol", required=True)
    pairs = sub.add_parser("pairs")
    pairs.add_argument("dev_train", type=Path)
    pairs.add_argument("dev_test", type=Path)
    pairs.add_argument("prepared", type=Path)
    pairs.add_argument("--raw-dir", type=Path)
    open_set = sub.add_parser("open-set")
    open_set.add_argument("prepared", type=Path)
    open_set.add_argument("--enroll", type=int, default=1)
    open_set.add_argument("--split", action="append")
    open_set.add_argument("--distractors", type=Path)
    ap.add_argument("--bootstrap", type=int, default=1000)
    args = ap.parse_args()

    _use_teacher(args.prepared)
    if args.protocol == "pairs":
        from facesearch.evaluation.verification import evaluate_pairs

        report = evaluate_pairs("base", [args.dev_train, args.dev_test], args.prepared, raw_dir=args.raw_dir,
                                device="cpu", baseline=False, n_boot=args.bootstrap)
    else:
        from facesearch.evaluation.identification import evaluate_open_set

        report = evaluate_open_set("base", args.prepared, enroll_per_identity=args.enroll, device="cpu",
                                   baseline=False, n_boot=args.bootstrap, splits=args.split,
                                   distractors=args.distractors,
                                   distractor_splits=args.split if args.distractors else None)
    summary = dict(report.summary)
    summary["model"] = {**summary["model"], "fingerprint": "dlib (teacher)"}
    print(json.dumps(summary, indent=2, default=str))


if __name__ == "__main__":
    main()
