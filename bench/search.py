"""Gallery search benchmarks: index types at 10⁴-10⁶ faces, and end-to-end ``who``.

``index``: latency (one query at a time, as ``who`` searches), recall@10 against exact 4,096-d
inner-product search, build time and memory per face, for each index type the gallery offers. Each
index is built through ``FaceIndex`` (the gallery's own code), written to a file, then loaded and
searched by a fresh process, whose peak resident memory is reported.

The vectors are synthetic but face-like: many identities x several faces each. An identity is a point
``z_c`` in a ``--latent``-dimensional space with a power-law spectrum (variance of axis j ∝ 1/j); a face
is ``z_c + w`` with within-identity variation ``w`` (``--spread`` x the identity spread), mapped to
4,096-d by a fixed random orthonormal map, plus isotropic noise carrying ``--noise`` of the energy, then
L2-normalised. Queries are new faces of enrolled identities. Vectors are generated in chunks (10⁶ x 4,096
floats would be 16 GB) and the exact top-10 is kept up to date chunk by chunk. Plain Gaussian vectors
would have no neighbours worth finding; whether real embeddings have a latent dimension this low is an
assumption stated with the figures (pass real embeddings to ``spectrum`` to check one model).

``who``: a gallery of ``--faces`` synthetic faces plus a real person's photos, then ``who`` on a one-face
photo scaled to 640 px: warm in-process (the ``Gallery`` and ``Embedder`` already open) and cold from
the command line (a new process per call). The model is ``--checkpoint`` or a random-weight VGG16 of the
default shape (112 px input, fc 4,096): the same compute as a trained one.

From the repo root::

    .venv/bin/python bench/search.py index --sizes 10000 100000
    .venv/bin/python bench/search.py index --sizes 1000000 --kinds flat+pca ivf+pca ivf-sq8+pca hnsw+pca
    .venv/bin/python bench/search.py who --faces 100000
    .venv/bin/python bench/search.py spectrum EMBEDDINGS.npy

Each prints JSON lines (one per measurement) and appends them to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

# Busy-waiting OpenMP threads (the default) are ruinous on a small shared CPU: measured 10 s instead of
# 0.6 s for one MTCNN pass with another process on the second core. Must be set before torch/faiss load.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DIM = 4096
CHUNK = 20_000
K = 10


# -- synthetic faces --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Synthetic:
    """Clustered unit vectors: identities x faces, generated deterministically chunk by chunk."""

    n: int  # faces in the gallery
    faces_per_identity: int = 8
    latent: int = 128
    spread: float = 0.7  # within-identity std / between-identity std, per latent axis
    noise: float = 0.1  # share of each vector's energy that is isotropic noise
    seed: int = 0
    dim: int = DIM  # embedding width (the model's fc7 when the gallery also holds real faces)

    def _basis(self) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        q, _ = np.linalg.qr(rng.standard_normal((self.dim, self.latent)).astype(np.float32))
        return q.T.copy()  # (latent, dim), orthonormal rows

    def _sigma(self) -> np.ndarray:
        return (1.0 / np.sqrt(np.arange(1, self.latent + 1))).astype(np.float32)  # (latent,)

    def _centres(self, identities: np.ndarray) -> np.ndarray:
        out = np.empty((len(identities), self.latent), np.float32)
        for i, c in enumerate(identities):  # one small generator per identity: any chunk can be redrawn
            out[i] = np.random.default_rng((self.seed, 1, int(c))).standard_normal(self.latent, dtype=np.float32)
        return out * self._sigma()

    def _faces(self, identities: np.ndarray, rng: np.random.Generator, basis: np.ndarray) -> np.ndarray:
        z = self._centres(identities)
        z += self.spread * rng.standard_normal(z.shape, dtype=np.float32) * self._sigma()
        x = z @ basis  # (n, DIM)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        eta = np.sqrt(self.noise / (1 - self.noise) / self.dim)  # per-dim noise std for that energy share
        x += eta * rng.standard_normal(x.shape, dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x

    def chunks(self, size: int = CHUNK):
        """(ids, (m, DIM) vectors) covering faces 0..n-1; face i belongs to identity i // faces_per_identity."""
        basis = self._basis()
        for start in range(0, self.n, size):
            ids = np.arange(start, min(start + size, self.n), dtype=np.int64)
            rng = np.random.default_rng((self.seed, 2, start))
            yield ids, self._faces(ids // self.faces_per_identity, rng, basis)

    def queries(self, nq: int, stream: int = 3) -> np.ndarray:
        """New faces of enrolled identities (another ``stream``: other faces, e.g. to warm a cache)."""
        rng = np.random.default_rng((self.seed, stream))
        identities = rng.integers(0, max(self.n // self.faces_per_identity, 1), nq)
        return self._faces(identities, rng, self._basis())


class TopK:
    """Exact top-k by inner product, merged chunk by chunk."""

    def __init__(self, xq: np.ndarray, k: int = K):
        self.xq, self.k = xq, k
        self.D = np.full((len(xq), k), -np.inf, np.float32)
        self.I = np.full((len(xq), k), -1, np.int64)

    def update(self, ids: np.ndarray, xb: np.ndarray) -> None:
        S = self.xq @ xb.T  # (nq, m)
        D = np.concatenate([self.D, S], axis=1)
        I = np.concatenate([self.I, np.broadcast_to(ids, S.shape)], axis=1)
        top = np.argpartition(-D, self.k - 1, axis=1)[:, : self.k]
        self.D, self.I = np.take_along_axis(D, top, 1), np.take_along_axis(I, top, 1)


def recall_at_k(I: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a[a >= 0]) & set(b)) / len(b) for a, b in zip(I, truth)]))


