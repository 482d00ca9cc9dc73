"""Lesion candidates from a segmentation: connected regions of the mask, measured on the
input image.

Each 8-connected region of the thresholded probability at least ``MIN_AREA_PX`` pixels in
size is a candidate: its centroid, its area and equivalent-circle diameter (mm, from the
pixel spacing), its mean value on the *input* image (HU for CT: what the reader has in front
of them, not the enhanced image) and its contrast to the ring around it (the pixels between
``RING_PX`` beyond its edge, other candidates left out), and its score (the highest
probability inside it). At most ``MAX_CANDIDATES`` per image, the highest scores first; a
region with no free pixel around it (other regions fill its ring) is left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_AREA_PX = 9  # a 3 x 3 patch: single pixels above the threshold are noise in the mask
RING_PX = (2, 6)  # the surround: from 2 to 6 px beyond the candidate's edge
MAX_CANDIDATES = 50


@dataclass(frozen=True)
class Candidate:
    number: int  # 1.. in score order
    center_rc: tuple[float, float]  # (row, column), pixels
    area_px: int
    score: float  # the highest probability inside it
    mean: float  # mean input value inside (HU for CT)
    contrast: float  # mean inside - mean of the ring around it
    rows: slice  # its bounding box
    cols: slice
    mask: np.ndarray  # bool, within the bounding box

    @property
    def radius_px(self) -> float:
        return float(np.sqrt(self.area_px / np.pi))

    def area_mm2(self, pixel_mm: tuple[float, float]) -> float:
        return self.area_px * pixel_mm[0] * pixel_mm[1]

    def diameter_mm(self, pixel_mm: tuple[float, float]) -> float:
        return 2.0 * float(np.sqrt(self.area_mm2(pixel_mm) / np.pi))

    def full_mask(self, shape: tuple[int, int]) -> np.ndarray:
        out = np.zeros(shape, bool)
        out[self.rows, self.cols] = self.mask
        return out


def find(probability: np.ndarray, mask: np.ndarray, values: np.ndarray,
         min_area_px: int = MIN_AREA_PX, limit: int = MAX_CANDIDATES) -> list[Candidate]:
    """The candidates of one image: ``mask`` (bool) the thresholded ``probability``,
    ``values`` the input image in its modality's values; all (H, W)."""
    from scipy import ndimage

    labels, count = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if not count:
        return []
    index = np.arange(1, count + 1)
    areas = ndimage.sum_labels(np.ones(mask.shape), labels, index)
    scores = ndimage.maximum(probability, labels, index)
    keep = [i for i in np.argsort(-scores, kind="stable") if areas[i] >= min_area_px][:limit]
    boxes = ndimage.find_objects(labels)
    taken = labels > 0
    out: list[Candidate] = []
    for i in keep:
        region = labels == i + 1
        outer = ndimage.binary_dilation(region, iterations=RING_PX[1])
        inner = ndimage.binary_dilation(region, iterations=RING_PX[0])
        ring = outer & ~inner & ~taken
        rows, cols = np.nonzero(region)
        inside_mean = float(values[region].mean())
        if not ring.any():  # no surround to measure a contrast against: not a focal lesion
            continue
        surround = float(values[ring].mean())
        box = boxes[i]
        out.append(Candidate(len(out) + 1, (float(rows.mean()), float(cols.mean())), int(areas[i]),
                             float(scores[i]), inside_mean, inside_mean - surround,
                             box[0], box[1], region[box]))
    return out
