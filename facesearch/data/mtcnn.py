"""MTCNN's three stages on a batch of equal-sized photos, each stage's resampling done for all candidates at once.

facenet-pytorch's ``detect_face`` (what ``MTCNN.detect`` runs) resamples its image pyramid with one
``interpolate(mode="area")`` per scale, and each candidate box of its second (R-net, 24 px) and third (O-net, 48 px)
stages with one call per box in a Python loop: on the service's 640 px query photo, 7 levels and ~110 and ~17
boxes, about a third of detection's CPU time (docs/BENCHMARKS.md, "MTCNN's stages").

Here every such resampling is read off one summed-area table per photo. "Area" resampling is adaptive average
pooling: an output pixel is the mean of the input pixels in its bin, the bins drawn as PyTorch draws them
(``_bins``). The pixels are integers, so a bin's sum from the table is exact, and dividing it as PyTorch does (by
the bin's height, then its width, in float32) gives PyTorch's value to the bit while the sum stays below 2^24
(a bin of 65,000 pixels; a 24 px crop of a 6,000 px box). The networks, thresholds, scale factor, NMS and box
arithmetic are facenet-pytorch's own: its ``pnet``/``rnet``/``onet`` and the helpers of
``facenet_pytorch.models.utils.detect_face``; ``tests/test_detect.py`` compares the two on real photos.

Only photos of one size share a call, as with ``detect_face``: the R-net and O-net inputs are 24 and 48 px whatever
the photo, but the networks' outputs for a crop change in the last bit with the batch around it (measured: 9e-8),
so sharing them across sizes would make a photo's faces depend on the photos of other sizes detected with it.
"""

from __future__ import annotations

import numpy as np
import torch
from facenet_pytorch.models.utils import detect_face as fp  # facenet-pytorch's own box arithmetic and NMS
from torchvision.ops.boxes import batched_nms

PNET_CELL = 12  # px: the face size P-net sees at scale 1
RNET_SIDE, ONET_SIDE = 24, 48  # px: the R-net and O-net inputs


def detect_equal_sized(photos: np.ndarray, min_face: float, mtcnn, thresholds) -> tuple[list, list]:
    """MTCNN on photos of one size, as facenet-pytorch's ``detect_face(photos, min_face, ...)`` finds them.

    Args:
        photos: (n, H, W, 3) uint8 RGB.
        min_face: smallest face searched for, in pixels.
        mtcnn: a ``facenet_pytorch.MTCNN`` (float32): its networks, device and scale factor are used.
        thresholds: the three stages' probability thresholds.
    Returns:
        Per photo, the (k, 5) float32 boxes (x1, y1, x2, y2, probability) and (k, 5, 2) landmarks, as
        ``detect_face`` returns them.
    """
    table = _summed_area(photos, mtcnn.device)
    with torch.no_grad():
        boxes, image_inds = _propose(table, min_face, mtcnn.pnet, thresholds[0], mtcnn.factor)
        boxes, image_inds = _refine(table, boxes, image_inds, mtcnn.rnet, thresholds[1])
        boxes, image_inds, points = _output(table, boxes, image_inds, mtcnn.onet, thresholds[2])
    boxes, points, image_inds = boxes.cpu().numpy(), points.cpu().numpy(), image_inds.cpu().numpy()
    return ([boxes[image_inds == i].copy() for i in range(len(photos))],
            [points[image_inds == i].copy() for i in range(len(photos))])


def _summed_area(photos: np.ndarray, device) -> torch.Tensor:
    """(n, H+1, W+1, 3): each entry the sum of the pixels above and left of it (a zero first row and column)."""
    n, h, w, _ = photos.shape
    # int32 holds the largest sum (the whole photo's) up to 8.4 megapixels; int64 beyond.
    dtype = torch.int32 if 255 * h * w < 2**31 else torch.int64
    table = torch.empty((n, h + 1, w + 1, 3), dtype=dtype, device=device)
    table[:, 0] = 0
    table[:, :, 0] = 0
    inner = table[:, 1:, 1:]
    pixels = torch.from_numpy(photos if photos.flags.writeable else photos.copy()).to(device)
    torch.cumsum(pixels, 2, dtype=dtype, out=inner)  # along each row first: ~2x faster than columns first
    torch.cumsum(inner, 1, out=inner)
    return table


