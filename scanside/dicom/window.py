"""The intensity window: modality values (HU for CT) <-> the model's [0, 1] image.

Chosen explicitly (``--window CENTER,WIDTH``), else per modality (CT: [-1000, 1000] HU, wide
enough for lung and bone alike), else the file's VOI window, else the image's own range.
Values outside the window are never lost: ``restore`` puts the original value back wherever
the window clipped it, so an identity model reproduces every stored value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from pydicom.dataset import Dataset

from scanside.errors import InputError

# CT default: air (-1000 HU) to dense bone (+1000 HU) in one window, so lung, soft tissue and
# bone are all inside it; narrower windows are a display choice, not a model input.
DEFAULT_WINDOWS = {"CT": (0.0, 2000.0)}


@dataclass(frozen=True)
class Window:
    center: float
    width: float
    source: str  # "argument", "modality default", "file VOI", "image range"

    @property
    def low(self) -> float:
        return self.center - self.width / 2

    @property
    def high(self) -> float:
        return self.center + self.width / 2

    @classmethod
    def parse(cls, text: str, argument: str = "window") -> "Window":
        try:
            center, width = (float(v) for v in text.split(","))
        except ValueError:
            raise InputError(f"{argument}: {text!r} is not CENTER,WIDTH; e.g. {argument} 40,400") from None
        if not width > 0 or not np.isfinite(center):
            raise InputError(f"{argument}: width {width} must be > 0 (CENTER,WIDTH, e.g. 40,400)")
        return cls(center, width, "argument")

    def to_unit(self, values: np.ndarray) -> np.ndarray:
        """Modality values -> [0, 1] float32, clipped at the window's edges."""
        return np.clip((values - self.low) / self.width, 0, 1).astype(np.float32)

    def from_unit(self, unit: np.ndarray) -> np.ndarray:
        return self.low + unit.astype(np.float64) * self.width

    def restore(self, result: np.ndarray, original: np.ndarray) -> np.ndarray:
        """Keep the original value wherever the window had clipped it."""
        outside = (original < self.low) | (original > self.high)
        return np.where(outside, original, result)


def first_value(value) -> Optional[float]:
    """WindowCenter/Width may be multi-valued; the first is the primary window."""
    if value is None:
        return None
    try:
        return float(value[0]) if hasattr(value, "__len__") and not isinstance(value, str) else float(value)
    except (TypeError, ValueError, IndexError):
        return None


def file_window(ds: Dataset) -> Optional[tuple[float, float]]:
    """The file's own window (its first WindowCenter/Width), or None where it has no usable one."""
    center, width = first_value(ds.get("WindowCenter")), first_value(ds.get("WindowWidth"))
    return (center, width) if center is not None and width is not None and width > 0 else None


def choose(ds: Dataset, values: np.ndarray, explicit: Optional[Window]) -> Window:
    """The window for one image, by the precedence in the module docstring."""
    if explicit is not None:
        return explicit
    modality = str(ds.get("Modality", "")).upper()
    if modality in DEFAULT_WINDOWS:
        return Window(*DEFAULT_WINDOWS[modality], "modality default")
    own = file_window(ds)
    if own is not None:
        return Window(*own, "file VOI")
    lo, hi = float(values.min()), float(values.max())
    return Window((lo + hi) / 2, max(hi - lo, 1.0), "image range")
