"""Synthetic CT data for the default model: phantoms and the low-dose simulation."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("skimage")

from scanside.models import ctsim  # noqa: E402
from scanside.models.ctsim import FULL_DOSE, LOW_DOSE, make_pair, make_phantom, simulate_scan  # noqa: E402


def test_phantoms_are_reproducible_and_differ_by_seed():
    a, b, c = make_phantom(3), make_phantom(3), make_phantom(4)
    np.testing.assert_array_equal(a.hu, b.hu)
    assert a.lesions == b.lesions
    assert not np.array_equal(a.hu, c.hu)


@pytest.mark.parametrize("size", [128, 256])
def test_phantom_anatomy_in_hounsfield_units(size):
    ph = make_phantom(0, size)
    assert ph.hu.shape == (size, size) and ph.hu.dtype == np.float32
    assert (ph.hu == -1000).mean() > 0.2  # air around the body
    assert ((ph.hu > -900) & (ph.hu < -800)).any()  # lungs
    assert (ph.hu > 700).any()  # bone
    assert ph.lesions
    for lesion in ph.lesions:
        assert 15 <= abs(lesion.contrast_hu) <= 40  # low contrast
        value = ph.hu[int(lesion.y), int(lesion.x)]
        assert -200 < value < 250  # inside soft tissue


def test_dose_sets_the_noise_and_the_noise_is_ct_like():
    ph = make_phantom(1)
    soft = (ph.hu > 0) & (ph.hu < 100)
    clean = simulate_scan(ph.hu, 1e12, 0)
    low = simulate_scan(ph.hu, LOW_DOSE, 1) - clean
    full = simulate_scan(ph.hu, FULL_DOSE, 2) - clean
    assert 25 < low[soft].std() < 60  # a low-dose CT's noise level
    assert full[soft].std() < low[soft].std() / 5
    # FBP noise is correlated between neighbours; white noise would give ~0
    assert np.corrcoef(low[:, :-1].ravel(), low[:, 1:].ravel())[0, 1] > 0.05


def test_pairs_are_reproducible():
    a, b = make_pair(5), make_pair(5)
    np.testing.assert_array_equal(a.low, b.low)
    np.testing.assert_array_equal(a.full, b.full)
    assert not np.array_equal(a.low, a.full)


def test_splits_are_disjoint_and_parallel_simulation_is_identical():
    train, val, test = (set(ctsim.split_seeds(s, 200)) for s in ("train", "val", "test"))
    assert not (train & val or train & test or val & test)
    seeds = ctsim.split_seeds("test", 4)
    serial = ctsim.make_pairs(seeds, size=32, workers=1)
    parallel = ctsim.make_pairs(seeds, size=32, workers=2)
    for a, b in zip(serial, parallel):
        assert np.array_equal(a.low, b.low) and np.array_equal(a.full, b.full)