def _bins(start: torch.Tensor, length: torch.Tensor, out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive average pooling's bins of ``length`` input pixels from ``start`` into ``out`` outputs, per row of
    (k,) starts and lengths: (k, out) first and one-past-last input pixels (PyTorch's start_index/end_index)."""
    i = torch.arange(out + 1, device=start.device)
    first = start[:, None] + torch.div(i[:-1] * length[:, None], out, rounding_mode="floor")
    end = start[:, None] + torch.div(i[1:] * length[:, None] + out - 1, out, rounding_mode="floor")
    return first, end


def _resample_regions(table, image_inds, y, height, x, width, size: tuple[int, int]) -> torch.Tensor:
    """``interpolate(region, size, mode="area")`` of k regions at once, normalised as MTCNN's networks take them.

    Args:
        table: the photos' summed-area table.
        image_inds, y, x, height, width: (k,) the photo, top-left pixel and size of each region.
        size: (out_h, out_w).
    Returns:
        (k, 3, out_h, out_w) float32, channels-last in memory, (pixel - 127.5) / 128.
    """
    out_h, out_w = size
    y0, y1 = _bins(y, height, out_h)  # (k, out_h)
    x0, x1 = _bins(x, width, out_w)  # (k, out_w)
    # The table at every (first or end row) x (first or end column) of each region: one gather of (k, 2h, 2w)
    # table entries, each 3 channels.
    rows = torch.cat([y0, y1], dim=1) + (image_inds * table.shape[1])[:, None]  # (k, 2h), rows of all photos
    cols = torch.cat([x0, x1], dim=1)  # (k, 2w)
    at = (rows[:, :, None] * table.shape[2] + cols[:, None, :]).reshape(-1)
    corners = table.view(-1, 3).index_select(0, at).view(len(at) // (4 * out_h * out_w), 2 * out_h, 2 * out_w, 3)
    top, bottom = corners[:, :out_h], corners[:, out_h:]
    sums = (bottom[:, :, out_w:] - top[:, :, out_w:]) - (bottom[:, :, :out_w] - top[:, :, :out_w])  # (k, h, w, 3)
    bin_h = (y1 - y0).to(torch.float32)[:, :, None, None]
    bin_w = (x1 - x0).to(torch.float32)[:, None, :, None]
    mean = sums.to(torch.float32).div_(bin_h).div_(bin_w)  # PyTorch's order: sum / kh / kw
    return mean.sub_(127.5).mul_(0.0078125).permute(0, 3, 1, 2)


def _scales(height: int, width: int, min_face: float, factor: float) -> list[float]:
    """The image pyramid: P-net sees a face of ``min_face`` px as 12 px, then each level ``factor`` smaller."""
    scale = PNET_CELL / min_face
    shorter = min(height, width) * scale
    scales = []
    while shorter >= PNET_CELL:
        scales.append(scale)
        scale *= factor
        shorter *= factor
    return scales


def _propose(table, min_face: float, pnet, threshold: float, factor: float):
    """Stage 1: P-net over the pyramid; the candidates (k, 5) squared, with their (k,) photo numbers."""
    n, h, w = table.shape[0], table.shape[1] - 1, table.shape[2] - 1
    all_photos = torch.arange(n, device=table.device)
    origin, heights, widths = torch.zeros_like(all_photos), torch.full_like(all_photos, h), torch.full_like(all_photos, w)
    boxes, image_inds = [], []
    for scale in _scales(h, w, min_face, factor):
        level = _resample_regions(table, all_photos, origin, heights, origin, widths,
                                  (int(h * scale + 1), int(w * scale + 1)))
        reg, probs = pnet(level)
        found, found_inds = fp.generateBoundingBox(reg, probs[:, 1], scale, threshold)
        pick = batched_nms(found[:, :4], found[:, 4], found_inds, 0.5)  # within each scale and photo
        boxes.append(found[pick])
        image_inds.append(found_inds[pick])
    if not boxes:
        return torch.zeros(0, 5, device=table.device), torch.zeros(0, dtype=torch.long, device=table.device)
    boxes, image_inds = torch.cat(boxes), torch.cat(image_inds)
    pick = batched_nms(boxes[:, :4], boxes[:, 4], image_inds, 0.7)  # within each photo
    boxes, image_inds = boxes[pick], image_inds[pick]
    side_w, side_h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    regressed = torch.stack([boxes[:, 0] + boxes[:, 5] * side_w, boxes[:, 1] + boxes[:, 6] * side_h,
                             boxes[:, 2] + boxes[:, 7] * side_w, boxes[:, 3] + boxes[:, 8] * side_h,
                             boxes[:, 4]], dim=1)  # (k, 5)
    return fp.rerec(regressed), image_inds


def _crops(table, boxes, image_inds, side: int):
    """Each box's part inside the photo, resampled to side x side; and the mask of boxes that have one."""
    h, w = table.shape[1] - 1, table.shape[2] - 1
    y, ey, x, ex = (torch.from_numpy(a).to(device=table.device, dtype=torch.long) for a in fp.pad(boxes, w, h))
    # pad() gives 1-based first pixels: the crop is rows y-1 .. ey-1 and columns x-1 .. ex-1. A box wholly
    # outside the photo has none; detect_face would fail on it, here it is dropped.
    inside = (ey > y - 1) & (ex > x - 1)
    y, ey, x, ex = y[inside], ey[inside], x[inside], ex[inside]
    crops = _resample_regions(table, image_inds[inside], y - 1, ey - y + 1, x - 1, ex - x + 1, (side, side))
    return crops, inside


def _refine(table, boxes, image_inds, rnet, threshold: float):
    """Stage 2: R-net scores and regresses every candidate; those above ``threshold`` are kept and squared."""
    if len(boxes) == 0:
        return boxes, image_inds
    crops, inside = _crops(table, boxes, image_inds, RNET_SIDE)
    boxes, image_inds = boxes[inside], image_inds[inside]
    if len(boxes) == 0:
        return boxes, image_inds
    reg, probs = fp.fixed_batch_process(crops, rnet)  # in chunks of 512 crops, as detect_face
    score = probs[:, 1]
    keep = score > threshold
    boxes = torch.cat((boxes[keep, :4], score[keep, None]), dim=1)
    image_inds, reg = image_inds[keep], reg[keep]
    pick = batched_nms(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
    return fp.rerec(fp.bbreg(boxes[pick], reg[pick])), image_inds[pick]


def _output(table, boxes, image_inds, onet, threshold: float):
    """Stage 3: O-net's final boxes, probabilities and landmarks (k, 5, 2), "Min" NMS within each photo."""
    if len(boxes) == 0:
        return boxes, image_inds, torch.zeros(0, 5, 2, device=table.device)
    crops, inside = _crops(table, boxes, image_inds, ONET_SIDE)
    boxes, image_inds = boxes[inside], image_inds[inside]
    if len(boxes) == 0:
        return boxes, image_inds, torch.zeros(0, 5, 2, device=table.device)
    reg, marks, probs = fp.fixed_batch_process(crops, onet)
    score = probs[:, 1]
    keep = score > threshold
    boxes = torch.cat((boxes[keep, :4], score[keep, None]), dim=1)
    image_inds, reg, marks = image_inds[keep], reg[keep], marks[keep]
    # Landmarks are fractions of the (O-net input) box: 5 x's then 5 y's.
    box_w, box_h = boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1
    points_x = box_w[:, None] * marks[:, :5] + boxes[:, 0, None] - 1
    points_y = box_h[:, None] * marks[:, 5:10] + boxes[:, 1, None] - 1
    points = torch.stack((points_x, points_y), dim=2)  # (k, 5, 2)
    boxes = fp.bbreg(boxes, reg)
    pick = fp.batched_nms_numpy(boxes[:, :4], boxes[:, 4], image_inds, 0.7, "Min")
    return boxes[pick], image_inds[pick], points[pick]
