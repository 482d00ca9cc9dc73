"""Image validation and padding at the runtime's edge."""

from __future__ import annotations

import numpy as np
import pytest

from scanside.errors import InputError
from scanside.runtime import images


def test_gray_round_trip_pads_and_crops():
    image = np.linspace(0, 1, 50 * 60, dtype=np.float32).reshape(50, 60)
    prepared = images.prepare(image, channels=3, min_hw=(64, 64), divisor=8)
    assert prepared.pixels.shape == (1, 3, 64, 64)
    # the border mirrors the image, edge row included (symmetric), it is not a black frame
    np.testing.assert_allclose(prepared.pixels[0, 0, 50, :60], image[49] * 2 - 1, atol=1e-6)
    np.testing.assert_allclose(prepared.pixels[0, 0, 51, :60], image[48] * 2 - 1, atol=1e-6)
    back = images.finish(prepared.pixels, prepared.height, prepared.width, prepared.gray)
    assert back.shape == (50, 60)
    np.testing.assert_allclose(back, image, atol=1e-6)


def test_integer_images_are_scaled():
    prepared = images.prepare(np.full((64, 64), 65535, np.uint16), 3, (64, 64), 8)
    assert prepared.pixels.max() == pytest.approx(1.0)
    prepared = images.prepare(np.zeros((64, 64, 3), np.uint8), 3, (64, 64), 8)
    assert prepared.pixels.min() == pytest.approx(-1.0)


def test_pads_to_the_divisor_and_the_smallest_engine_size():
    prepared = images.prepare(np.zeros((70, 33), np.float32), 3, (16, 16), 8)
    assert prepared.pixels.shape == (1, 3, 72, 40)
    # A UNet that halves a 1/8 latent three times needs multiples of 64 (SD 1.5), not of 8:
    # 300 x 484 padded to 304 x 488 failed in ONNX Runtime's concat of skip connections.
    prepared = images.prepare(np.zeros((300, 484), np.float32), 3, (256, 256), 64)
    assert prepared.pixels.shape == (1, 3, 320, 512)
    prepared = images.prepare(np.zeros((40, 300), np.float32), 1, (128, 128), 8)
    assert prepared.pixels.shape == (1, 1, 128, 304)  # larger than a static engine: tiles


@pytest.mark.parametrize(
    "image,fragment",
    [
        (np.zeros((64, 64), np.int64), "dtype int64"),
        (np.zeros((64, 64), bool), "dtype bool"),
        (np.zeros((2, 64, 64, 3), np.float32), r"shape \(2, 64, 64, 3\)"),
        (np.zeros((64, 64, 4), np.float32), "4 channels"),
        (np.zeros((7, 64), np.float32), "7x64 pixels; images need at least 8x8"),
        (np.full((64, 64), 2.0, np.float32), r"span \[2, 2\], expected \[0, 1\]"),
        (np.full((64, 64), np.nan, np.float32), "NaN"),
        ([[0.5]], "shape None"),
    ],
)
def test_bad_images_are_named(image, fragment):
    with pytest.raises(InputError, match=fragment):
        images.prepare(image, 3, (64, 64), 8)


@pytest.mark.parametrize("k", range(8))
def test_dihedral_views_turn_back(k):
    pixels = np.arange(2 * 4 * 4, dtype=np.float32).reshape(1, 2, 4, 4)
    view = images.dihedral(pixels, k)
    assert view.shape == pixels.shape
    np.testing.assert_array_equal(images.undo_dihedral(view, k), pixels)


def test_the_eight_views_are_distinct():
    pixels = np.arange(16, dtype=np.float32).reshape(4, 4)
    assert len({images.dihedral(pixels, k).tobytes() for k in range(8)}) == 8


