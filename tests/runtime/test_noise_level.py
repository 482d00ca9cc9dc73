"""The noise-level estimate a noise-conditioned UNet is fed: right on white noise, not fooled by
edges or by clipped air, one value per image."""

from __future__ import annotations

import numpy as np
import pytest

from scanside.errors import InputError
from scanside.runtime import noise_level


def noisy(base: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    return (base + np.random.default_rng(seed).normal(0, sigma, base.shape)).astype(np.float32)


@pytest.mark.parametrize("sigma", [0.01, 0.04])
def test_white_noise_on_a_flat_image_reads_as_its_std(sigma):
    level = float(noise_level.estimate(noisy(np.zeros((256, 256)), sigma)))
    # The 25th percentile of 8 x 8 block stds sits a little under the std itself.
    assert 0.85 * sigma < level < sigma


def test_edges_and_texture_barely_move_it():
    sigma = 0.02
    y, x = np.mgrid[:256, :256]
    flat = noisy(np.zeros((256, 256)), sigma)
    # A third of the image: strong edges and fine texture, as bone and vessels give.
    busy = np.where(x < 86, 0.5 * ((x // 3 + y // 5) % 2) + 0.1 * np.sin(y / 1.5), 0.0)
    level = float(noise_level.estimate(noisy(busy, sigma)))
    assert abs(level / float(noise_level.estimate(flat)) - 1) < 0.08
    laplacian_std = np.std(4 * busy[1:-1, 1:-1] - busy[:-2, 1:-1] - busy[2:, 1:-1]
                           - busy[1:-1, :-2] - busy[1:-1, 2:]) / np.sqrt(20)
    assert laplacian_std > 3 * sigma  # what a plain global estimate would have read


def test_blocks_at_the_range_ends_are_left_out():
    # Air at -1 with its noise clipped away on one side: less noise than the tissue's.
    image = noisy(np.zeros((128, 128)), 0.03)
    image[:, :64] = np.clip(noisy(np.full((128, 64), -1.0), 0.03, seed=1), -1, 1)
    level = float(noise_level.estimate(image))
    assert 0.85 * 0.03 < level < 0.03
    assert float(noise_level.estimate(np.full((64, 64), -1.0, np.float32))) == 0.0


def test_a_batch_gives_each_image_its_own_estimate():
    batch = np.stack([noisy(np.zeros((64, 64)), s, seed=i) for i, s in enumerate((0.01, 0.05))])
    levels = noise_level.estimate(batch)
    assert levels.shape == (2,)
    assert np.allclose(levels, [noise_level.estimate(b) for b in batch])
    assert levels[1] > 3 * levels[0]


def test_the_channel_is_the_estimate_times_scale_and_factor():
    pixels = noisy(np.zeros((1, 1, 64, 64)), 0.02)
    level = float(noise_level.estimate(pixels[0, 0]))
    spec = {"estimator": noise_level.ESTIMATOR, "scale": 64.0}
    assert noise_level.channel_value(pixels, spec, 1.5) == pytest.approx(level * 64.0 * 1.5)


def test_windows_read_a_large_image_as_training_patches_read_it():
    # Two thirds of the image are noisier: the estimate over all blocks takes its 25th
    # percentile from the quiet third; the median over 32 px windows follows the majority.
    image = noisy(np.zeros((64, 96)), 0.01)
    image[:, 32:] = noisy(np.zeros((64, 64)), 0.03, seed=1)
    whole = float(noise_level.estimate(image))
    windows = noise_level.estimate_windows(image, 32)
    tiles = [float(noise_level.estimate(image[y:y + 32, x:x + 32]))
             for y in (0, 32) for x in (0, 32, 64)]
    assert windows == pytest.approx(float(np.median(tiles)))
    assert whole < 0.012 and windows > 0.025
    # An image no larger than a window is read whole.
    assert noise_level.estimate_windows(image[:32, :32], 32) == pytest.approx(tiles[0])


def test_bad_input_and_unknown_estimators_are_refused():
    with pytest.raises(InputError, match="too small"):
        noise_level.estimate(np.zeros((6, 40)))
    with pytest.raises(InputError, match="estimator"):
        noise_level.check_spec({"estimator": "mad-wavelet", "scale": 1.0}, "scanside.json")
    with pytest.raises(InputError, match="scale"):
        noise_level.check_spec({"estimator": noise_level.ESTIMATOR, "scale": 0}, "scanside.json")
