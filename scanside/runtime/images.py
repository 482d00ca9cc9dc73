"""Images at the runtime's edge: validation, [0, 1] <-> [-1, 1], padding to the engine size.

An image is (H, W) grayscale or (H, W, C) with C = 1 or the model's channel count. Floats are
taken as [0, 1]; uint8 and uint16 are scaled by their maximum. Grayscale images are repeated
into a colour VAE's channels and its output averaged back, so the caller gets the shape it gave.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from scanside.errors import InputError

INTEGER_SCALES = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


@dataclass(frozen=True)
class Prepared:
    pixels: np.ndarray  # (1, C, H', W') float32 in [-1, 1], padded
    height: int  # the caller's size, to crop back to
    width: int
    gray: bool  # the caller gave one channel


def to_unit_float(image: np.ndarray, argument: str) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise InputError(f"{argument}: expected a numpy array, got {type(image).__name__}")
    if image.dtype in INTEGER_SCALES:
        return image.astype(np.float32) / np.float32(INTEGER_SCALES[image.dtype])
    if image.dtype.kind != "f":
        raise InputError(
            f"{argument}: dtype {image.dtype} is not supported; give float values in [0, 1] "
            "or uint8/uint16 pixels"
        )
    image = image.astype(np.float32)
    if not np.isfinite(image).all():
        raise InputError(f"{argument}: contains NaN or infinity; clean the image first")
    lo, hi = float(image.min()), float(image.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise InputError(
            f"{argument}: float values span [{lo:.4g}, {hi:.4g}], expected [0, 1]; "
            "scale it to [0, 1] first (or give uint8/uint16 pixels)"
        )
    return np.clip(image, 0, 1)


def padded_size(height: int, width: int, min_hw: tuple[int, int], divisor: int):
    """The size an image runs at: the next multiple of the engine's divisor, and at least the
    engine's smallest size (a static engine's own size)."""
    up = lambda n: -(-n // divisor) * divisor  # noqa: E731
    return max(up(height), min_hw[0]), max(up(width), min_hw[1])


def prepare(image: np.ndarray, channels: int, min_hw: tuple[int, int], divisor: int,
            argument: str = "image") -> Prepared:
    """Validate ``image`` and lay it out as the VAE encoder's input: mirrored (edge row
    repeated) out to ``padded_size`` (an image larger than the engine is then run in tiles)."""
    if not isinstance(image, np.ndarray) or image.ndim not in (2, 3):
        shape = getattr(image, "shape", None)
        raise InputError(f"{argument}: shape {shape} is not (H, W) or (H, W, C); "
                         "give a 2-D grayscale or an H x W x C array")
    if image.ndim == 3 and image.shape[2] not in (1, channels):
        raise InputError(f"{argument}: {image.shape[2]} channels, the model takes 1 or {channels}")
    h, w = image.shape[:2]
    if min(h, w) < 8:
        raise InputError(f"{argument}: {h}x{w} pixels; images need at least 8x8")
    target_h, target_w = padded_size(h, w, min_hw, divisor)
    pixels = to_unit_float(image, argument)
    gray = pixels.ndim == 2 or pixels.shape[2] == 1
    pixels = pixels.reshape(h, w, -1)  # (H, W, C')
    pad = ((0, target_h - h), (0, target_w - w), (0, 0))
    # A mirror keeps the border's statistics (no black frame for the model to "enhance").
    # Symmetric (edge row repeated), not reflect (edge row as the mirror's axis): reflection
    # turns an edge row that differs from its neighbour into an unpaired ridge, and on
    # CT_small (whose last row is darker) 3 px of it cost the built-in model 1.5 dB over the
    # whole slice at 40 HU; on crops of the validation anatomy symmetric is 0.06-0.16 dB ahead.
    pixels = np.pad(pixels, pad, mode="symmetric")
    if gray:
        pixels = np.repeat(pixels, channels, axis=2)
    chw = pixels.transpose(2, 0, 1)[None]  # (1, C, H', W')
    return Prepared((chw * 2 - 1).astype(np.float32), h, w, gray)


def finish(decoded: np.ndarray, height: int, width: int, gray: bool) -> np.ndarray:
    """(1, C, H', W') decoder output in [-1, 1] -> (H, W) if ``gray`` else (H, W, C), [0, 1]."""
    image = np.clip(decoded[0] / 2 + 0.5, 0, 1)  # (C, H', W')
    image = image[:, :height, :width].transpose(1, 2, 0)  # (H, W, C)
    return image.mean(axis=2) if gray else image



# Geometric self-ensemble: the views of the image enhanced and averaged (after turning each
# back). 2: a mirror; 4: the shape-preserving rotations/flips; 8: all of them (square only).
ENSEMBLE_VIEWS = {1: (0,), 2: (0, 4), 4: (0, 2, 4, 6), 8: tuple(range(8))}


def dihedral(images: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 rotations/flips of (..., H, W): k % 4 quarter turns, mirrored if k >= 4."""
    out = np.rot90(images, k % 4, axes=(-2, -1))
    return np.ascontiguousarray(out[..., ::-1] if k >= 4 else out)


