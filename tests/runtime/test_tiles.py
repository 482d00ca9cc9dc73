"""Tiles: the grid, the blend, and tiled enhancement against the whole image."""

from __future__ import annotations

import numpy as np
import pytest

from scanside.errors import InputError
from scanside.runtime.tiles import Grid, axis_starts, fitted_tile, run_tiled


@pytest.mark.parametrize("size,tile,overlap,divisor", [(512, 128, 32, 8), (488, 256, 64, 8),
                                                       (2048, 512, 128, 64), (136, 128, 32, 8)])
def test_tiles_cover_the_axis_on_divisor_multiples_and_overlap(size, tile, overlap, divisor):
    starts = axis_starts(size, tile, overlap, divisor)
    assert starts[0] == 0 and starts[-1] + tile == size
    assert all(s % divisor == 0 for s in starts)
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))


@pytest.mark.parametrize("size,tile,overlap,divisor,fitted", [(512, 256, 32, 8, 192),
                                                               (768, 256, 32, 8, 216),
                                                               (256, 160, 16, 8, 136),
                                                               (200, 256, 32, 8, 200)])
def test_a_fitted_tile_covers_the_axis_in_as_few_tiles_as_the_largest(size, tile, overlap,
                                                                       divisor, fitted):
    assert fitted_tile(size, tile, overlap, divisor) == fitted
    assert fitted % divisor == 0 and fitted <= tile
    assert len(axis_starts(size, fitted, overlap, divisor)) == len(
        axis_starts(size, tile, overlap, divisor))


def test_weights_sum_to_one_and_vanish_towards_shared_edges():
    grid = Grid.plan(304, 488, 128, 128, 32, 8)
    total = np.zeros((304, 488), np.float32)
    for (y, x), w in zip(grid.corners, grid.weights(1)):
        total[y : y + 128, x : x + 128] += w
    np.testing.assert_allclose(total, 1.0, atol=1e-5)  # raised-cosine pairs: no seam
    first = grid.weights(1)[0]
    assert first[0, 0] == 1.0  # the image's own edge is not tapered
    assert first[64, 127] < 0.01  # the edge it shares with its right neighbour is


def test_fusing_tiles_of_a_pointwise_function_is_exact():
    grid = Grid.plan(200, 328, 64, 64, 16, 8)
    x = np.random.default_rng(0).standard_normal((2, 3, 200, 328)).astype(np.float32)
    rows_seen = []

    def fn(batch, rows):
        assert len(batch) <= 5
        rows_seen.extend(rows)
        return (batch * 2, batch[:, :1])

    doubled, first = run_tiled(fn, x, grid, 1, 1, max_batch=5)
    np.testing.assert_allclose(doubled, 2 * x, atol=1e-5)
    np.testing.assert_allclose(first, x[:, :1], atol=1e-5)
    assert sorted(set(rows_seen)) == [0, 1] and len(rows_seen) == 2 * len(grid)


def test_an_overlap_leaving_no_step_is_refused():
    with pytest.raises(InputError, match="tile overlap"):
        axis_starts(512, 128, 124, 8)


# -- end to end on a convolutional CT model ---------------------------------------------------
torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def ct_tiny(tmp_path_factory):
    from scanside.export import export_model
    from scanside.training import build

    model = build("ct-tiny", tmp_path_factory.mktemp("m") / "ct-tiny", seed=2)
    out = tmp_path_factory.mktemp("e")
    export_model(model, out / "static", height=64, width=64)
    export_model(model, out / "dynamic", height=256, width=256, dynamic=True)
    return out / "static", out / "dynamic"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((a - b) ** 2)))


@pytest.mark.slow
def test_tiled_enhancement_matches_the_whole_image(ct_tiny):
    from scanside import Pipeline

    static, dynamic = ct_tiny
    y, x = np.mgrid[0:300, 0:484] / 100.0
    rng = np.random.default_rng(1)
    image = np.clip(0.5 + 0.3 * np.sin(3 * x) * np.cos(2 * y)
                    + 0.05 * rng.standard_normal(x.shape), 0, 1).astype(np.float32)
    settings = dict(strength=0.5, steps=4, seed=0)
    whole = Pipeline.load(dynamic).enhance(image, **settings)  # 304 x 488 in one call
    tiled = Pipeline.load(dynamic, max_tile=256).enhance(image, **settings)
    small = Pipeline.load(static).enhance(image, **settings)  # 64 px tiles of a static engine
    assert whole.shape == tiled.shape == small.shape == image.shape
    # Not bit-exact: SD's GroupNorm normalises over the whole extent a call sees, so a tile's
    # statistics differ from the whole image's (measured with these random weights: 48.3 dB
    # for 256 px tiles, 29.1 dB for 64 px ones). The smaller the tile, the larger the gap; the
    # blend keeps it smooth. The built-in model's figures on a real slice are in its model card.
    assert psnr(tiled, whole) > 45
    assert psnr(small, whole) > psnr(image, whole) + 3  # nearer the whole-image result than
    assert np.abs(tiled - image).mean() > 1e-3  # the input is; the model did change it


