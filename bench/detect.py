"""MTCNN's CPU time per photo: facenet-pytorch's ``detect_face`` against facesearch's pipeline (``facesearch.data.mtcnn``).

In one process, on the same input tensors, with the same networks (channels-last, as ``FaceDetector`` builds them)
and settings: each round times both, alternating which goes first, on each photo set and batch size, and checks
that they found the same faces. CPU time (``time.process_time``) at ``--threads`` torch threads, so a loaded
machine slows both alike; the speed-up is the median of the rounds' ratios.

Photo sets: ``query`` is bench/serve.py's query (the first sample person's last photo, longer side 640 px) at
``who``'s smallest face (40 px), repeated to fill a batch as the service's batcher fills one; ``sample`` is
``--photos`` sample photos (people and strangers) at one size (224 x 256, their own is about that) at prepare's
smallest face (20 px). From the repo root::

    .venv/bin/python bench/detect.py --rounds 5

Prints one JSON line per photo set and batch size, and appends them to ``--out`` when given. ``--stages`` prints
instead where each pipeline's CPU time goes on each set (batch 1): the networks' forward passes, the resampling
(facenet-pytorch's per-scale and per-box ``imresample`` calls; facesearch's summed-area table and gathers), NMS,
and the rest (box arithmetic, Python, conversions), as shares of the total.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

THRESHOLDS = (0.6, 0.7, 0.7)


def photo_sets(n_sample: int) -> dict[str, tuple[list[np.ndarray], int]]:
    """name -> (photos as (H, W, 3) uint8, all of one size; smallest face searched for)."""
    from PIL import Image

    photos = REPO / "sample" / "photos"
    with Image.open(sorted(sorted(photos.iterdir())[0].glob("*.jpg"))[-1]) as im:  # as bench/serve.py picks it
        scale = 640 / max(im.size)
        query = im.convert("RGB").resize((round(im.width * scale), round(im.height * scale)), Image.BICUBIC)
    files = sorted(photos.glob("*/*.jpg"))[::31] + sorted((REPO / "sample" / "strangers").glob("*/*.jpg"))[::31]
    sample = []
    for f in files[:n_sample]:
        with Image.open(f) as im:
            sample.append(np.asarray(im.convert("RGB").resize((224, 256), Image.BICUBIC)))
    return {"query": ([np.asarray(query)], 40), "sample": (sample, 20)}


def batches(photos: list[np.ndarray], size: int) -> list[np.ndarray]:
    """(size, H, W, 3) batches cycling through ``photos``: one per photo, at least one."""
    cycled = [photos[k % len(photos)] for k in range(max(len(photos), size))]
    return [np.stack(cycled[k : k + size]) for k in range(0, len(cycled) - size + 1, size)]


def theirs(mtcnn, batch: np.ndarray, min_face: int):
    import torch
    from facenet_pytorch.models.utils.detect_face import detect_face

    with torch.no_grad():
        return detect_face(torch.from_numpy(batch.copy()), min_face, mtcnn.pnet, mtcnn.rnet, mtcnn.onet,
                           list(THRESHOLDS), mtcnn.factor, mtcnn.device)


def ours(mtcnn, batch: np.ndarray, min_face: int):
    from facesearch.data.mtcnn import detect_equal_sized

    return detect_equal_sized(batch, min_face, mtcnn, THRESHOLDS)


def same_faces(a, b) -> bool:
    """Equal up to float rounding: per photo the same number of faces, boxes and landmarks within 1e-3 px."""
    return all(np.asarray(x, np.float32).shape == np.asarray(y, np.float32).shape
               and np.allclose(np.asarray(x, np.float32), np.asarray(y, np.float32), rtol=0, atol=1e-3)
               for part_a, part_b in zip(a, b) for x, y in zip(part_a, part_b))


def cpu_ms_per_photo(run, mtcnn, work: list[np.ndarray], min_face: int, repeat: int) -> float:
    start = time.process_time()
    for _ in range(repeat):
        for batch in work:
            run(mtcnn, batch, min_face)
    return 1000 * (time.process_time() - start) / (repeat * sum(len(b) for b in work))


@contextlib.contextmanager
def stage_clock(mtcnn):
    """CPU seconds per stage while inside, by wrapping the networks and both pipelines' helpers (undone on exit)."""
    from facenet_pytorch.models.utils import detect_face as fp

    import facesearch.data.mtcnn as fs

    spent: collections.Counter = collections.Counter()

    def timed(name, fn):
        def run(*a, **k):
            start = time.process_time()
            try:
                return fn(*a, **k)
            finally:
                spent[name(*a) if callable(name) else name] += time.process_time() - start
        return run

    def resampling(img, size):  # facenet-pytorch: the pyramid resamples the whole batch, the loops one box
        return "resample: pyramid" if img.shape[0] > 1 or size not in ((24, 24), (48, 48)) else f"resample: boxes {size[0]} px"

    patches = [(mtcnn.pnet, "forward", "P-net forward"), (mtcnn.rnet, "forward", "R-net forward"),
               (mtcnn.onet, "forward", "O-net forward"), (fp, "imresample", resampling),
               (fp, "batched_nms_numpy", "NMS"), (fs, "batched_nms", "NMS"), (fp, "generateBoundingBox", "P-net boxes"),
               (fs, "_summed_area", "resample: summed-area table"),
               (fs, "_resample_regions", lambda *a: "resample: pyramid" if a[-1] not in ((24, 24), (48, 48))
                else f"resample: boxes {a[-1][0]} px")]
    patches.append((fp, "batched_nms", "NMS"))  # both modules import torchvision's batched_nms by name
    saved = [(obj, attr, getattr(obj, attr)) for obj, attr, _ in patches]
    try:
        for obj, attr, name in patches:
            setattr(obj, attr, timed(name, getattr(obj, attr)))
        yield spent
    finally:
        for obj, attr, fn in saved:
            setattr(obj, attr, fn)


