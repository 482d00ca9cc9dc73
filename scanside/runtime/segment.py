"""Segmentation by a diffusion model: the sample is a mask, not an image.

A segmentation engine is exported like any checkpoint (an image-conditioned UNet, as
MedSegDiff's models are); its manifest says ``task: "segment"``, names its labels with their
codes, and carries its own sampling settings (``segment_defaults``). The runtime's scheduler
loop runs it from pure noise (strength 1) with the image's latent beside the noisy one, over a
few steps; each of ``seeds`` start noises and each ensemble view gives one sample of the mask.
The mean of the samples is the probability, their spread its uncertainty, and a pixel is in
the segment where the probability exceeds ``threshold``.

One label per engine today (the decoder's gray channel is the label's probability); the
labels entry is a list so that a multi-label model can name its channels later.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional

import numpy as np

from scanside.errors import InputError

SEEDS = 4  # samples per view when the model does not say
THRESHOLD = 0.5
SEGMENT_KEYS = ("seeds", "threshold")  # segment_defaults beyond the Sampling settings
CODE_KEYS = ("scheme", "value", "meaning")


@dataclass(frozen=True)
class Segmented:
    """One image's segmentation, (H, W) float32 each unless said otherwise."""

    probability: np.ndarray  # mean of the samples, [0, 1]
    spread: np.ndarray  # their standard deviation (0 with a single sample)
    mask: np.ndarray  # bool: probability > threshold
    samples: int  # views x seeds
    threshold: float


def check_seeds(seeds: Any) -> int:
    if isinstance(seeds, bool) or not isinstance(seeds, (int, np.integer)) or not 1 <= seeds <= 64:
        raise InputError(f"seeds: {seeds!r} is not a whole number in 1..64 (mask samples drawn "
                         "per view; their mean is the probability)")
    return int(seeds)


def check_threshold(threshold: Any) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) \
            or not 0.0 < threshold < 1.0:
        raise InputError(f"threshold: {threshold!r} is not a probability strictly between 0 "
                         "and 1 (a pixel is in the segment above it)")
    return float(threshold)


def check_code(code: Any, where: str) -> dict[str, str]:
    if not isinstance(code, Mapping) or not all(
            isinstance(code.get(k), str) and code.get(k) for k in CODE_KEYS):
        raise InputError(f"{where}: {code!r} is not a code; give "
                         '{"scheme": "SCT", "value": "52988006", "meaning": "Lesion"} '
                         "(SNOMED CT where one exists, else DCM or a private scheme)")
    return {k: str(code[k]) for k in CODE_KEYS}


def check_labels(labels: Iterable[Any], where: str) -> list[dict[str, Any]]:
    """A segmentation model's labels, each {"label": n, "name": ..., "category": code,
    "type": code}: numbered 1.. in order, every one with its category and type codes (a DICOM
    SEG must code what each segment is; the fix is named when one is missing)."""
    labels = list(labels or ())
    if not labels:
        raise InputError(f"{where}: a segmentation model names no labels; add "
                         '"labels": [{"label": 1, "name": ..., "category": {...}, "type": '
                         '{...}}] to its scanside.json')
    checked = []
    for number, label in enumerate(labels, 1):
        if not isinstance(label, Mapping):
            raise InputError(f"{where}: label {number} is {label!r}, not an object")
        name = label.get("name")
        if label.get("label") != number or not isinstance(name, str) or not name:
            raise InputError(f"{where}: label {number} needs \"label\": {number} and a name "
                             f"(got {dict(label)!r})")
        for key in ("category", "type"):
            if key not in label:
                raise InputError(f"{where}: label {number} ({name}) has no {key} code; add "
                                 f'"{key}": {{"scheme": "SCT", "value": ..., "meaning": ...}} '
                                 "(SNOMED CT where one exists) to its scanside.json")
        checked.append({"label": number, "name": name,
                        "category": check_code(label["category"], f"{where}: {name} category"),
                        "type": check_code(label["type"], f"{where}: {name} type")})
    return checked


def split_defaults(defaults: Mapping[str, Any]) -> tuple[dict[str, Any], int, float]:
    """A model's segment_defaults -> (its Sampling settings, seeds, threshold)."""
    settings = {k: v for k, v in defaults.items() if k not in SEGMENT_KEYS}
    return (settings, check_seeds(defaults.get("seeds", SEEDS)),
            check_threshold(defaults.get("threshold", THRESHOLD)))


def combine(samples: list[np.ndarray], threshold: float) -> Segmented:
    """Mask samples ([0, 1] each, (H, W)) -> their mean, spread and thresholded mask."""
    stack = np.stack(samples).astype(np.float32)
    probability = stack.mean(axis=0)
    spread = stack.std(axis=0, ddof=1) if len(samples) > 1 else np.zeros_like(probability)
    return Segmented(probability, spread.astype(np.float32), probability > threshold,
                     len(samples), threshold)


def resolve_seeds(given: Optional[int], model: int) -> int:
    return model if given is None else check_seeds(given)
