"""Real anatomy through the scan chain: the pairs, the flat regions and the HU bias."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("skimage")

from scanside.training import realct  # noqa: E402


def test_flat_regions_are_soft_tissue_away_from_edges():
    ref = np.full((96, 96), -1000.0, np.float32)
    ref[16:80, 16:80] = 40.0  # a soft-tissue square in air
    ref[40:56, 40:56] = 900.0  # with a bone insert
    flat = realct.flat_regions(ref)
    assert flat[24, 24] and flat[70, 70]
    assert not flat[:16].any() and not flat[44:52, 44:52].any()
    assert not flat[48, 37]  # next to the bone edge: not flat


def test_hu_bias_is_the_mean_shift_over_flat_regions():
    ref = np.full((96, 96), -1000.0, np.float32)
    ref[16:80, 16:80] = 40.0
    out = ref + 5.0
    out[:10] += 300  # a change in the air does not count
    assert realct.hu_bias(out, ref) == pytest.approx(5.0)


def test_a_real_slice_at_the_asked_noise_levels():
    pairs = realct.real_pairs(names=("CT_small.dcm",), noise=(20.0, 80.0))
    assert [p.noise_hu for p in pairs] == [20.0, 80.0]
    for pair in pairs:
        assert pair.low.shape == pair.full.shape == (128, 128)
        assert pair.measured_hu == pytest.approx(pair.noise_hu, rel=0.1)
        assert pair.pixel_mm == pytest.approx(0.661468)
    # The reference keeps the slice's anatomy: soft tissue, air and bone, in HU.
    full = pairs[0].full
    assert (full < -900).any() and (np.abs(full - 40) < 60).mean() > 0.2 and (full > 300).any()


@pytest.mark.slow
def test_validation_scenes_are_training_sources_at_seeds_training_never_draws():
    from scanside.training.train import Settings

    drawn = max(count for _, count in Settings().scenes)
    assert realct.VALIDATION_SEED > 100 * drawn  # far above any count a run would use
    pairs = realct.validation_pairs(scenes=(("natural", 1),), noise=(40.0,))
    [pair] = pairs
    assert pair.name == f"natural#{realct.VALIDATION_SEED}" and pair.noise_hu == 40.0
    assert pair.measured_hu == pytest.approx(40.0, rel=0.1)
    assert pair.low.shape == pair.full.shape and pair.low.shape[0] >= 256
    again = realct.validation_pairs(scenes=(("natural", 1),), noise=(40.0,))[0]
    assert np.array_equal(pair.low, again.low)  # deterministic: every run sees the same set


def test_draws_per_slice_and_the_bias_standard_error_over_them():
    pairs = realct.real_pairs(names=("CT_small.dcm",), noise=(40.0,), repeats={"CT_small.dcm": 3})
    assert [p.repeat for p in pairs] == [0, 1, 2]
    assert not np.array_equal(pairs[0].low, pairs[1].low)  # independent draws
    # Scored with a method that shifts each draw by a known amount: mean and its SE.
    ref = np.full((96, 96), -1000.0, np.float32)
    ref[16:80, 16:80] = 40.0
    shifts = [1.0, 2.0, 6.0]
    draws = [realct.RealPair("square", 40.0, 40.0, i, ref + s, ref, 0.5)
             for i, s in enumerate(shifts)]
    [row] = realct.score({"input": lambda low, full: low}, draws, lambda a, b: 0.0)
    got = row["methods"]["input"]
    assert got["hu_bias"] == pytest.approx(3.0)
    assert got["hu_bias_se"] == pytest.approx(np.std(shifts, ddof=1) / np.sqrt(3))
    assert "(+3.0±1.5)" in realct.table([row])
    [single] = realct.score({"input": lambda low, full: low}, draws[:1], lambda a, b: 0.0)
    assert np.isnan(single["methods"]["input"]["hu_bias_se"])
    assert "(+1.0)" in realct.table([single])  # no spread from one draw
