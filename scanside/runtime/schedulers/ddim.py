"""DDIM (Song et al. 2020, arXiv:2010.02502), deterministic (eta = 0).

    a_t     alpha_bar at the current timestep        a_prev  alpha_bar at the previous one
    e_t     predicted noise (epsilon)                pred_x0 predicted clean sample
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from .common import (
    Plan, ac_add_noise, alphas_cumprod, check_prediction, no_noise, ones, parse_config,
    spaced_timesteps, start_index,
)

NAME = "ddim"


@dataclass(frozen=True)
class Config:  # defaults are diffusers' DDIMScheduler defaults
    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    trained_betas: Optional[Sequence[float]] = None
    clip_sample: bool = True
    set_alpha_to_one: bool = True
    steps_offset: int = 0
    prediction_type: str = "epsilon"
    thresholding: bool = False
    dynamic_thresholding_ratio: float = 0.995
    clip_sample_range: float = 1.0
    sample_max_value: float = 1.0
    timestep_spacing: str = "leading"
    rescale_betas_zero_snr: bool = False


def plan(raw: Mapping[str, Any], steps: int, strength: float = 1.0) -> Plan:
    config = parse_config(Config, raw, NAME)
    check_prediction(config, NAME, ("epsilon", "sample", "v_prediction"))
    ac = alphas_cumprod(config)
    timesteps = spaced_timesteps(config, steps, np.int64)
    return Plan(
        algorithm=NAME, config=config, steps=steps,
        timesteps=timesteps.astype(np.float32), start=start_index(steps, strength),
        init_noise_sigma=1.0, input_divisors=ones(steps), draws_noise=no_noise(steps),
        tables={
            "ac": ac,
            "final_ac": np.float32(1.0) if config.set_alpha_to_one else ac[0],
            "timesteps": timesteps,
        },
    )


def predict_x0_eps(config: Any, sample: np.ndarray, model_output: np.ndarray, a_t: np.float32):
    """(pred_x0, e_t) from the model output, for each prediction type."""
    b_t = 1 - a_t
    if config.prediction_type == "epsilon":
        return (sample - b_t**0.5 * model_output) / a_t**0.5, model_output
    if config.prediction_type == "sample":
        return model_output, (sample - a_t**0.5 * model_output) / b_t**0.5
    pred_x0 = a_t**0.5 * sample - b_t**0.5 * model_output  # v_prediction
    return pred_x0, a_t**0.5 * model_output + b_t**0.5 * sample


def step(
    plan: Plan, i: int, sample: np.ndarray, model_output: np.ndarray, state: tuple,
    noise: Optional[np.ndarray] = None,
) -> tuple[np.ndarray, tuple]:
    config, ac = plan.config, plan.tables["ac"]
    # 1. timesteps t and t_prev = t - T/N
    t = int(plan.tables["timesteps"][i])
    t_prev = t - config.num_train_timesteps // plan.steps
    a_t = ac[t]
    a_prev = ac[t_prev] if t_prev >= 0 else plan.tables["final_ac"]
    # 2. predicted x_0 and noise
    pred_x0, e_t = predict_x0_eps(config, sample, model_output, a_t)
    if config.clip_sample:
        pred_x0 = np.clip(pred_x0, -config.clip_sample_range, config.clip_sample_range)
    # 3. eq. 12 with sigma_t = 0: x_{t-1} = sqrt(a_prev) x_0 + sqrt(1 - a_prev) e_t
    prev = a_prev**0.5 * pred_x0 + (1 - a_prev) ** 0.5 * e_t
    return prev.astype(np.float32), state


add_noise = ac_add_noise
