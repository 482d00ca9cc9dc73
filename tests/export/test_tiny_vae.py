"""--tiny-vae: a TAESD-format VAE exported in place of the checkpoint's, keeping the component
contract (unscaled latents in and out), its quality measured into the manifest, and wrong
folders refused before any work."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from scanside import Pipeline
from scanside.errors import InputError
from scanside.export import export_model
from scanside.export import tiny_vae
from scanside.training.recipes import TINY_VAE_SHAPES, build_tiny_vae
from scanside.runtime.artifacts import read_manifest


@pytest.fixture(scope="module")
def taesd(tmp_path_factory):
    return build_tiny_vae("tiny", tmp_path_factory.mktemp("taesd") / "taesd", seed=3)


@pytest.fixture(scope="module")
def tiny_vae_engine(tiny_model, taesd, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny-vae") / "engine"
    export_model(tiny_model, out, tiny_vae=taesd)
    return out


@pytest.mark.slow
def test_the_tiny_vae_replaces_both_vae_graphs_and_the_manifest_says_so(
        tiny_vae_engine, tiny_engine, taesd):
    m, plain = read_manifest(tiny_vae_engine), read_manifest(tiny_engine)
    assert m.tiny_vae["components"] == ["vae_encoder", "vae_decoder"]
    for name in ("vae_encoder", "vae_decoder"):  # other graphs, same I/O contract
        assert m.components[name].sha256 != plain.components[name].sha256
        assert m.components[name].spec == plain.components[name].spec
    for name in ("unet", "text_encoder"):
        assert m.components[name].sha256 == plain.components[name].sha256
    assert m.vae_scaling_factor == plain.vae_scaling_factor  # the runtime's latents unchanged
    quality = m.tiny_vae["quality"]
    assert set(quality) == {"full_round_trip_psnr_db", "tiny_round_trip_psnr_db",
                            "tiny_decode_vs_full_psnr_db"}
    assert all(np.isfinite(v) and 0 < v < 100 for v in quality.values())
    on_disk = json.loads((tiny_vae_engine / "manifest.json").read_text())
    assert on_disk["tiny_vae"]["source_hash"] == m.tiny_vae["source_hash"]


@pytest.mark.slow
def test_the_engine_decodes_as_taesd_does_on_the_checkpoints_scaled_latents(tiny_vae_engine, taesd):
    from diffusers import AutoencoderTiny

    pipe = Pipeline.load(tiny_vae_engine)
    scaling = pipe.manifest.vae_scaling_factor
    module = AutoencoderTiny.from_pretrained(taesd).eval()
    latents = np.random.default_rng(0).standard_normal((1, 4, 8, 8)).astype(np.float32)
    # The runtime hands the decoder latents / scaling, as for the checkpoint's own VAE.
    ours = pipe.engines["vae_decoder"].run({"latent": latents / scaling})["image"]
    with torch.inference_mode():
        reference = module.decode(torch.from_numpy(latents)).sample.numpy()
    assert np.abs(ours - reference).max() < 1e-4
    image = np.random.default_rng(1).random((64, 64, 3)).astype(np.float32)
    with torch.inference_mode():
        taesd_latents = module.encode(torch.from_numpy(image.transpose(2, 0, 1)[None] * 2 - 1)).latents
    feed = np.ascontiguousarray(image.transpose(2, 0, 1)[None] * 2 - 1)
    mean = pipe.engines["vae_encoder"].run({"image": feed})["latent_mean"]
    assert np.abs(mean * scaling - taesd_latents.numpy()).max() < 1e-4


@pytest.mark.slow
def test_an_engine_with_a_tiny_vae_enhances_and_says_so_in_its_provenance(tiny_vae_engine):
    pipe = Pipeline.load(tiny_vae_engine)
    image = np.random.default_rng(2).random((64, 64)).astype(np.float32)
    out = pipe.enhance(image, prompt="x", strength=0.3, steps=4, seed=0)
    assert out.shape == image.shape and np.isfinite(out).all()
    assert "tiny VAE sha256" in pipe.describe(prompt="x", strength=0.3, steps=4)


@pytest.mark.slow
def test_decoder_only_keeps_the_checkpoints_encoder(tiny_model, taesd, tiny_engine, tmp_path):
    out = tmp_path / "engine"
    m = export_model(tiny_model, out, tiny_vae=taesd, tiny_vae_parts="decoder")
    plain = read_manifest(tiny_engine)
    assert m.tiny_vae["components"] == ["vae_decoder"]
    assert m.components["vae_encoder"].sha256 == plain.components["vae_encoder"].sha256
    assert m.components["vae_decoder"].sha256 != plain.components["vae_decoder"].sha256


def test_wrong_tiny_vae_folders_are_refused_before_any_work(tiny_model, tmp_path):
    out = tmp_path / "engine"
    with pytest.raises(InputError, match="no config.json"):
        export_model(tiny_model, out, tiny_vae=tmp_path)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text("{}")
    (pickled / "diffusion_pytorch_model.bin").write_bytes(b"\0")
    with pytest.raises(InputError, match="safetensors"):
        export_model(tiny_model, out, tiny_vae=pickled)
    from diffusers import AutoencoderTiny

    other = tmp_path / "taesd3"  # 16 latent channels, as SD3's TAESD
    AutoencoderTiny(latent_channels=16, **TINY_VAE_SHAPES["tiny"]).save_pretrained(other)
    with pytest.raises(InputError, match="16 latent channels"):
        export_model(tiny_model, out, tiny_vae=other)
    with pytest.raises(InputError, match="tiny_vae_parts"):
        export_model(tiny_model, out, tiny_vae=other, tiny_vae_parts="encoder")
    assert not out.exists()


def test_a_perfect_tiny_vae_would_score_as_the_checkpoints(tiny_model):
    """The quality figures compare what they say: the checkpoint's VAE as its own 'tiny' one
    decodes identically (> 100 dB against itself) and round-trips as well as itself."""
    from scanside.export import checkpoint as ckpt

    vae = ckpt.load(tiny_model).vae

    class Same(torch.nn.Module):  # AutoencoderTiny's interface over the KL VAE
        def encode(self, image, return_dict=False):
            return (vae.encode(image).latent_dist.mean * vae.config.scaling_factor,)

        def decode(self, latent, return_dict=False):
            return (vae.decode(latent / vae.config.scaling_factor).sample,)

    q = tiny_vae.quality(Same(), vae, vae.config.scaling_factor, 3, 64, 64)
    assert q["tiny_decode_vs_full_psnr_db"] > 100  # float rounding of the scaling only
    assert abs(q["tiny_round_trip_psnr_db"] - q["full_round_trip_psnr_db"]) < 0.05
