"""facesearch's MTCNN pipeline (``facesearch.data.mtcnn``) finds what facenet-pytorch's ``MTCNN.detect`` finds:
the same boxes, probabilities and landmarks on real photos, one at a time and in batches of one size."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def mtcnn():
    """facenet-pytorch's MTCNN as FaceDetector builds it on a CPU (channels-last networks)."""
    from facenet_pytorch import MTCNN

    from facesearch.runtime import CHANNELS_LAST

    model = MTCNN(keep_all=True, post_process=False, select_largest=False, device="cpu")  # detect_face's order
    for net in (model.pnet, model.rnet, model.onet):
        net.to(memory_format=CHANNELS_LAST)
    return model


def _photo(path, longer: int | None = None):
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        if longer is not None:  # as bench/serve.py sends its query: the longer side at 640 px
            scale = longer / max(im.size)
            im = im.resize((round(im.width * scale), round(im.height * scale)), Image.BICUBIC)
        return im


def _facenet(mtcnn, photos, min_face: int):
    """facenet-pytorch's own answer: per photo, (k, 5) boxes with probabilities and (k, 5, 2) landmarks."""
    mtcnn.min_face_size = min_face
    boxes, probs, points = mtcnn.detect(photos, landmarks=True)
    return [(np.zeros((0, 5), np.float32), np.zeros((0, 5, 2), np.float32)) if b is None
            else (np.concatenate([np.asarray(b, np.float32), np.asarray(p, np.float32)[:, None]], axis=1),
                  np.asarray(pts, np.float32))
            for b, p, pts in zip(boxes, probs, points)]


def _assert_same(ours, theirs):
    assert len(ours) == len(theirs)
    for (boxes, points), (want_boxes, want_points) in zip(ours, theirs):
        assert boxes.shape == want_boxes.shape and points.shape == want_points.shape
        np.testing.assert_allclose(boxes[:, :4], want_boxes[:, :4], rtol=0, atol=1e-3)  # px: float rounding only
        np.testing.assert_allclose(boxes[:, 4], want_boxes[:, 4], rtol=0, atol=1e-6)
        np.testing.assert_allclose(points, want_points, rtol=0, atol=1e-3)


def _ours(mtcnn, photos, min_face: int):
    from facesearch.data.mtcnn import detect_equal_sized

    boxes, points = detect_equal_sized(np.stack([np.asarray(p) for p in photos]), min_face, mtcnn, (0.6, 0.7, 0.7))
    return list(zip(boxes, points))


@pytest.mark.parametrize("longer, min_face", [(None, 20), (640, 40)])  # prepare's search; who's on a 640 px photo
def test_the_same_faces_as_facenet_pytorch_on_real_photos(mtcnn, sample_photos, longer, min_face):
    strangers = sample_photos.parent / "strangers"
    paths = [sorted((sample_photos / "07201").glob("*.jpg"))[-1],  # bench/serve.py's query (at 640 px)
             sample_photos / "07222" / "041086.jpg",  # a group photo: faces at its edges
             *sorted(strangers.glob("*/*.jpg"))[::60]]
    found = 0
    for photo in (_photo(p, longer) for p in paths):
        theirs = _facenet(mtcnn, [photo], min_face)
        _assert_same(_ours(mtcnn, [photo], min_face), theirs)
        found += len(theirs[0][0])
    assert found >= len(paths)  # the comparison covered real faces, not only empty answers


def test_the_same_faces_as_facenet_pytorch_in_a_batch(mtcnn, sample_photos):
    """Photos of one size share each stage's pass, as in facenet-pytorch's batched detect()."""
    photos = [_photo(p).resize((224, 256)) for p in sorted(sample_photos.glob("*/*.jpg"))[::37]]
    photos.append(photos[0].transpose(0))  # mirrored: the same face elsewhere in the batch
    theirs = _facenet(mtcnn, photos, 20)
    _assert_same(_ours(mtcnn, photos, 20), theirs)
    assert all(len(boxes) for boxes, _ in theirs)


def test_no_face_gives_empty_arrays(mtcnn):
    from PIL import Image

    for photo in (Image.new("RGB", (200, 160), (128, 128, 128)), Image.new("RGB", (30, 30), (0, 0, 0))):
        (boxes, points), = _ours(mtcnn, [photo], 40)  # the second: smaller than the smallest face searched
        assert boxes.shape == (0, 5) and points.shape == (0, 5, 2)


def test_area_resampling_equals_pytorchs_to_the_bit():
    """The summed-area resampling is interpolate(mode="area") of each region: same bins, same rounding."""
    from torch.nn.functional import interpolate

    from facesearch.data.mtcnn import _resample_regions, _summed_area

    rng = np.random.default_rng(0)
    photos = rng.integers(0, 256, (2, 97, 131, 3), dtype=np.uint8)
    table = _summed_area(photos, "cpu")
    whole = torch.from_numpy(photos).permute(0, 3, 1, 2).float()
    regions = [(int(rng.integers(2)), *(int(v) for v in rng.integers(0, 60, 2)), *(int(v) for v in rng.integers(1, 37, 2)))
               for _ in range(40)] + [(0, 0, 0, 97, 131), (1, 0, 0, 97, 131)]  # (photo, y, x, height, width)
    for size in [(24, 24), (48, 48), (29, 39), (7, 5)]:
        i, y, x, h, w = (torch.tensor(c) for c in zip(*regions))
        ours = _resample_regions(table, i, y, h, x, w, size)
        want = torch.cat([interpolate(whole[i:i + 1, :, y:y + h, x:x + w], size=size, mode="area")
                          for i, y, x, h, w in regions])
        assert torch.equal(ours, (want - 127.5) * 0.0078125), size
