"""How to score a probe against enrolled people: by their best photo or by the mean of their photos, with the
embedding centred on the training set's mean (as `forward_embedding` does) or not, and (with ``--cohort``)
with adaptive score normalisation against a cohort of other people's faces (AS-norm: each score minus the mean
of the probe's and of the template's top-``k`` cohort similarities, over their spread).

Open-set identification on a folder of never-seen people (``--enroll`` photos each, the rest as probes) with a
folder of strangers, for each model given: rank-1 and the detection equal-error rate (with 95 % CIs) of the four
variants. The photos are embedded once per model and variant of centring; the scoring is numpy.

    python bench/scoring.py PREPARED --split holdout --distractors STRANGERS_PREPARED -c base -c RUN ...
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from facesearch.checkpoint import load_checkpoint
from facesearch.data.manifest import ok_rows, read_manifest
from facesearch.evaluation.common import embed_photos, list_photos, make_embedder
from facesearch.evaluation.identification import identification_figures, split_open_set


def mean_templates(vectors: np.ndarray, ids: list[str]) -> tuple[np.ndarray, list[str]]:
    """One L2-normalised mean embedding per identity, (n_ids, d), and the identities in that order."""
    names = sorted(set(ids))
    ids = np.asarray(ids)
    means = np.stack([vectors[ids == name].mean(axis=0) for name in names])
    return means / np.linalg.norm(means, axis=1, keepdims=True), names


def as_norm(gallery: np.ndarray, probes: np.ndarray, cohort: np.ndarray, k: int) -> np.ndarray:
    """Adaptive s-norm of the probe-template scores: the normalised (n_probes, n_templates) score matrix."""
    def stats(x):  # (n, d) -> mean, std of each row's top-k cohort similarities
        top = np.sort(x @ cohort.T, axis=1)[:, -k:]
        return top.mean(axis=1), top.std(axis=1) + 1e-6

    raw = probes @ gallery.T
    (mp, sp), (mg, sg) = stats(probes), stats(gallery)
    return 0.5 * ((raw - mp[:, None]) / sp[:, None] + (raw - mg[None, :]) / sg[None, :])


def fmt(figures: dict, key: str) -> str:
    value, ci = figures[key], figures[f"{key}_ci95"]
    return f"{value:.1%} ({ci[0]:.1%}–{ci[1]:.1%})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path, help="Photos of never-seen people (a prepare output or <identity>/ folders).")
    ap.add_argument("--split", action="append", help="Rows of these splits only (a prepare output).")
    ap.add_argument("--distractors", type=Path, required=True, help="Strangers (a prepare output, all rows).")
    ap.add_argument("-c", "--checkpoint", action="append", required=True, help='Checkpoints ("base": the shipped one).')
    ap.add_argument("--enroll", type=int, default=2)
    ap.add_argument("--bootstrap", type=int, default=300)
    ap.add_argument("--cohort", type=Path, help="A prepare output whose train crops are the cohort (e.g. the model's own pool).")
    ap.add_argument("--cohort-size", type=int, default=1000)
    ap.add_argument("--cohort-k", type=int, default=100)
    args = ap.parse_args()

    split = split_open_set(list_photos(args.data, args.split), args.enroll, seed=0)
    strangers = [(k, f"stranger:{i}") for i, keys in list_photos(args.distractors).items() for k in keys]
    print(f"{len({i for _, i in split.enrolled})} people enrolled ({args.enroll} photos each), "
          f"{len(split.mated)} mated probes, {len(split.nonmated) + len(strangers)} stranger photos")
    cohort_keys = []
    if args.cohort is not None:  # the same cohort faces for every model
        rows = [r.path for r in ok_rows(read_manifest(args.cohort), "train")]
        pick = np.random.default_rng(0).choice(len(rows), min(args.cohort_size, len(rows)), replace=False)
        cohort_keys = [rows[i] for i in sorted(pick)]
    print("| model | centred | scored by | rank-1 (95 % CI) | detection EER (95 % CI) |")
    print("|---|---|---|---|---|")
    for checkpoint in args.checkpoint:
        loaded = load_checkpoint(checkpoint)
        mean = loaded.model.embedding_mean.clone()
        for centred in (True, False):
            with torch.no_grad():
                loaded.model.embedding_mean.copy_(mean if centred else torch.zeros_like(mean))
            embedder = make_embedder(loaded, "cpu")
            keys = [k for k, _ in split.enrolled + split.mated + split.nonmated]
            own = embed_photos(embedder, keys, args.data, crop_size=loaded.preprocess.input_size).vectors
            other = embed_photos(embedder, [k for k, _ in strangers], args.distractors,
                                 crop_size=loaded.preprocess.input_size).vectors
            gallery = np.stack([own[k] for k, _ in split.enrolled])
            gallery_ids = [i for _, i in split.enrolled]
            probes = np.stack([own[k] for k, _ in split.mated + split.nonmated] + [other[k] for k, _ in strangers])
            probe_ids = [i for _, i in split.mated + split.nonmated + strangers]
            variants = [("best photo", gallery, gallery_ids, probes),
                        ("mean of photos", *mean_templates(gallery, gallery_ids), probes)]
            if cohort_keys:
                found = embed_photos(embedder, cohort_keys, args.cohort, crop_size=loaded.preprocess.input_size).vectors
                cohort = np.stack(list(found.values()))
                scores = as_norm(gallery, probes, cohort, args.cohort_k)  # (n_probes, n_templates)
                # identification_figures takes embeddings: templates as the identity basis, probes as score rows
                variants.append((f"best photo, AS-norm (cohort {len(cohort)}, top {args.cohort_k})",
                                 np.eye(len(gallery)), gallery_ids, scores))
            for scored, g, gi, p in variants:
                figures, _ = identification_figures(g, gi, p, probe_ids, n_boot=args.bootstrap)
                print(f"| {checkpoint} | {'yes' if centred else 'no'} | {scored} | {fmt(figures, 'rank1')} "
                      f"| {fmt(figures, 'detection_eer')} |", flush=True)


if __name__ == "__main__":
    main()
