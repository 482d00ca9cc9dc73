"""What every scheduler shares: the noise schedule, config parsing and the Plan.

Notation (DDPM/DDIM papers, as in diffusers):
    beta_t          per-step noise variance of the forward process
    alpha_bar_t     cumulative product of (1 - beta); ``ac`` in code
    sigma_t         sqrt((1 - alpha_bar_t) / alpha_bar_t), the k-diffusion noise level

Every table is computed once by ``plan`` in float32 exactly as diffusers computes it in torch,
so that stepping agrees with diffusers to float32 rounding.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from scanside.errors import InputError

# Keys diffusers writes into scheduler_config.json for the schedulers we implement. A key in this
# set but not in an algorithm's Config belongs to another scheduler and is ignored, exactly as
# diffusers' from_config ignores it; a key outside this set is refused, so a typo or a newer
# diffusers feature that changes the math cannot pass silently.
KNOWN_KEYS = frozenset(
    {
        "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
        "prediction_type", "timestep_spacing", "steps_offset", "set_alpha_to_one", "clip_sample",
        "clip_sample_range", "thresholding", "dynamic_thresholding_ratio", "sample_max_value",
        "rescale_betas_zero_snr", "skip_prk_steps", "use_karras_sigmas", "use_exponential_sigmas",
        "use_beta_sigmas", "use_flow_sigmas", "use_lu_lambdas", "use_dynamic_shifting",
        "final_sigmas_type", "interpolation_type", "timestep_type", "sigma_min", "sigma_max",
        "solver_order", "solver_type", "algorithm_type", "lower_order_final", "euler_at_final",
        "lambda_min_clipped", "variance_type", "original_inference_steps", "timestep_scaling",
        "flow_shift", "time_shift_type", "shift_terminal", "invert_sigmas", "clip_denoised",
        "predict_x0", "disable_corrector", "solver_p", "use_beta_sigmas", "sample_clip_range",
    }
)


class SchedulerConfigError(InputError):
    """A scheduler_config.json entry this runtime cannot honour."""


def parse_config(cls: type, raw: Mapping[str, Any], algorithm: str) -> Any:
    """Build the frozen Config dataclass ``cls`` from diffusers' scheduler_config.json data."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(k for k in raw if not k.startswith("_") and k not in KNOWN_KEYS)
    if unknown:
        raise SchedulerConfigError(
            f"scheduler config: unknown key(s) {unknown} for {algorithm}; scanside knows "
            f"the keys diffusers 0.36 writes. Remove them or update scanside."
        )
    config = cls(**{k: v for k, v in raw.items() if k in names})
    validate_common(config, algorithm)
    return config


def validate_common(config: Any, algorithm: str) -> None:
    checks = {
        "beta_schedule": ("linear", "scaled_linear", "squaredcos_cap_v2"),
        "timestep_spacing": ("leading", "trailing", "linspace"),
    }
    for key, allowed in checks.items():
        value = getattr(config, key, allowed[0])
        if value not in allowed:
            raise SchedulerConfigError(
                f"scheduler config: {key}={value!r} is not supported by {algorithm}; "
                f"expected one of {list(allowed)}"
            )
    for key in ("thresholding", "rescale_betas_zero_snr"):
        if getattr(config, key, False):
            raise SchedulerConfigError(
                f"scheduler config: {key}=true is not implemented in scanside's {algorithm}; "
                "set it to false or pick another scheduler"
            )


def refuse(config: Any, algorithm: str, **expected: Any) -> None:
    """Raise if any config field differs from the value this implementation supports."""
    for key, want in expected.items():
        got = getattr(config, key)
        if got != want:
            raise SchedulerConfigError(
                f"scheduler config: {key}={got!r} is not supported by scanside's {algorithm} "
                f"(supported: {want!r})"
            )


def check_prediction(config: Any, algorithm: str, allowed: tuple[str, ...]) -> None:
    if config.prediction_type not in allowed:
        raise SchedulerConfigError(
            f"scheduler config: prediction_type={config.prediction_type!r} is not supported by "
            f"{algorithm}; expected one of {list(allowed)}"
        )


