"""The enhancement settings: one frozen object, built once (by the CLI, a node, a caller) and
taken by the pipeline, the DICOM path, the node, the cluster and the benchmarks.

A setting left as None takes the model's own (``enhance_defaults`` in its manifest), else
scanside's (``DEFAULTS``); ``Sampling.resolve`` does that once per model. Validation happens
when the object is made, so a bad value fails before an engine loads or a file is read, with a
message naming the setting (the CLI turns the name into its flag).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from scanside.errors import InputError

from .images import ENSEMBLE_VIEWS
from .schedulers import SchedulerName

Consistency = tuple[float, Optional[float]]  # (from, to) px; to None: all coarser than from
ConsistencyPx = Union[float, Sequence[float], None]  # as callers give it: PX or [PX, MAX]

# scanside's settings where neither the caller nor the model's manifest says. The built-in
# model's own (strength 0.05, its prompt) are in its manifest.
DEFAULTS: dict[str, Any] = {"prompt": "", "negative_prompt": None, "strength": 0.3, "steps": 20,
                            "guidance": 1.0, "scheduler": None, "ensemble": 1,
                            "consistency_px": 0, "noise_factor": 1.0}


def finite_number(value: object) -> bool:
    return (not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
            and bool(np.isfinite(value)))


def check_consistency(value: object) -> Consistency:
    """``consistency_px`` as (from, to): a number PX keeps the input's content coarser than PX
    (0: off), a pair [PX, MAX] only its content between PX and MAX px, the model's own beyond
    (so the model's large-scale HU correction stays while finer structure is the input's)."""
    if finite_number(value) and value >= 0:
        return float(value), None
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(map(finite_number, value)) \
            and 0 < value[0] < value[1]:
        return float(value[0]), float(value[1])
    raise InputError(f"consistency_px: {value!r} is neither a number >= 0 nor a pair [PX, MAX] "
                     "with 0 < PX < MAX (pixels; 0 turns it off, about 8 keeps the input's mean "
                     "HU of flat tissue, [2, 32] its lesion-scale contrast)")


def check_noise_factor(value: object) -> float:
    if not finite_number(value) or not value > 0:
        raise InputError(f"noise_factor: {value!r} is not a number > 0 (1 tells the model the "
                         "noise estimated from the image; 1.5 removes more, 0.7 keeps more texture)")
    return float(value)


def check_guidance(guidance: object) -> None:
    if not finite_number(guidance) or guidance < 0:
        raise InputError(f"guidance: {guidance!r} is not a number >= 0; use 1 for none, "
                         "or 5-8 for classifier-free guidance")


def check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed: {seed!r} is not a non-negative integer; use e.g. seed=0")
    return int(seed)


def check_ensemble(ensemble: object) -> None:
    if not isinstance(ensemble, (int, np.integer)) or isinstance(ensemble, bool) \
            or ensemble not in ENSEMBLE_VIEWS:
        allowed = ", ".join(map(str, ENSEMBLE_VIEWS))
        raise InputError(f"ensemble: {ensemble!r} is not one of {allowed} (the number of "
                         "rotated/mirrored views averaged; 1 turns it off)")


def check_text(name: str, value: object) -> None:
    if not isinstance(value, str):
        raise InputError(f"{name}: expected a string, got {type(value).__name__}")


@dataclass(frozen=True)
class Sampling:
    """How to enhance: every setting None (the default) takes the model's own, else scanside's.

    ``strength``: how far the input is noised, in (0, 1]. ``steps``: scheduler steps (those
    within ``strength`` run). ``guidance``: classifier-free guidance, 1 for none.
    ``scheduler``: a SchedulerName or its value; None the model's own. ``seed``: every random
    draw follows it (None: 0; kept apart from 0 only because derived UIDs made before this
    object existed did not include a seed nobody gave). ``ensemble`` (1, 2, 4 or 8): that many
    rotated/mirrored views averaged, that many times the work. ``consistency_px`` > 0 takes
    the result's content coarser than a Gaussian of that many pixels from the input (data
    consistency: large-scale means such as an organ's HU stay the input's); a pair [PX, MAX]
    only the content between the two scales; 0 turns it off. ``noise_factor``
    (noise-conditioned models only) multiplies the noise level estimated from the image
    before the model is given it: above 1 removes more, below 1 keeps more texture.
    """

    prompt: Optional[str] = None
    negative_prompt: Optional[str] = None
    strength: Optional[float] = None
    steps: Optional[int] = None
    guidance: Optional[float] = None
    scheduler: Union[str, SchedulerName, None] = None
    seed: Optional[int] = None
    ensemble: Optional[int] = None
    consistency_px: ConsistencyPx = None
    noise_factor: Optional[float] = None

    def __post_init__(self) -> None:
        # A pair stays as given in the fingerprint (JSON writes a tuple as it writes a list).
        if isinstance(self.consistency_px, list):
            object.__setattr__(self, "consistency_px", tuple(self.consistency_px))
        for name in ("prompt", "negative_prompt"):
            if getattr(self, name) is not None:
                check_text(name, getattr(self, name))
        if self.strength is not None and not (finite_number(self.strength)
                                              and 0 < self.strength <= 1):
            raise InputError(f"strength: {self.strength!r} is outside (0, 1]; use e.g. "
                             "strength=0.3")
        if self.steps is not None and (isinstance(self.steps, bool)
                                       or not isinstance(self.steps, (int, np.integer))
                                       or self.steps < 1):
            raise InputError(f"steps: {self.steps!r} is not a positive integer; use e.g. steps=20")
        if self.guidance is not None:
            check_guidance(self.guidance)
        if self.scheduler is not None:
            SchedulerName.parse(self.scheduler)
        if self.seed is not None:
            check_seed(self.seed)
        if self.ensemble is not None:
            check_ensemble(self.ensemble)
        if self.consistency_px is not None:
            check_consistency(self.consistency_px)
        if self.noise_factor is not None:
            check_noise_factor(self.noise_factor)

    # -- building -------------------------------------------------------------------------
    @classmethod
    def of(cls, sampling: "Sampling | None" = None, **settings: Any) -> "Sampling":
        """``sampling``, or one made of keyword ``settings`` (the keyword form every function
        took before this object; None values are left out as before). Both at once is an error:
        which would win is not obvious."""
        given = {k: v for k, v in settings.items() if v is not None}
        if sampling is None:
            return cls(**given)
        if not isinstance(sampling, Sampling):
            raise InputError(f"sampling: expected a scanside.Sampling, got "
                             f"{type(sampling).__name__}; e.g. Sampling(strength=0.1)")
        if given:
            raise InputError(f"sampling: given together with {sorted(given)}; put those in "
                             "the Sampling, e.g. dataclasses.replace(sampling, strength=0.1)")
        return sampling

    def replace(self, **changes: Any) -> "Sampling":
        return dataclasses.replace(self, **changes)

    def given(self) -> dict[str, Any]:
        """The settings that are set, by name."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) is not None}

    def resolve(self, model_defaults: Mapping[str, Any]) -> "Sampling":
        """Every unset setting from ``model_defaults`` (a manifest's enhance_defaults), else
        from DEFAULTS: what an enhancement by that model will use."""
        unknown = set(model_defaults) - set(DEFAULTS)
        if unknown:
            raise InputError(f"enhance_defaults: unknown settings {sorted(unknown)} in the "
                             f"engine's manifest; allowed: {sorted(DEFAULTS)}")
        merged = {**DEFAULTS, **model_defaults, **self.given()}
        return Sampling(**merged)

    # -- reading --------------------------------------------------------------------------
    @property
    def seed_value(self) -> int:
        return 0 if self.seed is None else int(self.seed)

    @property
    def consistency(self) -> Consistency:
        return check_consistency(0 if self.consistency_px is None else self.consistency_px)

    def views_text(self) -> str:
        """What a resolved Sampling adds to a derived image's description after its seed."""
        text = f"; ensemble of {self.ensemble} views" if self.ensemble != 1 else ""
        fine, coarse = self.consistency
        if fine:
            text += (f"; input kept above {fine:g} px" if coarse is None else
                     f"; input kept between {fine:g} and {coarse:g} px") + " (data consistency)"
        return text

    def schedule_text(self, algorithm: str) -> str:
        """A resolved Sampling's schedule for a derived image's description."""
        return (f"scheduler {algorithm}; steps {self.steps}; strength {self.strength:g}; "
                f"guidance {self.guidance:g}; seed {self.seed_value}")

    def identity(self, algorithm: str) -> dict[str, Any]:
        """A resolved Sampling as it enters a fingerprint (and so derived UIDs): the scheduler
        as the algorithm it resolved to. Kept in the shape fingerprints had before this object:
        noise_factor only when not 1, seed only when given."""
        settings = {name: getattr(self, name) for name in DEFAULTS}
        if settings["noise_factor"] == 1:
            del settings["noise_factor"]
        if self.seed is not None:
            settings["seed"] = self.seed
        settings["scheduler"] = algorithm
        return settings


__all__ = ["DEFAULTS", "ConsistencyPx", "Sampling", "check_consistency", "check_noise_factor"]
