"""Writing results as derived DICOM instances in a new series (PS3.3 C.7.6.1.1.2, C.12.1).

``derive`` copies patient, study and frame of reference from the source, as highdicom's
``from_ref_dataset`` does, and marks the instance as derived: ImageType DERIVED\\SECONDARY,
Derivation Description and Code, Source Image Sequence, Contributing Equipment (as the IHE
AI Results profile does). Everything is validated before the copy is changed.
"""

from __future__ import annotations

import copy
import datetime
import io
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation, DigitalXRayImageStorageForProcessing,
    EnhancedCTImageStorage, EnhancedMRImageStorage, ExplicitVRLittleEndian, JPEGBaseline8Bit,
    JPEGExtended12Bit, JPEGLSNearLossless, MRImageStorage,
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage, SecondaryCaptureImageStorage,
    generate_uid,
)

from scanside import __version__
from scanside.errors import InputError
from scanside.files import atomic_path

# SOP classes whose IODs allow ImageType DERIVED with the source's own modules.
DERIVABLE = {CTImageStorage, MRImageStorage, ComputedRadiographyImageStorage,
             DigitalXRayImageStorageForPresentation, DigitalXRayImageStorageForProcessing,
             SecondaryCaptureImageStorage, MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
             MultiFrameGrayscaleWordSecondaryCaptureImageStorage, EnhancedCTImageStorage,
             EnhancedMRImageStorage}
# Enhanced (multi-frame functional group) IODs: provenance goes in the Derivation Image
# functional group and each frame's Frame Type says DERIVED (PS3.3 C.7.6.16.2.6, C.8.13.5.1).
ENHANCED = {EnhancedCTImageStorage: "CTImageFrameTypeSequence",
            EnhancedMRImageStorage: "MRImageFrameTypeSequence"}
# Attributes that describe the source's pixels or encoding, not ours.
STALE = ("SmallestImagePixelValue", "LargestImagePixelValue", "IconImageSequence",
         "DataSetTrailingPadding", "ExtendedOffsetTable", "ExtendedOffsetTableLengths",
         "SmallestPixelValueInSeries", "LargestPixelValueInSeries")
WRITTEN = ("ImageType", "SeriesInstanceUID", "SeriesNumber", "SeriesDescription",
           "InstanceCreationDate", "InstanceCreationTime", "DerivationDescription",
           "DerivationCodeSequence", "SourceImageSequence", "ContributingEquipmentSequence",
           "BurnedInAnnotation", "LossyImageCompression", "SyntheticData",
           "SourceImageEvidenceSequence", "SOPInstanceUID")
PREFIX = "scanside: "
# Transfer syntaxes that are always lossy; JPEG 2000 can be either, so its file's own
# LossyImageCompression attribute decides.
LOSSY_SYNTAXES = {JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLSNearLossless}


@dataclass(frozen=True)
class Derivation:
    """What was done, for DerivationDescription and the Contributing Equipment entry."""

    description: str  # e.g. "diffusion enhancement, model sha256 ..., fp32, cpu, ddim, ..."
    series_uid: str
    series_number: int
    synthetic: bool = False
    fingerprint: str = ""  # what was run (engine, backend, settings); "" = a fresh run


def derived_uid(kind: str, source_uid: str, fingerprint: str) -> str:
    """A UID that is the same whenever the same source is derived with the same engine and
    settings (``fingerprint``), so a retried or resumed run writes the same instances and a
    PACS stores them once; a fresh random UID when there is no fingerprint."""
    if not fingerprint:
        return generate_uid()
    return generate_uid(entropy_srcs=["scanside", kind, str(source_uid), fingerprint])


def series_uid(source_series_uid: str, fingerprint: str) -> str:
    return derived_uid("series", source_series_uid, fingerprint)


def code_item(code) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = (
        code.value, code.scheme_designator, code.meaning)
    return item


