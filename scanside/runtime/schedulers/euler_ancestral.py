"""Euler ancestral (k-diffusion's sample_euler_ancestral, eta = 1).

Each step goes down to sigma_down with an Euler step, then adds fresh noise of size sigma_up,
so that sigma_down**2 + sigma_up**2 = sigma_next**2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from . import euler
from .common import Plan, check_prediction, parse_config, start_index

NAME = "euler_a"


@dataclass(frozen=True)
class Config:  # defaults are diffusers' EulerAncestralDiscreteScheduler defaults
    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    trained_betas: Optional[Sequence[float]] = None
    prediction_type: str = "epsilon"
    timestep_spacing: str = "linspace"
    steps_offset: int = 0
    rescale_betas_zero_snr: bool = False
    # Fixed in diffusers' ancestral scheduler; present so the shared sigma code reads them.
    interpolation_type: str = "linear"
    final_sigmas_type: str = "zero"


def plan(raw: Mapping[str, Any], steps: int, strength: float = 1.0) -> Plan:
    known = {k: v for k, v in raw.items() if k not in ("interpolation_type", "final_sigmas_type")}
    config = parse_config(Config, known, NAME)
    check_prediction(config, NAME, ("epsilon", "v_prediction"))
    timesteps, sigmas = euler.sigma_schedule(config, steps)
    return Plan(
        algorithm=NAME, config=config, steps=steps, timesteps=timesteps,
        start=start_index(steps, strength),
        init_noise_sigma=euler.init_noise_sigma(config, sigmas),
        input_divisors=((sigmas[:-1] ** 2 + 1) ** 0.5).astype(np.float32),
        draws_noise=np.ones(steps, dtype=bool), tables={"sigmas": sigmas},
    )


def step(
    plan: Plan, i: int, sample: np.ndarray, model_output: np.ndarray, state: tuple,
    noise: Optional[np.ndarray] = None,
) -> tuple[np.ndarray, tuple]:
    if noise is None:
        raise ValueError("euler_a draws noise at every step: pass noise of the sample's shape")
    sigma, sigma_next = plan.tables["sigmas"][i], plan.tables["sigmas"][i + 1]
    pred_x0 = euler.predict_x0(plan.config, sample, model_output, sigma)
    sigma_up = (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5
    sigma_down = (sigma_next**2 - sigma_up**2) ** 0.5
    d = (sample - pred_x0) / sigma
    prev = sample + d * (sigma_down - sigma)
    return (prev + noise * sigma_up).astype(np.float32), state


add_noise = euler.add_noise
