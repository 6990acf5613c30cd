"""Two processes under torchrun (gloo on CPU, plain BatchNorm) train with the same command and save once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from facesearch.checkpoint import load_checkpoint, read_checkpoint
from builders import make_prepared_faces

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")


@pytest.mark.slow
@pytest.mark.skipif(not TORCHRUN.is_file(), reason="torchrun is not installed beside this Python")
def test_two_process_gloo_run_finishes_and_writes_one_checkpoint(tmp_path):
    data = make_prepared_faces(tmp_path / "prepared")  # 12 train crops, 32 px
    run = tmp_path / "run"
    cmd = [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", str(REPO / "cli.py"), "train", str(data),
           "--out", str(run), "--device", "cpu", "--batch-size", "4", "--max-steps", "1", "--fc-width", "8",
           "--epochs", "1", "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout[done.stdout.index("{"):])  # printed by rank 0 only
    assert summary["steps"] == 1
    last = read_checkpoint(run / "last.pt")
    assert last["step"] == 1 and last["sampler"]["world"] == 2 and len(last["rng"]) == 2
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1  # one writer
    assert sorted(p.name for p in run.glob("*.pt*")) == ["best.pt", "last.pt"]  # no stray temp files
    net = load_checkpoint(run / "best.pt").model  # plain BatchNorm state (no DDP prefix) loads into VGG16
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(m.num_batches_tracked.item() == 1 for m in norms)  # the one step's statistics, kept
