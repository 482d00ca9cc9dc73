"""Calibration data drawn from the real workload, for static int8 quantisation.

Images come from a folder the user gives (PNG or DICOM, windowed as ``scanside enhance``
would); their latents are noised across the whole timestep range the sampler visits and
paired with the real prompt embeddings, so every activation range the UNet meets in use is
seen. Synthetic phantoms are used only when asked for, and the manifest says so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from scanside.errors import InputError
from scanside.runtime import images
from scanside.runtime.schedulers import make_plan
from scanside.runtime.schedulers.lcm import guidance_embedding

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".png",)


@dataclass(frozen=True)
class Calibration:
    images: list[np.ndarray]  # (1, C, H, W) in [-1, 1], the engine's size
    source: str  # the folder, or "synthetic phantoms"
    held_out: np.ndarray  # (H, W) [0, 1] image kept out of calibration, for the final PSNR


def center_fit(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Crop an image larger than the engine to its centre; smaller ones are padded later."""
    h, w = image.shape[:2]
    top, left = max((h - height) // 2, 0), max((w - width) // 2, 0)
    return image[top: top + min(h, height), left: left + min(w, width)]


def read_folder(path: Path) -> list[np.ndarray]:
    """[0, 1] grayscale images from PNG files and DICOM files (CT in the default window)."""
    from scanside.dicom.read import collect, read_values
    from scanside.dicom.window import choose
    from scanside.files import read_image

    files = sorted(p for p in (path.rglob("*") if path.is_dir() else [path]) if p.is_file())
    out = []
    for png in (p for p in files if p.suffix.lower() in IMAGE_SUFFIXES):
        image = images.to_unit_float(read_image(png), str(png))
        out.append(image.mean(axis=2) if image.ndim == 3 else image)
    others = [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES + (".npy",)]
    collected = collect(others) if others else None
    for series in collected.series if collected else []:
        for instance in series.instances:
            ds, values = read_values(instance)
            for frame in values:
                unit = choose(ds, frame, None).to_unit(frame)
                out.append(1 - unit if str(ds.PhotometricInterpretation) == "MONOCHROME1" else unit)
    if collected and collected.failures:
        log.warning("calibration: %d file(s) skipped (not usable images)", len(collected.failures))
    return out


def phantom(size: int = 64, seed: int = 0) -> np.ndarray:
    """A CT-like test image in [0, 1]: body ellipse, two lungs, a bright spine, noise. Cheap
    and dependency-free (no Radon transform), for calibration and held-out checks on demand."""
    y, x = (np.mgrid[0:size, 0:size] + 0.5) / size * 2 - 1
    image = np.where((x / 0.9) ** 2 + (y / 0.7) ** 2 < 1, 0.55, 0.0)
    for cx in (-0.4, 0.4):
        image = np.where(((x - cx) / 0.28) ** 2 + (y / 0.45) ** 2 < 1, 0.15, image)
    image = np.where(x**2 + (y - 0.45) ** 2 < 0.12**2, 0.95, image)
    noisy = image + 0.06 * np.random.default_rng(seed).standard_normal(image.shape)
    return np.clip(noisy, 0, 1).astype(np.float32)


def synthetic(count: int, size: int) -> list[np.ndarray]:
    return [phantom(size, seed=seed) for seed in range(count)]


def gather(path: Optional[Path], synthetic_ok: bool, height: int, width: int, channels: int,
           factor: int, limit: int = 9) -> Calibration:
    if path is None and not synthetic_ok:
        raise InputError(
            "--precision int8 needs calibration images from the real workload: give a folder "
            "of PNG or DICOM images with --calibration PATH (a few typical scans are enough), "
            "or pass --synthetic-calibration to calibrate on synthetic phantoms (labelled so "
            "in the manifest)")
    if path is not None:
        if not path.exists():
            raise InputError(f"calibration: {path} does not exist; give a folder of PNG or DICOM images")
        found, source = read_folder(path), str(path)
    else:
        found, source = synthetic(limit, max(height, width)), "synthetic phantoms"
    if len(found) < 2:
        raise InputError(f"calibration: {path} holds {len(found)} usable image(s); give at "
                         "least 2 (one is held out to measure the final image's accuracy)")
    found = [center_fit(im, height, width) for im in found[:limit]]
    prepared = [images.prepare(im, channels, (height, width), factor, "calibration image").pixels
                for im in found[:-1]]
    return Calibration(prepared, source, found[-1])


def unet_feeds(latents: Sequence[np.ndarray], embeddings: Sequence[np.ndarray],
               scheduler_config: Mapping, condition: Optional[Sequence[np.ndarray]],
               per_image: int = 4, seed: int = 0,
               guidance_dim: int = 0) -> list[dict[str, np.ndarray]]:
    """Noisy latents at timesteps spread over the whole range, with each prompt embedding
    (and, for an LCM-distilled UNet, guidance embeddings over the usual 1-9 range)."""
    ac = make_plan("ddim", scheduler_config, 20).tables["ac"]
    rng = np.random.default_rng(seed)
    feeds = []
    for k, x0 in enumerate(latents):  # (1, 4, h, w), scaled by the VAE factor
        for t in np.linspace(0, len(ac) - 1, per_image).round().astype(int):
            eps = rng.standard_normal(x0.shape, dtype=np.float32)
            noisy = (ac[t] ** 0.5 * x0 + (1 - ac[t]) ** 0.5 * eps).astype(np.float32)
            sample = noisy if condition is None else np.concatenate([noisy, condition[k]], axis=1)
            text = embeddings[(k + t) % len(embeddings)]
            feed = {"sample": sample, "timestep": np.array([t], np.float32),
                    "encoder_hidden_states": text}
            if guidance_dim:
                feed["timestep_cond"] = guidance_embedding(1.0 + 8.0 * rng.random(), guidance_dim)
            feeds.append(feed)
    return feeds
