"""Faithfulness of facesearch's explanations, and the time one explanation takes.

Over N query/match pairs (two crops of one person from a ``prepare`` output), the query-side heat map
for "cosine similarity to the matched face" ranks the query's pixels. Pixels are then removed in that
order — most relevant first (MoRF) and least relevant first (LeRF) — and the similarity re-measured.
Removed pixels are filled ROAD-style (Rong et al., ICML 2022): noisy linear imputation from their
neighbours, so the model never sees a tell-tale black or grey patch whose shape leaks the ranking.
(Approximation: a normalised-convolution fill, then 20 Jacobi sweeps of ROAD's neighbour weights,
1/6 edge- and 1/12 corner-neighbours, plus noise sigma 0.01 in [0, 1] pixel units.)

A faithful map makes the similarity fall fast under MoRF and slowly under LeRF. Baselines: a random
pixel order (seeded per pair) and a centred-Gaussian prior (centre first: "faces matter in the middle").
Per method: the area under each curve (mean similarity over the removal fractions), and the ROAD gap
LeRF - MoRF; paired differences to each baseline with 95 % bootstrap intervals.

    python bench/explain.py --checkpoint RUN/best.pt --data PREPARED --pairs 200 --out out/explain-bench
    python bench/explain.py ... --gallery-people 20 --cli-timing   # also time `facesearch explain`
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

FRACTIONS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7)
METHODS = ("pair view (LayerCAM, last 6 convs)", "LayerCAM conv5_3", "Grad-CAM conv5_3", "LayerCAM conv4_3",
           "random", "centre prior")
ATTRIBUTIONS = METHODS[:4]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- pairs ------------------------------------------------------------------------------------------------


def choose_pairs(data: Path, n: int, seed: int) -> tuple[list[tuple[Path, Path]], str]:
    """n (query, match) crop pairs of the same person; held-out splits when they hold enough people."""
    from facesearch.data.manifest import ok_rows, read_manifest

    rows = ok_rows(read_manifest(data))
    held = [r for r in rows if r.split in ("val", "test", "holdout")]
    source = "val/test/holdout splits"
    by_id = _group(held)
    if len(by_id) < 10:
        by_id, source = _group(rows), "all splits (too few held-out people)"
    rng = np.random.default_rng(seed)
    names = sorted(by_id)
    pairs = []
    for _ in range(n):
        crops = by_id[names[rng.integers(len(names))]]
        i, j = rng.choice(len(crops), 2, replace=False)
        pairs.append((data / crops[i], data / crops[j]))
    return pairs, source


def _group(rows) -> dict[str, list[str]]:
    by_id: dict[str, list[str]] = {}
    for r in rows:
        by_id.setdefault(r.identity, []).append(r.crop)
    return {k: sorted(v) for k, v in by_id.items() if len(v) >= 2}


# --- maps and orders ----------------------------------------------------------------------------------------


def attribution_maps(model, preprocess, xq: torch.Tensor, eg: torch.Tensor) -> dict[str, torch.Tensor]:
    """Query-side maps (B, H, W) for cos(f(query), e_match), one backward pass for all conv layers."""
    from facesearch.visualize.cam import attribute, fuse, layer_cams
    from facesearch.visualize.hooks import conv_sites

    sites = conv_sites(model, model.conv_layers())
    target = lambda out: (F.normalize(out.float(), dim=1) * eg).sum(1)  # noqa: E731  (B,)
    a = attribute(model.forward_embedding, sites, xq, target)
    layer = layer_cams(a, "layercam")
    names = a.names
    return {
        METHODS[0]: torch.from_numpy(fuse(layer, names[-6:])),
        METHODS[1]: torch.from_numpy(layer["conv5_3"]),
        METHODS[2]: torch.from_numpy(layer_cams(a, "gradcam")["conv5_3"]),
        METHODS[3]: torch.from_numpy(layer["conv4_3"]),
    }


def baseline_maps(batch: int, size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    yy, xx = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    sigma = 0.25 * size
    centre = torch.exp(-((xx - size / 2) ** 2 + (yy - size / 2) ** 2) / (2 * sigma**2))
    return {"random": torch.rand(batch, size, size, generator=generator),
            "centre prior": centre.expand(batch, size, size).clone()}


def removal_masks(maps: torch.Tensor, fractions, most_first: bool, generator: torch.Generator) -> torch.Tensor:
    """(B, H, W) scores -> (F, B, 1, H, W) masks, 1 = removed: the top (MoRF) or bottom (LeRF) fraction."""
    b, h, w = maps.shape
    jitter = 1e-6 * torch.rand(b, h * w, generator=generator)  # breaks ties (flat regions) at random
    scores = maps.reshape(b, -1).float() + jitter
    order = torch.argsort(scores, dim=1, descending=most_first)  # (B, H*W)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(h * w).expand(b, -1))
    masks = [(ranks < int(round(f * h * w))).float().view(b, 1, h, w) for f in fractions]
    return torch.stack(masks)


# --- ROAD-style imputation ------------------------------------------------------------------------------------

_NEIGHBOURS = torch.tensor([[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0.0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]])


def impute(x: torch.Tensor, removed: torch.Tensor, noise: float, generator: torch.Generator, sweeps: int = 20):
    """Fill removed pixels (mask (n, 1, H, W), 1 = removed) of x (n, 3, H, W) from their neighbours."""
    keep = 1.0 - removed
    blur = torch.ones(1, 1, 9, 9, device=x.device) / 81
    num = F.conv2d(F.pad(x * keep, (4,) * 4, mode="replicate").view(-1, 1, *[s + 8 for s in x.shape[-2:]]),
                   blur).view_as(x)
    den = F.conv2d(F.pad(keep, (4,) * 4, mode="replicate"), blur).clamp_min(1e-3)
    filled = torch.where(removed.bool(), num / den, x)  # normalised convolution: a smooth first guess
    kernel = _NEIGHBOURS.to(x).view(1, 1, 3, 3)
    for _ in range(sweeps):
        avg = F.conv2d(F.pad(filled, (1,) * 4, mode="replicate").view(-1, 1, *[s + 2 for s in x.shape[-2:]]),
                       kernel).view_as(x)
        filled = torch.where(removed.bool(), avg, x)
    noise_t = noise * torch.randn(x.shape, generator=generator).to(x)
    return filled + removed * noise_t


# --- the benchmark --------------------------------------------------------------------------------------------


def run_pairs(loaded, pairs, fractions, batch: int, seed: int, device) -> dict[str, dict[str, np.ndarray]]:
    """Similarity curves: method -> {"morf", "lerf"} -> (pairs, 1 + len(fractions)); column 0 = nothing removed."""
    from PIL import Image

    from facesearch.checkpoint import preprocess_batch

    model = loaded.model.to(device).eval()
    pre = loaded.preprocess
    noise = 0.01 / float(np.mean(pre.std))  # sigma 0.01 in [0, 1] pixel units, in normalised units
    generator = torch.Generator().manual_seed(seed)
    curves = {m: {"morf": [], "lerf": []} for m in METHODS}
    for start in range(0, len(pairs), batch):
        chunk = pairs[start : start + batch]
        xq = preprocess_batch([Image.open(q).convert("RGB") for q, _ in chunk], pre).to(device)
        xg = preprocess_batch([Image.open(g).convert("RGB") for _, g in chunk], pre).to(device)
        with torch.no_grad():
            eg = F.normalize(model.forward_embedding(xg).float(), dim=1)  # (B, d)
            base = (F.normalize(model.forward_embedding(xq).float(), dim=1) * eg).sum(1)  # (B,)
        maps = attribution_maps(model, pre, xq, eg)
        maps.update(baseline_maps(len(chunk), xq.shape[-1], generator))
        for method, m in maps.items():
            for order in ("morf", "lerf"):
                masks = removal_masks(m.cpu(), fractions, order == "morf", generator).to(device)
                sims = _deleted_similarity(model, xq, eg, masks, noise, generator)  # (F, B)
                curves[method][order].append(torch.cat([base[None], sims]).T.cpu().numpy())
        log(f"pairs {start + len(chunk)}/{len(pairs)}")
    return {m: {o: np.concatenate(v) for o, v in d.items()} for m, d in curves.items()}


@torch.no_grad()
def _deleted_similarity(model, xq, eg, masks, noise, generator) -> torch.Tensor:
    n_f, b = masks.shape[:2]
    x = xq.repeat(n_f, 1, 1, 1)  # (F*B, 3, H, W)
    filled = impute(x, masks.reshape(n_f * b, 1, *xq.shape[-2:]), noise, generator)
    e = F.normalize(model.forward_embedding(filled).float(), dim=1).view(n_f, b, -1)
    return (e * eg[None]).sum(-1)  # (F, B)


def bootstrap_ci(values: np.ndarray, seed: int, n: int = 2000) -> tuple[float, float, float]:
    """Mean and 95 % percentile-bootstrap interval of per-pair values."""
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (n, len(values)))].mean(1)
    return float(values.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def summarise(curves, fractions, seed: int) -> dict:
    """Per method: AUC of MoRF and LeRF (mean similarity over the removal fractions), ROAD gap, and paired
    differences to the baselines (negative MoRF difference / positive gap difference = better)."""
    auc = {m: {o: c[:, 1:].mean(1) for o, c in d.items()} for m, d in curves.items()}
    out = {}
    for m in METHODS:
        gap = auc[m]["lerf"] - auc[m]["morf"]
        row = {"morf_auc": bootstrap_ci(auc[m]["morf"], seed), "lerf_auc": bootstrap_ci(auc[m]["lerf"], seed),
               "gap": bootstrap_ci(gap, seed),
               "morf_curve": curves[m]["morf"].mean(0).round(4).tolist(),
               "lerf_curve": curves[m]["lerf"].mean(0).round(4).tolist()}
        for base in ("random", "centre prior"):
            if m != base:
                row[f"morf_minus_{base}"] = bootstrap_ci(auc[m]["morf"] - auc[base]["morf"], seed)
                row[f"gap_minus_{base}"] = bootstrap_ci(gap - (auc[base]["lerf"] - auc[base]["morf"]), seed)
        out[m] = row
    return out


def plot(curves, fractions, path: Path, title: str) -> None:
    try:
        import matplotlib
    except ImportError:  # the GPU machine has no matplotlib: plot later with --replot
        log("no matplotlib: curves saved, plot skipped")
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [0.0, *fractions]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    colours = dict(zip(METHODS, ("#1a9850", "#2c7bb6", "#abd9e9", "#7b3294", "#878787", "#d6604d")))
    for ax, order, label in zip(axes, ("morf", "lerf"), ("most relevant first (lower = more faithful)",
                                                          "least relevant first (higher = more faithful)")):
        for m in METHODS:
            c = curves[m][order]
            mean, half = c.mean(0), 1.96 * c.std(0, ddof=1) / np.sqrt(len(c))
            ax.plot(x, mean, "o-", ms=3, color=colours[m], label=m, lw=2.2 if m == METHODS[0] else 1.3)
            ax.fill_between(x, mean - half, mean + half, color=colours[m], alpha=0.15)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("share of pixels removed (ROAD imputation)", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("cosine similarity to the match", fontsize=8)
    axes[1].legend(fontsize=7, loc="lower left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- a demo gallery and timing -------------------------------------------------------------------------------


def build_gallery(loaded, data: Path, people: int, folder: Path, seed: int) -> list[tuple[Path, str]]:
    """Enroll ``people`` identities' held-out crops (all but one each) into a fresh gallery.

    Returns:
        (query photo, identity) per person: the left-out crop's original photo when the raw folder is
        at hand (uncropped, as a user would pass it), else the crop itself.
    """
    import shutil

    from PIL import Image

    from facesearch.data.manifest import ok_rows, read_manifest, read_settings
    from facesearch.embed import Embedder
    from facesearch.gallery import Gallery, NewFace

    rows = [r for r in ok_rows(read_manifest(data)) if r.split in ("val", "test", "holdout")] or ok_rows(read_manifest(data))
    by_id: dict[str, list] = {}
    for r in rows:
        by_id.setdefault(r.identity, []).append(r)
    names = sorted(n for n, rs in by_id.items() if len(rs) >= 3)[:people]
    raw = Path(read_settings(data).get("raw_dir") or "/nonexistent")
    embedder = Embedder(loaded, device=str(loaded.model.fc6.weight.device))
    shutil.rmtree(folder, ignore_errors=True)
    queries, faces = [], []
    for name in names:
        enrolled, left_out = by_id[name][1:], by_id[name][0]
        crops = [Image.open(data / r.crop).convert("RGB") for r in enrolled]
        for r, crop, e in zip(enrolled, crops, embedder.embed_crops(crops)):
            faces.append(NewFace(name=name, embedding=e, source_path=r.path, crop=crop))
        photo = raw / left_out.path
        queries.append((photo if photo.is_file() else data / left_out.crop, name))
    with Gallery(folder) as g:
        g.add_faces(faces, loaded.fingerprint)
    log(f"gallery: {len(names)} people, {len(faces)} faces")
    return queries


def time_cli(photo: Path, gallery: Path, checkpoint: Path, out: Path, repeats: int, device: str) -> list[float]:
    """Wall and CPU seconds of ``facesearch explain`` as a fresh process, ``repeats`` times (the first is cold),
    with the 1-minute load average after each (other jobs share this machine's 2 cores)."""
    exe = Path(sys.executable).with_name("facesearch")
    times = []
    for i in range(repeats):
        start, cpu = time.perf_counter(), _cpu_seconds(resource.RUSAGE_CHILDREN)
        subprocess.run([str(exe), "explain", str(photo), "-g", str(gallery), "-c", str(checkpoint),
                        "--out", str(out / f"cli{i}"), "--device", device], check=True, capture_output=True)
        times.append({"wall": round(time.perf_counter() - start, 2),
                      "cpu": round(_cpu_seconds(resource.RUSAGE_CHILDREN) - cpu, 2), "load": _load_average()})
    return times


def _cpu_seconds(who) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _load_average() -> float:
    return round(os.getloadavg()[0], 2)


def time_library(queries, gallery: Path, loaded, out: Path, repeats: int, device: str):
    """``explain_identification`` in one process, model, detector and gallery opened once (warm): wall and CPU
    seconds, the load average, and seconds per phase; also returns the explanations."""
    from facesearch.embed import Embedder
    from facesearch.explain import explain_identification
    from facesearch.gallery import Gallery

    times, results = [], []
    embedder = Embedder.for_queries(loaded, device)
    with Gallery(gallery, create=False, read_only=None) as g:
        for i in range(repeats):
            photo, _ = queries[i % len(queries)]
            start, cpu = time.perf_counter(), _cpu_seconds(resource.RUSAGE_SELF)
            results.append(explain_identification(photo, g, embedder, out / f"lib{i}"))
            times.append({"wall": round(time.perf_counter() - start, 2),
                          "cpu": round(_cpu_seconds(resource.RUSAGE_SELF) - cpu, 2), "load": _load_average(),
                          "phases": results[-1].details["phase_s"]})
    return times, results


def demo_and_timing(loaded, args) -> dict:
    import shutil

    work = args.work
    queries = build_gallery(loaded, args.data, args.gallery_people, work / "gallery", args.seed)
    times, results = time_library(queries, work / "gallery", loaded, work, args.repeats, args.device)
    first = results[0]
    shutil.copy(first.files["report"], args.out / "report.html")
    shutil.copy(first.files["json"], args.out / "explanation.json")
    out = {"gallery_people": len(queries), "library_model_loaded_s": times,
           "explained": [{"photo": str(r.query), "truth": q[1], "answer": r.answer, "runner_up": r.runner_up,
                          "emerges_at": r.emerges_at, "top_layers": r.ranking[:3]}
                         for r, q in zip(results, queries)]}
    if args.cli_timing:
        out["cli_fresh_process_s"] = time_cli(queries[0][0], work / "gallery", args.checkpoint, work,
                                              args.repeats, args.device)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True, help="prepare output: pairs of crops of one person")
    p.add_argument("--pairs", type=int, default=200, help="query/match pairs for the faithfulness curves (0: skip)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--fractions", default=",".join(map(str, FRACTIONS)), help="shares of pixels removed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=REPO / "out" / "explain-bench", help="at most 4 files land here")
    p.add_argument("--work", type=Path, default=Path("/tmp/facesearch-explain-bench"), help="gallery, runs")
    p.add_argument("--gallery-people", type=int, default=0, help="build a gallery of N people and time explain")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cli-timing", action="store_true", help="also time `facesearch explain` as fresh processes")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    from facesearch.checkpoint import load_checkpoint

    loaded = load_checkpoint(args.checkpoint, device=args.device)
    report = {"checkpoint": str(args.checkpoint), "fingerprint": loaded.fingerprint,
              "model": loaded.config.to_dict(), "checkpoint_metrics": loaded.extra.get("metrics"),
              "device": args.device, "threads": args.threads, "torch": torch.__version__,
              "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    if args.pairs > 0:
        report["faithfulness"] = faithfulness(loaded, args)
    if args.gallery_people > 0:
        report["timing"] = demo_and_timing(loaded, args)
    (args.out / "explain_bench.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


def faithfulness(loaded, args) -> dict:
    pairs, source = choose_pairs(args.data, args.pairs, args.seed)
    log(f"{len(pairs)} pairs from {source}")
    start = time.perf_counter()
    fractions = tuple(float(f) for f in args.fractions.split(","))
    curves = run_pairs(loaded, pairs, fractions, args.batch, args.seed, torch.device(args.device))
    seconds = time.perf_counter() - start
    title = f"Deletion with ROAD imputation, {len(pairs)} pairs ({source}); bands: 95 % CI of the mean"
    plot(curves, fractions, args.out / "explain_faithfulness.png", title)
    np.savez(args.work / "explain_curves.npz", **{f"{m}|{o}": c for m, d in curves.items() for o, c in d.items()})
    return {"pairs": len(pairs), "pair_source": source, "data": str(args.data), "fractions": list(fractions),
            "seconds": round(seconds, 1), "methods": summarise(curves, fractions, args.seed)}


if __name__ == "__main__":
    main()
