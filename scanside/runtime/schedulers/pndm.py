"""PLMS, the linear multistep half of PNDM (Liu et al. 2022, arXiv:2202.09778), as Stable
Diffusion runs it (``skip_prk_steps``: the Runge-Kutta warm-up is replaced by one Heun-like
step, so N steps make N + 1 UNet calls).

    e_t         model output (noise) at step t; ``ets`` holds the last four
    a_t, a_prev alpha_bar at t and at the previous timestep
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from .common import (
    Plan, ac_add_noise, alphas_cumprod, check_prediction, no_noise, ones, parse_config, refuse,
    spaced_timesteps, start_index,
)

NAME = "pndm"


@dataclass(frozen=True)
class Config:  # defaults are diffusers' PNDMScheduler defaults
    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    trained_betas: Optional[Sequence[float]] = None
    # diffusers defaults to False (Runge-Kutta warm-up). scanside implements PLMS only, as every
    # Stable Diffusion config asks; an explicit false is refused rather than run differently.
    skip_prk_steps: bool = True
    set_alpha_to_one: bool = False
    prediction_type: str = "epsilon"
    timestep_spacing: str = "leading"
    steps_offset: int = 0


def plms_timesteps(config: Config, steps: int) -> np.ndarray:
    """Descending; the second-to-last training-order timestep is repeated for the warm-up."""
    ascending = spaced_timesteps(config, steps, np.int64)[::-1]
    return np.concatenate([ascending[:-1], ascending[-2:-1], ascending[-1:]])[::-1].astype(np.int64)


def plan(raw: Mapping[str, Any], steps: int, strength: float = 1.0) -> Plan:
    config = parse_config(Config, raw, NAME)
    check_prediction(config, NAME, ("epsilon", "v_prediction"))
    refuse(config, NAME, skip_prk_steps=True)
    ts = plms_timesteps(config, steps)
    ac = alphas_cumprod(config)
    return Plan(
        algorithm=NAME, config=config, steps=steps, timesteps=ts.astype(np.float32),
        start=start_index(steps, strength), init_noise_sigma=1.0,
        input_divisors=ones(len(ts)), draws_noise=no_noise(len(ts)),
        tables={"ac": ac, "final_ac": np.float32(1.0) if config.set_alpha_to_one else ac[0]},
    )


def previous_sample(plan: Plan, sample, t: int, t_prev: int, e_t) -> np.ndarray:
    """PNDM eq. 11: the transfer from x_t to x_{t_prev} along e_t."""
    ac = plan.tables["ac"]
    a_t = ac[t]
    a_prev = ac[t_prev] if t_prev >= 0 else plan.tables["final_ac"]
    b_t, b_prev = 1 - a_t, 1 - a_prev
    if plan.config.prediction_type == "v_prediction":
        e_t = a_t**0.5 * e_t + b_t**0.5 * sample
    sample_coeff = (a_prev / a_t) ** 0.5
    denom = a_t * b_prev**0.5 + (a_t * b_t * a_prev) ** 0.5
    return sample_coeff * sample - (a_prev - a_t) * e_t / denom


def step(
    plan: Plan, i: int, sample: np.ndarray, model_output: np.ndarray, state: tuple,
    noise: Optional[np.ndarray] = None,
) -> tuple[np.ndarray, tuple]:
    """``state`` is (ets, x_first): past noise predictions and the sample of the first step."""
    ets, x_first = state or ((), None)
    counter = i - plan.start
    ratio = plan.config.num_train_timesteps // plan.steps
    t = int(plan.timesteps[i])
    t_prev = t - ratio
    if counter != 1:
        ets = ets[-3:] + (model_output,)
    else:  # the warm-up's second call re-does the first transfer with the averaged e_t
        t_prev, t = t, t + ratio
    if len(ets) == 1 and counter == 0:
        e_t, x_first = model_output, sample
    elif len(ets) == 1 and counter == 1:
        e_t, sample, x_first = (model_output + ets[-1]) / 2, x_first, None
    elif len(ets) == 2:
        e_t = (3 * ets[-1] - ets[-2]) / 2
    elif len(ets) == 3:
        e_t = (23 * ets[-1] - 16 * ets[-2] + 5 * ets[-3]) / 12
    else:
        e_t = 1 / 24 * (55 * ets[-1] - 59 * ets[-2] + 37 * ets[-3] - 9 * ets[-4])
    prev = previous_sample(plan, sample, t, t_prev, e_t)
    return prev.astype(np.float32), (ets, x_first)


add_noise = ac_add_noise
