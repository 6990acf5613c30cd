"""``facesearch serve`` stopped by a signal, as a real process: SIGTERM (a service manager, ``docker stop``) and
SIGINT (Ctrl-C) both remove its scratch folder (uploads in flight, explain reports: the faces of queries) and end
without a traceback. uvicorn re-raises SIGTERM after its graceful shutdown, which used to kill the process before
the cleanup ran (issue 29)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from builders import enrolled_gallery  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gallery(sample_photos, tmp_path_factory):
    from facesearch.gallery import Gallery

    root = tmp_path_factory.mktemp("signals")
    checkpoint, _ = enrolled_gallery(root, sample_photos, people=2, per_person=1)
    with Gallery(root / "gallery") as g:
        g.create_key("ops")
    return root / "gallery", checkpoint


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(process: subprocess.Popen, port: int, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError("facesearch serve did not answer /health in time")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_the_server_and_removes_its_scratch_folder(gallery, tmp_path, sig):
    folder, checkpoint = gallery
    scratch_root = tmp_path / "tmp"  # the server's tempfile.mkdtemp lands here
    scratch_root.mkdir()
    port = free_port()
    env = {**os.environ, "TMPDIR": str(scratch_root), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "facesearch", "serve", "-g", str(folder), "-c", str(checkpoint),
                                "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_healthy(process, port)
        scratch = list(scratch_root.glob("facesearch-serve-*"))
        assert len(scratch) == 1 and scratch[0].is_dir()
        (scratch[0] / "explain").mkdir()  # as a report would leave it
        process.send_signal(sig)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert not scratch[0].exists(), err  # left behind before
    assert "Traceback" not in err, err
    assert process.returncode == {signal.SIGTERM: 143, signal.SIGINT: 130}[sig], err  # as a shell tells them
