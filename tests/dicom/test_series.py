"""Writing: derived instances in a new series that keep every value an identity model keeps,
that dciodvfy, dcmdump and dcm2pnm accept, and that never touch the input."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from scanside.dicom import Window, enhance_series

from .conftest import Brighten, Identity, pydicom_file, require_tools

REAL_INPUTS = ["CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
               "MR_small_jpeg_ls_lossless.dcm", "MR_small_bigendian.dcm", "693_J2KI.dcm",
               "JPEG2000.dcm", "examples_overlay.dcm"]


def snapshot(paths):
    files = [p for root in paths for p in ([root] if root.is_file() else sorted(root.rglob("*")))
             if p.is_file()]
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files}


def run_tool(*argv) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, errors="replace")


def dciodvfy_errors(path: Path) -> set[str]:
    result = run_tool("dciodvfy", str(path))
    return {line.strip() for line in (result.stdout + result.stderr).splitlines()
            if line.startswith("Error")}


def outputs_of(report) -> dict[str, pydicom.Dataset]:
    """Derived datasets keyed by the source SOPInstanceUID they reference."""
    out = {}
    for path in report.written:
        ds = pydicom.dcmread(path)
        out[ds.SourceImageSequence[0].ReferencedSOPInstanceUID] = ds
    return out


@pytest.fixture
def all_kinds(tmp_path, ct_series, radiograph_monochrome1, multiframe):
    real = [pydicom_file(n) for n in REAL_INPUTS]
    return real + ct_series + [radiograph_monochrome1, multiframe]


def test_identity_model_reproduces_every_stored_value(all_kinds, tmp_path):
    before = snapshot(all_kinds)
    report = enhance_series(all_kinds, Identity(), tmp_path / "out", progress=False)
    assert report.ok, report.failures
    derived = outputs_of(report)
    for source_path in all_kinds:
        source = pydicom.dcmread(source_path)
        ds = derived[source.SOPInstanceUID]
        np.testing.assert_array_equal(ds.pixel_array, source.pixel_array.reshape(ds.pixel_array.shape),
                                      err_msg=source_path.name)
        for keyword in ("BitsAllocated", "BitsStored", "PixelRepresentation",
                        "PhotometricInterpretation", "RescaleSlope", "RescaleIntercept",
                        "WindowCenter", "WindowWidth"):
            assert ds.get(keyword) == source.get(keyword), (source_path.name, keyword)
    assert snapshot(all_kinds) == before  # inputs untouched: bytes and mtimes


def test_derived_attributes(ct_series, tmp_path):
    report = enhance_series(ct_series, Identity(), tmp_path / "out", progress=False,
                            strength=0.3, steps=20)
    sources = {pydicom.dcmread(p).SOPInstanceUID: pydicom.dcmread(p) for p in ct_series}
    derived = outputs_of(report)
    assert len({ds.SeriesInstanceUID for ds in derived.values()}) == 1  # one new series
    for uid, ds in derived.items():
        src = sources[uid]
        assert ds.SOPInstanceUID != src.SOPInstanceUID
        assert ds.SeriesInstanceUID != src.SeriesInstanceUID
        assert ds.SeriesNumber != src.SeriesNumber
        for keyword in ("StudyInstanceUID", "FrameOfReferenceUID", "PatientName", "PatientID",
                        "PatientBirthDate", "SOPClassUID", "ImagePositionPatient"):
            assert ds.get(keyword) == src.get(keyword), keyword
        assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert list(ds.ImageType)[2:] == list(src.ImageType)[2:]
        assert "identity model (test)" in ds.DerivationDescription
        assert "window 0,2000 (modality default)" in ds.DerivationDescription
        assert ds.DerivationCodeSequence[0].CodeValue == "113087"
        ref = ds.SourceImageSequence[0]
        assert ref.ReferencedSOPClassUID == src.SOPClassUID
        assert ref.PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
        equipment = ds.ContributingEquipmentSequence[-1]
        assert equipment.Manufacturer == "scanside"
        assert equipment.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
        assert ds.SeriesDescription.startswith("scanside: ")
        assert ds.BurnedInAnnotation == "NO"
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert "SyntheticData" not in ds


def test_lossy_history_is_kept(ct_series, tmp_path):
    lossy = pydicom.dcmread(ct_series[0])
    lossy.LossyImageCompression, lossy.LossyImageCompressionRatio = "01", 10
    lossy.save_as(ct_series[0])
    report = enhance_series(ct_series, Identity(), tmp_path / "out", progress=False)
    flags = {pydicom.dcmread(p).get("LossyImageCompression") for p in report.written}
    assert flags == {"01", None}  # the lossy slice says so; the others claim nothing


def test_values_outside_the_window_are_kept(ct_series, tmp_path):
    """Brighten moves every in-window value; bone at 1800 HU (outside [-1000, 1000]) stays."""
    report = enhance_series(ct_series[:1], Brighten(), tmp_path / "out", progress=False)
    source = pydicom.dcmread(ct_series[0])
    ds = pydicom.dcmread(report.written[0])
    src_hu = source.pixel_array + float(source.RescaleIntercept)
    out_hu = ds.pixel_array + float(ds.RescaleIntercept)
    outside = (src_hu < -1000) | (src_hu > 1000)
    assert outside.any() and (~outside).any()
    np.testing.assert_array_equal(out_hu[outside], src_hu[outside])
    moved = out_hu[~outside] - src_hu[~outside]
    assert moved.min() > 0  # brighter, up to the window's top
    assert out_hu[~outside].max() <= 1000


def test_explicit_window_is_used(ct_series, tmp_path):
    report = enhance_series(ct_series[:1], Brighten(), tmp_path / "out", progress=False,
                            window=Window.parse("40,400"))
    source = pydicom.dcmread(ct_series[0])
    out_hu = pydicom.dcmread(report.written[0]).pixel_array + float(source.RescaleIntercept)
    src_hu = source.pixel_array + float(source.RescaleIntercept)
    narrow_outside = (src_hu < -160) | (src_hu > 240)
    np.testing.assert_array_equal(out_hu[narrow_outside], src_hu[narrow_outside])
    assert "window 40,400 (argument)" in pydicom.dcmread(report.written[0]).DerivationDescription


def test_monochrome1_is_shown_to_the_model_as_displayed(radiograph_monochrome1, tmp_path):
    """White-is-low: the model must see low stored values as bright."""
    seen = []

    class Spy(Identity):
        def enhance(self, image, sampling):
            seen.append(image)
            return image

    enhance_series([radiograph_monochrome1], Spy(), tmp_path / "out", progress=False)
    ramp = seen[0]  # stored values rise along the ramp, so the displayed image darkens
    assert ramp[0, 0] > ramp[-1, -1]


def test_every_output_passes_dciodvfy_and_dcmtk(all_kinds, tmp_path):
    require_tools()
    report = enhance_series(all_kinds, Brighten(), tmp_path / "out", progress=False)
    sources = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in all_kinds}
    for path in report.written:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        source = sources[ds.SourceImageSequence[0].ReferencedSOPInstanceUID]
        new_errors = dciodvfy_errors(path) - dciodvfy_errors(source)
        assert not new_errors, f"{source.name}: {new_errors}"
        assert run_tool("dcmdump", str(path)).returncode == 0, source.name
        assert run_tool("dcm2pnm", str(path), str(tmp_path / "x.pnm")).returncode == 0, source.name


def test_previews(ct_series, tmp_path):
    from PIL import Image

    report = enhance_series(ct_series[:1], Brighten(), tmp_path / "out", preview=True,
                            progress=False)
    png = report.written[0].with_suffix(".png")
    assert Image.open(png).size == (3 * 64, 64)


def test_one_new_series_per_source_series_and_nothing_else(ct_series, radiograph_monochrome1, tmp_path):
    out = tmp_path / "out"
    report = enhance_series([ct_series[0].parent, radiograph_monochrome1], Identity(), out,
                            progress=False)
    folders = sorted(p for p in out.iterdir())
    assert len(folders) == 2 and all(p.is_dir() for p in folders)
    files = sorted(p for p in out.rglob("*") if p.is_file())
    assert files == sorted(report.written)  # no temporary or stray files
    assert all(p.suffix == ".dcm" for p in files)


def timeless(path: Path) -> pydicom.Dataset:
    """The derived dataset without the moments it was written at."""
    ds = pydicom.dcmread(path)
    del ds.InstanceCreationDate, ds.InstanceCreationTime
    del ds.ContributingEquipmentSequence[-1].ContributionDateTime
    return ds


@pytest.mark.slow
def test_workers_write_the_same_files_in_the_same_order(all_kinds, concat_engine, tmp_path):
    """Several slices at once through one Pipeline (concurrent ONNX Runtime runs): every
    output element and pixel, the report's order and a bad file's failure as with one worker."""
    from scanside import Pipeline

    bad = tmp_path / "bad" / "truncated.dcm"
    bad.parent.mkdir()
    bad.write_bytes(all_kinds[0].read_bytes()[:300])
    inputs = [*all_kinds, bad]
    pipe = Pipeline.load(concat_engine, threads=1)
    runs = {}
    for workers in (1, 3):
        out = tmp_path / f"out{workers}"
        report = enhance_series(inputs, pipe, out, progress=False, workers=workers, steps=4)
        runs[workers] = ([p.relative_to(out) for p in report.written], report.failures,
                         {p.relative_to(out): timeless(p) for p in report.written})
    assert runs[3][0] == runs[1][0] and len(runs[1][0]) == len(all_kinds)
    assert runs[3][1] == runs[1][1] and [p for p, _ in runs[1][1]] == [bad]
    assert runs[3][2] == runs[1][2]


def test_a_callers_noise_reaches_every_frame_and_the_uids(tiny_engine, ct_series, tmp_path):
    from scanside import Pipeline

    pipe = Pipeline.load(tiny_engine)
    shape = (1, 4, 8, 8)  # the tiny engine's latent for a 64 px slice
    noise = np.random.default_rng(5).standard_normal(shape).astype(np.float32)
    seeded = enhance_series(ct_series[:1], pipe, tmp_path / "a", progress=False, steps=4,
                            strength=0.5)
    given = enhance_series(ct_series[:1], pipe, tmp_path / "b", progress=False, steps=4,
                           strength=0.5, noise=noise)
    assert seeded.ok and given.ok
    a, b = (pydicom.dcmread(r.written[0]) for r in (seeded, given))
    assert a.SOPInstanceUID != b.SOPInstanceUID  # the noise is part of the fingerprint
    assert a.PixelData != b.PixelData