def stages(mtcnn, sets, repeat: int) -> None:
    for name, (photos, min_face) in sets.items():
        work = batches(photos, 1)
        for pipeline, run in (("facenet-pytorch", theirs), ("facesearch", ours)):
            for batch in work:
                run(mtcnn, batch, min_face)  # warm-up, outside the clock
            with stage_clock(mtcnn) as spent:
                total = cpu_ms_per_photo(run, mtcnn, work, min_face, repeat) * len(work) * repeat / 1000
            shares = {k: round(100 * v / total, 1) for k, v in spent.most_common()}
            shares["rest"] = round(100 - sum(shares.values()), 1)
            print(json.dumps({"set": name, "pipeline": pipeline, "cpu ms/photo": round(1000 * total / len(work) / repeat, 1),
                              "% of CPU time": shares, "load average": round(os.getloadavg()[0], 2)}), flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3, help="passes over a set's batches per round and pipeline")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="photos per detection call")
    parser.add_argument("--photos", type=int, default=8, help="photos in the 'sample' set")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", type=Path, help="append the JSON lines here too")
    parser.add_argument("--stages", action="store_true", help="where the time goes, instead of the comparison")
    args = parser.parse_args(argv)

    import torch
    from facenet_pytorch import MTCNN

    from facesearch.runtime import CHANNELS_LAST

    torch.set_num_threads(args.threads)
    mtcnn = MTCNN(keep_all=True, post_process=False, device="cpu")
    for net in (mtcnn.pnet, mtcnn.rnet, mtcnn.onet):  # as FaceDetector builds them on a CPU
        net.to(memory_format=CHANNELS_LAST)
    if args.stages:
        return stages(mtcnn, photo_sets(args.photos), args.repeat)
    pipelines = {"facenet-pytorch": theirs, "facesearch": ours}
    for name, (photos, min_face) in photo_sets(args.photos).items():
        for size in args.batch:
            work = batches(photos, size)
            assert all(same_faces(theirs(mtcnn, b, min_face), ours(mtcnn, b, min_face)) for b in work), name  # warms up too
            load_before = os.getloadavg()[0]
            times: dict[str, list[float]] = {p: [] for p in pipelines}
            for r in range(args.rounds):
                for p in (list(pipelines) if r % 2 == 0 else list(pipelines)[::-1]):
                    times[p].append(cpu_ms_per_photo(pipelines[p], mtcnn, work, min_face, args.repeat))
            ratios = [a / b for a, b in zip(times["facenet-pytorch"], times["facesearch"])]
            row = {"set": name, "batch": size, "min_face": min_face, "photo": list(photos[0].shape[:2]),
                   "photos": len(photos), "rounds": args.rounds, "repeat": args.repeat, "threads": args.threads,
                   **{f"{p} cpu ms/photo": round(statistics.median(t), 1) for p, t in times.items()},
                   "speed-up (median of rounds)": round(statistics.median(ratios), 2),
                   "speed-up (min..max)": [round(min(ratios), 2), round(max(ratios), 2)],
                   "load average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
                   "machine": f"{platform.node()} {os.cpu_count()} CPUs", "torch": torch.__version__,
                   "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
            line = json.dumps(row)
            print(line, flush=True)
            if args.out:
                with args.out.open("a") as f:
                    f.write(line + "\n")


if __name__ == "__main__":
    main()
