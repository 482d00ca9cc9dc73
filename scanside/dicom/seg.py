"""Model masks as a DICOM Segmentation (PS3.3 A.51), BINARY or FRACTIONAL (probability).

A SEG is what viewers, PACS and the SR's region references understand as "these pixels of
these images are a lesion (candidate)", with coded meaning per segment and the algorithm
that drew it; highdicom builds the IOD. A SEG covers one Frame of Reference, so a study's
images are grouped first (``by_frame_of_reference``) and one SEG is written per group.

Every source slice gets its frames, also where the mask is empty (``omit_empty_frames`` off):
a slice that was analysed and holds no finding then reads "analysed, empty" rather than
"absent", the mask reads back one frame per source, and a SEG with no positive pixel at all
is an ordinary valid object (highdicom would otherwise fall back to the same, with a warning).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from highdicom import AlgorithmIdentificationSequence
from highdicom.seg import (
    Segmentation, SegmentAlgorithmTypeValues, SegmentationFractionalTypeValues,
    SegmentationTypeValues, SegmentDescription,
)
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from scanside import __version__
from scanside.errors import InputError

from .pmap import (
    MANUFACTURER, carry_over, check_frames, check_sources, describe_derivation, hushed,
    long_string, processing_equipment,
)

# CID 7162 "Surface Processing Algorithm Families": DCM 123110 "Artificial Intelligence" is
# the family for a trained model (DCM 113037, sometimes quoted for this, is "Rejected for
# Patient Safety Reasons").
ALGORITHM_FAMILY = codes.cid7162.ArtificialIntelligence


@dataclass(frozen=True)
class Label:
    """One segment: its number (1..S, the index into the masks' last axis plus one), a
    name, and coded category and type as (scheme, value, meaning)."""

    number: int
    name: str
    category: tuple[str, str, str]  # e.g. ("SCT", "49755003", "Morphologically abnormal structure")
    type: tuple[str, str, str]  # e.g. ("SCT", "52988006", "Lesion")


def by_frame_of_reference(sources: Sequence[Dataset]) -> list[list[int]]:
    """Indices of ``sources`` grouped by Frame of Reference UID, groups in order of first
    appearance and indices in order within each: one SEG per group. Sources without a Frame
    of Reference form one group of their own (``segmentation`` refuses it)."""
    groups: dict[str, list[int]] = {}
    for index, source in enumerate(sources):
        groups.setdefault(str(source.get("FrameOfReferenceUID", "") or ""), []).append(index)
    return list(groups.values())


def coded(triple: tuple[str, str, str], what: str) -> Code:
    try:
        scheme, value, meaning = (str(part) for part in triple)
    except (TypeError, ValueError):
        raise InputError(f"{what}: expected (scheme, value, meaning), got {len(triple)} "
                         "parts") from None
    if not (scheme and value and meaning):
        raise InputError(f"{what}: scheme, value and meaning must all be given")
    return Code(value, scheme, meaning)


def checked_masks(masks: np.ndarray, fractional: bool) -> np.ndarray:
    """BINARY: bool (or integers 0/1) as uint8. FRACTIONAL: probabilities in [0, 1] (bool
    allowed too), as float32; highdicom scales them to 0..255."""
    masks = np.asarray(masks)
    if masks.dtype == bool:
        return masks.astype(np.uint8)
    if masks.dtype.kind in "iu" and not fractional:
        if masks.size and (masks.min() < 0 or masks.max() > 1):
            raise InputError(f"segmentation: integer masks hold values "
                             f"{int(masks.min())}..{int(masks.max())}; a BINARY mask holds "
                             "0 and 1 (or pass bool)")
        return masks.astype(np.uint8)
    if masks.dtype.kind == "f" and fractional:
        if not np.isfinite(masks).all():
            raise InputError("segmentation: fractional masks hold NaN or infinite values; "
                             "probabilities are in [0, 1]")
        if masks.size and (masks.min() < 0 or masks.max() > 1):
            raise InputError(f"segmentation: fractional masks range {float(masks.min()):.3g}"
                             f"..{float(masks.max()):.3g}; probabilities are in [0, 1]")
        return masks.astype(np.float32, copy=False)
    expected = "float probabilities in [0, 1]" if fractional else "bool"
    raise InputError(f"segmentation: masks have dtype {masks.dtype}, expected {expected} "
                     f"for a {'FRACTIONAL' if fractional else 'BINARY'} SEG")


def segmentation(sources: Sequence[Dataset], masks: np.ndarray, labels: Sequence[Label], *,
                 series_uid: str, instance_uid: str, series_number: int, description: str,
                 model_name: str, algorithm_version: str, fractional: bool = False) -> Dataset:
    """``masks`` ((F, H, W, S): one frame per single-frame source of one series and Frame of
    Reference, one segment per label) as a SEG written by an AUTOMATIC algorithm
    (``model_name`` ``algorithm_version``): BINARY from bool masks, FRACTIONAL (PROBABILITY)
    from float masks when ``fractional``. UIDs come from the caller (deterministic)."""
    what = "segmentation"
    if len(sources) and len(by_frame_of_reference(sources)) > 1:
        raise InputError(f"{what}: the {len(sources)} sources span "
                         f"{len(by_frame_of_reference(sources))} Frames of Reference; a SEG "
                         "covers one: group them with scanside.dicom.seg.by_frame_of_reference "
                         "and write one SEG per group")
    check_sources(sources, what)
    if not labels:
        raise InputError(f"{what}: no labels; pass one Label per segment")
    numbers = [int(label.number) for label in labels]
    if numbers != list(range(1, len(labels) + 1)):
        raise InputError(f"{what}: label numbers {numbers}; segments are numbered 1..S in "
                         "the order of the masks' last axis")
    masks = np.asarray(masks)
    check_frames(masks, sources, what, 4)
    if masks.shape[3] != len(labels):
        raise InputError(f"{what}: masks have {masks.shape[3]} segments (last axis), "
                         f"{len(labels)} labels were given; they must match")
    pixels = checked_masks(masks, fractional)
    algorithm = AlgorithmIdentificationSequence(
        name=long_string(model_name), family=ALGORITHM_FAMILY,
        version=long_string(algorithm_version), source=MANUFACTURER)
    descriptions = [
        SegmentDescription(
            segment_number=label.number, segment_label=long_string(label.name),
            segmented_property_category=coded(label.category, f"label {label.number} category"),
            segmented_property_type=coded(label.type, f"label {label.number} type"),
            algorithm_type=SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm)
        for label in labels]
    text = long_string(description)
    with hushed(what):
        seg = Segmentation(
            source_images=list(sources), pixel_array=pixels,
            segmentation_type=(SegmentationTypeValues.FRACTIONAL if fractional
                               else SegmentationTypeValues.BINARY),
            segment_descriptions=descriptions,
            series_instance_uid=series_uid, series_number=int(series_number),
            sop_instance_uid=instance_uid, instance_number=1,
            manufacturer=MANUFACTURER, manufacturer_model_name=long_string(model_name),
            software_versions=__version__,
            device_serial_number=__version__,  # type 1; software has no serial (as pmap)
            fractional_type=SegmentationFractionalTypeValues.PROBABILITY,
            max_fractional_value=255,
            content_description=text,
            omit_empty_frames=False,  # see the module docstring
            contributing_equipment=[processing_equipment(model_name, description)],
            series_description=text)
    describe_derivation(seg, description)
    # No Laterality: for a SEG dicom3tools' condition wants it absent, not empty, unless the
    # body part is paired, which scanside does not know.
    carry_over(seg, sources, laterality=False)
    return seg
