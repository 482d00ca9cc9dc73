"""Euler (Karras et al. 2022, Algorithm 2 with s_churn = 0), optionally on Karras sigmas.

    sigma   current noise level          sigma_next  the next one
    pred_x0 denoised estimate            d           dx/dsigma = (x - pred_x0) / sigma
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from .common import (
    Plan, alphas_cumprod, base_sigmas, check_prediction, karras_sigmas, no_noise, parse_config,
    refuse, sigma_to_t, spaced_timesteps, start_index,
)

NAME = "euler"


@dataclass(frozen=True)
class Config:  # defaults are diffusers' EulerDiscreteScheduler defaults
    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    trained_betas: Optional[Sequence[float]] = None
    prediction_type: str = "epsilon"
    interpolation_type: str = "linear"
    use_karras_sigmas: bool = False
    use_exponential_sigmas: bool = False
    use_beta_sigmas: bool = False
    sigma_min: Optional[float] = None
    sigma_max: Optional[float] = None
    timestep_spacing: str = "linspace"
    timestep_type: str = "discrete"
    steps_offset: int = 0
    rescale_betas_zero_snr: bool = False
    final_sigmas_type: str = "zero"


def sigma_schedule(config: Any, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(timesteps float32 (N,), sigmas float32 (N+1,)) as EulerDiscreteScheduler.set_timesteps."""
    ac = alphas_cumprod(config)
    timesteps = spaced_timesteps(config, steps, np.float32)
    all_sigmas = base_sigmas(ac)
    log_sigmas = np.log(all_sigmas)
    sigmas = np.interp(timesteps, np.arange(0, len(all_sigmas)), all_sigmas)
    if getattr(config, "use_karras_sigmas", False):
        lo = config.sigma_min if config.sigma_min is not None else sigmas[-1].item()
        hi = config.sigma_max if config.sigma_max is not None else sigmas[0].item()
        sigmas = karras_sigmas(lo, hi, steps)
        timesteps = np.array([sigma_to_t(s, log_sigmas) for s in sigmas])
    last = ((1 - ac[0]) / ac[0]) ** 0.5 if config.final_sigmas_type == "sigma_min" else 0
    sigmas = np.concatenate([sigmas, [last]]).astype(np.float32)
    return timesteps.astype(np.float32), sigmas


def init_noise_sigma(config: Any, sigmas: np.ndarray) -> float:
    max_sigma = sigmas.max()
    if config.timestep_spacing in ("linspace", "trailing"):
        return float(max_sigma)
    return float((max_sigma**2 + 1) ** 0.5)


def check(config: Any, name: str) -> None:
    check_prediction(config, name, ("epsilon", "v_prediction", "sample"))
    refuse(config, name, use_exponential_sigmas=False, use_beta_sigmas=False,
           timestep_type="discrete", interpolation_type="linear")
    if config.final_sigmas_type not in ("zero", "sigma_min"):
        refuse(config, name, final_sigmas_type="zero")


def plan(raw: Mapping[str, Any], steps: int, strength: float = 1.0) -> Plan:
    config = parse_config(Config, raw, NAME)
    check(config, NAME)
    timesteps, sigmas = sigma_schedule(config, steps)
    return Plan(
        algorithm=NAME, config=config, steps=steps, timesteps=timesteps,
        start=start_index(steps, strength), init_noise_sigma=init_noise_sigma(config, sigmas),
        input_divisors=((sigmas[:-1] ** 2 + 1) ** 0.5).astype(np.float32),
        draws_noise=no_noise(steps), tables={"sigmas": sigmas},
    )


def predict_x0(config: Any, sample: np.ndarray, model_output: np.ndarray, sigma: np.float32):
    if config.prediction_type == "epsilon":
        return sample - sigma * model_output
    if config.prediction_type == "v_prediction":
        return model_output * (-sigma / (sigma**2 + 1) ** 0.5) + sample / (sigma**2 + 1)
    return model_output


def step(
    plan: Plan, i: int, sample: np.ndarray, model_output: np.ndarray, state: tuple,
    noise: Optional[np.ndarray] = None,
) -> tuple[np.ndarray, tuple]:
    sigma, sigma_next = plan.tables["sigmas"][i], plan.tables["sigmas"][i + 1]
    pred_x0 = predict_x0(plan.config, sample, model_output, sigma)
    d = (sample - pred_x0) / sigma
    return (sample + d * (sigma_next - sigma)).astype(np.float32), state


def add_noise(plan: Plan, original: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """x = x_0 + sigma * eps at the first sigma run."""
    return original + noise * plan.tables["sigmas"][plan.start]
