"""Every scanside scheduler against diffusers' own, on the same inputs, to float32 rounding."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from scanside.errors import InputError  # noqa: E402
from scanside.runtime.schedulers import SchedulerConfigError, make_plan, module_for  # noqa: E402

SD15 = {  # Stable Diffusion 1.5's scheduler_config.json, as shipped
    "_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "beta_start": 0.00085, "num_train_timesteps": 1000, "set_alpha_to_one": False,
    "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None, "clip_sample": False,
}
DIFFUSERS = {
    "ddim": "DDIMScheduler", "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler", "dpmpp_2m": "DPMSolverMultistepScheduler",
    "dpmpp_2m_karras": "DPMSolverMultistepScheduler", "lcm": "LCMScheduler",
    "pndm": "PNDMScheduler",
}
PREDICTIONS = {"ddim": ("epsilon", "v_prediction", "sample"), "euler": ("epsilon", "v_prediction"),
               "euler_a": ("epsilon", "v_prediction"), "dpmpp_2m": ("epsilon", "v_prediction"),
               "dpmpp_2m_karras": ("epsilon", "v_prediction"), "lcm": ("epsilon", "v_prediction"),
               "pndm": ("epsilon", "v_prediction")}
SPACINGS = ("leading", "trailing", "linspace")
TOLERANCE = 1e-5  # float32 rounding, relative to the sample's scale (sigma-space samples reach ~15)

CASES = [
    (name, spacing, prediction, steps, strength)
    for name in DIFFUSERS
    for spacing, prediction in itertools.product(SPACINGS, PREDICTIONS[name])
    for steps, strength in ((20, 1.0), (7, 0.55))
    if not (name == "lcm" and spacing != "leading")  # LCM's grid ignores timestep_spacing
]


def assert_close(ours: np.ndarray, theirs: np.ndarray, where: str) -> None:
    scale = max(1.0, float(np.abs(theirs).max()))
    err = float(np.abs(ours - theirs).max()) / scale
    assert err <= TOLERANCE, f"{where}: max abs diff / scale = {err:.2e}"


def diffusers_scheduler(name: str, config: dict):
    cls = getattr(diffusers, DIFFUSERS[name])
    extra = {"use_karras_sigmas": True} if name == "dpmpp_2m_karras" else {}
    return cls.from_config({**config, **extra})


def fake_unet(sample: np.ndarray, base: np.ndarray, t: float) -> np.ndarray:
    """A deterministic stand-in for the UNet that depends on the sample and the timestep."""
    return (0.3 * np.cos(t / 300.0) * sample + base).astype(np.float32)


@pytest.mark.parametrize("name,spacing,prediction,steps,strength", CASES)
def test_matches_diffusers(name, spacing, prediction, steps, strength):
    config = {**SD15, "timestep_spacing": spacing, "prediction_type": prediction}
    ref = diffusers_scheduler(name, config)
    ref.set_timesteps(steps)
    plan = make_plan(name, config, steps, strength)
    module = module_for(name)

    # 1. timesteps, with img2img's start offset exactly as the diffusers img2img pipeline slices
    ref_timesteps = ref.timesteps[plan.start * ref.order:]
    if hasattr(ref, "set_begin_index"):
        ref.set_begin_index(plan.start * ref.order)
    np.testing.assert_array_equal(plan.timesteps[plan.start:], ref_timesteps.numpy().astype(np.float32))
    assert plan.init_noise_sigma == pytest.approx(float(ref.init_noise_sigma), rel=1e-6)

    rng = np.random.default_rng(0)
    shape = (1, 4, 8, 8)
    x0 = rng.standard_normal(shape).astype(np.float32)
    first_noise = rng.standard_normal(shape).astype(np.float32)
    bases = rng.standard_normal((len(plan.timesteps), *shape)).astype(np.float32)

    # 2. the first sample: pure noise for text-to-image, noised x0 for img2img
    if plan.start == 0:
        ours = first_noise * np.float32(plan.init_noise_sigma)
        theirs = torch.from_numpy(first_noise) * ref.init_noise_sigma
    else:
        ours = module.add_noise(plan, x0, first_noise)
        theirs = ref.add_noise(torch.from_numpy(x0), torch.from_numpy(first_noise), ref_timesteps[:1])
    assert_close(ours, theirs.numpy(), "first sample")

    # 3. every step, each chain on its own outputs; stochastic steps share one noise stream
    g_ref, g_ours = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    state: tuple = ()
    for i, t in zip(plan.indices, ref_timesteps):
        theirs_in = ref.scale_model_input(theirs, t)
        ours_in = ours / plan.input_divisors[i]
        assert_close(ours_in, theirs_in.numpy(), f"UNet input at step {i}")
        out_ours = fake_unet(ours_in, bases[i], float(plan.timesteps[i]))
        out_theirs = torch.from_numpy(fake_unet(theirs_in.numpy(), bases[i], float(t)))
        noise = torch.randn(shape, generator=g_ours).numpy() if plan.draws_noise[i] else None
        kwargs = {"generator": g_ref} if "generator" in ref.step.__code__.co_varnames else {}
        theirs = ref.step(out_theirs, t, theirs, **kwargs).prev_sample
        ours, state = module.step(plan, i, ours, out_ours, state, noise)
        assert_close(ours, theirs.numpy(), f"step {i} (t={float(t)})")


def test_karras_changes_the_plan():
    plain = make_plan("dpmpp_2m", SD15, 20)
    karras = make_plan("dpmpp_2m_karras", SD15, 20)
    assert not np.array_equal(plain.tables["sigmas"], karras.tables["sigmas"])


@pytest.mark.parametrize(
    "kwargs,fragment",
    [
        ({"name": "heun"}, "unknown scheduler 'heun'"),
        ({"steps": 0}, "steps: 0"),
        ({"strength": 0.0}, "strength: 0.0"),
        ({"strength": 1.5}, "strength: 1.5"),
        ({"strength": 0.01}, "leaves no denoising step"),
    ],
)
def test_bad_arguments_are_named(kwargs, fragment):
    args = {"name": "ddim", "raw_config": SD15, "steps": 20, "strength": 1.0, **kwargs}
    with pytest.raises(InputError, match=fragment):
        make_plan(**args)


def test_unknown_config_key_is_refused():
    with pytest.raises(SchedulerConfigError, match="beta_shedule"):
        make_plan("ddim", {**SD15, "beta_shedule": "linear"}, 10)


def test_unsupported_option_is_refused_not_ignored():
    with pytest.raises(SchedulerConfigError, match="thresholding"):
        make_plan("ddim", {**SD15, "thresholding": True}, 10)
    with pytest.raises(SchedulerConfigError, match="skip_prk_steps"):
        make_plan("pndm", {**SD15, "skip_prk_steps": False}, 10)
