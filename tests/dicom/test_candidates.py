"""Lesion candidates (scanside.dicom.candidates.find): connected regions of a mask, numbered
by score, measured on the input image: centroid, area, equivalent diameter, mean value and
contrast to the ring around each."""

from __future__ import annotations

import math

import numpy as np
import pytest

from scanside.dicom.candidates import MIN_AREA_PX, find

SIZE = 128
BACKGROUND_HU = 40.0
# (centre row, centre column, radius px, HU inside, probability inside): the small disk has
# the higher score, so numbering by score puts it first although it is the smaller one.
SMALL = (30.0, 40.0, 4, 110.0, 0.95)
LARGE = (80.0, 90.0, 6, -25.0, 0.70)
SPECK = ((100, 20), (100, 21))  # two pixels above the threshold: noise, not a candidate
PIXEL_MM = (0.7, 0.8)


def disk(row: float, col: float, radius: int) -> np.ndarray:
    r, c = np.mgrid[0:SIZE, 0:SIZE]
    return (r - row) ** 2 + (c - col) ** 2 <= radius ** 2


@pytest.fixture
def scene():
    """(probability, mask, values, small disk, large disk)."""
    rng = np.random.default_rng(3)
    probability = rng.uniform(0.0, 0.2, (SIZE, SIZE)).astype(np.float32)
    values = np.full((SIZE, SIZE), BACKGROUND_HU)
    disks = []
    for row, col, radius, hu, score in (SMALL, LARGE):
        inside = disk(row, col, radius)
        probability[inside] = score
        values[inside] = hu
        disks.append(inside)
    for r, c in SPECK:
        probability[r, c] = 0.99  # the highest score of all: still too small
    mask = probability > 0.5
    return probability, mask, values, disks[0], disks[1]


def test_two_disks_are_two_candidates_numbered_by_score(scene):
    probability, mask, values, small, large = scene
    assert mask.sum() == small.sum() + large.sum() + len(SPECK)
    found = find(probability, mask, values)

    assert len(found) == 2  # the 2-pixel speck is below MIN_AREA_PX
    assert len(SPECK) < MIN_AREA_PX
    assert [c.number for c in found] == [1, 2]
    first, second = found
    assert first.score == pytest.approx(SMALL[4]) and second.score == pytest.approx(LARGE[4])
    for candidate, (row, col, radius, hu, _), drawn in ((first, SMALL, small),
                                                        (second, LARGE, large)):
        assert abs(candidate.center_rc[0] - row) <= 0.5
        assert abs(candidate.center_rc[1] - col) <= 0.5
        assert candidate.area_px == int(drawn.sum())
        # A digital disk's area is close to pi r^2 (within its perimeter's pixels).
        assert abs(candidate.area_px - math.pi * radius ** 2) < 2 * math.pi * radius
        np.testing.assert_array_equal(candidate.full_mask((SIZE, SIZE)), drawn)
        assert candidate.mean == pytest.approx(hu)
        assert candidate.contrast == pytest.approx(hu - BACKGROUND_HU)
        assert candidate.radius_px == pytest.approx(math.sqrt(drawn.sum() / math.pi))


def test_sizes_in_millimetres_follow_the_pixel_spacing(scene):
    probability, mask, values, small, large = scene
    found = find(probability, mask, values)
    pixel_mm2 = PIXEL_MM[0] * PIXEL_MM[1]
    for candidate, (_, _, radius, _, _), drawn in ((found[0], SMALL, small),
                                                   (found[1], LARGE, large)):
        area = candidate.area_mm2(PIXEL_MM)
        assert area == pytest.approx(drawn.sum() * pixel_mm2)
        diameter = candidate.diameter_mm(PIXEL_MM)
        assert diameter == pytest.approx(2 * math.sqrt(drawn.sum() * pixel_mm2 / math.pi))
        # The equivalent circle of the drawn disk: its nominal diameter within a pixel.
        nominal = 2 * radius * math.sqrt(pixel_mm2)
        assert abs(diameter - nominal) < max(PIXEL_MM)


def test_contrast_leaves_the_other_candidates_out_of_the_ring():
    """Two disks close enough that each lies in the other's ring: the ring's mean is still
    the background's."""
    probability = np.zeros((SIZE, SIZE), np.float32)
    values = np.full((SIZE, SIZE), BACKGROUND_HU)
    a, b = disk(60, 50, 4), disk(60, 62, 4)  # 12 px apart: 4 px between their edges
    probability[a], values[a] = 0.9, 300.0
    probability[b], values[b] = 0.8, -300.0
    found = find(probability, probability > 0.5, values)
    assert len(found) == 2
    assert found[0].contrast == pytest.approx(300.0 - BACKGROUND_HU)
    assert found[1].contrast == pytest.approx(-300.0 - BACKGROUND_HU)


def test_an_empty_mask_has_no_candidate(scene):
    probability, _, values, _, _ = scene
    assert find(probability, np.zeros((SIZE, SIZE), bool), values) == []


def test_the_limit_keeps_the_highest_scores(scene):
    probability, mask, values, _, _ = scene
    found = find(probability, mask, values, limit=1)
    assert len(found) == 1 and found[0].score == pytest.approx(SMALL[4])
    assert found[0].number == 1
