"""The maps of an enhancement (scanside.runtime.maps) as DICOM a PACS keeps beside the
derived series.

For each enhanced instance, one instance in each of these series (their UIDs, like the
enhanced series', follow from the source's and the run's fingerprint, so a rerun writes the
same objects):

- ``uncertainty-pm``, ``change-pm``: Parametric Maps, float HU with the unit coded, each
  referencing its source instance (scanside/dicom/pmap.py);
- ``uncertainty``, ``change``: the same values as derived grayscale images of the source's own
  class and geometry, whole HU, windowed to the map, for viewers without Parametric Map
  support;
- ``change-seg``: the flagged-change mask as a DICOM SEG (binary, one segment).

Each object's ImageComments (the SEG's and PM's too: their SeriesDescription stays one
series-wide text) carry the slice's counts: flagged area (mm^2) and the mean uncertainty
over its soft tissue (-200..200 HU in the input). Values outside the input's window are not
measured by the model (they are kept from the source): the maps are 0 there.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
from pydicom.dataset import Dataset

from scanside.runtime.maps import Maps

from .read import to_stored
from .window import Window
from .write import Derivation, derive, derived_uid, series_number

KINDS = ("uncertainty-pm", "uncertainty", "change-pm", "change", "change-seg")
SOFT_TISSUE_HU = (-200.0, 200.0)
SERIES_OFFSET = {"uncertainty": 100, "uncertainty-pm": 200, "change": 300, "change-pm": 400,
                 "change-seg": 500}  # added to the enhanced series' number
CHANGE_LABEL = dict(
    name="changed structure",
    # No SNOMED CT concept says "where an algorithm changed the image"; a private scheme says
    # it plainly rather than borrowing a clinical code that would mean something else.
    category=("99SCANSIDE", "QA", "Image processing finding"),
    type=("99SCANSIDE", "CHANGED", "Structure changed by enhancement"))


@dataclass(frozen=True)
class FrameMaps:
    """One frame's maps in the modality's values (HU for CT)."""

    uncertainty: Optional[np.ndarray]
    change: Optional[np.ndarray]
    flagged: Optional[np.ndarray]
    counts: dict[str, Any]


def in_values(maps: Maps, window: Window, values: np.ndarray, inverted: bool,
              pixel_mm2: float) -> FrameMaps:
    """``maps`` (image units of the window) in modality values, and the frame's counts."""
    scale = np.float32(window.width)
    inside = (values > window.low) & (values < window.high)
    uncertainty = change = flagged = None
    counts: dict[str, Any] = {}
    if maps.uncertainty is not None:
        uncertainty = np.where(inside, maps.uncertainty * scale, 0.0).astype(np.float32)
        tissue = inside & (values > SOFT_TISSUE_HU[0]) & (values < SOFT_TISSUE_HU[1])
        counts["uncertainty_hu_mean"] = (round(float(uncertainty[tissue].mean()), 2)
                                         if tissue.any() else None)
        counts["views"] = maps.views
        counts["calibrated"] = bool(maps.calibration)
    if maps.change is not None:
        sign = np.float32(-1.0 if inverted else 1.0)  # the model saw MONOCHROME1 inverted
        change = np.where(inside, maps.change * scale * sign, 0.0).astype(np.float32)
        flagged = maps.flagged & inside
        area = float(flagged.sum() * pixel_mm2)  # NaN without Pixel Spacing: not reported
        counts["flagged_mm2"] = round(area, 1) if np.isfinite(area) else None
        counts["flagged_pixels"] = int(flagged.sum())
        counts["change_k"] = maps.k
    return FrameMaps(uncertainty, change, flagged, counts)


def counts_text(counts: dict[str, Any]) -> str:
    parts = []
    if counts.get("uncertainty_hu_mean") is not None:
        parts.append(f"mean uncertainty {counts['uncertainty_hu_mean']:g} HU in soft tissue "
                     f"({counts['views']} views{'' if counts['calibrated'] else ', uncalibrated'})")
    if "flagged_pixels" in counts:
        area = (f"{counts['flagged_mm2']:g} mm2" if counts.get("flagged_mm2") is not None
                else f"{counts['flagged_pixels']} pixels (no Pixel Spacing)")
        parts.append(f"changed structure flagged over {area} "
                     f"(change > {counts['change_k']:g} x local noise)")
    return "; ".join(parts)


