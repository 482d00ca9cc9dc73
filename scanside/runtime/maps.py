"""What an enhancement changed, and how sure the model was of it: per-pixel maps.

A diffusion model's worst failure -- a plausible structure that is not there, or a faint one
that is gone -- leaves no trace in its output. Two maps make it visible, on request:

- **uncertainty**: the spread (standard deviation) of the model's predictions of the same
  pixel over the ensemble's views (the image mirrored and turned, each view's output turned
  back), at least ``MIN_VIEWS`` of them. Views the caller's ensemble does not average are
  run for the map alone, each with a seed of its own (which also varies a stochastic
  scheduler's draws): the enhanced image stays what it is without maps. The views of a
  deterministic one-step model agree far more than it errs (their spread was 1/3-1/9 of the
  actual error on held-out phantoms), so a model may carry a calibration measured on
  held-out data (its manifest's ``maps.uncertainty``: ``spread_scale`` b, ``noise_scale``
  c): the map is then sqrt((b x spread)^2 + (c x local noise)^2), the error the model is
  predicted to make -- its disagreement with itself, plus the residual of the input's own
  noise, which no view sees. Without a calibration the map is the raw spread.
- **change**: the enhanced image minus the input, and a mask of where that change is
  structure rather than noise: the change smoothed over ``CHANGE_SMOOTH_PX`` (removed noise
  is incoherent from pixel to pixel, a removed or added structure is not) stands out by more
  than ``k`` times the local noise at that scale. The local noise is estimated from what the
  model removed from the input: the robust spread (1.4826 x median absolute value) of the
  smoothed change over ``NOISE_BLOCK`` px blocks. Where the model removed only noise, that
  spread is the input's noise at the mask's scale; a lost lesion or an invented one is a
  small coherent part of its block and does not move the median.

All maps are in the image's [0, 1] units (the DICOM layer turns them into HU through the
window); numpy only, as all of the runtime.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from scanside.errors import InputError

from .images import SATURATED, gaussian_blur

MAPS = ("uncertainty", "change")
MIN_VIEWS = 4  # mirrors and half turns: the views every engine shape takes
# Measured on held-out synthetic anatomy at 40 HU with the built-in model (29 of 31 inserted
# lesions lost): k 3 flags 0.37 % of the object's pixels and a lesion in 28-38 % of the lost
# ones; 2.5: 1.3 % and 55-69 %; 4: 0.02 % and 0-7 %. Smoothing over 1.5-4 px changed little.
CHANGE_K = 3.0
CHANGE_SMOOTH_PX = 2.0  # Gaussian sigma: a radius-3 px lesion is still half its contrast
NOISE_BLOCK = 32  # px: the local noise's resolution (CT noise varies over centimetres)
NOISE_FLOOR = 1e-4  # image units (0.2 HU in the CT window): an unchanged block flags nothing
INNER_WEIGHT = 0.95  # the blocks measure noise where the smoothing saw (almost) only usable pixels
USABLE_SHARE = 0.25  # a block with fewer unsaturated pixels takes the image's median noise


def check_maps(maps: Union[str, Iterable[str], None]) -> tuple[str, ...]:
    """``maps`` as a tuple of known names in MAPS order: "uncertainty,change", a sequence of
    names, or None/"" for none."""
    if maps is None:
        return ()
    names = [m.strip() for m in maps.split(",")] if isinstance(maps, str) else list(maps)
    if not all(isinstance(n, str) for n in names):
        raise InputError(f"maps: {maps!r}; give names from {', '.join(MAPS)}")
    names = [n for n in names if n]
    unknown = sorted(set(names) - set(MAPS))
    if unknown:
        raise InputError(f"maps: {', '.join(unknown)} is not a map scanside makes; choose from "
                         f"{', '.join(MAPS)} (e.g. maps=('uncertainty', 'change'))")
    return tuple(m for m in MAPS if m in names)


def check_k(k: float) -> float:
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not np.isfinite(k) or k <= 0:
        raise InputError(f"change_k: {k!r} is not a positive number (the change mask's "
                         f"threshold in local noise units; default {CHANGE_K:g})")
    return float(k)


@dataclass(frozen=True)
class Maps:
    """The maps of one enhancement, (H, W) float32 in image units unless said otherwise."""

    views: int  # predictions the uncertainty is the spread of (0: no uncertainty map)
    uncertainty: Optional[np.ndarray] = None  # the predicted error (calibrated), else the spread
    calibration: Optional[Mapping[str, Any]] = None  # the model's (None: the raw spread)
    spread: Optional[np.ndarray] = None  # the views' standard deviation
    change: Optional[np.ndarray] = None  # enhanced - input
    flagged: Optional[np.ndarray] = None  # bool: structure changed (see the module)
    noise: Optional[np.ndarray] = None  # the local noise of the smoothed change
    k: float = CHANGE_K

    def names(self) -> tuple[str, ...]:
        return tuple(n for n in MAPS if getattr(self, n) is not None)


def gray(image: np.ndarray) -> np.ndarray:
    """(H, W) of an (H, W) or (H, W, C) image: its channels' mean."""
    return image.mean(axis=2) if image.ndim == 3 else image


def spread(predictions: Sequence[np.ndarray]) -> np.ndarray:
    """Per-pixel sample standard deviation (n - 1) of two or more (H, W[, C]) predictions."""
    if len(predictions) < 2:
        raise InputError("uncertainty: needs at least 2 predictions of each pixel")
    stack = np.stack([gray(np.asarray(p, np.float32)) for p in predictions])
    return stack.std(axis=0, ddof=1).astype(np.float32)


