"""Pure-numpy schedulers: ``plan`` computes every table once, ``step`` keeps no hidden state.

Each algorithm module exposes ``NAME``, ``Config``, ``plan(raw_config, steps, strength)``,
``step(plan, i, sample, model_output, state, noise) -> (sample, state)`` and
``add_noise(plan, x0, noise)``. ``state`` starts as ``()`` and carries a multistep method's
memory from one call to the next, visibly.
"""

from __future__ import annotations

import enum
from types import ModuleType
from typing import Any, Mapping

from scanside.errors import InputError

from . import ddim, dpmpp_2m, euler, euler_ancestral, lcm, pndm
from .common import Plan, SchedulerConfigError


class SchedulerName(str, enum.Enum):
    DDIM = ddim.NAME
    EULER = euler.NAME
    EULER_A = euler_ancestral.NAME
    DPMPP_2M = dpmpp_2m.NAME
    DPMPP_2M_KARRAS = "dpmpp_2m_karras"
    LCM = lcm.NAME
    PNDM = pndm.NAME

    @classmethod
    def parse(cls, value: "str | SchedulerName", argument: str = "scheduler") -> "SchedulerName":
        try:
            return cls(value)
        except ValueError:
            names = ", ".join(m.value for m in cls)
            raise InputError(f"{argument}: unknown scheduler {value!r}; choose one of {names}")


MODULES: dict[SchedulerName, ModuleType] = {
    SchedulerName.DDIM: ddim,
    SchedulerName.EULER: euler,
    SchedulerName.EULER_A: euler_ancestral,
    SchedulerName.DPMPP_2M: dpmpp_2m,
    SchedulerName.DPMPP_2M_KARRAS: dpmpp_2m,
    SchedulerName.LCM: lcm,
    SchedulerName.PNDM: pndm,
}


def module_for(name: "str | SchedulerName") -> ModuleType:
    return MODULES[SchedulerName.parse(name)]


def make_plan(
    name: "str | SchedulerName", raw_config: Mapping[str, Any], steps: int, strength: float = 1.0,
    lcm_distilled: bool = False,
) -> Plan:
    """Plan ``steps`` steps of scheduler ``name`` from diffusers' scheduler_config.json data.
    ``lcm_distilled``: an LCM-distilled UNet's img2img, all steps within strength (lcm.plan)."""
    scheduler = SchedulerName.parse(name)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InputError(f"steps: {steps!r} is not a positive integer; use e.g. steps=20")
    if not 0 < strength <= 1:
        raise InputError(f"strength: {strength!r} is outside (0, 1]; use e.g. strength=0.3")
    raw = dict(raw_config)
    if scheduler is SchedulerName.DPMPP_2M_KARRAS:
        raw["use_karras_sigmas"] = True
    if steps > raw.get("num_train_timesteps", 1000):
        raise InputError(
            f"steps: {steps} is more than the model's {raw.get('num_train_timesteps', 1000)} "
            "training timesteps; use fewer steps"
        )
    if scheduler is SchedulerName.LCM and lcm_distilled:  # its own strength arithmetic
        return lcm.plan(raw, steps, strength, steps_within_strength=True)
    plan = MODULES[scheduler].plan(raw, steps, strength)
    if plan.start >= len(plan.timesteps) or int(steps * strength) < 1:
        raise InputError(
            f"strength: {strength} x steps {steps} leaves no denoising step to run; "
            f"raise strength to at least {1 / steps:.3g} or use more steps"
        )
    return plan


__all__ = ["Plan", "SchedulerConfigError", "SchedulerName", "make_plan", "module_for"]
