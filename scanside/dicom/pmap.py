"""Per-pixel model outputs (uncertainty, change) as a DICOM Parametric Map (PS3.3 A.75).

A viewer or PACS shows a Parametric Map over its source CT with real values in Hounsfield
units, and knows from its header that it is derived data, what it measures and which images
it came from; a Secondary Capture would show a picture of the same numbers and say none of
that. highdicom builds the IOD (functional groups, plane positions from the sources, float
pixel data); this module validates the input first, so a bad array or a mixed series is an
``InputError`` that names the problem, and adds what scanside states on every derived object:
who made it (Contributing Equipment) and how (Derivation Description).

Also the helpers the SEG and SR writers share: text that fits its VR, the scanside
equipment item, the private coding scheme, and keeping highdicom's and pydicom's log
records (which may quote UIDs or names) out of the logs.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
from highdicom import ContributingEquipment, VOILUTTransformation
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.pm import DerivedPixelContrastValues, ParametricMap, RealWorldValueMapping
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from scanside import __version__
from scanside.dicom.parse import quiet
from scanside.errors import InputError

MANUFACTURER = "scanside"
# Private codes (PS3.16 8.2: a designator starting "99" is a private scheme), declared in each
# object's Coding Scheme Identification Sequence so a reader can tell where they come from.
PRIVATE_SCHEME = "99SCANSIDE"
KINDS = ("uncertainty", "change")
HU = codes.UCUM.HounsfieldUnit  # [hnsf'U] "Hounsfield unit"
# What each map's values are. "uncertainty": DCM 113061 "Standard Deviation", a standard code
# that says exactly what the value is (the spread of the model's predictions; the LUT
# Explanation says of what). "change": no standard concept means "result minus input of an
# image-processing step" (CID 7180's "Signal Change" is MR signal, SCT "Difference in
# attenuation" a qualitative finding), so a private code; the standard derivation code
# "Pixel by pixel subtraction" (CID 7203) says how each frame was made.
QUANTITY = {
    "uncertainty": codes.DCM.StandardDeviation,
    "change": Code("ENHMINUSIN", PRIVATE_SCHEME, "Enhanced minus input"),
}
EXPLANATION = {
    "uncertainty": "Model uncertainty (standard deviation, HU)",
    "change": "Enhanced minus input",
}
# Image Type value 4 (Derived Pixel Contrast, PS3.3 C.8.32.3.1): the defined term for the
# operation, rather than highdicom's generic QUANTITY.
CONTRAST = {
    "uncertainty": DerivedPixelContrastValues.STD_DEVIATION,
    "change": DerivedPixelContrastValues.SUBTRACTION,
}
DERIVATION = {
    "uncertainty": codes.DCM.UnspecifiedMethodOfCalculation,  # CID 7203 has no "spread"
    "change": codes.DCM.PixelByPixelSubtraction,
}
UID_LIKE = re.compile(r"\d+(?:\.\d+){3,}")


def long_string(text: str, limit: int = 64) -> str:
    """``text`` as a valid LO (or SH, with ``limit`` 16) value: no backslash (the value
    separator) or control characters, at most ``limit`` characters, no trailing blank."""
    clean = "".join(" " if c == "\\" or not c.isprintable() else c for c in str(text))
    return clean.strip()[:limit].rstrip()


def private_scheme() -> CodingSchemeIdentificationItem:
    return CodingSchemeIdentificationItem(
        designator=PRIVATE_SCHEME, name="scanside private codes",
        responsible_organization="scanside")


def processing_equipment(model_name: str, description: str) -> ContributingEquipment:
    """scanside as the Processing Equipment that made the object (as write.equipment_item
    does for derived images, in highdicom's type, which its constructors require)."""
    if not long_string(model_name):
        raise InputError("model name is empty; the object must name the model that made it")
    return ContributingEquipment(
        manufacturer=MANUFACTURER,
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=long_string(model_name),
        software_versions=__version__,
        contribution_datetime=datetime.datetime.now(),
        contribution_description=long_string(description))


def scrubbed(exc: BaseException) -> str:
    """An exception's text without UIDs: highdicom's messages may quote the source's."""
    return UID_LIKE.sub("<uid>", str(exc))[:300]


@contextmanager
def hushed(what: str) -> Iterator[None]:
    """Build inside: no library log record or warning escapes, and highdicom's refusal
    (ValueError) becomes an InputError that names ``what`` and quotes no UID."""
    with quiet():  # pydicom's and highdicom's log records and warnings
        try:
            yield
        except InputError:
            raise
        except ValueError as exc:
            raise InputError(f"{what}: highdicom refused the input: {scrubbed(exc)}") from None


def check_sources(sources: Sequence[Dataset], what: str) -> None:
    """The sources a multi-frame derived image may cover: single-frame images of one series
    (highdicom's rule), one Frame of Reference and one size."""
    if len(sources) == 0:
        raise InputError(f"{what}: no source images; pass the images the frames came from")
    frames = [int(s.get("NumberOfFrames", 1) or 1) for s in sources]
    if any(f > 1 for f in frames):
        raise InputError(f"{what}: a source is a multi-frame image ({max(frames)} frames); "
                         "pass single-frame images, one per frame")
    for keyword, meaning in (("StudyInstanceUID", "studies"), ("SeriesInstanceUID", "series"),
                             ("FrameOfReferenceUID", "Frames of Reference")):
        found = {str(s.get(keyword, "") or "") for s in sources}
        if "" in found:
            raise InputError(f"{what}: a source has no {keyword}; the derived object needs "
                             "it to be placed on its source")
        if len(found) > 1:
            raise InputError(f"{what}: the {len(sources)} sources come from {len(found)} "
                             f"{meaning}; one object covers one: split the sources "
                             "(scanside.dicom.seg.by_frame_of_reference groups them)")
    sizes = {(int(s.Rows), int(s.Columns)) for s in sources}
    if len(sizes) > 1:
        raise InputError(f"{what}: the sources have {len(sizes)} different sizes "
                         f"{sorted(sizes)}; they must all be the same")


def check_frames(array: np.ndarray, sources: Sequence[Dataset], what: str, ndim: int) -> None:
    """``array`` has one frame per source, of the sources' size."""
    size = (int(sources[0].Rows), int(sources[0].Columns))
    if array.ndim != ndim or array.shape[0] != len(sources) or tuple(array.shape[1:3]) != size:
        shape = "(F, H, W)" if ndim == 3 else "(F, H, W, S)"
        raise InputError(f"{what}: array shape {tuple(array.shape)}, expected {shape} with "
                         f"F = {len(sources)} (one frame per source) and H, W = {size}")


def describe_derivation(ds: Dataset, description: str) -> None:
    """The Derivation Description (ST) in every Derivation Image item highdicom wrote: the
    description text next to the coded derivation and the source reference."""
    text = description[:1024]
    for groups in (ds.get("SharedFunctionalGroupsSequence", []),
                   ds.get("PerFrameFunctionalGroupsSequence", [])):
        for group in groups:
            for item in group.get("DerivationImageSequence", []):
                item.DerivationDescription = text


def carry_over(ds: Dataset, sources: Sequence[Dataset], laterality: bool = True) -> None:
    """What the derived series shares with its source series that highdicom does not copy:
    Laterality (General Series, type 2C: the same body part, so the same value; empty where
    the source has none) and Synthetic Data (0008,001C: data derived from a simulated scan is
    simulated too). An SR's series (SR Document Series) has no Laterality."""
    if laterality:
        ds.Laterality = str(sources[0].get("Laterality", "") or "")
    if any(str(s.get("SyntheticData", "")).upper() == "YES" for s in sources):
        ds.SyntheticData = "YES"


def parametric_map(sources: Sequence[Dataset], values: np.ndarray, *, kind: str,
                   series_uid: str, instance_uid: str, series_number: int,
                   description: str, model_name: str) -> Dataset:
    """``values`` ((F, H, W), HU, one frame per single-frame source of one series and Frame
    of Reference, in the sources' order) as a float Parametric Map of ``kind``
    ("uncertainty" or "change"), referencing every source; UIDs come from the caller
    (deterministic), none is generated here. highdicom stores the frames in spatial order,
    each referencing its source: read them back by source (``get_pixels_by_source_instance``),
    not by frame number."""
    what = f"{kind} map"
    if kind not in KINDS:
        raise InputError(f"parametric map: kind {kind!r}, expected one of {', '.join(KINDS)}")
    check_sources(sources, what)
    values = np.asarray(values)
    check_frames(values, sources, what, 3)
    if values.dtype.kind != "f":
        raise InputError(f"{what}: values have dtype {values.dtype}, expected float32 HU")
    values = values.astype(np.float32, copy=False)
    if not np.isfinite(values).all():
        raise InputError(f"{what}: {int((~np.isfinite(values)).sum())} values are NaN or "
                         "infinite; a parametric map holds finite HU")
    low, high = float(values.min()), float(values.max())
    if kind == "uncertainty" and low < 0:
        raise InputError(f"{what}: values down to {low:.3g} HU; a standard deviation is not "
                         "negative")
    # The value range a float mapping covers is written as doubles: widen a constant map so
    # first < last.
    mapping = RealWorldValueMapping(
        lut_label=kind.upper()[:16], lut_explanation=EXPLANATION[kind], unit=HU,
        value_range=(low, high if high > low else low + 1.0), slope=1.0, intercept=0.0,
        quantity_definition=QUANTITY[kind])
    if kind == "change":  # signed: a window centred on "no change"
        center, width = 0.0, max(2.0 * max(abs(low), abs(high)), 1.0)
    else:
        center, width = (low + high) / 2.0, max(high - low, 1.0)
    label = long_string(description)
    with hushed(what):
        pm = ParametricMap(
            source_images=list(sources), pixel_array=values,
            series_instance_uid=series_uid, series_number=int(series_number),
            sop_instance_uid=instance_uid, instance_number=1,
            manufacturer=MANUFACTURER, manufacturer_model_name=long_string(model_name),
            software_versions=__version__,
            # Type 1 in the Enhanced General Equipment module; software has no serial, so
            # the release identifies it.
            device_serial_number=__version__,
            # Per pixel, the map follows the anatomy it was computed from.
            contains_recognizable_visual_features=any(
                str(s.get("RecognizableVisualFeatures", "")).upper() == "YES"
                for s in sources),
            real_world_value_mappings=[mapping],
            voi_lut_transformations=[VOILUTTransformation(window_center=center,
                                                          window_width=width)],
            content_label=kind.upper(), content_description=label,
            derivation=DERIVATION[kind], derived_pixel_contrast=CONTRAST[kind],
            contributing_equipment=[processing_equipment(model_name, description)],
            series_description=label,
            # Declared where a private code is used (the "change" quantity).
            coding_schemes=[private_scheme()] if QUANTITY[kind].scheme_designator ==
            PRIVATE_SCHEME else None)
    describe_derivation(pm, description)
    carry_over(pm, sources)
    return pm
