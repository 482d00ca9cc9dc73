"""`scanside enhance` on DICOM as a new user tries it: good files, every kind of bad file,
and patient identifiers that must never reach a log line or a message."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pydicom
import pytest

from scanside import Pipeline
from scanside.errors import InputError
from scanside.cli import main

from .conftest import SENTINELS, ct_phantom, ct_slice, pydicom_file


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_no_identifiers(*texts):
    for text in texts:
        for value in SENTINELS.values():
            assert value not in text
            assert value.replace("^", " ") not in text


def test_enhance_a_series_end_to_end(tiny_engine, ct_series, tmp_path, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    out = tmp_path / "out"
    code, stdout, stderr = run(capsys, "-v", "enhance", ct_series[0].parent, "--engine",
                               tiny_engine, "--out", out, "--steps", "4", "--strength", "0.5",
                               "--preview")
    assert code == 0, stderr
    assert "3 file(s) written, 0 failed" in stdout
    written = sorted(out.rglob("*.dcm"))
    assert len(written) == 3 and len(sorted(out.rglob("*.png"))) == 3
    ds = pydicom.dcmread(written[0])
    assert "steps 4; strength 0.5" in ds.DerivationDescription
    assert_no_identifiers(stdout, stderr, caplog.text)


def test_bad_inputs_are_reported_and_the_batch_goes_on(tiny_engine, ct_series, tmp_path, capsys,
                                                        caplog):
    caplog.set_level(logging.DEBUG)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "notes.txt").write_text("not dicom")
    (bad / "cut.dcm").write_bytes(ct_series[0].read_bytes()[:400])
    for name in ("rtplan.dcm", "SC_rgb_jpeg.dcm", "MR_truncated.dcm"):
        shutil.copy(pydicom_file(name), bad / name)
    shutil.copy(pydicom_file("dicomdirtests/DICOMDIR"), tmp_path / "DICOMDIR")
    # a sentinel-carrying file that fails inside pixel decoding
    broken = pydicom.dcmread(ct_series[0])
    broken.PixelData = broken.PixelData[:100]
    broken.save_as(bad / "short_pixels.dcm")
    inputs = [bad, tmp_path / "DICOMDIR", *ct_series]
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in bad.iterdir()}
    out = tmp_path / "out"
    code, stdout, stderr = run(capsys, "enhance", *inputs, "--engine", tiny_engine, "--out", out,
                               "--steps", "4", "--strength", "0.5")
    assert code == 2
    assert "3 file(s) written, 7 failed" in stdout
    for fragment in ("notes.txt: not a DICOM file", "cut.dcm: no pixel data",
                     "rtplan.dcm: no pixel data", "SC_rgb_jpeg.dcm: RGB image",
                     "MR_truncated.dcm: pixel data has 8130 bytes", "DICOMDIR: a DICOMDIR",
                     "short_pixels.dcm: declares 8192 bytes of pixel data"):
        assert fragment in stderr
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in bad.iterdir()} == before
    assert sorted(p.suffix for p in out.rglob("*") if p.is_file()) == [".dcm"] * 3
    assert_no_identifiers(stdout, stderr, caplog.text)


def test_two_series_in_one_folder_become_two_new_series(tiny_engine, tmp_path, capsys):
    folder = tmp_path / "mixed"
    ct_slice(folder / "a.dcm", ct_phantom(), 0.0, 1, "1.2.826.0.1.1")
    ct_slice(folder / "b.dcm", ct_phantom(), 0.0, 1, "1.2.826.0.1.2")
    code, _, _ = run(capsys, "enhance", folder, "--engine", tiny_engine, "--out", tmp_path / "o",
                     "--steps", "4", "--strength", "0.5")
    assert code == 0
    uids = {pydicom.dcmread(p).SeriesInstanceUID for p in (tmp_path / "o").rglob("*.dcm")}
    assert len(uids) == 2


def test_output_folder_equal_to_input_folder_is_refused(tiny_engine, ct_series, capsys):
    folder = ct_series[0].parent
    before = sorted(folder.iterdir())
    code, _, err = run(capsys, "enhance", folder, "--engine", tiny_engine, "--out", folder)
    assert code == 2 and "is the input's own folder" in err
    assert sorted(folder.iterdir()) == before


def test_unwritable_output_is_refused(tiny_engine, ct_series, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run(capsys, "enhance", *ct_series, "--engine", tiny_engine, "--out", blocker)
    assert code == 2 and "exists and is not a folder" in err
    code, _, err = run(capsys, "enhance", *ct_series, "--engine", tiny_engine,
                       "--out", blocker / "sub")
    assert code == 2 and "cannot be written" in err


@pytest.mark.parametrize("value", ["40", "a,b", "40,0", "40,-5"])
def test_bad_window(tiny_engine, ct_series, tmp_path, capsys, value):
    code, _, err = run(capsys, "enhance", *ct_series, "--engine", tiny_engine,
                       "--out", tmp_path / "o", "--window", value)
    assert code == 2 and "--window" in err
    assert not (tmp_path / "o").exists()


def test_enhance_dataset_derives_a_dataset(tiny_engine, ct_series):
    from scanside import Sampling
    from scanside.dicom import enhance_dataset

    source = pydicom.dcmread(ct_series[0])
    original = source.PixelData
    pipe = Pipeline.load(tiny_engine)
    derived = enhance_dataset(source, pipe, Sampling(steps=4, strength=0.5))
    assert isinstance(derived, pydicom.Dataset)
    assert derived.SOPInstanceUID != source.SOPInstanceUID
    assert derived.ImageType[0] == "DERIVED"
    assert source.PixelData == original  # the caller's dataset is not modified
    # scanside 0.1.0's argument order and keyword settings give the same derived instance.
    again = enhance_dataset(pipe, source, steps=4, strength=0.5)
    assert again.SOPInstanceUID == derived.SOPInstanceUID
    assert again.PixelData == derived.PixelData


def test_pipeline_enhance_names_the_dataset_path(tiny_engine, ct_series):
    # Pipeline.enhance took a Dataset until the runtime became arrays only.
    source = pydicom.dcmread(ct_series[0])
    with pytest.raises(InputError, match=r"scanside\.dicom\.enhance_dataset\(ds, pipeline"):
        Pipeline.load(tiny_engine).enhance(source, steps=4, strength=0.5)


def test_an_image_larger_than_a_static_engine_runs_in_tiles(tiny_engine, tmp_path, capsys):
    # It used to end with "128x128 pixels does not fit the engine's 64x64".
    code, _, err = run(capsys, "enhance", pydicom_file("CT_small.dcm"), "--engine", tiny_engine,
                       "--out", tmp_path / "o")
    assert code == 0, err
    (written,) = (tmp_path / "o").rglob("*.dcm")
    assert pydicom.dcmread(written).pixel_array.shape == (128, 128)


@pytest.mark.parametrize("name,shape", [("examples_overlay.dcm", (300, 484)),
                                        ("693_J2KI.dcm", (512, 512))])
def test_the_built_in_model_takes_real_sizes(name, shape, tmp_path, capsys):
    # examples_overlay (300 x 484, MR) stopped a --dynamic engine with ONNX Runtime's "Non
    # concat axis dimensions must match": padded to 8 but not to the UNet's divisor.
    code, _, err = run(capsys, "enhance", pydicom_file(name), "--out", tmp_path / "o")
    assert code == 0, err
    (written,) = (tmp_path / "o").rglob("*.dcm")
    assert pydicom.dcmread(written).pixel_array.shape == shape


@pytest.mark.slow
def test_a_2k_radiograph_runs_in_tiles_with_the_built_in_model(tmp_path, capsys):
    from pydicom.uid import ComputedRadiographyImageStorage, generate_uid

    from .conftest import base_dataset, write

    ds = base_dataset(ComputedRadiographyImageStorage, "CR", generate_uid(), "1.2.3.9")
    ds.ImageType, ds.InstanceNumber = ["ORIGINAL", "PRIMARY"], 1
    ds.ImagerPixelSpacing = [0.15, 0.15]
    y, x = np.mgrid[0:2048, 0:1536]
    body = 2000 + 1500 * np.sin(x / 300.0) * np.cos(y / 400.0)
    noisy = body + 40 * np.random.default_rng(0).standard_normal(body.shape)
    source = write(ds, np.clip(noisy, 0, 4095).round().astype(np.uint16),
                   tmp_path / "cr" / "cr.dcm", "MONOCHROME2", 12)
    code, _, err = run(capsys, "enhance", source, "--out", tmp_path / "o")
    assert code == 0, err
    (written,) = (tmp_path / "o").rglob("*.dcm")
    out = pydicom.dcmread(written).pixel_array.astype(np.float64)
    assert out.shape == (2048, 1536)
    # 3 x 2 tiles of 1024 px, blended: denoised as a whole, and no tile edge stands out (the
    # error along the columns where two tiles meet is no larger than elsewhere).
    error = np.abs(out - body)
    assert error.mean() < np.abs(noisy - body).mean()
    assert error[:, 760:1030].mean() < 1.5 * error.mean()


def test_generate_writes_a_synthetic_secondary_capture(tiny_engine, tmp_path, capsys):
    out = tmp_path / "g.dcm"
    code, _, err = run(capsys, "generate", "--engine", tiny_engine, "--prompt", "a chest CT",
                       "--steps", "3", "--out", out)
    assert code == 0, err
    ds = pydicom.dcmread(out)
    assert ds.SyntheticData == "YES"
    assert ds.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    assert ds.ConversionType == "SYN"
    assert ds.pixel_array.shape[:2] == (64, 64)
    from .conftest import require_tools
    from .test_series import dciodvfy_errors

    require_tools()
    # The dictionary of Debian's dicom3tools (June 2022) lacks Synthetic Data (0008,001C), a
    # newer standard attribute that pydicom's dictionary has; that line is the tool's age.
    unknown_tag = "not a recognized standard attribute - (0x0008,0x001c)"
    assert {e for e in dciodvfy_errors(out) if unknown_tag not in e} == set()


def test_simulated_ct_slices_are_valid_ct_images_with_the_simulated_hu(tmp_path, capsys):
    pytest.importorskip("skimage")
    from scanside.dicom import read_header, read_values
    from scanside.training import ctsim

    code, out, err = run(capsys, "models", "simulate", tmp_path, "--split", "val", "--pairs",
                         "2", "--size", "32", "--workers", "1")
    assert code == 0, err
    seed = ctsim.split_seeds("val", 1)[0]
    path = tmp_path / "low" / f"val{seed}.dcm"
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == pydicom.uid.CTImageStorage and ds.SyntheticData == "YES"
    assert ds.PatientName == "" and ds.PixelSpacing == [0.8, 0.8]
    hu = read_values(read_header(path))[1][0]
    np.testing.assert_allclose(hu, np.round(ctsim.make_pair(seed, size=32).low), atol=0)
    from .conftest import require_tools
    from .test_series import dciodvfy_errors

    require_tools()
    unknown_tag = "not a recognized standard attribute - (0x0008,0x001c)"  # see above
    assert {e for e in dciodvfy_errors(path) if unknown_tag not in e} == set()
