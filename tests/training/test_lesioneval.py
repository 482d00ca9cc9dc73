"""The lesion measurement: matching candidates to lesions, the classical detector, and its
oracle threshold."""

from __future__ import annotations

import numpy as np

from scanside.training import ctsim, lesioneval
from scanside.training.lesioneval import Mark


def test_each_lesion_and_each_mark_is_matched_once():
    lesions = [ctsim.Lesion(20.0, 20.0, 5.0, 30.0), ctsim.Lesion(60.0, 60.0, 3.0, -20.0)]
    marks = [Mark((21.0, 22.0), 1.0), Mark((20.5, 19.0), 0.9), Mark((62.0, 61.0), 0.8),
             Mark((100.0, 100.0), 0.7)]
    hits, false = lesioneval.match(marks, lesions)
    assert hits == [1, 2]  # the nearer of the two marks on the first lesion
    assert false == 2
    assert lesioneval.match([Mark((20.0, 28.0), 1.0)], lesions[:1]) == ([-1], 1)  # 8 px > 5 + 2


def test_log_finds_a_faint_disk_in_noise_and_both_signs():
    rng = np.random.default_rng(0)
    hu = 40.0 + rng.normal(0, 10, (96, 96))
    hu[ctsim.ellipse(hu.shape, 30, 30, 6, 6)] += 40
    hu[ctsim.ellipse(hu.shape, 65, 60, 6, 6)] -= 40
    marks = lesioneval.log_detect(hu)
    lesions = [ctsim.Lesion(30.0, 30.0, 6.0, 40.0), ctsim.Lesion(65.0, 60.0, 6.0, -40.0)]
    hits, _ = lesioneval.match(marks[:2], lesions)
    assert all(h >= 0 for h in hits)


def test_the_oracle_threshold_keeps_false_marks_at_one_per_slice():
    lesion = [ctsim.Lesion(10.0, 10.0, 4.0, 30.0)]
    scored = [([Mark((10.0, 10.0), 0.9), Mark((50.0, 50.0), 0.8), Mark((70.0, 70.0), 0.5),
                Mark((90.0, 90.0), 0.4)], lesion)] * 3
    t = lesioneval.oracle_threshold(scored)
    assert t == 0.8  # at 0.5 two false marks a slice, at 0.8 one


def test_tally_sensitivity_is_over_the_target_group_only():
    tally = lesioneval.Tally()
    big = ctsim.Lesion(20.0, 20.0, 6.0, 30.0)
    faint = ctsim.Lesion(60.0, 60.0, 6.0, 12.0)
    region = ctsim.ellipse((80, 80), 20, 20, 6, 6)
    tally.add([Mark((20.0, 20.0), 1.0, region)], [big, faint], (80, 80))
    summary = tally.summary()
    assert summary["target_lesions"] == 1 and summary["sensitivity_target"] == 1.0
    assert summary["dice_found_target"] == 1.0 and summary["false_per_slice"] == 0