# -- index benchmark --------------------------------------------------------------------------------


def index_settings(kind: str, n: int, pca: int, hnsw_m: int | None = None, ef_construction: int | None = None):
    """The IndexSettings a gallery of ``n`` faces would use for ``kind`` (e.g. "hnsw+pca", "ivf-sq8+pca")."""
    from facesearch.gallery import IndexSettings

    base, _, reduce = kind.partition("+")
    family, _, codec = base.partition("-")
    # 4 sqrt(n) lists, at most 1,024: k-means wants ~39 training points per list and trains on 50,000.
    nlist = int(min(4 * np.sqrt(n), 1024)) if family == "ivf" else None
    default = IndexSettings()
    return IndexSettings(kind=family, pca_dim=pca if reduce == "pca" else None, min_train=1, train_size=50_000,
                         ivf_codec=codec or "flat", ivf_nlist=nlist, hnsw_m=hnsw_m or default.hnsw_m,
                         hnsw_ef_construction=ef_construction or default.hnsw_ef_construction)


def uncompressed(kind: str) -> bool:
    """Kinds that keep all 4,096 floats per face (16 GB at 10⁶ faces)."""
    return "+pca" not in kind and not any(c in kind for c in ("-sq8", "-pq"))


SWEEPS = {"hnsw": ("hnsw_ef_search", [32, 64, 128, 256, 512, 1024]), "ivf": ("ivf_nprobe", [8, 16, 32, 64, 128, 256])}


def bench_index(args) -> None:
    from facesearch.gallery import FaceIndex
    from facesearch.gallery.vectors.index import train_pca

    for n in args.sizes:
        data = Synthetic(n, latent=args.latent, spread=args.spread, noise=args.noise)
        xq = data.queries(args.nq)
        truth = TopK(xq)
        kinds = [k for k in args.kinds if not (uncompressed(k) and n * DIM * 4 > args.max_flat_bytes)]
        train = next(data.chunks(50_000))[1] if any("+" in k or k.startswith("ivf") for k in kinds) else None
        t = time.perf_counter()
        pca = train_pca(train[:20_000], args.pca) if any("+pca" in k for k in kinds) else None  # shared
        pca_s = time.perf_counter() - t
        indexes, build_s, settings = {}, {}, {}
        for kind in kinds:
            t = time.perf_counter()
            settings[kind] = index_settings(kind, n, args.pca, args.hnsw_m, args.ef_construction)
            indexes[kind] = FaceIndex.create(settings[kind], DIM, n, train, pca=pca)
            build_s[kind] = time.perf_counter() - t + (pca_s if "+pca" in kind else 0.0)
        del train
        for ids, xb in data.chunks():
            truth.update(ids, xb)
            for kind, index in indexes.items():
                t = time.perf_counter()
                index.add(ids, xb)
                build_s[kind] += time.perf_counter() - t
            print(f"n={n}: {ids[-1] + 1} faces added", file=sys.stderr, flush=True)
        np.save(args.work / "xq.npy", xq)
        np.save(args.work / "truth.npy", truth.I)
        for kind in list(indexes):
            path = args.work / f"{kind}.faiss"
            indexes.pop(kind).write(path)  # free it before the probe process loads the file
            rows = probe(path, args)
            reranked = rerank_recall(data, xq, truth.I, [r["candidates"] for r in rows]) if args.rerank else {}
            for row in rows:
                emit(args, {"bench": "index", "n": n, "kind": kind, "build_s": round(build_s[kind], 1),
                            "hnsw_m": settings[kind].hnsw_m, "ef_construction": settings[kind].hnsw_ef_construction,
                            "latent": args.latent, "spread": args.spread, "noise": args.noise, **row,
                            "rerank50_recall_at_10": reranked.get(row["candidates"])})
            path.unlink()


