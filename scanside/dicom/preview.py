"""PNG previews: source | result | difference, side by side, in the same window."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from scanside.files import atomic_path

from .window import Window


def panel(source: np.ndarray, result: np.ndarray, window: Window) -> np.ndarray:
    """(H, 3W) uint8: both images in ``window``; the difference at +-window/4 around gray."""
    diff = np.clip((result - source) / (window.width / 4) * 0.5 + 0.5, 0, 1)
    row = np.concatenate([window.to_unit(source), window.to_unit(result), diff], axis=1)
    return (row * 255).round().astype(np.uint8)


def write(path: Path, source: np.ndarray, derived: Dataset, window: Window,
          overwrite: bool = False) -> None:
    """``source``: the first frame's modality values; the result's first frame beside it."""
    from PIL import Image

    from .read import frame_values

    result = frame_values(derived, 0, path)
    image = panel(source, result, window)
    if str(derived.PhotometricInterpretation) == "MONOCHROME1":
        image[:, : 2 * source.shape[1]] = 255 - image[:, : 2 * source.shape[1]]
    with atomic_path(path, overwrite=overwrite) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