def undo_dihedral(images: np.ndarray, k: int) -> np.ndarray:
    """The inverse of ``dihedral(images, k)``."""
    out = images[..., ::-1] if k >= 4 else images
    return np.ascontiguousarray(np.rot90(out, -(k % 4), axes=(-2, -1)))


def ensemble_views(ensemble: int) -> tuple[int, ...]:
    """The dihedral views an ``ensemble`` of that many averages. Quarter turns of a non-square
    image change its shape: a dynamic or square engine takes it like any other size."""
    whole = isinstance(ensemble, (int, np.integer)) and not isinstance(ensemble, bool)
    if not whole or ensemble not in ENSEMBLE_VIEWS:
        allowed = ", ".join(map(str, ENSEMBLE_VIEWS))
        raise InputError(f"ensemble: {ensemble!r} is not one of {allowed} (the number of "
                         "rotated/mirrored views averaged; 1 turns it off)")
    return ENSEMBLE_VIEWS[ensemble]


SHORT_KERNEL = 32  # taps: up to this many, shifted sums beat an FFT at 512 px (measured)


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """(H, W) or (H, W, C) blurred over H and W by a Gaussian of ``sigma`` px (reflected at
    the edges, 3 sigma wide): numpy only, for the runtime."""
    radius = max(1, int(np.ceil(3 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps = (taps / taps.sum()).astype(np.float32)
    out = image.astype(np.float32)
    for axis in (0, 1):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        out = convolve_valid(np.pad(out, pad, mode="symmetric"), taps, axis)
    return out


def convolve_valid(x: np.ndarray, taps: np.ndarray, axis: int) -> np.ndarray:
    """np.convolve(..., mode="valid") of every line of ``x`` along ``axis`` (symmetric
    ``taps``), on whole arrays: shifted sums for short kernels, one FFT for long ones (a
    Python loop over the lines took 40-70 ms at 512 px); float32."""
    n, m = x.shape[axis], len(taps)

    def lines(a: np.ndarray, start: int) -> np.ndarray:  # a view along axis
        index = [slice(None)] * a.ndim
        index[axis] = slice(start, start + n - m + 1)
        return a[tuple(index)]

    if m <= SHORT_KERNEL:
        out = taps[0] * lines(x, 0)
        for k in range(1, m):
            out += taps[k] * lines(x, k)
        return out.astype(np.float32, copy=False)
    size = 1 << (n + m - 2).bit_length()  # >= the full linear convolution: no wrap-around
    shape = [1] * x.ndim
    shape[axis] = -1
    spectrum = np.fft.rfft(x, size, axis=axis) * np.fft.rfft(taps, size).reshape(shape)
    return lines(np.fft.irfft(spectrum, size, axis=axis), m - 1).astype(np.float32)


# An output this close to an edge of [0, 1] is at the edge of the window the image was
# mapped through (air below a CT window, dense bone or metal above it).
SATURATED = 0.005


def keep_low_frequencies(output: np.ndarray, source: np.ndarray, sigma: float,
                         upto: Optional[float] = None) -> np.ndarray:
    """Data consistency: ``output`` with its content coarser than ``sigma`` px replaced by
    ``source``'s, so large-scale means (HU of a flat organ) stay the input's; [0, 1]. With
    ``upto``, only the content between ``sigma`` and ``upto`` px is replaced (a difference of
    Gaussians): the output keeps its own coarser content, e.g. a model's correction of the
    low-dose scan's large-scale bias, while faint structure of lesion size is the input's.

    Where the output is at the window's edge the input was clipped to the window, so its local
    mean there is biased inwards (the noise beyond the edge was cut off: air under 40 HU of
    noise reads ~15 HU above -1000). Those pixels keep the model's value and lend no residual
    to their neighbours; with them counted, consistency cost the held-out anatomy 0.7-1.4 dB
    more (2 px, run 20)."""
    edge = (output <= SATURATED) | (output >= 1.0 - SATURATED)
    residual = np.where(edge, 0.0, source - output)
    band = gaussian_blur(residual, sigma)
    if upto is not None:
        band -= gaussian_blur(residual, upto)
    out = np.where(edge, output, output + band)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def per_pixel_affine(weight: "np.ndarray | list", bias: "np.ndarray | list",
                     x: np.ndarray) -> np.ndarray:
    """(B, in, H, W) -> (B, out, H, W): ``weight`` (out, in) @ x + ``bias`` at every pixel
    (a pixel-space model's VAE, measured at export: scanside/export/affine.py)."""
    w = np.asarray(weight, np.float32)
    out = np.einsum("oi,bihw->bohw", w, x.astype(np.float32, copy=False), optimize=True)
    return out + np.asarray(bias, np.float32)[None, :, None, None]
