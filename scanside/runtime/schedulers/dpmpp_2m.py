"""DPM-Solver++ 2M (Lu et al. 2022, arXiv:2211.01095, Algorithm 2), optionally on Karras sigmas.

    alpha_t, sigma_t    VP coefficients: x_t = alpha_t x_0 + sigma_t eps
    lambda_t            log(alpha_t / sigma_t), the half log-SNR; h = lambda_t - lambda_s
    m0, m1              the current and previous data predictions (x_0 estimates)

The previous data prediction is the only memory; it travels in ``state`` explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from .common import (
    Plan, alphas_cumprod, base_sigmas, check_prediction, karras_sigmas, no_noise, ones,
    parse_config, refuse, sigma_to_t, start_index,
)

NAME = "dpmpp_2m"


@dataclass(frozen=True)
class Config:  # defaults are diffusers' DPMSolverMultistepScheduler defaults
    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    trained_betas: Optional[Sequence[float]] = None
    solver_order: int = 2
    prediction_type: str = "epsilon"
    thresholding: bool = False
    dynamic_thresholding_ratio: float = 0.995
    sample_max_value: float = 1.0
    algorithm_type: str = "dpmsolver++"
    solver_type: str = "midpoint"
    lower_order_final: bool = True
    euler_at_final: bool = False
    use_karras_sigmas: bool = False
    use_exponential_sigmas: bool = False
    use_beta_sigmas: bool = False
    use_lu_lambdas: bool = False
    use_flow_sigmas: bool = False
    final_sigmas_type: str = "zero"
    lambda_min_clipped: float = -float("inf")
    variance_type: Optional[str] = None
    timestep_spacing: str = "linspace"
    steps_offset: int = 0
    rescale_betas_zero_snr: bool = False
    sigma_min: Optional[float] = None
    sigma_max: Optional[float] = None


def timesteps_and_sigmas(config: Config, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(int64 timesteps (N,), float32 sigmas (N+1,)) as DPMSolverMultistepScheduler.set_timesteps."""
    ac = alphas_cumprod(config)
    lambdas = np.log(ac**0.5) - np.log((1 - ac) ** 0.5)
    clipped = int(np.searchsorted(lambdas[::-1], np.float32(config.lambda_min_clipped)))
    last = config.num_train_timesteps - clipped
    if config.timestep_spacing == "linspace":
        ts = np.linspace(0, last - 1, steps + 1).round()[::-1][:-1].copy().astype(np.int64)
    elif config.timestep_spacing == "leading":
        ratio = last // (steps + 1)
        ts = (np.arange(0, steps + 1) * ratio).round()[::-1][:-1].copy().astype(np.int64)
        ts += config.steps_offset
    else:
        ts = np.arange(last, 0, -config.num_train_timesteps / steps).round().astype(np.int64) - 1
    all_sigmas = base_sigmas(ac)
    if config.use_karras_sigmas:
        flipped = all_sigmas[::-1]
        lo = config.sigma_min if config.sigma_min is not None else flipped[-1].item()
        hi = config.sigma_max if config.sigma_max is not None else flipped[0].item()
        sigmas = karras_sigmas(lo, hi, steps)
        ts = np.array([sigma_to_t(s, np.log(all_sigmas)) for s in sigmas])
        if config.beta_schedule != "squaredcos_cap_v2":
            ts = ts.round()
        ts = ts.astype(np.int64)
    else:
        sigmas = np.interp(ts, np.arange(0, len(all_sigmas)), all_sigmas)
    final = ((1 - ac[0]) / ac[0]) ** 0.5 if config.final_sigmas_type == "sigma_min" else 0
    return ts, np.concatenate([sigmas, [final]]).astype(np.float32)


