"""Load benchmark of ``facesearch serve``: recognize at 1, 4 and 16 concurrent clients, loopback only.

Builds (once, in ``--work``) a gallery of ``--faces`` synthetic faces under the model's fingerprint plus a real
sample person's photos (``bench/search.py``'s builder), starts ``facesearch serve`` on it as a user would (a
separate process, uvicorn, a fresh API key), then each of C client threads posts the same one-face photo scaled
to 640 px to ``/api/v1/recognize`` ``--requests`` times (after ``--warmup`` requests, not counted). Reports
requests/s, p50/p95 latency as the client sees it, the server's own ``timings_ms.total`` p50, and errors.

``--max-batch 1 8`` (and ``--compute-slots 1 2``) compares settings side by side in one run: one server per
combination (``serve --max-batch``; 1 computes every request alone, as before batching) started at once, and each
client count run against each server in turn, ``--rounds`` times, so that the machine's other load falls on all
of them alike. ``--code DIR ...`` adds the code as a third axis: each DIR a checkout of another commit (``git
worktree add DIR COMMIT``) whose ``facesearch serve`` runs on the same gallery (in DIR, ``PYTHONPATH=DIR``), so that
before and after a change are measured side by side; ``.`` is this checkout.

From the repo root (idle machine)::

    .venv/bin/python bench/serve.py --faces 10000 --clients 1 4 16
    .venv/bin/python bench/serve.py --faces 10000 --clients 1 4 16 --max-batch 1 8 --rounds 2
    .venv/bin/python bench/serve.py --clients 1 16 --code /tmp/before . --rounds 2

Prints one JSON line per client count (and server) and appends them to ``--out``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_gallery(args) -> Path:
    from search import build_gallery  # bench/search.py: synthetic faces + a sample person's photos

    from facesearch.checkpoint import load_checkpoint, resolve_checkpoint

    folder = args.work / f"gallery-{args.faces}"
    if not (folder / "gallery.db").exists():
        loaded = load_checkpoint(resolve_checkpoint(args.checkpoint))
        build_gallery(folder, loaded, argparse.Namespace(faces=args.faces, latent=128, spread=0.7, noise=0.1))  # bench/search.py's defaults
    return folder


def query_photo(args) -> Path:
    from PIL import Image

    person = sorted((REPO / "sample" / "photos").iterdir())[0]
    photo = args.work / "query-640.jpg"
    with Image.open(sorted(person.glob("*.jpg"))[-1]) as im:  # the photo build_gallery did not enroll
        scale = 640 / max(im.size)
        im.convert("RGB").resize((round(im.width * scale), round(im.height * scale)), Image.BICUBIC).save(photo, quality=92)
    return photo


def start_server(folder: Path, args, code: Path, compute_slots: int | None,
                 max_batch: int | None) -> tuple[subprocess.Popen, str, str]:
    exe = Path(sys.executable).parent / "facesearch"
    name = f"bench-{os.getpid()}-{time.time_ns()}"
    key = subprocess.run([exe, "keys", "create", name, "-g", folder], check=True, capture_output=True,
                         text=True).stdout.strip()
    port = free_port()
    cmd = [sys.executable, "-m", "facesearch", "serve", "-g", folder.resolve(), "--port", str(port),
           "--threads", str(args.threads)]
    if compute_slots:
        cmd += ["--compute-slots", str(compute_slots)]
    if max_batch:
        cmd += ["--max-batch", str(max_batch)]
    if args.checkpoint:
        cmd += ["-c", Path(args.checkpoint).resolve() if Path(args.checkpoint).exists() else args.checkpoint]
    # This code's package, not the installed one nor the one in the working directory: `python -m` puts the
    # working directory first on the path, so the server runs in the checkout itself (a check below).
    env, cwd = {**os.environ, "PYTHONPATH": str(code.resolve())}, code.resolve()
    runs = subprocess.run([sys.executable, "-c", "import facesearch; print(facesearch.__file__)"], cwd=cwd, env=env,
                          capture_output=True, text=True, check=True).stdout.strip()
    if not Path(runs).resolve().is_relative_to(cwd):
        raise SystemExit(f"{code}: python -m facesearch there imports {runs}, not the checkout's own package")
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
    url = f"http://127.0.0.1:{port}"
    import httpx2 as httpx  # the serve extra's HTTP client (pyproject), httpx's API

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"facesearch serve exited: {server.stderr.read()}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return server, url, key
        except httpx.HTTPError:
            time.sleep(0.3)
    server.kill()
    raise SystemExit("facesearch serve did not start within 180 s")


def commit_of(code: Path) -> str:
    """The checkout's commit (and ``+changes`` when its files differ from it)."""
    head = subprocess.run(["git", "-C", code, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", code, "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                           text=True).stdout.strip()
    return (head.stdout.strip() or str(code)) + ("+changes" if dirty else "")


def load(url: str, key: str, photo: Path, clients: int, requests: int, warmup: int, expect: str | None) -> dict:
    import httpx2 as httpx  # the serve extra's HTTP client (pyproject), httpx's API

    data = photo.read_bytes()
    latencies, server_ms, errors = [], [], []
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)

    def client() -> None:
        with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=120) as c:
            post = lambda: c.post("/api/v1/recognize?top_k=5", files={"photo": (photo.name, data, "image/jpeg")})  # noqa: E731
            for _ in range(warmup):
                post()
            start.wait()
            for _ in range(requests):
                t = time.perf_counter()
                try:
                    r = post()
                    ok = r.status_code == 200 and len(r.json()["faces"]) == 1 and \
                        expect in (None, r.json()["faces"][0]["identity"])
                    body = r.json()
                except (httpx.HTTPError, ValueError, KeyError, IndexError) as e:
                    ok, body = False, {"error": repr(e)}
                elapsed = time.perf_counter() - t
                with lock:
                    latencies.append(elapsed)
                    if ok:
                        server_ms.append(body["timings_ms"]["total"])
                    else:
                        errors.append(str(body)[:200])

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ms = np.array(latencies) * 1000
    return {"clients": clients, "requests": len(latencies), "errors": len(errors), "first_errors": errors[:3],
            "requests_per_s": round(len(latencies) / wall, 2), "p50_ms": round(float(np.median(ms)), 1),
            "p95_ms": round(float(np.percentile(ms, 95)), 1),
            "server_total_p50_ms": round(float(np.median(server_ms)), 1) if server_ms else None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--faces", type=int, default=10_000)
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--requests", type=int, default=40, help="per client")
    p.add_argument("--warmup", type=int, default=2, help="per client, not counted")
    p.add_argument("--threads", type=int, default=16, help="facesearch serve --threads")
    p.add_argument("--compute-slots", type=int, nargs="+", default=[None],
                   help="facesearch serve --compute-slots; several: one server each (with each --max-batch)")
    p.add_argument("--max-batch", type=int, nargs="+", default=[None],
                   help="facesearch serve --max-batch; several: one server each, measured in turn")
    p.add_argument("--code", type=Path, nargs="+", default=[REPO],
                   help="checkouts whose facesearch serve to run (default: this one); several: one server each")
    p.add_argument("--rounds", type=int, default=1, help="times each client count is run against each server")
    p.add_argument("--checkpoint", default=None, help="default: the base model")
    p.add_argument("--gallery", type=Path, default=None,
                   help="an existing gallery instead of the synthetic one (a copy: a key is added to it)")
    p.add_argument("--work", type=Path, default=Path("/tmp/facesearch-bench-serve"))
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    folder = args.gallery or make_gallery(args)
    photo = query_photo(args)
    servers = []
    try:
        for code, slots, max_batch in itertools.product(args.code, args.compute_slots, args.max_batch):
            servers.append(((commit_of(code), slots, max_batch), *start_server(folder, args, code, slots, max_batch)))
        for clients in args.clients:
            for turn in range(args.rounds):
                for (commit, slots, max_batch), _, url, key in servers:
                    row = {"bench": "serve-recognize", "code": commit, "gallery": str(args.gallery or "synthetic"), "faces": args.faces,
                           "photo": photo.name, "threads": args.threads,
                           "compute_slots": slots or "default", "max_batch": max_batch or "default",
                           "round": turn + 1, "cpus": os.cpu_count(), "machine": platform.machine(),
                           "load_average": os.getloadavg()[0], "date": time.strftime("%Y-%m-%d %H:%M"),
                           **load(url, key, photo, clients, args.requests, args.warmup,
                                  None if args.gallery else "sample person")}
                    print(json.dumps(row), flush=True)
                    if args.out:
                        with open(args.out, "a") as f:
                            f.write(json.dumps(row) + "\n")
    finally:
        for _, server, _, _ in servers:
            server.terminate()
        for _, server, _, _ in servers:
            server.wait(30)


if __name__ == "__main__":
    main()
