"""Maps of an enhancement: names checked, the change mask flags structure and not noise, the
uncertainty is the views' spread (calibrated when the model says how), and the enhanced image
is the same with maps as without."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from scanside import Pipeline, Sampling
from scanside.errors import InputError
from scanside.runtime import maps
from scanside.runtime.images import gaussian_blur


def disk(shape, cy, cx, r):
    y, x = np.mgrid[: shape[0], : shape[1]]
    return (y - cy) ** 2 + (x - cx) ** 2 <= r * r


@pytest.mark.parametrize("given, expected", [
    ("uncertainty,change", ("uncertainty", "change")), ("change", ("change",)),
    (["change", "uncertainty"], ("uncertainty", "change")), (None, ()), ("", ()),
    (" change , ", ("change",)),
])
def test_map_names(given, expected):
    assert maps.check_maps(given) == expected


@pytest.mark.parametrize("given", ["uncertain", "change,edges", [3]])
def test_unknown_map_names_are_refused_with_the_choices(given):
    with pytest.raises(InputError, match="maps: .*uncertainty, change"):
        maps.check_maps(given)


@pytest.mark.parametrize("k", [0, -1, float("nan"), True, "3"])
def test_change_k_must_be_positive(k):
    with pytest.raises(InputError, match="change_k"):
        maps.check_k(k)


def scene(seed=0, noise=0.02, size=128):
    """A smooth soft-tissue image in [0, 1] units, its noisy input, and a faint disk."""
    rng = np.random.default_rng(seed)
    smooth = 0.52 + 0.02 * gaussian_blur(rng.standard_normal((size, size)), 12.0) * 12
    noisy = smooth + noise * gaussian_blur(rng.standard_normal((size, size)), 0.7) * 1.7
    return smooth.astype(np.float32), noisy.astype(np.float32), disk((size, size), 60, 70, 6)


def test_noise_removal_alone_flags_almost_nothing():
    smooth, noisy, _ = scene()
    change, flagged, noise = maps.change_maps(smooth, noisy)
    np.testing.assert_allclose(change, smooth - noisy, atol=1e-6)
    assert flagged.mean() < 0.01
    assert np.all(noise > 0)


def test_a_removed_lesion_is_flagged_and_its_surround_is_not():
    smooth, noisy, lesion = scene()
    contrast = 0.03  # 60 HU in the CT window, against ~1/3 of that in smoothed noise
    source = noisy + contrast * lesion
    _, flagged, _ = maps.change_maps(smooth, source)  # the model lost the disk
    assert flagged[lesion].mean() > 0.5
    far = ~disk(lesion.shape, 60, 70, 16)
    assert flagged[far].mean() < 0.01


def test_saturated_pixels_are_never_flagged():
    image = np.zeros((64, 64), np.float32)  # all air below the window
    _, flagged, _ = maps.change_maps(np.full_like(image, 0.3), image)
    assert not flagged.any()


def test_spread_is_the_sample_std_and_calibration_combines_both_terms():
    a, b = np.zeros((4, 4), np.float32), np.ones((4, 4), np.float32)
    np.testing.assert_allclose(maps.spread([a, b]), np.full((4, 4), np.sqrt(0.5)), rtol=1e-6)
    with pytest.raises(InputError):
        maps.spread([a])
    s, n = np.full((2, 2), 3.0, np.float32), np.full((2, 2), 4.0, np.float32)
    np.testing.assert_allclose(maps.calibrated(s, n, None), s)
    out = maps.calibrated(s, n, {"spread_scale": 1.0, "noise_scale": 1.0})
    np.testing.assert_allclose(out, 5.0)


@pytest.fixture(scope="module")
def pipe(concat_engine):
    return Pipeline.load(concat_engine)


def test_enhance_maps_keeps_the_enhanced_image(pipe):
    image = np.random.default_rng(1).random((64, 64)).astype(np.float32)
    plain = pipe.enhance(image, Sampling(steps=4, strength=0.5, seed=3))
    with_maps = pipe.enhance_maps(image, Sampling(steps=4, strength=0.5, seed=3))
    np.testing.assert_array_equal(plain, with_maps.image)
    m = with_maps.maps
    assert m.names() == ("uncertainty", "change") and m.views == maps.MIN_VIEWS
    assert m.uncertainty.shape == m.change.shape == m.flagged.shape == (64, 64)
    assert m.uncertainty.min() >= 0 and m.uncertainty.max() > 0
    np.testing.assert_allclose(m.change, with_maps.image - image, atol=1e-6)


def test_the_uncertainty_uses_the_ensembles_own_views_when_it_has_four(pipe):
    image = np.random.default_rng(2).random((64, 64)).astype(np.float32)
    sampling = Sampling(steps=2, strength=0.5, ensemble=8)
    result = pipe.enhance_maps(image, sampling, "uncertainty")
    assert result.maps.views == 8 and result.maps.change is None
    np.testing.assert_array_equal(result.image, pipe.enhance(image, sampling))
    assert pipe.map_views(sampling) == 8 and pipe.map_views(Sampling(ensemble=1)) == 4


def test_a_model_calibration_is_applied(pipe):
    image = np.random.default_rng(4).random((64, 64)).astype(np.float32)
    raw = pipe.enhance_maps(image, Sampling(steps=2, strength=0.5), "uncertainty").maps
    calibrated = dataclasses.replace(pipe, manifest=dataclasses.replace(
        pipe.manifest, maps={"uncertainty": {"spread_scale": 2.0, "noise_scale": 0.0}}))
    cal = calibrated.enhance_maps(image, Sampling(steps=2, strength=0.5), "uncertainty").maps
    np.testing.assert_allclose(cal.uncertainty, 2 * raw.uncertainty, rtol=1e-5)
    assert cal.calibration and not raw.calibration


def test_no_maps_asked_is_an_error(pipe):
    with pytest.raises(InputError, match="maps: none asked for"):
        pipe.enhance_maps(np.zeros((64, 64), np.float32), maps=())
