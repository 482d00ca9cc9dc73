"""PNG previews: source | result | difference, side by side, in the same window."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut

from scanside.files import atomic_path

from .window import Window


def panel(source: np.ndarray, result: np.ndarray, window: Window) -> np.ndarray:
    """(H, 3W) uint8: both images in ``window``; the difference at +-window/4 around gray."""
    diff = np.clip((result - source) / (window.width / 4) * 0.5 + 0.5, 0, 1)
    row = np.concatenate([window.to_unit(source), window.to_unit(result), diff], axis=1)
    return (row * 255).round().astype(np.uint8)


def write(path: Path, source: np.ndarray, derived: Dataset, window: Window) -> None:
    from PIL import Image

    result = np.asarray(apply_modality_lut(derived.pixel_array, derived), dtype=np.float64)
    result = result.reshape(-1, *source.shape)[0]  # first frame, (H, W)
    image = panel(source, result, window)
    if str(derived.PhotometricInterpretation) == "MONOCHROME1":
        image[:, : 2 * source.shape[1]] = 255 - image[:, : 2 * source.shape[1]]
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