def test_ensemble_views_are_checked():
    assert images.ensemble_views(1) == (0,)
    assert len(images.ensemble_views(8)) == 8
    # mirrors and half turns keep a non-square shape; quarter turns do not
    for k in images.ensemble_views(4):
        assert images.dihedral(np.zeros((64, 32)), k).shape == (64, 32)
    for bad in (3, 0, True, 2.0):
        with pytest.raises(InputError, match="ensemble: .* not one of 1, 2, 4, 8"):
            images.ensemble_views(bad)


def test_data_consistency_keeps_the_inputs_means_and_the_outputs_detail():
    rng = np.random.default_rng(0)
    source = np.clip(0.5 + 0.1 * rng.standard_normal((96, 80)), 0, 1).astype(np.float32)
    shifted = source + 0.05  # a model that moved every value (an HU shift)
    np.testing.assert_allclose(images.keep_low_frequencies(shifted, source, 8), source, atol=1e-5)
    y, x = np.mgrid[0:96, 0:80]
    detail = 0.05 * np.where((y + x) % 2, 1, -1)  # pixel-scale detail the model made
    kept = images.keep_low_frequencies(source + detail, source, 8) - source
    assert np.abs(kept - detail)[8:-8, 8:-8].max() < 0.002
    blur = images.gaussian_blur(np.pad(np.ones((4, 4)), 20), 3.0)
    assert blur.sum() == pytest.approx(16.0, rel=1e-4)  # a normalised kernel


@pytest.mark.parametrize("sigma", [2.0, 8.0, 32.0])  # shifted sums (13 taps), FFT (49, 193)
def test_gaussian_blur_is_scipys_reflected_gaussian(sigma):
    ndimage = pytest.importorskip("scipy.ndimage")
    image = np.random.default_rng(2).random((70, 90, 2)).astype(np.float32)  # 3 sigma > 70 px
    want = ndimage.gaussian_filter(image.astype(np.float64), (sigma, sigma, 0), mode="reflect",
                                   truncate=3.0)
    np.testing.assert_allclose(images.gaussian_blur(image, sigma), want, atol=1e-5)


def test_data_consistency_does_not_take_the_clipped_inputs_mean_at_the_window_edge():
    # Noisy air under a CT window: the input is clipped at 0, so its local mean is ~0.4 of the
    # noise above the edge. The model's air (0) must stay air, and tissue keeps the input's mean.
    rng = np.random.default_rng(1)
    truth = np.zeros((64, 64), np.float32)
    truth[:, 32:] = 0.5
    source = np.clip(truth + 0.03 * rng.standard_normal(truth.shape), 0, 1).astype(np.float32)
    assert source[:, :24].mean() > 0.01  # the clipped noise's bias the fix is about
    out = images.keep_low_frequencies(truth + np.float32(0.02) * (truth > 0), source, 2)
    assert out[:, :32].max() == 0.0
    assert abs(out[8:-8, 40:-8].mean() - source[8:-8, 40:-8].mean()) < 0.002


def test_data_consistency_in_a_band_keeps_the_outputs_coarse_content():
    # The model removed a faint 3 px disk (attenuated it, as a low-pass would) and corrected a
    # large-scale shift. The band 2..24 px hands the disk back and keeps the correction.
    y, x = np.mgrid[0:96, 0:96]
    disk = 0.02 * (np.hypot(y - 48, x - 48) <= 3)
    truth = np.full((96, 96), 0.5)
    source = (truth + disk + 0.03).astype(np.float32)  # the input: the disk and a shift
    output = truth.astype(np.float32)  # the model: no disk, no shift
    band = images.keep_low_frequencies(output, source, 1, 24)
    plain = images.keep_low_frequencies(output, source, 1)
    contrast = lambda im: im[45:52, 45:52].mean() - im[20:30, 20:30].mean()  # noqa: E731
    assert contrast(band) > 0.5 * contrast(source)  # the disk is back
    assert abs(band[20:30, 20:30].mean() - 0.5) < 0.01  # the model's level, not the shift
    assert abs(plain[20:30, 20:30].mean() - 0.53) < 0.002  # the plain low-pass takes the shift