def pixel_area_mm2(ds: Dataset) -> float:
    spacing = ds.get("PixelSpacing")
    try:
        return float(spacing[0]) * float(spacing[1])
    except (TypeError, ValueError, IndexError):
        return float("nan")


def kind_fingerprint(fingerprint: str, kind: str) -> str:
    """The run's fingerprint for one map series: its own UIDs, derived as the enhanced ones."""
    return hashlib.sha256(f"{fingerprint}|map {kind}".encode()).hexdigest() if fingerprint else ""


def map_series_uid(source: Dataset, fingerprint: str, kind: str) -> str:
    return derived_uid("series", str(source.get("SeriesInstanceUID", "")),
                       kind_fingerprint(fingerprint, kind))


def grayscale(source: Dataset, values: np.ndarray, kind: str, fingerprint: str,
              description: str, comments: str) -> Dataset:
    """A derived image of the source's class carrying a map in the source's stored values."""
    stored = to_stored(np.rint(values), source)
    ds = derive(source, stored, Derivation(
        f"{description}; {kind} map (HU)", map_series_uid(source, fingerprint, kind),
        series_number(source) + SERIES_OFFSET[kind], fingerprint=kind_fingerprint(fingerprint, kind)))
    ds.ImageType = ["DERIVED", "SECONDARY", kind.upper()]
    ds.SeriesDescription = f"scanside: {kind} map (HU)"
    ds.ImageComments = comments[:10240]
    for keyword in ("VOILUTSequence", "WindowCenterWidthExplanation"):
        if keyword in ds:
            delattr(ds, keyword)
    top = float(np.percentile(np.abs(values), 99.5)) if values.size else 1.0
    if kind == "uncertainty":
        ds.WindowCenter, ds.WindowWidth = round(max(top, 1.0) / 2, 1), round(max(top, 1.0), 1)
    else:
        ds.WindowCenter, ds.WindowWidth = 0, round(2 * max(top, 1.0), 1)
    return ds


def map_datasets(source: Dataset, frame: FrameMaps, fingerprint: str, model_name: str,
                 description: str) -> dict[str, Dataset]:
    """The map objects of one single-frame source instance, by KINDS name."""
    from scanside import __version__

    from . import pmap, seg

    comments = counts_text(frame.counts)
    out: dict[str, Dataset] = {}
    number = series_number(source)
    for kind, values in (("uncertainty", frame.uncertainty), ("change", frame.change)):
        if values is None:
            continue
        pm_kind = f"{kind}-pm"
        ds = pmap.parametric_map(
            [source], values[None], kind=kind,
            series_uid=map_series_uid(source, fingerprint, pm_kind),
            instance_uid=derived_uid("instance", str(source.SOPInstanceUID),
                                     kind_fingerprint(fingerprint, pm_kind)),
            series_number=number + SERIES_OFFSET[pm_kind],
            description=f"scanside: {kind} map (HU)", model_name=model_name)
        ds.ImageComments = comments[:10240]
        out[pm_kind] = ds
        out[kind] = grayscale(source, values, kind, fingerprint, description, comments)
    if frame.flagged is not None:
        label = seg.Label(1, CHANGE_LABEL["name"], CHANGE_LABEL["category"], CHANGE_LABEL["type"])
        ds = seg.segmentation(
            [source], frame.flagged[None, :, :, None], [label],
            series_uid=map_series_uid(source, fingerprint, "change-seg"),
            instance_uid=derived_uid("instance", str(source.SOPInstanceUID),
                                     kind_fingerprint(fingerprint, "change-seg")),
            series_number=number + SERIES_OFFSET["change-seg"],
            description="scanside: changed structure", model_name=model_name,
            algorithm_version=__version__)
        ds.ImageComments = comments[:10240]
        out["change-seg"] = ds
    return out
