"""An image's noise level from the image itself, for noise-conditioned UNets.

A noise-conditioned model (FFDNet's noise map; a diffusion model's noise-level input) takes
the input's noise level as one more input channel, so it need not infer it from local
patches, where real texture (fat, muscle, trabecular bone) looks like noise. The level is
estimated from the image, not read from DICOM dose tags (CTDIvol and mAs are optional and do
not give a slice's noise: patient size, kernel and slice thickness change it several-fold).

The estimator, ``laplacian-8px-q25``: the image's 4-neighbour Laplacian (normalised so
white noise of std s gives std s), its std in 8 x 8 px blocks, and the 25th percentile of
those over blocks with no pixel at the value range's ends (clipped air or bone carries less
noise than it had). The low percentile takes the flattest blocks, so edges and texture barely
move it. CT noise after filtered back projection is correlated, so it reads about 0.33-0.47x
the soft-tissue noise std (ctsim scans of real and synthetic anatomy at 20-80 HU, 2026-11-28)
-- a fixed scale the model learns through, since training conditions on the same estimator
run on its low-dose inputs. numpy only: the runtime runs it.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from scanside.errors import InputError

ESTIMATOR = "laplacian-8px-q25"
BLOCK = 8
PERCENTILE = 25.0
CLIPPED = 0.999  # |pixel| in [-1, 1] at or above this is at the value range's end


def estimate(pixels: np.ndarray) -> np.ndarray:
    """Noise std (the pixels' units) of (..., H, W) images in [-1, 1], one per image."""
    x = np.asarray(pixels, dtype=np.float32)
    if x.ndim < 2 or min(x.shape[-2:]) < BLOCK + 2:
        raise InputError(f"noise level: images of shape {x.shape} are too small; the estimate "
                         f"needs at least {BLOCK + 2} x {BLOCK + 2} pixels")
    centre = x[..., 1:-1, 1:-1]
    lap = (4 * centre - x[..., :-2, 1:-1] - x[..., 2:, 1:-1] - x[..., 1:-1, :-2]
           - x[..., 1:-1, 2:]) / np.float32(np.sqrt(20.0))
    h, w = (n - n % BLOCK for n in lap.shape[-2:])
    blocks = lambda a: a[..., :h, :w].reshape(  # noqa: E731
        *a.shape[:-2], h // BLOCK, BLOCK, w // BLOCK, BLOCK)
    std = blocks(lap).std(axis=(-3, -1))
    usable = (np.abs(blocks(centre)) < CLIPPED).all(axis=(-3, -1))
    flat = np.where(usable, std, np.nan).reshape(*std.shape[:-2], -1)
    with np.errstate(all="ignore"):  # an image with no usable block has no estimate: 0
        level = np.nanpercentile(flat, PERCENTILE, axis=-1) if flat.size else np.zeros(0)
    return np.nan_to_num(np.asarray(level, dtype=np.float32), nan=0.0)


def estimate_windows(image: np.ndarray, window: int) -> float:
    """The estimate of an (H, W) image as a model trained on ``window`` px patches saw it:
    the median of the estimates of the window-sized tiles covering it (the last row and
    column of tiles flush with the edges) that have usable blocks. On a whole slice the
    estimate over all its blocks reads 5-30 % lower than its patches do (more flat
    periphery, fewer edges per block), which would tell the model less noise than it has."""
    h, w = image.shape
    if h <= window and w <= window:
        return float(estimate(image))
    starts = lambda n: sorted({min(i, max(0, n - window)) for i in range(0, n, window)})  # noqa: E731
    tiles = np.stack([image[y : y + window, x : x + window]
                      for y in starts(h) for x in starts(w)])
    levels = estimate(tiles)
    levels = levels[levels > 0]
    return float(np.median(levels)) if levels.size else 0.0


def check_spec(spec: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A model's noise-level entry ({"estimator": ESTIMATOR, "scale": s, "window": px})
    checked; "window" (the training patch size) may be left out: the whole image."""
    if not isinstance(spec, Mapping) or spec.get("estimator") != ESTIMATOR:
        raise InputError(f"{where}: noise level estimator {dict(spec) if isinstance(spec, Mapping) else spec!r} "
                         f"is not one this scanside runs ({ESTIMATOR!r}); upgrade scanside")
    scale = spec.get("scale")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
        raise InputError(f"{where}: noise level scale {scale!r} is not a positive number")
    window = spec.get("window")
    if window is not None and (isinstance(window, bool) or not isinstance(window, int)
                               or window < BLOCK + 2):
        raise InputError(f"{where}: noise level window {window!r} is not a size in pixels "
                         f">= {BLOCK + 2}")
    return {"estimator": ESTIMATOR, "scale": float(scale),
            **({"window": window} if window is not None else {})}


def channel_value(pixels: np.ndarray, spec: Mapping[str, Any], factor: float = 1.0) -> float:
    """The value of a UNet's noise channel for prepared (1, C, H, W) pixels: the estimate
    (mean over the channels' estimates; on ``spec``'s windows when it has them) times its
    scale and ``factor``."""
    window = spec.get("window")
    levels = [estimate_windows(c, window) if window else float(estimate(c)) for c in pixels[0]]
    return float(np.mean(levels)) * spec["scale"] * factor
