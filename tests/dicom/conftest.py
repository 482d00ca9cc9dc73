"""DICOM test data: pydicom's own test files (from the installed wheel, never fetched) and
synthetic series built here. Patient attributes are sentinels the tests hunt for in output."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    CTImageStorage, ComputedRadiographyImageStorage, EnhancedCTImageStorage,
    ExplicitVRLittleEndian, MultiFrameGrayscaleWordSecondaryCaptureImageStorage, generate_uid,
)

from tests.system_tools import require

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
SENTINELS = {"PatientName": "SENTINEL^PATIENTNAME", "PatientID": "SENTINEL-ID-4711",
             "PatientBirthDate": "19010203"}


def pydicom_file(name: str) -> Path:
    path = PYDICOM_FILES / name
    assert path.is_file(), f"{name} is not in the installed pydicom wheel"
    return path


def partial_files(folder: Path) -> list[Path]:
    """What an interrupted atomic write would leave under ``folder``: tests assert none is."""
    return [p for p in Path(folder).rglob("*") if p.name.endswith(".partial")]


def sentinel_elements(ds: Dataset, where: str = "") -> list[str]:
    """Every element (at any depth) whose value holds a sentinel."""
    hits = []
    for element in ds:
        if element.VR == "SQ":
            for index, item in enumerate(element.value):
                hits += sentinel_elements(item, f"{where}{element.keyword}[{index}].")
        elif element.VR not in ("OB", "OW", "OF", "OD", "UN"):
            text = str(element.value)
            if any(v in text or v.replace("^", " ") in text for v in SENTINELS.values()):
                hits.append(where + element.keyword)
    return hits


def assert_no_identifiers(text: str) -> None:
    """No sentinel patient attribute in ``text``, in DICOM's form or with its ^ as a space."""
    for value in SENTINELS.values():
        assert value not in text
        assert value.replace("^", " ") not in text


def require_tools() -> None:
    """dciodvfy (dicom3tools), dcmdump and dcm2pnm (dcmtk): skip where missing, fail in CI."""
    require("dicom3tools", "dcmtk")


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


def item(**attributes) -> Dataset:
    ds = Dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def enhanced_ct(path: Path, frames: int = 3, size: int = 64) -> Path:
    """An Enhanced CT multi-frame object whose rescale is per frame (a functional group is
    either shared or per-frame): intercept -1024, except -2048 on the last frame."""
    ds = base_dataset(EnhancedCTImageStorage, "CT", generate_uid(), "1.2.3.7")
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.InstanceNumber, ds.AcquisitionNumber = 1, 1
    ds.ContentQualification, ds.PixelPresentation = "PRODUCT", "MONOCHROME"
    ds.VolumetricProperties, ds.VolumeBasedCalculationTechnique = "VOLUME", "NONE"
    ds.AcquisitionDateTime = "20260101120000"
    frame_type = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.SharedFunctionalGroupsSequence = Sequence([item(
        PixelMeasuresSequence=Sequence([item(PixelSpacing=[0.7, 0.7], SliceThickness=1.0)]),
        PlaneOrientationSequence=Sequence([item(ImageOrientationPatient=[1, 0, 0, 0, 1, 0])]),
        CTImageFrameTypeSequence=Sequence([item(FrameType=frame_type)]),
        FrameVOILUTSequence=Sequence([item(WindowCenter=40, WindowWidth=400)]))])
    per_frame, stored = [], []
    for f in range(frames):
        hu = ct_phantom(size, seed=f)
        group = item(PlanePositionSequence=Sequence([item(ImagePositionPatient=[0.0, 0.0, float(f)])]),
                     FrameContentSequence=Sequence([item(FrameAcquisitionNumber=1)]))
        intercept = -2048 if f == frames - 1 else -1024
        group.PixelValueTransformationSequence = Sequence([item(
            RescaleIntercept=intercept, RescaleSlope=1, RescaleType="HU")])
        per_frame.append(group)
        stored.append(np.clip(np.round(hu - intercept), 0, 4095).astype(np.uint16))
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    return write(ds, np.stack(stored), path, "MONOCHROME2", 12)


def radiograph(path: Path, size: int = 2048, bits: int = 15) -> Path:
    """A large CR in MONOCHROME1 with ``bits`` of 16 stored: smooth anatomy-like structure."""
    ds = base_dataset(ComputedRadiographyImageStorage, "CR", generate_uid(), "1.2.3.8")
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.InstanceNumber, ds.BodyPartExamined, ds.ViewPosition = 1, "CHEST", "PA"
    ds.ImagerPixelSpacing = [0.15, 0.15]
    top = 2**bits - 1
    ds.WindowCenter, ds.WindowWidth = top // 2, top
    ds.PresentationLUTShape = "INVERSE"
    y, x = np.mgrid[0:size, 0:size] / size
    image = 0.5 + 0.3 * np.sin(6 * x) * np.cos(4 * y) + np.random.default_rng(0).normal(0, 0.02, (size, size))
    stored = np.clip(image * top, 0, top).round().astype(np.uint16)
    return write(ds, stored, path, "MONOCHROME1", bits)


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
    return multiframe_sc(tmp_path / "mf" / "mf.dcm")


def multiframe_sc(path: Path) -> Path:
    """Three frames of a multi-frame grayscale word SC, unsigned 12 bits."""
    ds = base_dataset(MultiFrameGrayscaleWordSecondaryCaptureImageStorage, "OT", generate_uid(),
                      "1.2.3.6")
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.InstanceNumber, ds.ConversionType = 1, "WSD"
    ds.FrameIncrementPointer = 0x00181063
    ds.FrameTime = 100.0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
    frames = np.random.default_rng(0).integers(0, 4096, (3, 64, 64)).astype(np.uint16)
    return write(ds, frames, path, "MONOCHROME2", 12)


class Identity:
    """A model that returns its input: every stored value must come back exactly."""

    def __init__(self):
        self.calls = 0

    def enhance(self, image, sampling):
        self.calls += 1
        return image

    def describe(self, sampling):
        return "identity model (test)"

    def fingerprint(self, sampling):
        return "identity-" + repr(sampling)


class Brighten:
    """A model that changes every pixel, to see values move and clipping at the stored range."""

    def enhance(self, image, sampling):
        return np.clip(image + 0.25, 0, 1)

    def describe(self, sampling):
        return "brighten model (test)"

    def fingerprint(self, sampling):
        return "brighten-" + repr(sampling)
