"""DICOM test data: pydicom's own test files (from the installed wheel, never fetched) and
synthetic series built here. Patient attributes are sentinels the tests hunt for in output."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage, ComputedRadiographyImageStorage, ExplicitVRLittleEndian,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage, generate_uid,
)

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
SENTINELS = {"PatientName": "SENTINEL^PATIENTNAME", "PatientID": "SENTINEL-ID-4711",
             "PatientBirthDate": "19010203"}
TOOLS = ("dciodvfy", "dcmdump", "dcm2pnm")


def pydicom_file(name: str) -> Path:
    path = PYDICOM_FILES / name
    assert path.is_file(), f"{name} is not in the installed pydicom wheel"
    return path


def require_tools() -> None:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        if os.environ.get("SCANSIDE_REQUIRE_DICOM_TOOLS"):
            pytest.fail(f"{missing} not installed (apt-get install dicom3tools dcmtk)")
        pytest.skip(f"{missing} not installed (apt-get install dicom3tools dcmtk)")


def base_dataset(sop_class, modality: str, series_uid: str, study_uid: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    for keyword, value in SENTINELS.items():
        setattr(ds, keyword, value)
    ds.PatientSex = "O"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.FrameOfReferenceUID = study_uid + ".1"
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "120000", "1", ""
    ds.ReferringPhysicianName = ""
    ds.Modality, ds.SeriesNumber, ds.Manufacturer = modality, 7, "test"
    ds.SeriesDescription = "synthetic test series"
    ds.PositionReferenceIndicator = ""
    ds.ContentDate, ds.ContentTime = "20260101", "120000"
    ds.BurnedInAnnotation = "NO"
    return ds


def write(ds: Dataset, stored: np.ndarray, path: Path, photometric: str, bits: int) -> Path:
    ds.set_pixel_data(stored, photometric, bits)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def ct_slice(path: Path, hu: np.ndarray, z: float, number: int, series_uid: str,
             study_uid: Optional[str] = None) -> Path:
    """A CT slice in HU; stored = HU + 1024 as int16 (slope 1, intercept -1024)."""
    ds = base_dataset(CTImageStorage, "CT", series_uid, study_uid or "1.2.3.4")
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.InstanceNumber, ds.AcquisitionNumber = number, 1
    ds.ImagePositionPatient = [0.0, 0.0, z]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing, ds.SliceThickness, ds.KVP = [0.7, 0.7], 1.0, 120
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
    ds.WindowCenter, ds.WindowWidth = 40, 400
    stored = np.clip(np.round(hu + 1024), -32768, 32767).astype(np.int16)
    return write(ds, stored, path, "MONOCHROME2", 16)


def ct_phantom(size: int = 64, seed: int = 0) -> np.ndarray:
    """HU: air outside, soft tissue body, lungs, dense bone far above the default window."""
    y, x = (np.mgrid[0:size, 0:size] + 0.5) / size * 2 - 1
    hu = np.where(x**2 / 0.8 + y**2 / 0.5 < 1, 40.0, -1000.0)
    hu = np.where(((x - 0.35) / 0.2) ** 2 + (y / 0.35) ** 2 < 1, -850.0, hu)
    hu = np.where(x**2 + (y - 0.4) ** 2 < 0.1**2, 1800.0, hu)  # outside [-1000, 1000]
    hu[0, 0] = -2048 + 1024 - 1024  # below the window and near the stored minimum
    return hu + np.random.default_rng(seed).normal(0, 20, hu.shape).round()


@pytest.fixture
def ct_series(tmp_path) -> list[Path]:
    """Three slices written out of order: the reader must sort them along the normal."""
    uid = generate_uid()
    return [ct_slice(tmp_path / "ct" / f"slice{n}.dcm", ct_phantom(seed=n), z, n, uid)
            for n, z in ((3, 2.0), (1, 0.0), (2, 1.0))]


@pytest.fixture
def radiograph_monochrome1(tmp_path) -> Path:
    """A CR in MONOCHROME1 (white = low values), 12 of 16 bits stored, with a VOI window."""
    ds = base_dataset(ComputedRadiographyImageStorage, "CR", generate_uid(), "1.2.3.5")
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.InstanceNumber, ds.BodyPartExamined, ds.ViewPosition = 1, "CHEST", "PA"
    ds.ImagerPixelSpacing = [0.2, 0.2]
    ds.WindowCenter, ds.WindowWidth = 2048, 3000
    ds.PresentationLUTShape = "INVERSE"
    ramp = np.linspace(0, 4095, 64 * 64).reshape(64, 64)
    return write(ds, ramp.round().astype(np.uint16), tmp_path / "cr" / "cr.dcm", "MONOCHROME1", 12)


@pytest.fixture
def multiframe(tmp_path) -> Path:
    """Three frames of a multi-frame grayscale word SC, unsigned 12 bits."""
    ds = base_dataset(MultiFrameGrayscaleWordSecondaryCaptureImageStorage, "OT", generate_uid(),
                      "1.2.3.6")
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.InstanceNumber, ds.ConversionType = 1, "WSD"
    ds.FrameIncrementPointer = 0x00181063
    ds.FrameTime = 100.0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
    frames = np.random.default_rng(0).integers(0, 4096, (3, 64, 64)).astype(np.uint16)
    return write(ds, frames, tmp_path / "mf" / "mf.dcm", "MONOCHROME2", 12)


class Identity:
    """A model that returns its input: every stored value must come back exactly."""

    def __init__(self):
        self.calls = 0

    def enhance(self, image, **sampling):
        self.calls += 1
        return image

    def describe(self, **sampling):
        return "identity model (test)"

    def fingerprint(self, **sampling):
        return "identity-" + repr(sorted(sampling.items()))


class Brighten:
    """A model that changes every pixel, to see values move and clipping at the stored range."""

    def enhance(self, image, **sampling):
        return np.clip(image + 0.25, 0, 1)

    def describe(self, **sampling):
        return "brighten model (test)"

    def fingerprint(self, **sampling):
        return "brighten-" + repr(sorted(sampling.items()))
