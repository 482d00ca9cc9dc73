"""LCM (Luo et al. 2023, arXiv:2310.04378): consistency-model steps on a latent diffusion model.

    c_skip, c_out   boundary-condition scalings of the consistency function (sigma_data = 0.5)
    denoised        c_out * pred_x0 + c_skip * x, the consistency estimate of x_0
Every step but the last re-noises ``denoised`` to the next timestep with fresh noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from . import ddim
from .common import (
    Plan, SchedulerConfigError, ac_add_noise, alphas_cumprod, check_prediction, ones,
    parse_config, start_index,
)

NAME = "lcm"
SIGMA_DATA = 0.5


@dataclass(frozen=True)
class Config:  # defaults are diffusers' LCMScheduler defaults
    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    trained_betas: Optional[Sequence[float]] = None
    original_inference_steps: int = 50
    clip_sample: bool = False
    clip_sample_range: float = 1.0
    set_alpha_to_one: bool = True
    steps_offset: int = 0
    prediction_type: str = "epsilon"
    thresholding: bool = False
    dynamic_thresholding_ratio: float = 0.995
    sample_max_value: float = 1.0
    timestep_spacing: str = "leading"
    timestep_scaling: float = 10.0
    rescale_betas_zero_snr: bool = False


def lcm_timesteps(config: Config, steps: int, strength: float = 1.0) -> np.ndarray:
    """Evenly skip through the ``original_inference_steps`` grid LCM was distilled on, or
    through its first ``strength`` share (LCMScheduler.set_timesteps(strength=...))."""
    k = config.num_train_timesteps // config.original_inference_steps
    origin = np.asarray(list(range(1, int(config.original_inference_steps * strength) + 1))) * k - 1
    if steps > config.original_inference_steps or len(origin) // steps < 1:
        raise SchedulerConfigError(
            f"steps={steps}: LCM can take at most original_inference_steps="
            f"{config.original_inference_steps} x strength {strength:g} = {len(origin)} steps; "
            "use fewer steps or a higher strength"
        )
    origin = origin[::-1].copy()
    idx = np.floor(np.linspace(0, len(origin), num=steps, endpoint=False)).astype(np.int64)
    return origin[idx]


def plan(raw: Mapping[str, Any], steps: int, strength: float = 1.0,
         steps_within_strength: bool = False) -> Plan:
    """``steps_within_strength``: img2img as diffusers' LatentConsistencyModelImg2ImgPipeline
    runs it (what LCM-distilled models are used with): all ``steps`` steps on the first
    ``strength`` share of the grid. Otherwise as StableDiffusionImg2ImgPipeline with an
    LCMScheduler (LCM-LoRA on an SD model): the full schedule, its first steps skipped."""
    config = parse_config(Config, raw, NAME)
    check_prediction(config, NAME, ("epsilon", "sample", "v_prediction"))
    ts = lcm_timesteps(config, steps, strength if steps_within_strength else 1.0)
    ac = alphas_cumprod(config)
    draws = np.ones(steps, dtype=bool)
    draws[-1] = False
    return Plan(
        algorithm=NAME, config=config, steps=steps, timesteps=ts.astype(np.float32),
        start=0 if steps_within_strength else start_index(steps, strength), init_noise_sigma=1.0,
        input_divisors=ones(steps),
        draws_noise=draws,
        tables={"ac": ac, "final_ac": np.float32(1.0) if config.set_alpha_to_one else ac[0]},
    )


def guidance_embedding(guidance: float, dim: int) -> np.ndarray:
    """(1, dim) float32: the guidance-scale embedding an LCM-distilled UNet takes as its
    ``timestep_cond`` (its config's time_cond_proj_dim), w = guidance - 1, as diffusers'
    LatentConsistencyModelPipeline.get_guidance_scale_embedding computes it. Such a UNet was
    distilled with guidance folded in: one UNet call per step, no unconditional half."""
    half = dim // 2
    # float32 throughout, in torch's order: the angles reach 8,500 rad at guidance 9.5, where
    # one float32 ulp is 5e-4, so any other rounding moves the sines by that much.
    step = np.float32(np.log(np.float32(10000.0))) / np.float32(half - 1)
    freqs = np.exp(np.arange(half, dtype=np.float32) * -step)
    angles = np.float32((np.float32(guidance) - np.float32(1.0)) * np.float32(1000.0)) * freqs
    emb = np.concatenate([np.sin(angles), np.cos(angles)])
    if dim % 2:
        emb = np.concatenate([emb, np.zeros(1, np.float32)])
    return emb.astype(np.float32)[None]


def boundary_scalings(t: int, timestep_scaling: float) -> tuple[np.float32, np.float32]:
    scaled = np.float32(t * timestep_scaling)
    c_skip = SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2)
    c_out = scaled / (scaled**2 + SIGMA_DATA**2) ** 0.5
    return np.float32(c_skip), np.float32(c_out)


def step(
    plan: Plan, i: int, sample: np.ndarray, model_output: np.ndarray, state: tuple,
    noise: Optional[np.ndarray] = None,
) -> tuple[np.ndarray, tuple]:
    config, ac = plan.config, plan.tables["ac"]
    n = len(plan.timesteps)
    t = int(plan.timesteps[i])
    # 1. the next timestep on the LCM grid (the last step has none)
    t_prev = int(plan.timesteps[i + 1]) if i + 1 < n else t
    a_t = ac[t]
    a_prev = ac[t_prev] if t_prev >= 0 else plan.tables["final_ac"]
    # 2. consistency estimate of x_0
    c_skip, c_out = boundary_scalings(t, config.timestep_scaling)
    pred_x0, _ = ddim.predict_x0_eps(config, sample, model_output, a_t)
    if config.clip_sample:
        pred_x0 = np.clip(pred_x0, -config.clip_sample_range, config.clip_sample_range)
    denoised = c_out * pred_x0 + c_skip * sample
    if i == n - 1:
        return denoised.astype(np.float32), state
    # 3. re-noise to the next timestep
    if noise is None:
        raise ValueError("lcm draws noise at every step but the last: pass noise")
    prev = a_prev**0.5 * denoised + (1 - a_prev) ** 0.5 * noise
    return prev.astype(np.float32), state


add_noise = ac_add_noise
