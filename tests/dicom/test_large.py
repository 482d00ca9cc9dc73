"""Large and multi-frame images through the tiling of a small engine, frames decoded one at a
time (their peak memory is measured by `scanside bench --dicom`, see docs/benchmarks.md)."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.uid import MRImageStorage, generate_uid

from scanside import Pipeline
from scanside.dicom import enhance_series, read_header
from scanside.dicom.read import read_values

from .conftest import Identity, base_dataset, enhanced_ct, radiograph, write

SAMPLING = dict(steps=2, strength=0.5)


@pytest.mark.slow
def test_a_2k_monochrome1_15_bit_radiograph_in_tiles(tiny_engine, tmp_path):
    source = radiograph(tmp_path / "in" / "cr.dcm", size=2048, bits=15)
    report = enhance_series([source], Pipeline.load(tiny_engine), tmp_path / "out",
                            progress=False, **SAMPLING)
    assert report.ok, report.failures
    ds = pydicom.dcmread(report.written[0])
    assert (ds.Rows, ds.Columns, ds.BitsStored, ds.PhotometricInterpretation) == (
        2048, 2048, 15, "MONOCHROME1")
    pixels = ds.pixel_array
    assert pixels.max() <= 2**15 - 1
    # The tiny engine's weights are random: no quality is expected here (tile blending is
    # tested in tests/runtime/test_tiles.py), only a whole image at the source's format.
    assert pixels.std() > 0


@pytest.mark.slow
def test_a_1024_mr(tiny_engine, tmp_path):
    ds = base_dataset(MRImageStorage, "MR", generate_uid(), "1.2.3.9")
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M"]
    ds.InstanceNumber, ds.ScanningSequence, ds.SequenceVariant = 1, "SE", "NONE"
    ds.ScanOptions, ds.MRAcquisitionType, ds.EchoTrainLength = "", "2D", 1
    ds.RepetitionTime, ds.EchoTime, ds.MagneticFieldStrength = 500, 15, 1.5
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, 0], [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing, ds.SliceThickness = [0.25, 0.25], 3.0
    y, x = np.mgrid[0:1024, 0:1024] / 1024
    stored = (2000 + 1500 * np.sin(9 * x) * np.cos(7 * y)).round().astype(np.uint16)
    source = write(ds, stored, tmp_path / "in" / "mr.dcm", "MONOCHROME2", 12)
    report = enhance_series([source], Pipeline.load(tiny_engine), tmp_path / "out",
                            progress=False, **SAMPLING)
    assert report.ok, report.failures
    assert pydicom.dcmread(report.written[0]).pixel_array.shape == (1024, 1024)


def test_an_enhanced_ct_keeps_each_frames_rescale(tmp_path):
    """Per-frame Pixel Value Transformation: the last frame's intercept is -2048, the others'
    -1024; an identity model must give every frame's HU back exactly."""
    source = enhanced_ct(tmp_path / "in" / "enhanced.dcm", frames=4, size=64)
    report = enhance_series([source], Identity(), tmp_path / "out", progress=False)
    assert report.ok, report.failures
    _, before = read_values(read_header(source))
    _, after = read_values(read_header(report.written[0]))
    np.testing.assert_array_equal(after, before)
    derived = pydicom.dcmread(report.written[0])
    assert derived.SOPClassUID == pydicom.dcmread(source).SOPClassUID  # still Enhanced CT
    assert list(derived.ImageType)[:2] == ["DERIVED", "PRIMARY"]
    shared = derived.SharedFunctionalGroupsSequence[0]
    assert shared.CTImageFrameTypeSequence[0].FrameType[0] == "DERIVED"
    assert "identity model" in shared.DerivationImageSequence[0].DerivationDescription


def test_an_enhanced_ct_through_the_engine(tiny_engine, tmp_path):
    source = enhanced_ct(tmp_path / "in" / "enhanced.dcm", frames=3, size=256)
    report = enhance_series([source], Pipeline.load(tiny_engine), tmp_path / "out",
                            progress=False, **SAMPLING)
    assert report.ok and report.images == 3
