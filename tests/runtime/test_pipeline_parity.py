"""End to end: scanside's torch-free pipeline gives diffusers' pixels on the tiny model.

diffusers and scanside draw every random number from the same stream (a torch generator fed
to both), so any difference is the runtime's own: ONNX kernels, numpy schedulers, tokenizer.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from scanside import Pipeline  # noqa: E402

TOLERANCE = 2e-3  # max abs difference on [0, 1] images
SCHEDULERS = {
    "ddim": ("DDIMScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {}),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "pndm": ("PNDMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "lcm": ("LCMScheduler", {}),
}
PROMPT = "low-dose CT of the chest, denoise"


def torch_noise(seed: int):
    generator = torch.Generator().manual_seed(seed)
    return lambda shape: torch.randn(shape, generator=generator, dtype=torch.float32).numpy()


def with_scheduler(pipe, name: str):
    cls_name, extra = SCHEDULERS[name]
    pipe.scheduler = getattr(diffusers, cls_name).from_config({**pipe.scheduler.config, **extra})
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def ours(tiny_engine):
    return Pipeline.load(tiny_engine)


@pytest.fixture(scope="module")
def test_image():
    y, x = np.mgrid[0:64, 0:64] / 63.0
    rng = np.random.default_rng(3)
    image = 0.5 + 0.3 * np.sin(6 * x) * np.cos(4 * y) + 0.05 * rng.standard_normal((64, 64))
    return np.repeat(np.clip(image, 0, 1)[..., None], 3, axis=2).astype(np.float32)  # (64, 64, 3)


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
@pytest.mark.parametrize("guidance", [1.0, 5.0])
def test_generate_matches_diffusers(tiny_model, ours, scheduler, guidance):
    steps = 4 if scheduler == "lcm" else 8
    pipe = with_scheduler(diffusers.StableDiffusionPipeline.from_pretrained(tiny_model), scheduler)
    theirs = pipe(PROMPT, num_inference_steps=steps, guidance_scale=guidance, height=64, width=64,
                  generator=torch.Generator().manual_seed(11), output_type="np").images[0]
    image = ours.generate(PROMPT, steps=steps, guidance=guidance, scheduler=scheduler,
                          latents=torch_noise(11))
    diff = float(np.abs(image - theirs).max())
    assert diff <= TOLERANCE, f"{scheduler} guidance {guidance}: max abs diff {diff:.2e}"


@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
@pytest.mark.parametrize("guidance", [1.0, 5.0])
def test_enhance_matches_diffusers_img2img(tiny_model, ours, test_image, scheduler, guidance):
    steps = 4 if scheduler == "lcm" else 10
    pipe = with_scheduler(diffusers.StableDiffusionImg2ImgPipeline.from_pretrained(tiny_model),
                          scheduler)
    theirs = pipe(PROMPT, image=test_image[None], strength=0.6, num_inference_steps=steps,
                  guidance_scale=guidance, generator=torch.Generator().manual_seed(5),
                  output_type="np").images[0]
    image = ours.enhance(test_image, prompt=PROMPT, strength=0.6, steps=steps, guidance=guidance,
                         scheduler=scheduler, noise=torch_noise(5))
    diff = float(np.abs(image - theirs).max())
    assert diff <= TOLERANCE, f"{scheduler} guidance {guidance}: max abs diff {diff:.2e}"


@pytest.mark.parametrize("scheduler", ["ddim", "euler_a", "dpmpp_2m"])
@pytest.mark.parametrize("guidance", [1.0, 5.0])
def test_concat_conditioning_matches_instruct_pix2pix(concat_model, concat_engine, test_image,
                                                      scheduler, guidance):
    """Image-conditioned UNet (in_channels 8): instruct-pix2pix with image guidance 1 is plain
    text guidance with the image latent in both halves, which is what scanside runs."""
    pipe = with_scheduler(
        diffusers.StableDiffusionInstructPix2PixPipeline.from_pretrained(concat_model), scheduler)
    theirs = pipe(PROMPT, image=test_image[None], num_inference_steps=8, guidance_scale=guidance,
                  image_guidance_scale=1.0, generator=torch.Generator().manual_seed(2),
                  output_type="np").images[0]
    image = Pipeline.load(concat_engine).enhance(
        test_image, prompt=PROMPT, strength=1.0, steps=8, guidance=guidance, scheduler=scheduler,
        noise=torch_noise(2))
    diff = float(np.abs(image - theirs).max())
    assert diff <= TOLERANCE, f"{scheduler} guidance {guidance}: max abs diff {diff:.2e}"


def test_seed_repeats_and_differs(ours, test_image):
    a = ours.enhance(test_image, strength=0.5, steps=6, seed=0)
    b = ours.enhance(test_image, strength=0.5, steps=6, seed=0)
    c = ours.enhance(test_image, strength=0.5, steps=6, seed=1)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-4


def test_explicit_latents_are_used(ours):
    latents = np.random.default_rng(4).standard_normal((1, 4, 8, 8)).astype(np.float32)
    a = ours.generate(PROMPT, steps=4, guidance=1.0, scheduler="ddim", latents=latents, seed=1)
    b = ours.generate(PROMPT, steps=4, guidance=1.0, scheduler="ddim", latents=latents, seed=2)
    np.testing.assert_array_equal(a, b)  # DDIM draws nothing after the latents


def test_prompt_embeddings_are_cached(ours, monkeypatch):
    ours.embed("cache me")
    calls = []
    real = ours.engines["text_encoder"].run
    monkeypatch.setattr(ours.engines["text_encoder"], "run", lambda f: calls.append(f) or real(f))
    ours.generate("cache me", steps=2, guidance=1.0, scheduler="ddim")
    assert calls == []