def plan(raw: Mapping[str, Any], steps: int, strength: float = 1.0) -> Plan:
    config = parse_config(Config, raw, NAME)
    check_prediction(config, NAME, ("epsilon", "sample", "v_prediction"))
    refuse(config, NAME, algorithm_type="dpmsolver++", use_exponential_sigmas=False,
           use_beta_sigmas=False, use_lu_lambdas=False, use_flow_sigmas=False, variance_type=None)
    if config.solver_order not in (1, 2):
        refuse(config, NAME, solver_order=2)
    if config.solver_type not in ("midpoint", "heun"):
        refuse(config, NAME, solver_type="midpoint")
    if config.final_sigmas_type not in ("zero", "sigma_min"):
        refuse(config, NAME, final_sigmas_type="zero")
    ts, sigmas = timesteps_and_sigmas(config, steps)
    n = len(ts)
    return Plan(
        algorithm=NAME, config=config, steps=steps, timesteps=ts.astype(np.float32),
        start=start_index(steps, strength), init_noise_sigma=1.0, input_divisors=ones(n),
        draws_noise=no_noise(n), tables={"sigmas": sigmas},
    )


def alpha_sigma(sigma: np.float32) -> tuple[np.float32, np.float32]:
    """VP (alpha_t, sigma_t) from the VE noise level sigma."""
    alpha_t = 1 / (sigma**2 + 1) ** 0.5
    return alpha_t, sigma * alpha_t


def data_prediction(config: Config, sample: np.ndarray, model_output: np.ndarray, sigma):
    alpha_t, sigma_t = alpha_sigma(sigma)
    if config.prediction_type == "epsilon":
        return (sample - sigma_t * model_output) / alpha_t
    if config.prediction_type == "v_prediction":
        return alpha_t * sample - sigma_t * model_output
    return model_output


def lambda_of(sigma: np.float32) -> tuple[np.float32, np.float32, np.float32]:
    alpha_t, sigma_t = alpha_sigma(sigma)
    with np.errstate(divide="ignore"):  # sigma = 0 at the end: lambda = +inf, handled exactly
        return alpha_t, sigma_t, np.log(alpha_t) - np.log(sigma_t)


def step(
    plan: Plan, i: int, sample: np.ndarray, model_output: np.ndarray, state: tuple,
    noise: Optional[np.ndarray] = None,
) -> tuple[np.ndarray, tuple]:
    config, sigmas, n = plan.config, plan.tables["sigmas"], len(plan.timesteps)
    # 1. which order: first order to start, and at the end where diffusers drops to it
    taken = min(i - plan.start, config.solver_order)
    final_first = i == n - 1 and (
        config.euler_at_final or (config.lower_order_final and n < 15)
        or config.final_sigmas_type == "zero"
    )
    m0 = data_prediction(config, sample, model_output, sigmas[i])
    alpha_t, sigma_t, lambda_t = lambda_of(sigmas[i + 1])
    _, sigma_s0, lambda_s0 = lambda_of(sigmas[i])
    h = lambda_t - lambda_s0
    with np.errstate(over="ignore", invalid="ignore"):
        phi = np.exp(-h) - 1.0
    # 2. first order: DPM-Solver++(1), the DDIM step in log-SNR time
    if config.solver_order == 1 or taken < 1 or final_first:
        prev = sigma_t / sigma_s0 * sample - alpha_t * phi * m0
        return prev.astype(np.float32), (m0,)
    # 3. second order multistep with the previous data prediction m1
    (m1,) = state
    _, _, lambda_s1 = lambda_of(sigmas[i - 1])
    r0 = (lambda_s0 - lambda_s1) / h
    d0, d1 = m0, 1.0 / r0 * (m0 - m1)
    if config.solver_type == "midpoint":
        prev = sigma_t / sigma_s0 * sample - alpha_t * phi * d0 - 0.5 * (alpha_t * phi) * d1
    else:
        prev = sigma_t / sigma_s0 * sample - alpha_t * phi * d0 + alpha_t * (phi / h + 1.0) * d1
    return prev.astype(np.float32), (m0,)


def add_noise(plan: Plan, original: np.ndarray, noise: np.ndarray) -> np.ndarray:
    alpha_t, sigma_t = alpha_sigma(plan.tables["sigmas"][plan.start])
    return alpha_t * original + sigma_t * noise
