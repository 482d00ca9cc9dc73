"""Real anatomy through the scan chain: the pairs, the flat regions and the HU bias."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("skimage")

from scanside.models import realct  # noqa: E402


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


def test_validation_scenes_are_training_sources_at_seeds_training_never_draws():
    from scanside.models.train import Settings

    drawn = max(count for _, count in Settings().scenes)
    assert realct.VALIDATION_SEED > 100 * drawn  # far above any count a run would use
    pairs = realct.validation_pairs(scenes=(("natural", 1),), noise=(40.0,))
    [pair] = pairs
    assert pair.name == f"natural#{realct.VALIDATION_SEED}" and pair.noise_hu == 40.0
    assert pair.measured_hu == pytest.approx(40.0, rel=0.1)
    assert pair.low.shape == pair.full.shape and pair.low.shape[0] >= 256
    again = realct.validation_pairs(scenes=(("natural", 1),), noise=(40.0,))[0]
    assert np.array_equal(pair.low, again.low)  # deterministic: every run sees the same set
