"""How well does `facesearch cluster` group people it never saw, and how fast? Chooses the default settings.

Faces: the 60 CelebA people of ``bench/transfer.py`` (10 photos each, never trained on) mixed with LFW View 1's
photos (evaluation only: 4,992 photos of 3,095 people, most of them once: strangers that belong to no group),
both as ``prepare`` outputs, embedded with the model as ``who`` embeds (their crops, no detection). Each setting
is scored against the true labels: pairwise precision (of the face pairs put in one group, the share that are
one person), pairwise recall (of the pairs that are one person, the share put in one group), the share of faces
left unclustered, and the seconds to group. A second part times grouping 10,000 faces.

    python bench/cluster.py -c base --celeba /tmp/facesearch-transfer/prepared-60x10 --lfw /tmp/lfw
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

import numpy as np


def pair_scores(truth: list[str], labels: np.ndarray) -> dict:
    """Pairwise precision and recall of a grouping (-1: unclustered, in no pair)."""
    same_true = sum(n * (n - 1) // 2 for n in Counter(truth).values())
    clustered = [(t, int(g)) for t, g in zip(truth, labels) if g >= 0]
    same_pred = sum(n * (n - 1) // 2 for n in Counter(g for _, g in clustered).values())
    both = sum(n * (n - 1) // 2 for n in Counter(clustered).values())
    return {"precision": both / same_pred if same_pred else float("nan"),
            "recall": both / same_true if same_true else float("nan"),
            "unclustered": float(np.mean(labels < 0)), "groups": int(len(set(labels[labels >= 0].tolist())))}


def embed(model, folders: list[Path], device: str = "cpu") -> tuple[np.ndarray, list[str]]:
    from facesearch.evaluation.common import embed_photos, list_photos, load_model, make_embedder

    loaded = load_model(model, device)
    embedder = make_embedder(loaded, device)
    vectors, truth = [], []
    for folder in folders:
        people = list_photos(folder)
        keys = [k for ks in people.values() for k in ks]
        owner = {k: f"{folder.name}/{person}" for person, ks in people.items() for k in ks}
        got = embed_photos(embedder, keys, folder, crop_size=loaded.preprocess.input_size).vectors
        for k in keys:
            if k in got:
                vectors.append(got[k])
                truth.append(owner[k])
    return np.stack(vectors).astype(np.float32), truth


def main(argv=None) -> None:
    from facesearch.cluster import ClusterSettings, group_faces

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-c", "--checkpoint", default="base")
    ap.add_argument("--celeba", type=Path, required=True, help="prepare output of bench/transfer.py's people")
    ap.add_argument("--lfw", type=Path, help="prepare output of LFW View 1's images (strangers mixed in)")
    ap.add_argument("--timing", type=Path, help="a prepare output to draw 10,000 faces from for the timing")
    ap.add_argument("--eps", type=float, nargs="+", default=[0.1, 0.15, 0.2, 0.25, 0.3])
    ap.add_argument("--algorithms", nargs="+", default=["complete", "average", "dbscan"])
    args = ap.parse_args(argv)

    x, truth = embed(args.checkpoint, [args.celeba] + ([args.lfw] if args.lfw else []))
    n_people = len({t for t in truth if Counter(truth)[t] > 1})
    print(f"{len(x)} faces of {len(set(truth))} people ({n_people} with two or more), model {args.checkpoint}")
    print("| algorithm | eps | min size | centred | pairwise precision | pairwise recall | unclustered | groups | seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    for algorithm in args.algorithms:
        for eps in args.eps:
            for min_size, centre in ((2, True), (3, True), (2, False)):
                settings = ClusterSettings(algorithm=algorithm, eps=eps, min_size=min_size, centre=centre)
                t = time.perf_counter()
                labels = group_faces(x, settings)
                seconds = time.perf_counter() - t
                s = pair_scores(truth, labels)
                print(f"| {algorithm} | {eps} | {min_size} | {'yes' if centre else 'no'} | {s['precision']:.3f} | {s['recall']:.3f} | "
                      f"{s['unclustered']:.1%} | {s['groups']} | {seconds:.1f} |", flush=True)
    if args.timing:
        more, _ = embed(args.checkpoint, [args.timing])
        big = np.concatenate([x, more])[:10_000]
        for algorithm in args.algorithms:
            t = time.perf_counter()
            group_faces(big, ClusterSettings(algorithm=algorithm))
            print(f"{algorithm}: {len(big)} faces grouped in {time.perf_counter() - t:.1f} s")


if __name__ == "__main__":
    main()