@pytest.mark.slow
def test_max_tile_tiles_an_image_of_the_dynamic_engines_own_export_size(ct_tiny):
    # A dynamic engine exported at 256 px ran a 256 px image whole whatever max_tile said.
    from scanside import Pipeline

    dynamic = ct_tiny[1]
    image = np.random.default_rng(2).random((256, 256)).astype(np.float32)
    pipe = Pipeline.load(dynamic, max_tile=128)
    assert pipe.grid(256, 256) is not None and len(pipe.grid(256, 256)) == 9
    assert Pipeline.load(dynamic).grid(256, 256) is None
    tiled = pipe.enhance(image, strength=0.5, steps=2, seed=0)
    whole = Pipeline.load(dynamic).enhance(image, strength=0.5, steps=2, seed=0)
    assert 0 < np.abs(tiled - whole).max()


@pytest.mark.slow
def test_a_bad_max_tile_is_refused_with_the_allowed_sizes(ct_tiny):
    from scanside import Pipeline

    with pytest.raises(InputError, match=r"max_tile: 101 is not a multiple of 2 within .*64\.\.1024"):
        Pipeline.load(ct_tiny[1], max_tile=101)
    with pytest.raises(InputError, match="max_tile"):
        Pipeline.load(ct_tiny[1], max_tile=2048)


@pytest.mark.slow
def test_guided_tiles_pair_each_tile_with_its_prompt_half(ct_tiny, monkeypatch):
    # With guidance the UNet gets (uncond, text) halves: each tile's row must carry the
    # embedding of its own half, or the guided result mixes prompts.
    from scanside import Pipeline

    pipe = Pipeline.load(ct_tiny[0])  # static 64 px: a 100 x 100 image is 2 x 2 tiles
    seen = []
    unet = pipe.engines["unet"]
    original = unet.run

    def spy(feeds):
        seen.append((feeds["sample"].shape[0], feeds["encoder_hidden_states"].copy()))
        return original(feeds)

    monkeypatch.setattr(unet, "run", spy)
    image = np.random.default_rng(3).random((100, 100)).astype(np.float32)
    out = pipe.enhance(image, strength=0.5, steps=2, guidance=3.0, prompt="a", seed=0)
    assert out.shape == (100, 100) and np.isfinite(out).all()
    uncond, text = pipe.embed(""), pipe.embed("a")
    rows = [e for _, batch in seen for e in batch]
    assert len(rows) == 2 * 4  # 2 halves x 4 tiles, one UNet step
    assert sum(np.array_equal(r, uncond[0]) for r in rows) == len(rows) // 2
    assert sum(np.array_equal(r, text[0]) for r in rows) == len(rows) // 2


@pytest.mark.slow
def test_data_consistency_through_the_pipeline(ct_tiny):
    from scanside import Pipeline

    pipe = Pipeline.load(ct_tiny[0])
    image = np.full((64, 64), 0.5, np.float32)
    plain = pipe.enhance(image, strength=0.5, steps=2, seed=0)
    kept = pipe.enhance(image, strength=0.5, steps=2, seed=0, consistency_px=8)
    assert abs(float(plain.mean()) - 0.5) > 1e-3  # random weights move the mean
    assert abs(float(kept.mean()) - 0.5) < 1e-4  # the input's mean is kept
    assert "data consistency" in pipe.describe(consistency_px=8)
    with pytest.raises(InputError, match="consistency_px: -1"):
        pipe.enhance(image, consistency_px=-1)
    # A band keeps the input's lesion-size content only: the model's mean shift stays.
    band = pipe.enhance(image, strength=0.5, steps=2, seed=0, consistency_px=[2, 16])
    assert abs(float(band.mean()) - float(plain.mean())) < 1e-3
    assert "between 2 and 16 px" in pipe.describe(consistency_px=[2, 16])
    for bad in ([16, 2], [0, 8], [2], (2, float("nan")), True, "8"):
        with pytest.raises(InputError, match="consistency_px: .* neither a number >= 0 nor a pair"):
            pipe.enhance(image, consistency_px=bad)


