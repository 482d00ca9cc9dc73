"""Lesion candidates as a DICOM SR Measurement Report (TID 1500, Comprehensive SR).

A structured report is how a PACS or viewer lists "what the model found, where, how big":
each candidate is a TID 1410 measurement group with a circle on its source image, a tracking
identifier, coded measurements and the algorithm that made them, under a device observer
(scanside and the model). The caller's statement (what this is and is not for) is a TEXT
item in the report's Qualitative Evaluations container (TID 1500 rows 12 and 14), the one
place the template takes free text about the whole report.

TID 1500 needs Imaging Measurements or Qualitative Evaluations (PS3.16; dcmtk's TID1500
isValid() checks the same), and an Imaging Measurements container needs at least one group,
which highdicom's MeasurementReport enforces. So with no candidates the report has no
Imaging Measurements container, only the Qualitative Evaluations with the statement and a
sentence that no candidate was marked: a valid report that says "looked, marked nothing",
not a coded "no finding", which a research model must not claim.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import numpy as np
from highdicom.sr import (
    AlgorithmIdentification, CodeContentItem, ComprehensiveSR, ContainerContentItem,
    ContentSequence, DeviceObserverIdentifyingAttributes, GraphicTypeValues, ImageLibrary,
    ImageRegion, LanguageOfContentItemAndDescendants, Measurement, MeasurementReport,
    ObservationContext, ObserverContext, PlanarROIMeasurementsAndQualitativeEvaluations,
    RelationshipTypeValues, SourceImageForRegion, TextContentItem, TrackingIdentifier,
)
from highdicom.sr.templates import DEFAULT_LANGUAGE
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from scanside import __version__
from scanside.errors import InputError

from .pmap import (
    HU, MANUFACTURER, PRIVATE_SCHEME, carry_over, hushed, long_string, private_scheme,
    processing_equipment,
)
from .seg import ALGORITHM_FAMILY
from .write import derived_uid

QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")  # TID 1500 row 12
SQUARE_MM = Code("mm2", "UCUM", "square millimeter")
MM = Code("mm", "UCUM", "millimeter")
LESION = codes.SCT.Lesion  # SCT 52988006
ABNORMAL = Code("49755003", "SCT", "Morphologically abnormal structure")
# Mean HU of the region: the standard CT concept (DCM 112031 "Attenuation Coefficient", CID
# 7180) with the derivation "Mean" (SCT 373098007, CID 7464), as TID 1419 measurements do.
ATTENUATION = codes.DCM.AttenuationCoefficient
MEAN = codes.SCT.Mean
# Contrast to the surrounding ring: no standard concept means "mean of the region minus mean
# of a ring around it" (the CID 7464 modifiers are statistics of one region), so a private one.
CONTRAST = Code("RINGCONTR", PRIVATE_SCHEME, "Mean attenuation minus mean of surrounding ring")
NO_CANDIDATES = "No lesion candidates were marked."


@dataclass(frozen=True)
class Finding:
    """One lesion candidate on one source image. ``center_rc`` is in pixel-index
    coordinates: the centre of pixel [r, c] is (r, c), as numpy and scipy give it."""

    number: int  # candidate 1..N
    frame: int  # index into sources
    center_rc: tuple[float, float]  # (row, col) pixel coordinates
    radius_px: float  # equivalent-circle radius
    area_mm2: float
    diameter_mm: float
    mean_hu: float
    contrast_hu: float  # contrast to its surrounding ring


def check_findings(sources: Sequence[Dataset], findings: Sequence[Finding]) -> None:
    numbers = [int(f.number) for f in findings]
    if any(n < 1 for n in numbers) or len(set(numbers)) != len(numbers):
        raise InputError(f"measurement report: candidate numbers {sorted(numbers)}; they "
                         "must be distinct and start at 1")
    for f in findings:
        where = f"measurement report: candidate {f.number}"
        if not 0 <= int(f.frame) < len(sources):
            raise InputError(f"{where}: frame {f.frame}, but there are {len(sources)} "
                             f"sources (frame is an index, 0..{len(sources) - 1})")
        values = (*f.center_rc, f.radius_px, f.area_mm2, f.diameter_mm, f.mean_hu,
                  f.contrast_hu)
        if len(f.center_rc) != 2 or not all(math.isfinite(float(v)) for v in values):
            raise InputError(f"{where}: centre (row, col) and every measurement must be "
                             "finite numbers")
        if f.radius_px <= 0 or f.area_mm2 < 0 or f.diameter_mm < 0:
            raise InputError(f"{where}: radius {f.radius_px:g} px, area {f.area_mm2:g} mm2, "
                             f"diameter {f.diameter_mm:g} mm; the radius must be positive "
                             "and sizes not negative")


def circle(source: Dataset, finding: Finding) -> ImageRegion:
    """The candidate's equivalent circle on its image. SCOORD image coordinates are
    (column, row) with (0, 0) at the top left corner of the top left pixel (PS3.3
    C.18.6.1.2), so a pixel index's centre is at index + 0.5; the second point lies on the
    circle, ``radius_px`` to the right of the centre."""
    row, col = (float(v) for v in finding.center_rc)
    x, y = col + 0.5, row + 0.5
    return ImageRegion(
        graphic_type=GraphicTypeValues.CIRCLE,
        graphic_data=np.array([[x, y], [x + float(finding.radius_px), y]]),
        source_image=SourceImageForRegion.from_source_image(source))


def measurement_group(source: Dataset, finding: Finding, algorithm: AlgorithmIdentification,
                      instance_uid: str) -> PlanarROIMeasurementsAndQualitativeEvaluations:
    label = f"candidate {int(finding.number)}"
    measurements = [
        Measurement(name=codes.SCT.Area, value=float(finding.area_mm2), unit=SQUARE_MM,
                    algorithm_id=algorithm),
        Measurement(name=codes.SCT.Diameter, value=float(finding.diameter_mm), unit=MM,
                    algorithm_id=algorithm),
        Measurement(name=ATTENUATION, value=float(finding.mean_hu), unit=HU,
                    derivation=MEAN, algorithm_id=algorithm),
        Measurement(name=CONTRAST, value=float(finding.contrast_hu), unit=HU,
                    algorithm_id=algorithm),
    ]
    return PlanarROIMeasurementsAndQualitativeEvaluations(
        # The same report (instance UID) and candidate always give the same tracking UID.
        tracking_identifier=TrackingIdentifier(
            uid=derived_uid("tracking", instance_uid, label), identifier=label),
        referenced_region=circle(source, finding),
        finding_type=LESION, finding_category=ABNORMAL,
        algorithm_id=algorithm, measurements=measurements)


def qualitative_evaluations(texts: Sequence[str]) -> ContainerContentItem:
    """TID 1500 row 12, each text a row 14 TEXT item named "Comment" (DCM 121106)."""
    container = ContainerContentItem(name=QUALITATIVE_EVALUATIONS,
                                     relationship_type=RelationshipTypeValues.CONTAINS)
    container.ContentSequence = ContentSequence([
        TextContentItem(name=codes.DCM.Comment, value=text,
                        relationship_type=RelationshipTypeValues.CONTAINS)
        for text in texts])
    return container


def report_without_measurements(context: ObservationContext, procedure: Code,
                                sources: Sequence[Dataset],
                                evaluations: ContainerContentItem) -> ContainerContentItem:
    """The TID 1500 root highdicom's MeasurementReport builds, in the same order (language,
    observation context, procedure reported, image library), without the Imaging Measurements
    container it requires and an empty one would break."""
    root = ContainerContentItem(name=codes.cid7021.ImagingMeasurementReport, template_id="1500")
    root.ContentSequence = ContentSequence()
    root.ContentSequence.extend(LanguageOfContentItemAndDescendants(DEFAULT_LANGUAGE))
    root.ContentSequence.extend(context)
    root.ContentSequence.append(CodeContentItem(
        name=codes.DCM.ProcedureReported, value=procedure,
        relationship_type=RelationshipTypeValues.HAS_CONCEPT_MOD))
    root.ContentSequence.extend(ImageLibrary(list(sources)))
    root.ContentSequence.append(evaluations)
    return root


def measurement_report(sources: Sequence[Dataset], findings: Sequence[Finding], *,
                       segmentation: Optional[Dataset], series_uid: str, instance_uid: str,
                       series_number: int, model_name: str, algorithm_version: str,
                       statement: str) -> Dataset:
    """A TID 1500 Measurement Report (Comprehensive SR) with one planar ROI group per finding
    on ``sources[finding.frame]``, ``statement`` as a comment, and as evidence the sources
    and ``segmentation`` (the SEG the candidates came from) when given. Zero findings give a
    valid report that says none was marked. UIDs come from the caller (deterministic)."""
    what = "measurement report"
    if len(sources) == 0:
        raise InputError(f"{what}: no source images; pass the images the findings are on")
    if not str(statement).strip():
        raise InputError(f"{what}: empty statement; say what the report is for")
    check_findings(sources, findings)
    algorithm = AlgorithmIdentification(name=long_string(model_name),
                                        version=long_string(algorithm_version),
                                        family=ALGORITHM_FAMILY, manufacturer=MANUFACTURER)
    # Device Observer UID (type M): the same model always reports as the same device.
    device = DeviceObserverIdentifyingAttributes(
        uid=derived_uid("device-observer", MANUFACTURER, f"model {model_name}"),
        name=long_string(model_name), manufacturer_name=MANUFACTURER,
        model_name=long_string(model_name))
    context = ObservationContext(observer_device_context=ObserverContext(
        observer_type=codes.DCM.Device, observer_identifying_attributes=device))
    procedure = (codes.cid100.CTUnspecifiedBodyRegion if sources[0].get("Modality") == "CT"
                 else codes.cid100.ImagingProcedure)
    evidence = [*sources, *([segmentation] if segmentation is not None else [])]
    text = long_string(f"scanside: lesion candidates, {model_name}")
    with hushed(what):
        if findings:
            content = MeasurementReport(
                observation_context=context, procedure_reported=procedure,
                imaging_measurements=[
                    measurement_group(sources[int(f.frame)], f, algorithm, instance_uid)
                    for f in findings],
                referenced_images=list(sources))
            content[0].ContentSequence.append(qualitative_evaluations([statement]))
        else:
            content = report_without_measurements(
                context, procedure, sources, qualitative_evaluations([statement, NO_CANDIDATES]))
        sr = ComprehensiveSR(
            evidence=evidence, content=content,
            series_instance_uid=series_uid, series_number=int(series_number),
            sop_instance_uid=instance_uid, instance_number=1,
            manufacturer=MANUFACTURER, manufacturer_model_name=long_string(model_name),
            software_versions=__version__,
            # Complete as written; neither verified by a person nor final (a research aid).
            is_complete=True, is_final=False, is_verified=False,
            contributing_equipment=[processing_equipment(model_name, text)],
            series_description=text, coding_schemes=[private_scheme()])
    carry_over(sr, sources, laterality=False)
    return sr