def torch_linspace_f32(start: float, end: float, steps: int) -> np.ndarray:
    """float32 linspace computed the way torch's CPU kernel does it.

    torch uses a float32 step, fused multiply-adds, and walks the second half backwards from
    ``end``; numpy's float64 linspace rounds a third of SD's betas differently.
    """
    a, b = np.float32(start), np.float32(end)
    step = (b - a) / np.float32(steps - 1)
    i = np.arange(steps, dtype=np.float64)
    # The float64 products of a float32 step and an index < 2**24 are exact, so one rounding
    # to float32 below is a true fused multiply-add.
    forward = np.float64(a) + np.float64(step) * i
    backward = np.float64(b) - np.float64(step) * (steps - 1 - i)
    return np.where(i < steps // 2, forward, backward).astype(np.float32)


def betas_for_alpha_bar(n: int, max_beta: float = 0.999) -> np.ndarray:
    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)]
    return np.asarray(betas, dtype=np.float32)


def alphas_cumprod(config: Any) -> np.ndarray:
    """alpha_bar_t for t = 0..T-1, float32, as diffusers' torch code computes it."""
    n = config.num_train_timesteps
    if config.trained_betas is not None:
        betas = np.asarray(config.trained_betas, dtype=np.float32)
    elif config.beta_schedule == "linear":
        betas = torch_linspace_f32(config.beta_start, config.beta_end, n)
    elif config.beta_schedule == "scaled_linear":
        betas = torch_linspace_f32(config.beta_start**0.5, config.beta_end**0.5, n) ** 2
    else:
        betas = betas_for_alpha_bar(n)
    # torch.cumprod accumulates float32 in double on the CPU; so do we.
    return np.cumprod((1.0 - betas).astype(np.float64)).astype(np.float32)


def base_sigmas(ac: np.ndarray) -> np.ndarray:
    """sigma_t for every training timestep, float32 (ascending in t)."""
    return ((1 - ac) / ac) ** 0.5


def spaced_timesteps(config: Any, steps: int, dtype: type) -> np.ndarray:
    """Descending inference timesteps for the three spacings of arXiv:2305.08891, Table 2."""
    n = config.num_train_timesteps
    if config.timestep_spacing == "linspace":
        if dtype is np.float32:
            return np.linspace(0, n - 1, steps, dtype=np.float32)[::-1].copy()
        return np.linspace(0, n - 1, steps).round()[::-1].copy().astype(np.int64)
    if config.timestep_spacing == "leading":
        ratio = n // steps
        ts = (np.arange(0, steps) * ratio).round()[::-1].copy().astype(dtype)
        return ts + dtype(config.steps_offset)
    ratio = n / steps
    return np.round(np.arange(n, 0, -ratio)).astype(dtype) - dtype(1)


def sigma_to_t(sigma: float, log_sigmas: np.ndarray) -> float:
    """Fractional timestep whose sigma is ``sigma`` (log-linear interpolation)."""
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma - log_sigmas[:, np.newaxis]
    low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    high = low + 1
    w = np.clip((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[high]), 0, 1)
    return ((1 - w) * low + w * high).reshape(np.shape(sigma))


def karras_sigmas(sigma_min: float, sigma_max: float, steps: int, rho: float = 7.0) -> np.ndarray:
    """Karras et al. 2022, eq. 5: sigmas evenly spaced in sigma**(1/rho)."""
    ramp = np.linspace(0, 1, steps)
    min_inv, max_inv = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (max_inv + ramp * (min_inv - max_inv)) ** rho


def start_index(steps: int, strength: float) -> int:
    """First step an img2img run takes: diffusers' ``get_timesteps`` arithmetic, kept verbatim."""
    init_timestep = min(int(steps * strength), steps)
    return max(steps - init_timestep, 0)


@dataclass(frozen=True)
class Plan:
    """Every table a run needs, computed once. Stepping reads it and keeps no counter.

    ``timesteps[i]`` is what the UNet receives at step i; steps run from ``start`` (> 0 for
    img2img) to ``len(timesteps) - 1``.
    """

    algorithm: str
    config: Any
    steps: int  # num_inference_steps asked for
    timesteps: np.ndarray  # (N,) float32
    start: int
    init_noise_sigma: float
    input_divisors: np.ndarray  # (N,) float32: the UNet sees sample / input_divisors[i]
    draws_noise: np.ndarray  # (N,) bool: step i consumes a standard normal sample
    tables: Mapping[str, Any] = field(default_factory=dict)

    @property
    def indices(self) -> range:
        return range(self.start, len(self.timesteps))


def ones(n: int) -> np.ndarray:
    return np.ones(n, dtype=np.float32)


def no_noise(n: int) -> np.ndarray:
    return np.zeros(n, dtype=bool)


def ac_add_noise(plan: Plan, original: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps at the first timestep run."""
    a_t = plan.tables["ac"][int(plan.timesteps[plan.start])]
    return a_t**0.5 * original + (1 - a_t) ** 0.5 * noise
