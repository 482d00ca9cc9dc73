"""Model recipes: diffusers' folder format, and SD 1.5's real sizes."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from scanside.errors import InputError  # noqa: E402
from scanside.training import build, recipe  # noqa: E402
from scanside.training.recipes import build_components  # noqa: E402


def test_tiny_is_a_diffusers_folder(tiny_model):
    from diffusers import StableDiffusionPipeline

    index = json.loads((tiny_model / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (tiny_model / sub).is_dir()
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model)  # the path real checkpoints take
    assert pipe.tokenizer("a photo of a cat").input_ids[0] == pipe.tokenizer.bos_token_id


def test_build_is_reproducible_from_the_seed(tmp_path):
    a = build("tiny", tmp_path / "a", seed=3)
    b = build("tiny", tmp_path / "b", seed=3)
    weights = "unet/diffusion_pytorch_model.safetensors"
    assert (a / weights).read_bytes() == (b / weights).read_bytes()


def test_sd15_shaped_has_sd15_parameter_counts():
    """Counted on torch's meta device: no memory, no weights, the real module sizes."""
    spec = recipe("sd15-shaped")
    with torch.device("meta"):
        parts = build_components(spec, vocab_size=49408, seed=0)
    count = {k: sum(p.numel() for p in parts[k].parameters()) for k in ("unet", "vae", "text_encoder")}
    assert round(count["unet"] / 1e6, 1) == 859.5
    assert round(count["vae"] / 1e6, 1) == 83.7
    assert round(count["text_encoder"] / 1e6) == 123


def test_ct_deep_adds_blocks_below_full_resolution_only():
    with torch.device("meta"):
        deep = build_components(recipe("ct-deep"), vocab_size=700, seed=0)["unet"]
        default = build_components(recipe("ct-default"), vocab_size=700, seed=0)["unet"]
    resnets = lambda unet: [len(b.resnets) for b in unet.down_blocks]  # noqa: E731
    assert resnets(default) == [1, 1, 1, 1] and resnets(deep) == [1, 2, 2, 2]
    assert [len(b.resnets) for b in deep.up_blocks] == [3, 3, 3, 2]  # full resolution: 1 + 1
    assert deep.config.in_channels == default.config.in_channels == 8
    count = lambda unet: sum(p.numel() for p in unet.parameters()) / 1e6  # noqa: E731
    assert round(count(default), 2) == 2.02 and round(count(deep), 2) == 3.11


def test_ct_fast_drops_the_full_resolution_blocks_on_the_way_down_only():
    spec = recipe("ct-fast")
    fast = build_components(spec, vocab_size=700, seed=0)["unet"].eval()
    assert [len(b.resnets) for b in fast.down_blocks] == [0, 1, 1, 1]
    assert [len(b.resnets) for b in fast.up_blocks] == [2, 2, 2, 1]  # full resolution: 0 + 1
    # Still three halvings: the engine's divisor (and so tiling and padding) is ct-default's.
    assert sum(b.downsamplers is not None for b in fast.down_blocks) == 3
    with torch.no_grad():
        out = fast(torch.randn(1, 8, 40, 48), 1, torch.randn(1, 77, 64)).sample
    assert out.shape == (1, 4, 40, 48)


def test_unknown_recipe_and_used_folder(tmp_path):
    with pytest.raises(InputError, match="recipe 'huge' is unknown"):
        recipe("huge")
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("keep")
    with pytest.raises(InputError, match="not empty"):
        build("tiny", tmp_path / "x")
    assert (tmp_path / "x" / "f").read_text() == "keep"


@pytest.mark.slow
def test_a_noise_conditioned_recipe_builds_a_model_export_can_read(tmp_path):
    from scanside.export import export_model
    from scanside.runtime import noise_level

    model = build("ct-tiny-noise", tmp_path / "model")
    manifest = export_model(model, tmp_path / "engine", height=32, width=32)
    assert manifest.noise_level == {"estimator": noise_level.ESTIMATOR, "scale": 64.0,
                                    "window": 32}
    assert manifest.components["unet"].spec.inputs[0].shape[1] == 9
    (model / "scanside.json").unlink()  # a 9-channel UNet nobody says what the 9th is
    with pytest.raises(InputError, match="in_channels=9.*noise_level"):
        export_model(model, tmp_path / "engine2", height=32, width=32)
