"""Text-to-image output as DICOM: a Secondary Capture that says it is synthetic."""

from __future__ import annotations

import datetime

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage, generate_uid,
)

from scanside import __version__

from .write import code_item, equipment_item


def empty_patient_and_study(ds: Dataset) -> None:
    """Patient and study attributes of type 2: present and empty, there is no patient."""
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                    "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID",
                    "AccessionNumber"):
        setattr(ds, keyword, "")


def finish_meta(ds: Dataset) -> None:
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta.ImplementationVersionName = f"SCANSIDE_{__version__}"[:16]


def simulated_ct(hu: np.ndarray, description: str, pixel_mm: float) -> Dataset:
    """A CT Image of a simulated scan (HU, (H, W)): stored = HU + 1024 as int16, slope 1,
    intercept -1024, Synthetic Data = YES, no patient. scanside's demo input."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.FrameOfReferenceUID = generate_uid()
    empty_patient_and_study(ds)
    ds.Modality, ds.Manufacturer, ds.SeriesNumber, ds.InstanceNumber = "CT", "scanside", 1, 1
    ds.SeriesDescription = description[:64]
    ds.PositionReferenceIndicator, ds.BurnedInAnnotation, ds.SyntheticData = "", "NO", "YES"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.PatientPosition, ds.Laterality = "HFS", ""  # type 2C for CT; no paired body part
    ds.AcquisitionNumber, ds.KVP = 1, ""
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [0.0, 0.0, 0.0], [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing, ds.SliceThickness = [pixel_mm, pixel_mm], 1.0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
    ds.WindowCenter, ds.WindowWidth = 40, 400
    ds.set_pixel_data(np.clip(np.round(hu + 1024), -32768, 32767).astype(np.int16),
                      "MONOCHROME2", 16)
    finish_meta(ds)
    return ds


def secondary_capture(image: np.ndarray, description: str) -> Dataset:
    """(H, W) or (H, W, 3) [0, 1] image -> 8-bit SC instance with Synthetic Data = YES."""
    now = datetime.datetime.now()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    empty_patient_and_study(ds)
    ds.Modality, ds.ConversionType = "OT", "SYN"  # SYN: synthetic image (PS3.3 C.8.6.1)
    # Type 2C, empty: no body part, no patient orientation for a synthetic picture.
    ds.Laterality, ds.PatientOrientation = "", ""
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.SeriesDescription = "scanside: synthetic"
    ds.ContentDate, ds.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.InstanceCreationDate, ds.InstanceCreationTime = ds.ContentDate, ds.ContentTime
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.SyntheticData = "YES"
    ds.BurnedInAnnotation = "NO"
    ds.DerivationDescription = description[:1024]
    ds.ContributingEquipmentSequence = Sequence([equipment_item(description, now)])
    ds.ContributingEquipmentSequence[0].PurposeOfReferenceCodeSequence = Sequence(
        [code_item(codes.DCM.SynthesizingEquipment)])
    pixels = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    colour = pixels.ndim == 3 and pixels.shape[2] == 3 and not (
        np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 1], pixels[..., 2]))
    if pixels.ndim == 3 and not colour:
        pixels = pixels[..., 0]
    ds.set_pixel_data(pixels, "RGB" if colour else "MONOCHROME2", 8)
    finish_meta(ds)
    return ds
