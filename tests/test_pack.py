"""bench/device/pack.py: the GPU-transfer packer must restore every file byte for byte."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_pack", REPO / "bench" / "device" / "pack.py")
pack_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pack_mod)


def test_pack_round_trip_is_byte_exact(tmp_path, sample_photos):
    src = tmp_path / "src"
    for i, photo in enumerate(sorted(sample_photos.glob("*/*.jpg"))[:6]):
        # same size and quality -> shared header (stripped); the original files keep their own
        (src / "crops").mkdir(parents=True, exist_ok=True)
        Image.open(photo).convert("RGB").resize((32, 32)).save(src / "crops" / f"{i}.jpg", quality=90)
        (src / "orig").mkdir(exist_ok=True)
        (src / "orig" / photo.name).write_bytes(photo.read_bytes())
    (src / "manifest.csv").write_text("path,identity\na.jpg,x\n")
    (src / "empty.bin").write_bytes(b"")

    stats = pack_mod.pack(src, tmp_path / "x.pack")
    assert stats["files"] == 14
    assert pack_mod.unpack(tmp_path / "x.pack", tmp_path / "dst") == 14
    for f in src.rglob("*"):
        if f.is_file():
            assert (tmp_path / "dst" / f.relative_to(src)).read_bytes() == f.read_bytes(), f