def rerank_recall(data: Synthetic, xq: np.ndarray, truth: np.ndarray, files: list[str]) -> dict[str, float]:
    """Recall@10 after what ``Gallery.search`` does: the index's top 50, re-scored exactly from the stored
    4,096-d embeddings (here regenerated, one more pass over the chunks, keeping only the candidates)."""
    cands = {f: np.load(f) for f in files}  # each (nq, 50) face ids
    wanted = np.unique(np.concatenate([c.ravel() for c in cands.values()]))
    wanted = wanted[wanted >= 0]
    vectors = {}
    for ids, xb in data.chunks():
        hit = np.isin(ids, wanted)
        vectors.update(zip(ids[hit].tolist(), xb[hit]))
    out = {}
    for f, cand in cands.items():
        top = []
        for q, row in zip(xq, cand):
            row = row[row >= 0]
            sims = np.array([vectors[int(i)] @ q for i in row])
            top.append(row[np.argsort(-sims)[:K]])
        out[f] = round(recall_at_k(np.array(top), truth), 4)
    return out


def probe(path: Path, args) -> list[dict]:
    """Load an index file in a fresh process and measure it there (so its RSS is the index's)."""
    cmd = [sys.executable, __file__, "_probe", str(path), str(args.work), "--latency-queries", str(args.latency_queries),
           "--sweep", *[str(v) for v in args.sweep or []]]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def peak_rss_bytes() -> int:
    """This process's peak resident memory (VmHWM; ru_maxrss would include the parent's, kept over exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_probe(args) -> None:
    import faiss

    from facesearch.gallery import FaceIndex

    faiss.omp_set_num_threads(1)  # one query at a time uses one core anyway; keep the other for the box
    index = FaceIndex.read(args.path)
    xq, truth = np.load(args.work / "xq.npy"), np.load(args.work / "truth.npy")
    field, values = SWEEPS.get(index.family, (None, [None]))
    if field and args.sweep:
        values = args.sweep
    for value in values:
        if field:
            index.settings = replace(index.settings, **{field: value})
        _, I = index.search(xq, K)
        candidates = args.work / f"candidates-{index.layout}-{value}.npy"
        np.save(candidates, index.search(xq, 50)[1])  # for the exact re-scoring, as the gallery does it
        lat = []
        for q in xq[: args.latency_queries]:
            t = time.perf_counter()
            index.search(q[None], K)
            lat.append(time.perf_counter() - t)
        lat_ms = np.array(lat) * 1000
        print(json.dumps({
            "layout": index.layout, "param": field, "value": value, "recall_at_10": round(recall_at_k(I, truth), 4),
            "p50_ms": round(float(np.median(lat_ms)), 3), "p95_ms": round(float(np.percentile(lat_ms, 95)), 3),
            "bytes_per_face": round(index.memory_bytes() / len(index.ids), 1), "rss_gb": round(peak_rss_bytes() / 2**30, 2),
            "candidates": str(candidates),
        }))


# -- end-to-end who ---------------------------------------------------------------------------------


def bench_who(args) -> None:
    from PIL import Image

    from facesearch.checkpoint import load_checkpoint
    from facesearch.gallery import Gallery, IndexSettings

    checkpoint = Path(args.checkpoint) if args.checkpoint else random_checkpoint(args.work / "vgg16-112.pt")
    loaded = load_checkpoint(checkpoint)
    folder = args.work / "gallery"
    if not folder.exists():
        build_gallery(folder, loaded, args)
    person = sorted((REPO / "sample" / "photos").iterdir())[0]
    photo = args.work / "query-640.jpg"
    with Image.open(sorted(person.glob("*.jpg"))[-1]) as im:
        scale = 640 / max(im.size)
        im.convert("RGB").resize((round(im.width * scale), round(im.height * scale)), Image.BICUBIC).save(photo, quality=92)
    for kind in args.kinds:
        with Gallery(folder) as g:
            settings = replace(index_settings(kind, args.faces, args.pca), min_train=IndexSettings().min_train)
            if g.vector_settings.faiss != settings:
                t = time.perf_counter()
                g.rebuild(settings)
                print(f"rebuilt as {kind} in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        warm = who_warm(folder, loaded, photo, args.repeats)
        cold = who_cold(folder, checkpoint, photo, args.cold_repeats)
        emit(args, {"bench": "who", "faces": args.faces, "kind": kind, "photo_px": list(Image.open(photo).size),
                    "checkpoint": str(args.checkpoint) if args.checkpoint else "random VGG16 112 px, fc 4096",
                    **warm, **cold})


def bench_fetch(args) -> None:
    """The SQL half of ``Gallery.search`` at gallery scale: fetch the index's 50 candidates (name, paths and
    4,096-d embedding) and re-score them exactly, as ``Gallery.search`` does (``gallery.hits``), for random ids.

    The database is the gallery's own (created through its Alembic migrations), filled with ``--faces`` rows
    by bulk inserts (no FAISS index is built: this times only what happens after the index answered).
    """
    import sqlalchemy as sa

    from sqlalchemy.orm import Session

    from facesearch.gallery import Gallery
    from facesearch.gallery.hits import hit_rows, ranked_hits
    from facesearch.gallery.models import Face, Identity

    folder = args.work / f"fetch-{args.faces}"
    rng = np.random.default_rng(0)
    if not (folder / "built").exists():
        shutil.rmtree(folder, ignore_errors=True)
        t = time.perf_counter()
        with Gallery(folder) as g:
            block = rng.standard_normal((10_000, DIM), dtype=np.float32)
            block /= np.linalg.norm(block, axis=1, keepdims=True)
            blobs = [v.tobytes() for v in block]
            per_identity = 8
            with g.engine.begin() as conn:
                conn.execute(sa.insert(Identity.__table__), [{"name": f"synthetic {i}"}
                                                              for i in range(args.faces // per_identity + 1)])
                for start in range(0, args.faces, 10_000):
                    stop = min(start + 10_000, args.faces)
                    conn.execute(sa.insert(Face.__table__), [
                        {"identity_id": i // per_identity + 1, "source_path": f"/photos/{i}.jpg",
                         "crop_path": f"crops/{i}.jpg", "embedding": blobs[i % len(blobs)],
                         "model_fingerprint": "bench"}
                        for i in range(start, stop)])
                    print(f"{stop} faces inserted", file=sys.stderr, flush=True)
        (folder / "built").touch()
        print(f"database of {args.faces} faces built in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    size = sum(f.stat().st_size for f in folder.glob("gallery.db*"))
    with Gallery(folder, create=False) as g:
        with g.engine.connect() as conn:
            n = conn.execute(sa.select(sa.func.max(Face.id))).scalar()
        q = rng.standard_normal(DIM, dtype=np.float32)
        lat = []
        for r in range(args.repeats + 5):
            ids = rng.choice(n, 50, replace=False) + 1
            t = time.perf_counter()
            with Session(g.engine) as session:
                rows = hit_rows(session, ids, with_embeddings=True)
            hits = ranked_hits(g.folder, q, np.zeros(50, np.float32), ids, rows, exact=False)
            if r >= 5:  # the first queries warm the connection pool and statement cache
                lat.append(time.perf_counter() - t)
            assert len(hits) == 50
    lat_ms = np.array(lat) * 1000
    emit(args, {"bench": "fetch", "faces": args.faces, "db_bytes": size, "candidates": 50,
                "p50_ms": round(float(np.median(lat_ms)), 3), "p95_ms": round(float(np.percentile(lat_ms, 95)), 3),
                "repeats": args.repeats})


def bench_refine(args) -> None:
    """Would compact in-memory codes of the full 4,096-d vectors do the gallery's exact re-scoring? Candidates:
    exact top 50 in the PCA space (the best any PCA index can hand over); re-scored with scalar-quantised
    4,096-d codes of ``--bits`` bits per dimension; recall@10 against exact 4,096-d search."""
    import faiss

    data = Synthetic(args.faces, latent=args.latent, spread=args.spread, noise=args.noise)
    xq = data.queries(args.nq)
    truth = TopK(xq)
    train = next(data.chunks(50_000))[1][:20_000]
    pca = faiss.PCAMatrix(DIM, args.pca)
    pca.train(train)
    reduced = faiss.IndexFlatL2(args.pca)
    quantizers = {b: faiss.IndexScalarQuantizer(DIM, getattr(faiss.ScalarQuantizer, f"QT_{b}bit"),
                                                faiss.METRIC_INNER_PRODUCT) for b in args.bits}
    for q in quantizers.values():
        q.train(train)
    for ids, xb in data.chunks():
        truth.update(ids, xb)
        reduced.add(pca.apply(xb))
        for q in quantizers.values():
            q.add(xb)
    _, cand = reduced.search(pca.apply(xq), 50)
    row = {"bench": "refine", "faces": args.faces, "pca": args.pca,
           "pca_exact_recall_at_10": round(recall_at_k(cand[:, :K], truth.I), 4)}
    for bits, q in quantizers.items():
        top = [c[np.argsort(-(np.stack([q.reconstruct(int(i)) for i in c]) @ v))[:K]] for v, c in zip(xq, cand)]
        row[f"sq{bits}_rescored_recall_at_10"] = round(recall_at_k(np.array(top), truth.I), 4)
        row[f"sq{bits}_bytes_per_face"] = q.sa_code_size()
    emit(args, row)


def random_checkpoint(path: Path) -> Path:
    import torch

    from facesearch.checkpoint import Preprocess, save_checkpoint
    from facesearch.models.vgg import VGG16, VGGConfig

    if not path.exists():
        torch.manual_seed(0)
        save_checkpoint(path, VGG16(VGGConfig(num_classes=100)), [str(i) for i in range(100)], Preprocess(112))
    return path


def build_gallery(folder: Path, loaded, args) -> None:
    """``--faces`` synthetic faces under the checkpoint's fingerprint, then a real person's photos."""
    from facesearch.embed import Embedder
    from facesearch.gallery import Gallery, NewFace
    from facesearch.gallery.enroll import enroll

    data = Synthetic(args.faces, latent=min(args.latent, loaded.config.embedding_width), spread=args.spread,
                     noise=args.noise, seed=1, dim=loaded.config.embedding_width)
    t = time.perf_counter()
    with Gallery(folder) as g:
        for ids, xb in data.chunks(args.faces):  # one transaction, one index build
            g.add_faces([NewFace(name=f"synthetic {i // data.faces_per_identity}", embedding=v) for i, v in zip(ids, xb)],
                        loaded.fingerprint)
        person = sorted((REPO / "sample" / "photos").iterdir())[0]
        photos = sorted(person.glob("*.jpg"))[:-1]  # the last one is the query
        enroll(g, Embedder(loaded, device="cpu"), [(p, "sample person") for p in photos])
    print(f"gallery of {args.faces} faces built in {time.perf_counter() - t:.0f} s", file=sys.stderr)


def who_warm(folder: Path, loaded, photo: Path, repeats: int) -> dict:
    from facesearch.gallery import Gallery
    from facesearch.embed import Embedder
    from facesearch.search import who

    embedder = Embedder.for_queries(loaded, device="cpu")  # what `facesearch who` uses
    with Gallery(folder) as g:
        first = who(g, embedder, photo)  # loads MTCNN and the index
        assert len(first.faces) == 1 and first.faces[0].matches[0].name == "sample person", first
        total, detect, embed, search = [], [], [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            who(g, embedder, photo)
            total.append(time.perf_counter() - t0)
        image = embedder_image(photo)
        for _ in range(repeats):  # the same work, step by step
            t0 = time.perf_counter()
            faces = embedder.detector.detect([image])
            t1 = time.perf_counter()
            xq = embedder.embed_crops([crop_of(embedder, image, faces[0][0])])
            t2 = time.perf_counter()
            g.search(xq, k=50)
            t3 = time.perf_counter()
            detect.append(t1 - t0)
            embed.append(t2 - t1)
            search.append(t3 - t2)
    ms = lambda v: round(float(np.median(v)) * 1000, 1)  # noqa: E731
    return {"warm_p50_ms": ms(total), "warm_p95_ms": round(float(np.percentile(total, 95)) * 1000, 1),
            "warm_detect_p50_ms": ms(detect), "warm_embed_p50_ms": ms(embed), "warm_search_p50_ms": ms(search)}


def embedder_image(photo: Path):
    from facesearch.data.images import load_image

    return load_image(photo)


def crop_of(embedder, image, face):
    from facesearch.data.detect import crop_face

    c = embedder.crop
    return crop_face(image, face, c.size, c.margin, c.align)


def who_cold(folder: Path, checkpoint: Path, photo: Path, repeats: int) -> dict:
    cmd = [str(Path(sys.executable).parent / "facesearch"), "who", str(photo), "-c", str(checkpoint), "-g", str(folder),
           "--device", "cpu", "--json"]
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    return {"cold_median_s": round(float(np.median(times)), 2), "cold_runs_s": [round(t, 2) for t in times]}


# -- spectrum of real embeddings --------------------------------------------------------------------


def bench_spectrum(args) -> None:
    """Share of variance in the first 32..1024 principal axes of an (n, d) embeddings file, next to the
    synthetic data's, to judge whether the synthetic assumption fits a real model."""
    x = np.load(args.embeddings).astype(np.float32)
    synth = next(Synthetic(len(x), latent=args.latent, spread=args.spread, noise=args.noise).chunks(len(x)))[1]
    for name, v in (("real", x), ("synthetic", synth)):
        v = v - v.mean(0)
        s = np.linalg.svd(v, compute_uv=False) ** 2
        share = np.cumsum(s) / s.sum()
        emit(args, {"bench": "spectrum", "data": name, "n": len(v), **{f"pc{k}": round(float(share[min(k, len(share)) - 1]), 3)
                                                                     for k in (32, 64, 128, 256, 512, 1024)}})