def block_noise(smoothed: np.ndarray, usable: np.ndarray, block: int = NOISE_BLOCK) -> np.ndarray:
    """The robust spread of ``smoothed`` over ``block`` px blocks of its ``usable`` pixels,
    spread back over the image bilinearly; blocks with too few usable pixels take the median
    of the others."""
    h, w = smoothed.shape
    rows, cols = -(-h // block), -(-w // block)
    grid = np.full((rows, cols), np.nan, np.float32)
    for i in range(rows):
        for j in range(cols):
            part = smoothed[i * block:(i + 1) * block, j * block:(j + 1) * block]
            keep = usable[i * block:(i + 1) * block, j * block:(j + 1) * block]
            if keep.mean() >= USABLE_SHARE:
                grid[i, j] = 1.4826 * np.median(np.abs(part[keep]))
    known = grid[np.isfinite(grid)]
    grid = np.where(np.isfinite(grid), grid, np.median(known) if known.size else 0.0)
    return np.maximum(upsample(grid, h, w, block), NOISE_FLOOR).astype(np.float32)


def upsample(grid: np.ndarray, h: int, w: int, block: int) -> np.ndarray:
    """Bilinear interpolation of block values (at the blocks' centres) to every pixel."""
    ys = np.clip((np.arange(h) + 0.5) / block - 0.5, 0, grid.shape[0] - 1)
    xs = np.clip((np.arange(w) + 0.5) / block - 0.5, 0, grid.shape[1] - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, grid.shape[0] - 1), np.minimum(x0 + 1, grid.shape[1] - 1)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x1] * fx
    bottom = grid[y1][:, x0] * (1 - fx) + grid[y1][:, x1] * fx
    return top * (1 - fy) + bottom * fy


def change_maps(enhanced: np.ndarray, source: np.ndarray, k: float = CHANGE_K,
                smooth_px: float = CHANGE_SMOOTH_PX) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(change, flagged, noise) for an enhanced image and its input, both [0, 1] (H, W[, C]):
    see the module. Pixels at the window's ends in the input (clipped air, dense bone) carry
    no measurable change and are never flagged."""
    change = gray(enhanced).astype(np.float32) - gray(source).astype(np.float32)
    src = gray(source)
    usable = (src > SATURATED) & (src < 1.0 - SATURATED)
    # Normalised smoothing: near the window's ends (the body's edge against air) the
    # unusable pixels' zeros would shrink the smoothed change, and with it the noise the
    # blocks there measure, so flagging more there than inside.
    weight = gaussian_blur(usable.astype(np.float32), smooth_px)
    smoothed = gaussian_blur(np.where(usable, change, 0.0), smooth_px) / np.maximum(weight, 1e-3)
    noise = block_noise(smoothed, usable & (weight > INNER_WEIGHT))
    flagged = usable & (np.abs(smoothed) > check_k(k) * noise)
    return change, flagged, noise


def calibrated(spread_: np.ndarray, local_noise: np.ndarray,
               calibration: Optional[Mapping[str, Any]]) -> np.ndarray:
    """The uncertainty map: sqrt((b x spread)^2 + (c x local noise)^2) with the model's
    calibration {"spread_scale": b, "noise_scale": c}; the spread itself without one."""
    if not calibration:
        return spread_
    try:
        b, c = float(calibration["spread_scale"]), float(calibration["noise_scale"])
    except (KeyError, TypeError, ValueError):
        raise InputError(f"maps.uncertainty in the engine's manifest: {dict(calibration)!r} is "
                         "not {\"spread_scale\": b, \"noise_scale\": c}; measure it again with "
                         "python -m scanside.training.mapseval --engine ENGINE --write, or "
                         "remove it") from None
    return np.sqrt((b * spread_) ** 2 + (c * local_noise) ** 2).astype(np.float32)


def pixel_noise(enhanced: np.ndarray, source: np.ndarray) -> np.ndarray:
    """The input's local noise per pixel: the robust spread of what the model removed."""
    change = gray(enhanced).astype(np.float32) - gray(source).astype(np.float32)
    src = gray(source)
    usable = (src > SATURATED) & (src < 1.0 - SATURATED)
    return block_noise(np.where(usable, change, 0.0), usable)


def make_maps(names: tuple[str, ...], enhanced: np.ndarray, source: np.ndarray,
              predictions: Sequence[np.ndarray],
              calibration: Optional[Mapping[str, Any]] = None, k: float = CHANGE_K) -> Maps:
    """The ``names`` maps of one enhancement: ``predictions`` are the per-view outputs the
    uncertainty comes from; ``calibration``: the model's (see the module)."""
    uncertainty = views_spread = None
    if "uncertainty" in names:
        views_spread = spread(predictions)
        uncertainty = calibrated(views_spread, pixel_noise(enhanced, source), calibration)
    change = flagged = noise = None
    if "change" in names:
        change, flagged, noise = change_maps(enhanced, source, k)
    return Maps(len(predictions) if uncertainty is not None else 0, uncertainty,
                calibration if uncertainty is not None else None, views_spread,
                change, flagged, noise, k)


@dataclass(frozen=True)
class Enhanced:
    """An enhanced image (the caller's layout, [0, 1]) and its maps."""

    image: np.ndarray
    maps: Maps
