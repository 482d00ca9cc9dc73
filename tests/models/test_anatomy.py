"""Training anatomy: XCIST's voxelized chests placed as gecatsim places them, and every source's
scene in Hounsfield units at a CT pixel size."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("scipy")
pytest.importorskip("skimage")

from scanside.models import anatomy  # noqa: E402


@pytest.mark.parametrize("name", anatomy.xcist_chests())
def test_xcist_maps_placed_as_gecatsim_reads_them_partition_the_slab(name):
    materials, maps = anatomy.xcist_chest(name)
    assert len(materials) == len(maps) == 9 and set(materials) == set(anatomy.CHEST_HU)
    # Each map covers only its material's pixels; placed right they never overlap. Read with
    # rows along y (the naive way), heart lies over 18-30 % of blood and muscle over lung.
    assert maps.sum(axis=0).max() == 1
    assert 0.8 < maps.any(axis=0).mean() < 0.95  # the chest fills its slab
    spine, cartilage = (np.nonzero(maps[materials.index(m)])[0].mean()
                        for m in ("ncat_dry_spine", "ncat_cartilage"))
    assert cartilage < spine  # turned as CT shows it: anterior (costal cartilage) up


def test_chest_scene_is_a_chest_at_a_chest_ct_pixel_size():
    scene = anatomy.make_scene("chest", 0)
    assert scene.source is anatomy.Source.CHEST and not scene.lesions
    assert anatomy.CHEST_PIXEL_MM[0] <= scene.pixel_mm <= anatomy.CHEST_PIXEL_MM[1]
    hu = scene.hu
    assert hu.dtype == np.float32 and hu.shape[0] == hu.shape[1] and hu.shape[0] % 16 == 0
    assert 300 <= hu.shape[0] <= 700  # 350 mm of chest at 0.6-1.0 mm, +-15 % body size
    assert (hu == -1000).mean() > 0.1  # air around the body
    assert ((hu > -900) & (hu < -700)).mean() > 0.1  # lungs
    assert ((hu > 20) & (hu < 80)).mean() > 0.1  # muscle, heart, blood
    assert (hu > 400).any()  # ribs and spine
    again = anatomy.make_scene("chest", 0)
    assert np.array_equal(hu, again.hu)  # a seed gives one scene: resumed data is the same data
    assert not np.array_equal(hu, anatomy.make_scene("chest", 1).hu)


def test_contrast_enhanced_blood_in_some_chests_only():
    materials, maps = anatomy.xcist_chest(anatomy.xcist_chests()[0])
    blood = maps[materials.index("ncat_blood")] > 0
    values = [float(np.median(anatomy.chest_hu(materials, maps, np.random.default_rng(s))[blood]))
              for s in range(20)]
    enhanced = sum(v > 100 for v in values)
    assert 2 <= enhanced <= 16  # CHEST_CONTRAST = 0.4 of 20 draws
    assert all(35 <= v <= 55 or 150 <= v <= 350 for v in values)
