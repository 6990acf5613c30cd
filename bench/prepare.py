"""Throughput of ``facesearch prepare`` against the naive MTCNN loop, on the same photos and machine.

The naive loop is what a first script does: one photo at a time, ``Image.open(...).convert("RGB")`` then
``MTCNN(device="cpu").detect`` with the default ``min_face_size`` (20) and torch's default number of
threads, in one process; a photo counts as ok when at least one face is found. It writes no crops.

``prepare`` is the library call ``facesearch prepare`` makes (hashing, decoding, batched detection in
``--workers`` single-threaded processes, cropping, JPEG writing, manifest), into a fresh output folder,
so its time includes starting the worker processes. From the repo root::

    .venv/bin/python bench/prepare.py --data ../shared/data/celeba-wild-299 --limit 600

``--limit N`` takes a deterministic subset: every k-th photo of the sorted file list (k = total // N),
so all identities are represented. Prints one JSON object (also written to ``--json-out`` if given).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def subset(data: Path, limit: int | None) -> list[Path]:
    """Every k-th photo of the sorted list, ``limit`` of them (all when ``limit`` is None)."""
    files = sorted(p for p in data.glob("*/*") if p.is_file() and p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if limit is None or limit >= len(files):
        return files
    step = len(files) // limit
    return files[::step][:limit]


def link_tree(files: list[Path], data: Path, raw: Path) -> None:
    """A RAW_DIR of symlinks to exactly these photos (prepare follows them; nothing is copied)."""
    for f in files:
        target = raw / f.relative_to(data)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(f)


def naive(files: list[Path], threads: int | None = None) -> dict:
    import torch
    from facenet_pytorch import MTCNN
    from PIL import Image

    default_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    mtcnn = MTCNN(device="cpu")
    start, cpu, ok = time.perf_counter(), cpu_seconds(), 0
    for f in files:
        boxes, _ = mtcnn.detect(Image.open(f).convert("RGB"))
        ok += boxes is not None
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    used = torch.get_num_threads()
    torch.set_num_threads(default_threads)
    return {"seconds": seconds, "photos_per_s": len(files) / seconds, "ok": ok, "ok_rate": ok / len(files),
            "cpu_ms_per_photo": 1000 * cpu / len(files), "torch_threads": used}


def ours(raw: Path, out: Path, workers: int) -> dict:
    from facesearch.data.prepare import PrepareSettings, prepare

    start, cpu = time.perf_counter(), cpu_seconds()
    report = prepare(raw, out, PrepareSettings(), device="cpu", workers=workers)
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    n, ok = len(report.rows), report.counts.get("ok", 0)
    return {"seconds": seconds, "photos_per_s": n / seconds, "ok": ok, "ok_rate": ok / n, "counts": report.counts,
            "cpu_ms_per_photo": 1000 * cpu / n, "workers": workers}


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the worker processes), all threads.

    Unlike wall time it barely moves when other jobs share the cores, so it is the fairer figure on a
    busy machine (spinning OpenMP threads do count, as they cost real CPU).
    """
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "celeba-wild-299")
    parser.add_argument("--limit", type=int, default=None, help="deterministic subset of this many photos")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json-out", type=Path, default=None)
    parser.add_argument("--also-one-thread", action="store_true",
                        help="also time the naive loop with torch.set_num_threads(1) (for reference)")
    args = parser.parse_args()

    files = subset(args.data, args.limit)
    work = Path(tempfile.mkdtemp(prefix="bench_prepare_"))
    try:
        link_tree(files, args.data, work / "raw")
        load_before = os.getloadavg()
        result_naive = naive(files)
        load_mid = os.getloadavg()
        result_naive_1 = naive(files, threads=1) if args.also_one_thread else None
        result_ours = ours(work / "raw", work / "out", args.workers)
        load_after = os.getloadavg()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    record = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "data": str(args.data),
        "photos": len(files),
        "limit": args.limit,
        "naive": result_naive,
        "prepare": result_ours,
        "naive_one_thread": result_naive_1,
        "speedup": result_ours["photos_per_s"] / result_naive["photos_per_s"],
        "cpu_ratio": result_naive["cpu_ms_per_photo"] / result_ours["cpu_ms_per_photo"],
        "loadavg_1min": {"before": load_before[0], "after_naive": load_mid[0], "after": load_after[0]},
    }
    text = json.dumps(record, indent=2)
    print(text)
    if args.json_out:
        args.json_out.write_text(text + "\n")


if __name__ == "__main__":
    main()
