"""Reading: modality LUT, signedness, MONOCHROME1, series order, refusals with reasons."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from scanside.dicom import collect, read_header, read_values
from scanside.errors import InputError

from .conftest import ct_phantom, ct_slice, pydicom_file


def test_ct_values_are_hounsfield(ct_series):
    instance = read_header(ct_series[1])
    ds, values = read_values(instance)
    assert values.shape == (1, 64, 64)
    assert values[0, 0, 0] == pytest.approx(ct_phantom(seed=1)[0, 0])  # stored + intercept


def test_real_ct_small_rescale():
    ds, values = read_values(read_header(pydicom_file("CT_small.dcm")))
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(values[0], expected)


def test_series_are_grouped_and_sorted_along_the_normal(ct_series, tmp_path):
    other = ct_slice(tmp_path / "ct" / "other.dcm", ct_phantom(), 0.0, 1, generate_uid())
    collected = collect([tmp_path / "ct"])
    assert not collected.failures
    assert len(collected.series) == 2
    ours = next(s for s in collected.series if len(s.instances) == 3)
    assert [i.path.name for i in ours.instances] == ["slice1.dcm", "slice2.dcm", "slice3.dcm"]
    assert any(s.instances[0].path == other for s in collected.series)


def test_multiframe_reads_every_frame(multiframe):
    _, values = read_values(read_header(multiframe))
    assert values.shape == (3, 64, 64)


@pytest.mark.parametrize(
    "name,reason",
    [
        ("rtplan.dcm", "no pixel data"),
        ("dicomdirtests/DICOMDIR", "a DICOMDIR"),
        ("SC_rgb_jpeg.dcm", "RGB image"),
        ("examples_palette.dcm", "PALETTE COLOR image"),
        ("rtdose.dcm", "BitsAllocated 32"),
    ],
)
def test_refusals_name_the_reason(name, reason):
    with pytest.raises(InputError, match=reason):
        read_header(pydicom_file(name))


def test_not_dicom(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(InputError, match="notes.txt: not a DICOM file"):
        read_header(path)


def test_truncated_header(tmp_path, ct_series):
    path = tmp_path / "cut.dcm"
    path.write_bytes(ct_series[0].read_bytes()[:300])
    with pytest.raises(InputError, match="cut.dcm: .*truncated"):
        read_values(read_header(path))


def test_truncated_pixel_data():
    with pytest.raises(InputError, match="MR_truncated.dcm: pixel data has 8130 bytes"):
        read_values(read_header(pydicom_file("MR_truncated.dcm")))


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
                                  "MR_small_jpeg_ls_lossless.dcm", "693_J2KI.dcm",
                                  "MR_small_bigendian.dcm", "MR_small_implicit.dcm"])
def test_compressed_and_other_encodings_decode(name):
    _, values = read_values(read_header(pydicom_file(name)))
    assert values.ndim == 3 and np.isfinite(values).all()


def test_syntax_without_decoder_names_it(tmp_path, ct_series):
    ds = pydicom.dcmread(ct_series[0])
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2 video
    ds.PixelData = pydicom.encaps.encapsulate([b"\0" * 64])
    path = tmp_path / "mpeg.dcm"
    ds.save_as(path)
    with pytest.raises(InputError, match="MPEG2.*no pixel decoder"):
        read_header(path)


def test_missing_plugin_names_the_package(monkeypatch, ct_series):
    import scanside.dicom.codecs as codecs

    class Missing:
        is_available = False
        missing_dependencies = ["pyjpegls - requires numpy and pyjpegls>=1.2"]

    monkeypatch.setattr(codecs, "get_decoder", lambda uid: Missing())
    with pytest.raises(InputError, match=r"JPEG-LS Lossless.*pyjpegls.*scanside\[codecs\]"):
        codecs.check_decodable(pydicom.uid.JPEGLSLossless, "x.dcm")



def test_quiet_holds_while_any_thread_is_inside(recwarn):
    """Slices are read by several workers at once: one worker leaving its quiet block must not
    reopen pydicom's warnings and log records (which may quote values) while another is still
    inside. Failed with a per-block catch_warnings and saved level: the second thread's
    warning and log record came through."""
    import logging
    import threading
    import warnings

    from scanside.dicom.parse import quiet

    logger = logging.getLogger("pydicom")
    level = logger.level
    first_in, second_in, first_left = threading.Event(), threading.Event(), threading.Event()
    logging_open = []

    def first():  # enters first, leaves first: not the nesting order
        with quiet():
            first_in.set()
            second_in.wait()
        first_left.set()

    def second():
        first_in.wait()
        with quiet():
            second_in.set()
            first_left.wait()
            warnings.warn("PatientName=SECRET", UserWarning)
            logging_open.append(logger.isEnabledFor(logging.WARNING))

    threads = [threading.Thread(target=second), threading.Thread(target=first)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not [w for w in recwarn if "SECRET" in str(w.message)]
    assert logging_open == [False]
    # Both left: pydicom's level and the warning filters are back as they were.
    assert logger.level == level
    warnings.warn("after", UserWarning)
    assert [str(w.message) for w in recwarn] == ["after"]
