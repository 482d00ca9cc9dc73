"""A VAE that is an affine map of each pixel, found at export and run as one in numpy.

Pixel-space models (scanside's built-in CT model: vae_factor 1, identity_vae.py) still carry an
AutoencoderKL so that every engine has the same four components, but their VAE computes
latent = W x + b at every pixel, and back. Run as a graph it is not free: at 512 px the
built-in model's encode + decode took 0.11 s of a 0.65 s slice (2-core AMD EPYC), and its
GroupNorm statistics are recomputed at every pixel only to cancel out. Run as the affine map it
is, it costs a few milliseconds and agrees with the torch module to 1.5e-4 (0.15 HU in the
default CT window).

Nothing is assumed from the model's name or config: the map is measured on the torch module
(zero and one-hot probes), then checked against torch on held-out random images and latents,
wider than the data range, with the same tolerance as every ONNX graph's parity check. Any
spatial mixing, non-linearity or image-dependent posterior fails the check and the VAE runs as
its ONNX graphs as before. The ONNX files are exported either way (other tools read them).
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from scanside.runtime.images import per_pixel_affine as apply

from .onnx import FP32_TOLERANCE

PROBE_SIZE = 64  # pixels: wider than any per-pixel VAE's receptive field needs, cheap in torch


def _run(module: torch.nn.Module, x: np.ndarray) -> list[np.ndarray]:
    with torch.inference_mode():
        out = module(torch.from_numpy(x))
    return [o.float().numpy() for o in (out if isinstance(out, tuple) else (out,))]


def _fit(module: torch.nn.Module, channels: int,
         size: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """(weight (out, in), bias (out,)) of the module's first output, from its central pixel on
    a zero input and on one-hot constant inputs; and every output of the zero input."""
    zero = np.zeros((1, channels, size, size), np.float32)
    at_zero = _run(module, zero)
    base = at_zero[0][0, :, size // 2, size // 2]
    columns = []
    for c in range(channels):
        probe = zero.copy()
        probe[:, c] = 1.0
        columns.append(_run(module, probe)[0][0, :, size // 2, size // 2] - base)
    return np.stack(columns, axis=1).astype(np.float32), base.astype(np.float32), at_zero


def _worst(outputs: list[np.ndarray], predicted: list[np.ndarray]) -> tuple[float, float]:
    """(max abs difference, the parity tolerance for these outputs' scale)."""
    diff = max(float(np.abs(o - p).max()) for o, p in zip(outputs, predicted))
    scale = max(1.0, max(float(np.abs(o).max()) for o in outputs))
    return diff, FP32_TOLERANCE * scale


def measure(encoder: torch.nn.Module, decoder: torch.nn.Module, image_channels: int,
            latent_channels: int, vae_factor: int, seed: int = 0,
            size: int = PROBE_SIZE) -> Optional[dict[str, Any]]:
    """The manifest's ``vae_affine`` entry when ``encoder`` (image -> mean, std) and
    ``decoder`` (latent -> image), the export's wrapped modules, are per-pixel affine maps
    within the parity tolerance; else None."""
    if vae_factor != 1:
        return None  # a down-sampling VAE mixes pixels by construction
    rng = np.random.default_rng(seed)
    w_enc, b_enc, at_zero = _fit(encoder, image_channels, size)
    std = at_zero[1][0, :, 0, 0]
    w_dec, b_dec, _ = _fit(decoder, latent_channels, size)
    # Held out: noise and a ramp over 1.5x the [-1, 1] pixel range the pipeline feeds.
    ramp = np.linspace(-1.5, 1.5, size, dtype=np.float32)[None, None, :, None]
    images = np.concatenate([rng.uniform(-1.5, 1.5, (2, image_channels, size, size)),
                             np.broadcast_to(ramp, (1, image_channels, size, size))]).astype(np.float32)
    mean, got_std = _run(encoder, images)
    enc_diff, enc_tol = _worst([mean, got_std], [apply(w_enc, b_enc, images),
                                                 np.broadcast_to(std[None, :, None, None], got_std.shape)])
    # Decoder inputs: the encoded images and the same with the UNet's noise added.
    latents = np.concatenate([mean, mean + rng.standard_normal(mean.shape).astype(np.float32)])
    decoded = _run(decoder, latents)[0]
    dec_diff, dec_tol = _worst([decoded], [apply(w_dec, b_dec, latents)])
    if not (enc_diff <= enc_tol and dec_diff <= dec_tol):
        return None
    return {"encode": {"weight": w_enc.tolist(), "bias": b_enc.tolist(), "std": std.tolist()},
            "decode": {"weight": w_dec.tolist(), "bias": b_dec.tolist()},
            "parity": {"max_abs_diff": max(enc_diff, dec_diff), "tolerance": min(enc_tol, dec_tol),
                       "reference": "torch, held-out random images and latents"}}
