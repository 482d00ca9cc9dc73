"""LCM-distilled UNets (time_cond_proj_dim set, as LCM_Dreamshaper_v7): guidance is an input
embedding, not a second UNet half. Exported and run, they give diffusers' Latent Consistency
pipelines' pixels; before, the export dropped the embedding and guidance changed nothing."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from scanside import Pipeline  # noqa: E402
from scanside.export import export_model  # noqa: E402
from scanside.runtime.schedulers.lcm import guidance_embedding  # noqa: E402

from .test_pipeline_parity import PROMPT, TOLERANCE, torch_noise  # noqa: E402

EMBEDDING = 32  # LCM_Dreamshaper_v7 has 256; any width works


@pytest.fixture(scope="module")
def lcm_model(tiny_model, tmp_path_factory):
    """The tiny model with an LCM-distilled-shaped UNet (seeded) and diffusers' LCMScheduler."""
    out = tmp_path_factory.mktemp("lcm") / "model"
    shutil.copytree(tiny_model, out)
    config = json.loads((out / "unet" / "config.json").read_text())
    config["time_cond_proj_dim"] = EMBEDDING
    torch.manual_seed(7)
    unet = diffusers.UNet2DConditionModel.from_config(config)
    shutil.rmtree(out / "unet")
    unet.save_pretrained(out / "unet", safe_serialization=True)
    scheduler = diffusers.LCMScheduler.from_config(
        json.loads((out / "scheduler" / "scheduler_config.json").read_text()))
    shutil.rmtree(out / "scheduler")
    scheduler.save_pretrained(out / "scheduler")
    index = json.loads((out / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", "LCMScheduler"]
    (out / "model_index.json").write_text(json.dumps(index))
    return out


@pytest.fixture(scope="module")
def lcm_engine(lcm_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("lcm-engine") / "engine"
    export_model(lcm_model, out)
    return out


def theirs(lcm_model, cls):
    pipe = getattr(diffusers, cls).from_pretrained(lcm_model, safety_checker=None,
                                                   feature_extractor=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_the_guidance_embedding_is_diffusers(lcm_model):
    pipe = theirs(lcm_model, "LatentConsistencyModelPipeline")
    for w, dim in ((8.5, 256), (1.0, 32), (3.0, 33)):
        reference = pipe.get_guidance_scale_embedding(torch.tensor([w - 1.0]), embedding_dim=dim)
        # float32 angles up to 7,500 rad: one ulp there is 5e-4 (lcm.guidance_embedding)
        assert np.abs(guidance_embedding(w, dim) - reference.numpy()).max() < 2e-3
        assert guidance_embedding(w, dim).shape == (1, dim)


@pytest.mark.slow
def test_the_unet_takes_the_embedding_as_an_input(lcm_engine):
    spec = Pipeline.load(lcm_engine).manifest.components["unet"].spec
    assert [t.name for t in spec.inputs][-1] == "timestep_cond"
    assert Pipeline.load(lcm_engine).guidance_embedding_dim == EMBEDDING


@pytest.mark.slow
@pytest.mark.parametrize("guidance", [1.0, 8.5])
def test_generate_matches_diffusers_latent_consistency(lcm_model, lcm_engine, guidance):
    pipe = theirs(lcm_model, "LatentConsistencyModelPipeline")
    reference = pipe(PROMPT, num_inference_steps=4, guidance_scale=guidance, height=64, width=64,
                     generator=torch.Generator().manual_seed(3), output_type="np").images[0]
    ours = Pipeline.load(lcm_engine)
    image = ours.generate(PROMPT, steps=4, guidance=guidance, latents=torch_noise(3))
    diff = float(np.abs(image - reference).max())
    assert diff <= TOLERANCE, f"guidance {guidance}: max abs diff {diff:.2e}"


@pytest.mark.slow
def test_enhance_matches_diffusers_latent_consistency_img2img(lcm_model, lcm_engine):
    image = np.random.default_rng(1).random((64, 64, 3)).astype(np.float32)
    pipe = theirs(lcm_model, "LatentConsistencyModelImg2ImgPipeline")
    reference = pipe(PROMPT, image=image[None], strength=0.5, num_inference_steps=4,
                     guidance_scale=6.0, generator=torch.Generator().manual_seed(4),
                     output_type="np").images[0]
    ours = Pipeline.load(lcm_engine).enhance(image, prompt=PROMPT, strength=0.5, steps=4,
                                             guidance=6.0, noise=torch_noise(4))
    diff = float(np.abs(ours - reference).max())
    assert diff <= TOLERANCE, f"max abs diff {diff:.2e}"


@pytest.mark.slow
def test_guidance_changes_the_picture_through_the_embedding(lcm_engine):
    ours = Pipeline.load(lcm_engine)
    a = ours.generate(PROMPT, steps=2, guidance=1.0, seed=0)
    b = ours.generate(PROMPT, steps=2, guidance=8.5, seed=0)
    assert np.abs(a - b).max() > 1e-3


@pytest.mark.slow
def test_too_many_steps_for_the_strength_is_refused_with_the_limit(lcm_engine):
    from scanside.errors import InputError

    image = np.zeros((64, 64), np.float32)
    # original_inference_steps 50 x strength 0.1 = 5 grid points: 8 steps cannot fit
    with pytest.raises(InputError, match="50 x strength 0.1 = 5 steps"):
        Pipeline.load(lcm_engine).enhance(image, prompt=PROMPT, strength=0.1, steps=8)
    # four do (an SD model would run int(4 x 0.1) = 0 steps of its full schedule: refused)
    out = Pipeline.load(lcm_engine).enhance(image, prompt=PROMPT, strength=0.1, steps=4)
    assert out.shape == image.shape


@pytest.mark.slow
def test_tensorrt_profiles_cover_the_embedding_input(lcm_engine):
    """GPU-free: the TensorRT optimisation profile (and trtexec's shapes) name timestep_cond
    with the UNet batch range, so a plan built for this engine takes the embedding."""
    from scanside.runtime.engines.tensorrt import profile_shapes, shapes_option

    spec = Pipeline.load(lcm_engine).manifest.components["unet"].spec
    low, opt, high = profile_shapes(spec)["timestep_cond"]
    assert low == (1, EMBEDDING) and high[1] == EMBEDDING and high[0] >= 2
    assert f"timestep_cond:1x{EMBEDDING}" in shapes_option(spec, 0)
