"""Can a demo model tell enrolled people from strangers, or does its threshold only refuse everyone?

Scores run folders laid out as ``scripts/demo.py`` leaves them (``run/``, ``prepared-gallery/`` of never-trained
people, ``prepared-train/`` with a ``holdout`` split of never-trained people), the trained model next to the
same network with random weights:

- every gallery person enrolled from 2 photos (``evaluate``'s seeded choice), the rest of their photos are
  mated probes; the held-out training people are the strangers;
- rank-1 with each person scored by their best photo (what the gallery does) and by the mean of their photos;
- the detection equal-error rate (best score of mated vs stranger probes; 50 % is chance);
- thresholds calibrated on half of the probes (every other photo of the enrolled people, every other stranger
  person) and applied to the other half: FPIR 10 % and balanced; the share of enrolled people's photos given
  a name, named correctly, and of strangers' photos refused;
- with ``--sizes``, the detection equal-error rate against the number of people enrolled (random draws of that
  many gallery people, 20 draws each): how much a stranger's best score over more people hurts detection.

    python bench/threshold.py demo-out [/tmp/run2 ...] [--sizes 1,2,5,10,20]
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def identity_scores(vectors: np.ndarray, templates: dict[str, np.ndarray], rule: str) -> np.ndarray:
    """(n, n_people) score of each vector for each person (sorted names): best photo ("max", the gallery's rule,
    :func:`facesearch.evaluation.metrics.identity_scores`) or the mean of the person's photos ("mean")."""
    from facesearch.evaluation import metrics

    names = sorted(templates)
    if rule == "mean":
        means = np.stack([templates[n].mean(0) for n in names])
        return vectors @ (means / np.linalg.norm(means, axis=1, keepdims=True)).T
    stacked = np.concatenate([templates[n] for n in names])  # (n_templates, d)
    owners = np.concatenate([[n] * len(templates[n]) for n in names])
    return metrics.identity_scores(vectors @ stacked.T, owners)[0]


@dataclass
class Probes:
    """One model's embeddings of a demo folder: the gallery people (with evaluate's enrollment split) and the
    held-out strangers, embedded once for every figure below."""

    split: object  # facesearch.evaluation.identification.OpenSetSplit of the gallery people, 2 photos enrolled
    gallery: dict[str, np.ndarray]  # photo key -> embedding
    strangers: dict[str, list[np.ndarray]]  # stranger -> embeddings of their photos


def embed_folder(folder: Path, loaded) -> Probes:
    from facesearch.evaluation.common import embed_photos, list_photos, make_embedder
    from facesearch.evaluation.identification import split_open_set

    gallery, train = folder / "prepared-gallery", folder / "prepared-train"
    people, strangers = list_photos(gallery, ["holdout"]), list_photos(train, ["holdout"])
    embedder = make_embedder(loaded, "cpu")
    g = embed_photos(embedder, [k for ks in people.values() for k in ks], gallery).vectors
    s = embed_photos(embedder, [k for ks in strangers.values() for k in ks], train).vectors
    return Probes(split_open_set(people, 2, seed=0), g,
                  {p: [s[k] for k in keys if k in s] for p, keys in sorted(strangers.items())})