# -- main -------------------------------------------------------------------------------------------


def emit(args, row: dict) -> None:
    row = {**row, "host": platform.node(), "cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
           "date": time.strftime("%Y-%m-%d %H:%M")}
    print(json.dumps(row), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp folder)")
    common.add_argument("--out", type=Path, default=REPO / "results" / "bench_search.jsonl")
    common.add_argument("--latent", type=int, default=128)
    common.add_argument("--spread", type=float, default=0.7)
    common.add_argument("--noise", type=float, default=0.1)
    common.add_argument("--pca", type=int, default=128)
    q = sub.add_parser("index", parents=[common])
    q.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    q.add_argument("--kinds", nargs="+", default=["flat", "flat+pca", "hnsw", "hnsw+pca", "ivf+pca", "ivf-sq8+pca"])
    q.add_argument("--nq", type=int, default=500)
    q.add_argument("--latency-queries", type=int, default=200)
    q.add_argument("--rerank", action=argparse.BooleanOptionalAction, default=True,
                   help="also measure recall after exact re-scoring of the top 50 (one more generation pass)")
    q.add_argument("--sweep", type=int, nargs="*", default=None, help="efSearch / nprobe values (default: a wide sweep)")
    q.add_argument("--hnsw-m", type=int, default=None, help="HNSW graph degree (default: the gallery's)")
    q.add_argument("--ef-construction", type=int, default=None, help="HNSW build breadth (default: the gallery's)")
    q.add_argument("--max-flat-bytes", type=float, default=2e9, help="skip uncompressed 4,096-d kinds above this size")
    w = sub.add_parser("who", parents=[common])
    w.add_argument("--faces", type=int, default=100_000)
    w.add_argument("--checkpoint", default=None)
    w.add_argument("--kinds", nargs="+", default=["flat", "hnsw+pca"])
    w.add_argument("--repeats", type=int, default=20)
    w.add_argument("--cold-repeats", type=int, default=3)
    f = sub.add_parser("fetch", parents=[common])
    f.add_argument("--faces", type=int, default=1_000_000)
    f.add_argument("--repeats", type=int, default=200)
    rf = sub.add_parser("refine", parents=[common])
    rf.add_argument("--faces", type=int, default=100_000)
    rf.add_argument("--nq", type=int, default=300)
    rf.add_argument("--bits", type=int, nargs="+", default=[4, 6, 8])
    s = sub.add_parser("spectrum", parents=[common])
    s.add_argument("embeddings", type=Path)
    r = sub.add_parser("_probe")
    r.add_argument("path", type=Path)
    r.add_argument("work", type=Path)
    r.add_argument("--latency-queries", type=int, default=200)
    r.add_argument("--sweep", type=int, nargs="*", default=None)
    args = p.parse_args()
    if args.command == "_probe":
        return run_probe(args)
    args.work = args.work or Path(tempfile.mkdtemp(prefix="facesearch-bench-"))
    args.work.mkdir(parents=True, exist_ok=True)
    {"index": bench_index, "who": bench_who, "fetch": bench_fetch, "refine": bench_refine,
     "spectrum": bench_spectrum}[args.command](args)


if __name__ == "__main__":
    main()
