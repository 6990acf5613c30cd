"""load_image: every odd or broken file becomes RGB or an ImageError with the right status."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from facesearch.data.images import NEUTRAL_GREY, ImageError, load_image

from builders import fed_after, png_with_size


@pytest.fixture(scope="module")
def face(sample_photos) -> Image.Image:
    return Image.open(next(iter(sorted(sample_photos.glob("*/*.jpg"))))).convert("RGB")


def _diff(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, np.float32) - np.asarray(b.convert("RGB"), np.float32)).mean())


def test_rgb_jpeg_loads_unchanged(tmp_path, face):
    face.save(tmp_path / "a.jpg", quality=98)
    image = load_image(tmp_path / "a.jpg")
    assert image.mode == "RGB" and image.size == face.size
    assert _diff(image, face) < 3


@pytest.mark.parametrize("mode", ["L", "CMYK", "P", "1"])
def test_plain_modes_become_rgb(tmp_path, face, mode):
    path = tmp_path / f"x.{'tif' if mode == 'CMYK' else 'png'}"
    face.convert(mode).save(path)
    image = load_image(path)
    assert image.mode == "RGB" and image.size == face.size


def test_alpha_is_composited_on_grey(tmp_path, face):
    rgba = face.convert("RGBA")
    alpha = Image.new("L", face.size, 255)
    alpha.paste(0, (0, 0, 10, 10))  # a fully transparent corner
    rgba.putalpha(alpha)
    rgba.save(tmp_path / "a.png")
    face.convert("LA").save(tmp_path / "la.png")
    image = load_image(tmp_path / "a.png")
    assert image.mode == "RGB"
    assert image.getpixel((2, 2)) == NEUTRAL_GREY
    assert _diff(image.crop((20, 20, 60, 60)), face.crop((20, 20, 60, 60))) < 1
    assert load_image(tmp_path / "la.png").mode == "RGB"


def test_palette_with_transparency(tmp_path):
    image = Image.new("P", (64, 64), 0)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.paste(1, (32, 0, 64, 64))
    image.save(tmp_path / "p.png", transparency=0)  # the red half is transparent
    out = load_image(tmp_path / "p.png")
    assert out.getpixel((5, 5)) == NEUTRAL_GREY and out.getpixel((50, 5)) == (0, 0, 255)


@pytest.mark.parametrize("mode,scale", [("I;16", 256), ("I", 1000), ("F", 0.001)])
def test_high_bit_depth_is_scaled_by_its_range_not_clipped(tmp_path, face, mode, scale):
    grey = np.asarray(face.convert("L"), dtype=np.float64)
    values = grey * scale + (5 if mode == "I;16" else 0)
    dtype = {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]
    source = Image.fromarray(values.astype(dtype))
    assert source.mode == mode
    path = tmp_path / ("x.png" if mode == "I;16" else "x.tif")
    source.save(path)
    image = load_image(path)
    assert image.mode == "RGB"
    out = np.asarray(image)[..., 0].astype(np.float64)
    assert out.min() == 0 and out.max() == 255  # the full 8-bit range, not a white sheet
    assert np.corrcoef(out.ravel(), grey.ravel())[0, 1] > 0.99


def test_exif_orientation_is_applied(tmp_path, face):
    stored = face.transpose(Image.Transpose.ROTATE_90)  # as a sideways camera stores it
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    stored.save(tmp_path / "r.jpg", exif=exif, quality=98)
    image = load_image(tmp_path / "r.jpg")
    assert image.size == face.size
    assert _diff(image, face) < 3


def test_animated_gif_gives_first_frame(tmp_path, face):
    flat = Image.new("RGB", face.size, (255, 0, 0))
    face.save(tmp_path / "a.gif", save_all=True, append_images=[flat], duration=100, loop=0)
    image = load_image(tmp_path / "a.gif")
    assert image.mode == "RGB"
    assert _diff(image, face) < 20  # GIF's palette is lossy; a red frame would be ~100 away


def _fails(path, status, *words, **kwargs) -> ImageError:
    with pytest.raises(ImageError) as info:
        load_image(path, **kwargs)
    assert info.value.status == status
    for word in words:
        assert word in info.value.reason
    return info.value


def test_truncated_files_are_rejected_not_half_decoded(tmp_path, face):
    face.save(tmp_path / "whole.jpg", quality=95)
    face.save(tmp_path / "whole.png")
    for name in ("whole.jpg", "whole.png"):
        data = (tmp_path / name).read_bytes()
        (tmp_path / f"cut_{name}").write_bytes(data[: len(data) * 2 // 3])
    _fails(tmp_path / "cut_whole.jpg", "truncated", "ends early")
    _fails(tmp_path / "cut_whole.png", "truncated", "ends early")


def test_not_images(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("this is not a photo\n")
    _fails(tmp_path / "empty.jpg", "not_an_image", "empty")
    _fails(tmp_path / "text.jpg", "not_an_image", "Pillow")
    _fails(tmp_path / "missing.jpg", "unreadable", "cannot read")


def test_decompression_bombs_are_too_large(tmp_path):
    _fails(png_with_size(tmp_path / "bomb.png", 30000, 30000), "too_large", "limit")
    # Between 1x and 2x Pillow's limit it only warns; we refuse that too.
    side = int((Image.MAX_IMAGE_PIXELS * 1.5) ** 0.5)
    _fails(png_with_size(tmp_path / "warn.png", side, side), "too_large")
    Image.new("RGB", (100, 100)).save(tmp_path / "small.png")
    _fails(tmp_path / "small.png", "too_large", "10,000", max_pixels=5000)


def test_too_small(tmp_path):
    Image.new("RGB", (16, 40)).save(tmp_path / "tiny.png")
    _fails(tmp_path / "tiny.png", "too_small", "16x40")
    assert load_image(tmp_path / "tiny.png", min_side=8).size == (16, 40)


def test_a_photo_over_the_pixel_limit_is_refused_from_its_header_naming_file_and_size(tmp_path):
    from facesearch.data.images import MAX_PIXELS
    from facesearch.serve.service import Limits

    assert Limits().max_pixels == MAX_PIXELS == 40_000_000  # the service and every command: one limit
    # 64 megapixels in a few hundred bytes (a real one: 187 KB, and 2.9 GB and 28 s to decode and search)
    big = png_with_size(tmp_path / "big.png", 8000, 8000)
    error = _fails(big, "too_large", "8000x8000", "64,000,000", "40,000,000")
    assert str(error).startswith(f"{big}: too_large: ")
    _fails(big, "truncated", max_pixels=70_000_000)  # given a larger limit it is decoded: this one is 1x1 px inside


def test_anything_but_a_regular_file_is_refused_before_it_is_read(tmp_path):
    import os
    import time

    from facesearch.data.images import NotAFileError, file_sha256

    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    (tmp_path / "folder.jpg").mkdir()
    timer = fed_after(fifo, 10)
    started = time.monotonic()
    try:
        _fails(fifo, "unreadable", "named pipe")
        with pytest.raises(NotAFileError, match="named pipe"):
            file_sha256(fifo)  # an OSError: every caller that handles unreadable files handles it
    finally:
        timer.cancel()
    assert time.monotonic() - started < 10  # never waited for a writer
    _fails(tmp_path / "folder.jpg", "unreadable", "a folder")
    if os.path.exists("/dev/zero"):
        _fails("/dev/zero", "unreadable", "character device")


def test_photo_formats_pillow_cannot_read_are_named_and_listed_not_skipped(tmp_path):
    import os

    from facesearch.data.images import list_photos

    (tmp_path / "phone.heic").write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64))
    (tmp_path / "next.JXL").write_bytes(b"\xff\x0a" + bytes(64))
    (tmp_path / "notes.txt").write_text("not a photo")
    os.mkfifo(tmp_path / "pipe.jpg")
    _fails(tmp_path / "phone.heic", "not_an_image", "HEIC", "convert it to JPEG")
    _fails(tmp_path / "next.JXL", "not_an_image", "JPEG XL")
    assert [p.name for p in list_photos([tmp_path])] == ["next.JXL", "phone.heic", "pipe.jpg"]  # each then reported
