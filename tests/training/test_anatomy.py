"""Training anatomy: XCIST's voxelized chests placed as gecatsim places them, and every source's
scene in Hounsfield units at a CT pixel size."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("scipy")
pytest.importorskip("skimage")

from scanside.training import anatomy  # noqa: E402


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


def flat_soft_scene(size: int = 256, pixel_mm: float = 0.8) -> anatomy.Scene:
    """Air, a soft-tissue square (40 HU) with an edge to fat (-100 HU) through its middle."""
    hu = np.full((size, size), -1000.0, np.float32)
    hu[32:-32, 32:-32] = 40.0
    hu[32:-32, size // 2 :] = -100.0
    return anatomy.Scene(hu, pixel_mm, anatomy.Source.NATURAL)


def test_lesions_go_into_flat_soft_tissue_clear_of_edges_and_of_each_other():
    scene = flat_soft_scene()
    out = anatomy.add_lesions(scene, np.random.default_rng(0), per_area=20.0)
    assert out.source is scene.source and out.pixel_mm == scene.pixel_mm
    assert len(out.lesions) >= 5
    y, x = np.mgrid[:256, :256]
    disks = np.zeros(scene.hu.shape, bool)
    margin = anatomy.ctsim.LESION_MARGIN
    for les in out.lesions:
        assert 20 <= abs(les.contrast_hu) <= 50
        assert 2.0 <= les.radius * scene.pixel_mm <= 4.0  # radius 2-4 mm whatever the pixel
        inside = np.hypot(y - les.y, x - les.x) <= les.radius
        around = np.hypot(y - les.y, x - les.x) <= les.radius + margin
        # Every lesion and its measurement ring lies in one tissue: not across the fat edge.
        assert len(np.unique(scene.hu[around])) == 1 and scene.hu[int(les.y), int(les.x)] > -200
        assert np.allclose(out.hu[inside], scene.hu[inside] + les.contrast_hu)
        assert not disks[inside].any()  # no two lesions overlap
        disks |= inside
    assert np.array_equal(out.hu[~disks], scene.hu[~disks])  # nothing else changes
    assert scene.hu.max() == 40.0  # the input scene is not modified


def test_no_lesions_where_there_is_no_flat_soft_tissue():
    air = anatomy.Scene(np.full((128, 128), -1000.0, np.float32), 0.8, anatomy.Source.NATURAL)
    assert anatomy.add_lesions(air, np.random.default_rng(0), per_area=10.0).lesions == ()
    # Texture far above FLAT_HU (a random field of 200 HU std) is not flat either.
    rough = np.random.default_rng(1).normal(0, 200, (128, 128)).astype(np.float32)
    rough_scene = anatomy.Scene(rough, 0.8, anatomy.Source.NATURAL)
    assert anatomy.add_lesions(rough_scene, np.random.default_rng(0), per_area=10.0).lesions == ()


def test_lesion_count_follows_the_flat_area_and_the_seed():
    scene = flat_soft_scene(512)
    counts = [len(anatomy.add_lesions(scene, np.random.default_rng(s), per_area).lesions)
              for per_area in (0.5, 4.0) for s in range(3)]
    assert np.mean(counts[3:]) > 3 * np.mean(counts[:3])
    again = anatomy.add_lesions(scene, np.random.default_rng(0), 0.5)
    assert again.lesions == anatomy.add_lesions(scene, np.random.default_rng(0), 0.5).lesions


def test_leaf_radii_follow_the_scale_invariant_law():
    low, high = 1.0, 80.0
    radii = anatomy.leaf_radii(np.random.default_rng(0), 200_000, low, high)
    assert radii.min() >= low and radii.max() <= high
    # Density r^-3: P(r <= x) = (1/low^2 - 1/x^2) / (1/low^2 - 1/high^2).
    for x in (1.5, 3.0, 10.0):
        expected = (1 / low**2 - 1 / x**2) / (1 / low**2 - 1 / high**2)
        assert abs((radii <= x).mean() - expected) < 0.005


def test_leaves_scene_is_a_covered_body_of_many_leaves_in_hu():
    from scipy import ndimage

    scene = anatomy.leaves_scene(3)
    hu = scene.hu
    assert scene.source is anatomy.Source.LEAVES and hu.dtype == np.float32
    assert anatomy.PIXEL_MM[0] <= scene.pixel_mm <= anatomy.PIXEL_MM[1]
    assert hu[0, 0] == -1000.0 and hu.min() >= -1000.0 and hu.max() <= 1600.0
    body = hu > -990
    assert 0.3 < body.mean() < 0.8
    # Edges at many scales: blobs of near-constant HU from a few pixels to tens of pixels.
    inner = ndimage.binary_erosion(body, iterations=12)
    levels = np.round(hu[inner] / 5)
    assert len(np.unique(levels)) > 20
    again = anatomy.leaves_scene(3)
    assert np.array_equal(hu, again.hu) and not np.array_equal(hu, anatomy.leaves_scene(4).hu)


def test_leaves_scenes_cover_soft_tissue_only_and_the_whole_range():
    scenes = [anatomy.leaves_scene(s).hu for s in range(8)]
    ranges = [np.percentile(hu[hu > -990], [2, 98]) for hu in scenes]
    spans = [hi - lo for lo, hi in ranges]
    assert min(spans) < 250 and max(spans) > 800  # soft-tissue-only scenes and full-range ones


def test_thin_lines_are_a_network_whose_area_grows_with_its_width():
    masks = [anatomy.thin_lines(np.random.default_rng(0), (256, 256), 8.0, w) for w in (1, 2, 4)]
    assert all(m.min() == 0.0 and m.max() <= 1.0 for m in masks)
    areas = [m.mean() for m in masks]
    assert 0.01 < areas[0] < 0.1  # a sparse network, not blobs
    assert abs(areas[1] / areas[0] - 2) < 0.2 and abs(areas[2] / areas[1] - 2) < 0.2


def test_tissue_scene_is_a_soft_tissue_body_with_fat_muscle_and_sharp_edges():
    scene = anatomy.tissue_scene(2)
    hu = scene.hu
    assert scene.source is anatomy.Source.TISSUE
    assert hu.dtype == np.float32 and hu.shape == (256, 256)
    assert anatomy.PIXEL_MM[0] <= scene.pixel_mm <= anatomy.PIXEL_MM[1]
    assert hu[0, 0] == -1000.0 and hu.min() >= -1010.0 and hu.max() <= 1700.0
    body = hu[hu > -990]
    assert 0.3 < body.size / hu.size < 0.8
    assert (body < -60).mean() > 0.05 and (body > 20).mean() > 0.3  # fat and muscle/organ
    # Rendered at 2x and area-averaged: the skin meets air within one pixel of partial volume.
    for row in (hu[128], hu[:, 128]):
        between = (row > -900) & (row < -200)
        assert between.sum() <= 2, row[between]
    again = anatomy.tissue_scene(2)
    assert np.array_equal(hu, again.hu) and not np.array_equal(hu, anatomy.tissue_scene(3).hu)


def test_every_source_makes_a_scene_by_name():
    assert set(anatomy.MAKERS) == set(anatomy.Source)
    assert anatomy.make_scene("tissue", 1).source is anatomy.Source.TISSUE