@pytest.mark.slow
def test_a_tiled_call_holds_at_most_call_pixels(ct_tiny, monkeypatch):
    # The built-in model on a 2048 px radiograph put eight 1024 px tiles into one UNet call
    # (the profile's batch) and peaked at 12.4 GB; a call now takes at most CALL_PIXELS.
    from scanside import Pipeline
    from scanside.runtime import pipeline as module

    monkeypatch.setattr(module, "CALL_PIXELS", 2 * 128 * 128)
    pipe = Pipeline.load(ct_tiny[1], max_tile=128)  # dynamic: 128 px tiles
    batches = []
    for name, engine in pipe.engines.items():
        original = engine.run

        def spy(feeds, original=original, name=name):
            sample = feeds.get("sample", feeds.get("image", feeds.get("latent")))
            if sample is not None:
                batches.append((name, sample.shape[0]))
            return original(feeds)

        monkeypatch.setattr(engine, "run", spy)
    image = np.random.default_rng(4).random((384, 384)).astype(np.float32)  # 3 x 3 tiles or more
    pipe.enhance(image, strength=0.5, steps=2, seed=0)
    assert batches and max(size for _, size in batches) == 2



@pytest.fixture(scope="module")
def tiny_dynamic(tiny_model, tmp_path_factory):
    """SD's block types with random weights (a VAE that is no per-pixel map), any size."""
    from scanside.export import export_model

    out = tmp_path_factory.mktemp("tiny-dynamic") / "engine"
    export_model(tiny_model, out, height=64, width=64, dynamic=True)
    return out


@pytest.mark.slow
def test_vae_tiles_go_one_per_call_and_stay_close_to_the_whole_image(tiny_dynamic, monkeypatch):
    # vae_tile bounds the VAE's full-resolution activations (SD 1.5's peak memory at 512 px)
    # while the UNet still runs the image whole.
    from scanside import Pipeline

    pipe = Pipeline.load(tiny_dynamic, vae_tile=160)
    assert pipe.manifest.vae_affine is None  # a real VAE graph, not a per-pixel map
    calls = []
    for name in ("vae_encoder", "vae_decoder", "unet"):
        engine = pipe.engines[name]

        def spy(feeds, original=engine.run, name=name):
            x = feeds.get("sample", feeds.get("image", feeds.get("latent")))
            calls.append((name, x.shape))
            return original(feeds)

        monkeypatch.setattr(engine, "run", spy)
    y, x = np.mgrid[0:256, 0:256] / 60.0
    image = np.stack([0.5 + 0.3 * np.sin(3 * x) * np.cos(2 * y)] * 3, -1).astype(np.float32)
    tiled = pipe.enhance(image, strength=0.5, steps=2, seed=0)
    whole = Pipeline.load(tiny_dynamic).enhance(image, strength=0.5, steps=2, seed=0)
    encoder = [shape for name, shape in calls if name == "vae_encoder"]
    decoder = [shape for name, shape in calls if name == "vae_decoder"]
    unet = [shape for name, shape in calls if name == "unet"]
    f = pipe.manifest.vae_factor
    # 256 px with vae_tile 160 and 16 px overlaps: 2 x 2 tiles, shrunk to the 136 px that
    # cover it (not 160, which would do 1.6x the work), one per call.
    assert pipe.vae_grid(256, 256, None)[0].tile_h == 136
    assert len(encoder) == len(decoder) == 4
    assert all(s[0] == 1 and s[-2:] == (136, 136) for s in encoder)
    assert all(s[0] == 1 and s[-2:] == (136 // f, 136 // f) for s in decoder)
    assert unet and all(s[-2:] == (256 // f, 256 // f) for s in unet)  # the UNet: whole
    # GroupNorm statistics per tile: not bit-exact, far nearer the whole image than the input
    # is (these random weights: PSNR against it 12.6 dB for the input, 25.3 dB for the tiles).
    assert psnr(tiled, whole) > psnr(image, whole) + 10 and np.abs(tiled - whole).max() > 0
    assert pipe.fingerprint(strength=0.5) != Pipeline.load(tiny_dynamic).fingerprint(strength=0.5)


@pytest.mark.slow
def test_a_bad_vae_tile_is_refused(ct_tiny, tiny_dynamic):
    from scanside import Pipeline

    with pytest.raises(InputError, match="vae_tile: .* static 64x64 engine.*--dynamic"):
        Pipeline.load(ct_tiny[0], vae_tile=64)
    with pytest.raises(InputError, match=r"vae_tile: 100 is not a multiple of 8 within .*64\.\.1024"):
        Pipeline.load(tiny_dynamic, vae_tile=100)