def source_reference(source: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    if int(source.get("NumberOfFrames", 1) or 1) > 1:
        item.ReferencedFrameNumber = list(range(1, int(source.NumberOfFrames) + 1))
    item.PurposeOfReferenceCodeSequence = Sequence(
        [code_item(codes.DCM.SourceImageForImageProcessingOperation)])
    return item


def equipment_item(description: str, when: datetime.datetime) -> Dataset:
    item = Dataset()
    item.PurposeOfReferenceCodeSequence = Sequence([code_item(codes.DCM.ProcessingEquipment)])
    item.Manufacturer = "scanside"
    item.ManufacturerModelName = "scanside diffusion enhancement"
    item.SoftwareVersions = __version__
    item.ContributionDateTime = when.strftime("%Y%m%d%H%M%S")
    item.ContributionDescription = description[:64]
    return item


def image_type(source: Dataset) -> list[str]:
    rest = list(source.get("ImageType", []))[2:]
    return ["DERIVED", "SECONDARY", *rest]


def derive(source: Dataset, stored: np.ndarray, derivation: Derivation) -> Dataset:
    """A new instance carrying ``stored`` ((F, H, W) or (H, W), the source's dtype) that
    references ``source``; the source dataset is not modified."""
    if stored.shape[-2:] != (int(source.Rows), int(source.Columns)):
        raise ValueError(f"result {stored.shape} does not match the source's "
                         f"{source.Rows}x{source.Columns}")
    stored = stored[0] if stored.ndim == 3 and stored.shape[0] == 1 else stored
    now = datetime.datetime.now()
    # A plain Dataset: a FileDataset copy would keep the source's byte order and VR encoding.
    ds = Dataset(copy.deepcopy(source))
    for keyword in STALE:
        if keyword in ds:
            del ds[keyword]
    # Command (0000) and meta (0002) elements have no place in a stored dataset; a damaged
    # file can carry them, and pydicom rightly refuses to write them there.
    for tag in [t for t in ds.keys() if t.group in (0x0000, 0x0002)]:
        del ds[tag]
    # What this module sets is set fresh, with the dictionary's VR: a damaged source element
    # of the same name may carry another VR that its new value cannot be written in.
    for keyword in WRITTEN:
        if keyword in ds:
            del ds[keyword]
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if ds.SOPClassUID not in DERIVABLE:
        ds.SOPClassUID = SecondaryCaptureImageStorage
        if "ConversionType" in ds:  # set fresh, as WRITTEN (its VR may be damaged)
            del ds.ConversionType
        ds.ConversionType = "WSD"  # workstation
    ds.set_pixel_data(stored, str(source.PhotometricInterpretation),
                      int(source.get("BitsStored", source.BitsAllocated)),
                      generate_instance_uid=False)
    ds.SOPInstanceUID = derived_uid("instance", source.SOPInstanceUID, derivation.fingerprint)
    if ds.SOPClassUID in ENHANCED:
        mark_enhanced_derived(ds, source, derivation, now)
    else:
        mark_derived(ds, source, derivation, now)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta.ImplementationVersionName = f"SCANSIDE_{__version__}"[:16]
    return ds


def mark_derived(ds: Dataset, source: Dataset, derivation: Derivation,
                 now: datetime.datetime) -> None:
    ds.ImageType = image_type(source)
    ds.DerivationDescription = derivation.description[:1024]  # ST
    ds.DerivationCodeSequence = Sequence([code_item(codes.DCM.Smoothing)])
    ds.SourceImageSequence = Sequence([source_reference(source)])
    identify_series(ds, source, derivation, now)


def mark_enhanced_derived(ds: Dataset, source: Dataset, derivation: Derivation,
                          now: datetime.datetime) -> None:
    """An Enhanced CT/MR instance: Image Type value 2 stays PRIMARY (its only enumerated value
    there), every Frame Type says DERIVED, and the source and the processing are recorded in
    the shared Derivation Image functional group."""
    rest = list(source.get("ImageType", []))[1:] or ["PRIMARY"]
    ds.ImageType = ["DERIVED", *rest]
    frame_type = ENHANCED[ds.SOPClassUID]
    for groups in (ds.get("SharedFunctionalGroupsSequence", []),
                   ds.get("PerFrameFunctionalGroupsSequence", [])):
        for group in groups:
            for item in group.get(frame_type, []):
                values = list(item.get("FrameType", [])) or ["DERIVED", "PRIMARY"]
                item.FrameType = ["DERIVED", *values[1:]]
    if not ds.get("SharedFunctionalGroupsSequence"):
        ds.SharedFunctionalGroupsSequence = Sequence([Dataset()])
    derivation_item = Dataset()
    derivation_item.DerivationDescription = derivation.description[:1024]
    derivation_item.DerivationCodeSequence = Sequence([code_item(codes.DCM.Smoothing)])
    derivation_item.SourceImageSequence = Sequence([source_reference(source)])
    ds.SharedFunctionalGroupsSequence[0].DerivationImageSequence = Sequence([derivation_item])
    ds.SourceImageEvidenceSequence = Sequence([evidence_item(source)])  # 1C once derived
    identify_series(ds, source, derivation, now)


def evidence_item(source: Dataset) -> Dataset:
    """The source as a Hierarchical SOP Instance Reference (study > series > instance)."""
    instance = Dataset()
    instance.ReferencedSOPClassUID = source.SOPClassUID
    instance.ReferencedSOPInstanceUID = source.SOPInstanceUID
    series = Dataset()
    series.SeriesInstanceUID = source.SeriesInstanceUID
    series.ReferencedSOPSequence = Sequence([instance])
    study = Dataset()
    study.StudyInstanceUID = source.StudyInstanceUID
    study.ReferencedSeriesSequence = Sequence([series])
    return study


def identify_series(ds: Dataset, source: Dataset, derivation: Derivation,
                    now: datetime.datetime) -> None:
    """The new series, creation time, equipment and lossy history: every derived instance."""
    ds.SeriesInstanceUID = derivation.series_uid
    ds.SeriesNumber = derivation.series_number
    description = PREFIX + str(source.get("SeriesDescription", "") or "enhanced")
    ds.SeriesDescription = description[:64]  # LO
    ds.InstanceCreationDate, ds.InstanceCreationTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    equipment = list(source.get("ContributingEquipmentSequence", []))
    ds.ContributingEquipmentSequence = Sequence(
        [*map(copy.deepcopy, equipment), equipment_item(derivation.description, now)])
    ds.BurnedInAnnotation = "NO"
    if was_lossy(source):
        ds.LossyImageCompression = "01"  # once lossy, always lossy (PS3.3 C.7.6.1.1.5)
    if derivation.synthetic:
        ds.SyntheticData = "YES"


def was_lossy(source: Dataset) -> bool:
    syntax = getattr(source, "file_meta", Dataset()).get("TransferSyntaxUID")
    return str(source.get("LossyImageCompression", "00")) == "01" or syntax in LOSSY_SYNTAXES


def series_number(source: Dataset) -> int:
    """Distinct from the source's: scanside series are numbered 1000 + the source's (1000 when
    the source has none, or none that reads as a whole number)."""
    try:
        number = int(source.get("SeriesNumber", 0) or 0)
    except (TypeError, ValueError, OverflowError):
        number = 0
    return 1000 + number if abs(number) < 2**30 else 1000


def encode(ds: Dataset, source: "Path | str") -> bytes:
    """``ds`` as the bytes of a DICOM file, in memory: whatever cannot be encoded (a damaged
    source element copied into it) is refused here, naming ``source``, before any file is
    touched. pydicom's message quotes the element's value, so only its tag is kept."""
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.save_as(buffer, enforce_file_format=True)
    except Exception as exc:  # noqa: BLE001 - the writer raises many types, OSError included
        tag = re.search(r"\(([0-9A-Fa-f]{4}),\s*([0-9A-Fa-f]{4})\)", str(exc))
        where = f" element ({tag.group(1)},{tag.group(2)})" if tag else ""
        raise InputError(f"{source}: the derived instance cannot be encoded{where} "
                         f"({type(exc).__name__}); the source carries a damaged element — "
                         "re-export it") from None
    return buffer.getvalue()


def save(ds: Dataset, path: Path, overwrite: bool = False, source: "Path | str" = "") -> None:
    """Write ``ds`` to ``path`` through a temporary name, synced to disk before it takes its
    name; over an existing file only if ``overwrite``."""
    write_bytes(encode(ds, source or path), path, overwrite)


def write_bytes(data: bytes, path: Path, overwrite: bool = False) -> None:
    with atomic_path(path, overwrite=overwrite) as tmp:
        Path(tmp).write_bytes(data)