def score_model(probes: Probes) -> dict:
    from facesearch.evaluation import metrics

    split, g = probes.split, probes.gallery
    names = sorted({i for _, i in split.enrolled})
    templates = {i: np.stack([g[k] for k, j in split.enrolled if j == i]) for i in names}
    mated = [(k, i) for k, i in split.mated if k in g]
    m_vec, m_id = np.stack([g[k] for k, _ in mated]), np.array([names.index(i) for _, i in mated])
    s_people = list(probes.strangers)
    out = {"n_mated": len(mated), "n_strangers": sum(len(v) for v in probes.strangers.values())}
    for rule in ("max", "mean"):
        out[f"rank1_{rule}"] = float(np.mean(identity_scores(m_vec, templates, rule).argmax(1) == m_id))
    m_scores = identity_scores(m_vec, templates, "max")
    m_top, m_hit = m_scores.max(1), m_scores.argmax(1) == m_id
    s_top = {p: identity_scores(np.stack(probes.strangers[p]), templates, "max").max(1) for p in s_people}
    out["detection_eer"] = metrics.equal_error(m_top, np.concatenate(list(s_top.values()))).rate
    # calibrate on one half, measure on the other
    cal = np.arange(len(mated)) % 2 == 0
    s_cal = np.concatenate([s_top[p] for p in s_people[0::2]])
    s_test = np.concatenate([s_top[p] for p in s_people[1::2]])
    thresholds = {"fpir10": metrics.threshold_at_rate(s_cal, 0.1),
                  "balanced": metrics.equal_error(m_top[cal], s_cal).threshold}
    for name, t in thresholds.items():
        out[f"{name}_accepted"] = float(np.mean(m_top[~cal] >= t))
        out[f"{name}_correct"] = float(np.mean(m_hit[~cal] & (m_top[~cal] >= t)))
        out[f"{name}_rejected"] = float(np.mean(s_test < t))
    return out


def eer_by_gallery_size(probes: Probes, sizes: list[int], draws: int = 20, seed: int = 0) -> dict[int, float]:
    """Mean detection equal-error rate with ``n`` of the gallery people enrolled (``draws`` random choices of them)."""
    from facesearch.evaluation import metrics

    split, g = probes.split, probes.gallery
    s = np.stack([v for vs in probes.strangers.values() for v in vs])
    names = sorted({i for _, i in split.enrolled + split.mated})
    rng, out = np.random.default_rng(seed), {}
    for n in sizes:
        rates = []
        for _ in range(draws if n < len(names) else 1):
            chosen = set(rng.choice(names, n, replace=False))
            templates = [(g[k], i) for k, i in split.enrolled if i in chosen and k in g]
            t, owners = np.stack([v for v, _ in templates]), [i for _, i in templates]
            mated = np.stack([g[k] for k, i in split.mated if i in chosen and k in g])
            best = [metrics.identity_scores(x @ t.T, owners)[0].max(1) for x in (mated, s)]
            rates.append(metrics.equal_error(*best).rate)
        out[n] = float(np.mean(rates))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="+", type=Path, help="Demo output folders (run/, prepared-*/).")
    ap.add_argument("--sizes", type=lambda v: [int(x) for x in v.split(",")], default=None,
                    help="Also the detection equal-error rate with this many people enrolled, e.g. 1,2,5,10,20.")
    args = ap.parse_args()
    from facesearch.evaluation.common import load_model, random_baseline

    print("| run | weights | rank-1 best photo | rank-1 mean photo | detection EER | FPIR 10 %: accepted / correct / "
          "strangers refused | balanced: accepted / correct / strangers refused |")
    print("|---|---|---|---|---|---|---|")
    size_rows = []
    for folder in args.folders:
        loaded = load_model(folder / "run", "cpu")
        for weights, model in (("trained", loaded), ("random", random_baseline(loaded, 0))):
            probes = embed_folder(folder, model)
            r = score_model(probes)
            cells = [f"{r['rank1_max']:.1%}", f"{r['rank1_mean']:.1%}", f"{r['detection_eer']:.1%}"]
            cells += [" / ".join(f"{r[f'{t}_{x}']:.0%}" for x in ("accepted", "correct", "rejected"))
                      for t in ("fpir10", "balanced")]
            print(f"| {folder.name} | {weights} | " + " | ".join(cells) + " |", flush=True)
            if args.sizes:
                rates = eer_by_gallery_size(probes, args.sizes)
                size_rows.append(f"| {folder.name} | {weights} | " + " | ".join(f"{rates[n]:.1%}" for n in args.sizes)
                                 + " |")
    print(f"\n(probes per run: {r['n_mated']} mated, {r['n_strangers']} of strangers; each half calibrates the other)")
    if args.sizes:
        print("\n| run | weights | " + " | ".join(f"detection EER, {n} enrolled" for n in args.sizes) + " |")
        print("|---|---|" + "---|" * len(args.sizes))
        print("\n".join(size_rows))


if __name__ == "__main__":
    os.environ.setdefault("MPLBACKEND", "Agg")
    main()
